//! Fuzz target: `sluice::pii::SseRedactor` (stream redaction of SSE completions) on arbitrary
//! bytes. Body lives in `sluice::pii::fuzzing::fuzz_sse` so normal tests exercise it too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::pii::fuzzing::fuzz_sse(data);
});
