//! Fuzz target: `sluice::pii` scanner + stream redactor on arbitrary bytes (lossy UTF-8).
//! Body lives in `sluice::pii::fuzzing::fuzz_scan` so normal tests exercise it too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::pii::fuzzing::fuzz_scan(data);
});
