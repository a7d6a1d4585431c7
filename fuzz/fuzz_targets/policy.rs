//! Fuzz target: the policy parsers that see untrusted bytes.
//!
//! Owns: the no-panic property of JWT verification (`auth::jwt::verify`, arbitrary tokens
//! against an HS256 + EC JWKS), JWKS parsing (`auth::jwt::parse_jwks`), and the RESP reply
//! reader of the Redis lease client (`ratelimit::redis::read_reply`, which reads what a Redis
//! server, or something pretending to be one, sends). The first byte picks the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::auth::jwt;
use sluice::ratelimit::redis;

fn keys() -> Vec<jwt::Key> {
    jwt::parse_jwks(
        br#"{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
        {"kty":"EC","kid":"e","crv":"P-256",
         "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
    )
    .expect("fixed JWKS parses")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let p = jwt::Policy {
                issuer: Some("iss".into()),
                audiences: vec!["aud".into()],
                identity_claim: "sub".into(),
                leeway_s: 30,
                require_exp: true,
            };
            // Never verified: the fuzzer cannot sign. Every input must be refused, not panic.
            assert!(jwt::verify(input, &keys(), &p, 1_700_000_000).is_err());
        }
        1 => {
            let _ = jwt::parse_jwks(input);
        }
        _ => {
            let mut r = std::io::Cursor::new(input);
            while redis::read_reply(&mut r, 0).is_ok() {}
        }
    }
});
