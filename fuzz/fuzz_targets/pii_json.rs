//! Fuzz target: `sluice::pii` JSON request rewriter on arbitrary bytes.
//! Body lives in `sluice::pii::fuzzing::fuzz_json` so normal tests exercise it too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::pii::fuzzing::fuzz_json(data);
});
