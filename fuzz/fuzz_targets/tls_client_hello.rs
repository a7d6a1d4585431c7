//! Fuzz target: the TLS ClientHello reader of transparent interception. The invariants (no
//! panic, every prefix is `Incomplete` or the whole input's own answer, bounded results) live in
//! `sluice::transparent::clienthello::fuzzing` so that the unit tests run exactly the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::transparent::clienthello::fuzzing::fuzz_client_hello(data);
});
