//! Fuzz target: `sluice::http1` chunked parsing. The invariants (no panic, consumed <= input,
//! split feeding == whole feeding) live in `sluice::http1::fuzzing::fuzz_chunked` so that the
//! proptest-driven unit tests exercise exactly the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::http1::fuzzing::fuzz_chunked(data);
});
