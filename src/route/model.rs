//! The `model` (and `stream`) of a JSON request body, found and rewritten in place.
//!
//! A structural scan of the top-level object only (no tree is built, nothing allocated unless
//! a value has escapes): the key and value byte ranges are located, then `model` is decoded,
//! and a rewrite splices the new value into a copy of the body, every other byte unchanged.
//! A body that is not a JSON object yields nothing (the upstream judges validity).
//!
//! Duplicate `model` keys: JSON parsers disagree on which wins, so routing on one and
//! forwarding the other would let a client pick a route for one model and get another. The
//! scan reports the *last* (what serde_json and Python keep) and a rewrite replaces *every*
//! occurrence, so whatever parser the upstream uses sees the rewritten model.

use std::ops::Range;

/// Top-level facts of a request body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BodyFacts {
    /// The decoded `model` string (last occurrence).
    pub model: Option<String>,
    /// Byte ranges of every top-level `model` value (with quotes).
    pub model_spans: Vec<Range<usize>>,
    /// `"stream": true` at the top level.
    pub stream: bool,
}

/// Scan a body. `None` when it is not a JSON object (or is malformed where it was scanned).
pub fn scan(body: &[u8]) -> Option<BodyFacts> {
    let mut f = BodyFacts::default();
    crate::inspect::objscan::for_each_member(body, 0, |key, v| match key {
        b"model" if body[v.start] == b'"' => {
            f.model = decode_string(&body[v.clone()]);
            f.model_spans.push(v);
        }
        b"stream" => f.stream = &body[v] == b"true",
        _ => {}
    })?;
    Some(f)
}

/// A copy of `body` with every `model` value in `spans` replaced by `model` (JSON-escaped).
pub fn rewrite(body: &[u8], spans: &[Range<usize>], model: &str) -> Vec<u8> {
    let mut lit = Vec::with_capacity(model.len() + 2);
    crate::error::write_json_string(&mut lit, model);
    let grow = spans.len() * lit.len();
    let mut out = Vec::with_capacity(body.len() + grow);
    let mut at = 0;
    for s in spans {
        out.extend_from_slice(&body[at..s.start]);
        out.extend_from_slice(&lit);
        at = s.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

fn decode_string(lit: &[u8]) -> Option<String> {
    if !lit.contains(&b'\\') {
        return std::str::from_utf8(&lit[1..lit.len() - 1])
            .ok()
            .map(str::to_string);
    }
    serde_json::from_slice::<String>(lit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_and_stream_at_top_level_only() {
        let b = br#" { "messages":[{"model":"inner","content":"}\"{"}], "model" : "fast", "stream":true } "#;
        let f = scan(b).unwrap();
        assert_eq!(f.model.as_deref(), Some("fast"));
        assert!(f.stream);
        let out = rewrite(b, &f.model_spans, "gpt-4o-mini");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["messages"][0]["model"], "inner");
        assert_eq!(out.len(), b.len() + "gpt-4o-mini".len() - "fast".len());
    }

    #[test]
    fn escapes_duplicates_and_garbage() {
        let f = scan(br#"{"model":"a\u0062c"}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("abc"));
        let b = br#"{"model":"cheap","x":1,"model":"dear"}"#;
        let f = scan(b).unwrap();
        assert_eq!(f.model.as_deref(), Some("dear"));
        let out = rewrite(b, &f.model_spans, "m\"x");
        assert_eq!(&out[..], br#"{"model":"m\"x","x":1,"model":"m\"x"}"#);
        assert!(scan(b"[1,2]").is_none());
        assert!(scan(b"{\"model\":").is_none());
        assert!(scan(b"").is_none());
        assert!(scan(b"{\"a\":]}").is_none());
        let f = scan(br#"{"model":42,"stream":"true"}"#).unwrap();
        assert_eq!(f.model, None);
        assert!(!f.stream);
    }
}
