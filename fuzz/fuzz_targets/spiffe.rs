//! Fuzz target: SPIFFE identities from untrusted input.
//!
//! Owns: the no-panic property of reading a SPIFFE ID from arbitrary certificate bytes (a
//! client certificate is peer-controlled until verified, and x509 parsing is where bugs hide)
//! and of parsing allow-list patterns; and the consistency properties: an ID read from a
//! certificate is always a valid SPIFFE ID, and an exact pattern matches itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::tls::spiffe::{spiffe_id_of, validate, IdentityPattern};

fuzz_target!(|data: &[u8]| {
    if let Some(id) = spiffe_id_of(data) {
        assert!(validate(&id, false).is_ok(), "{id}");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validate(s, true);
        if let Ok(p) = IdentityPattern::parse(s) {
            if let IdentityPattern::Exact(e) = &p {
                assert!(p.matches(e));
            }
            let _ = p.matches("spiffe://cluster.local/ns/a/sa/b");
        }
    }
});
