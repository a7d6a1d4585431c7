//! Fuzz bodies shared by `fuzz/fuzz_targets/pii_*.rs` and by normal proptest-driven tests so CI
//! exercises them. Each asserts the module invariants: no panic, findings on char boundaries,
//! outputs valid UTF-8 / valid JSON, unchanged input when nothing is rewritten.

use std::sync::{Arc, OnceLock};

use super::{redact_request, Engine, PiiConfig, RequestOutcome, StreamRedactor};

fn engine() -> &'static Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| match Engine::new(&PiiConfig::default()) {
        Ok(e) => Arc::new(e),
        Err(e) => panic!("default config must build: {e}"),
    })
}

/// Scanner + stream redactor on arbitrary bytes (lossy UTF-8).
pub fn fuzz_scan(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let e = engine();
    let mut f = Vec::new();
    e.scan(&text, &mut f);
    let mut last = 0;
    for x in &f {
        assert!(x.start >= last && x.start < x.end && x.end <= text.len());
        assert!(text.is_char_boundary(x.start) && text.is_char_boundary(x.end));
        last = x.end;
    }
    let (red, _) = e.redact_text(&text);
    if f.is_empty() {
        assert_eq!(red, text);
    }
    // streaming in 7-byte-ish pieces equals whole-text redaction when nothing is long/open
    let mut s = StreamRedactor::new(Arc::clone(e));
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        let mut j = (i + 7).min(text.len());
        while !text.is_char_boundary(j) {
            j += 1;
        }
        out.push_str(&s.push(&text[i..j]));
        i = j;
    }
    out.push_str(&s.finish());
    if f.is_empty() {
        assert_eq!(out, text);
    }
}

/// JSON request rewriter on arbitrary bytes.
pub fn fuzz_json(data: &[u8]) {
    let e = engine();
    match redact_request(e, data, None) {
        Ok(RequestOutcome::Rewritten { body, .. }) => {
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
        Ok(RequestOutcome::Unchanged { .. }) => {
            assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
        }
        Ok(RequestOutcome::Blocked { .. }) | Err(_) => {}
    }
}
