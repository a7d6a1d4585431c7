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

/// Whether `b` is one JSON document by the grammar. `IgnoredAny` because a `Value` also converts
/// numbers, and RFC 8259 leaves their range to implementations: `777777777777e7777777777777777`
/// is valid JSON that serde_json refuses as a `Value` (out of `f64` range) and sluice forwards
/// (it never converts numbers).
pub fn is_json(b: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok()
}

/// JSON request rewriter on arbitrary bytes.
pub fn fuzz_json(data: &[u8]) {
    let e = engine();
    match redact_request(e, data, None) {
        Ok(RequestOutcome::Rewritten { body, .. }) => {
            assert!(is_json(&body));
        }
        Ok(RequestOutcome::Unchanged { .. }) => {
            assert!(is_json(data));
        }
        Ok(RequestOutcome::Blocked { .. }) | Err(_) => {}
    }
}

/// Per-entity confusion counts on a labelled corpus.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Counts {
    pub fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fp) as f64
        }
    }
    pub fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fn_) as f64
        }
    }
}

/// Evaluate `engine` on a JSONL corpus (`{"text", "entities":[{"type","start","end"}]}`,
/// offsets in Unicode code points). A prediction is a true positive when a gold span of the same
/// type overlaps it (each gold span matched at most once). Returns per-entity counts and the
/// list of mismatches (`"FP TYPE 'text'"` / `"FN TYPE 'text'"`) for debugging.
pub fn corpus_metrics(
    engine: &Engine,
    jsonl: &str,
) -> (std::collections::BTreeMap<String, Counts>, Vec<String>) {
    let mut m: std::collections::BTreeMap<String, Counts> = std::collections::BTreeMap::new();
    let mut errs = Vec::new();
    let mut found = Vec::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            errs.push(format!("bad corpus line: {line}"));
            continue;
        };
        let text = v["text"].as_str().unwrap_or("");
        // char offset -> byte offset
        let byte_of: Vec<usize> = text
            .char_indices()
            .map(|(b, _)| b)
            .chain(std::iter::once(text.len()))
            .collect();
        let gold: Vec<(String, usize, usize)> = v["entities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        let s = e["start"].as_u64().unwrap_or(0) as usize;
                        let en = e["end"].as_u64().unwrap_or(0) as usize;
                        (
                            e["type"].as_str().unwrap_or("").to_string(),
                            byte_of.get(s).copied().unwrap_or(0),
                            byte_of.get(en).copied().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        engine.scan(text, &mut found);
        let mut used = vec![false; gold.len()];
        for f in &found {
            let name = engine.entity_name(f.entity).to_string();
            let hit = gold
                .iter()
                .enumerate()
                .position(|(i, g)| !used[i] && g.0 == name && g.1 < f.end && f.start < g.2);
            let c = m.entry(name.clone()).or_default();
            match hit {
                Some(i) => {
                    used[i] = true;
                    c.tp += 1;
                }
                None => {
                    c.fp += 1;
                    errs.push(format!(
                        "FP {name} {:?} in {:?}",
                        &text[f.start..f.end],
                        text
                    ));
                }
            }
        }
        for (i, g) in gold.iter().enumerate() {
            if !used[i] {
                m.entry(g.0.clone()).or_default().fn_ += 1;
                errs.push(format!(
                    "FN {} {:?} in {:?}",
                    g.0,
                    text.get(g.1..g.2).unwrap_or(""),
                    text
                ));
            }
        }
    }
    (m, errs)
}

/// SSE stream redactor on arbitrary bytes: never panics, and the output does not depend on how
/// the body was cut into reads (split independence), so a fixture split at any point forwards
/// the same bytes.
pub fn fuzz_sse(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let run = |cuts: &[usize]| {
        let mut r = super::SseRedactor::new(Arc::clone(engine()));
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            r.feed(&body[last..c], &mut out);
            last = c;
        }
        r.feed(&body[last..], &mut out);
        r.finish(&mut out);
        out
    };
    let whole = run(&[]);
    let a = usize::from(sel) % (body.len() + 1);
    let b = (a + usize::from(sel) * 7) % (body.len() + 1);
    let (a, b) = (a.min(b), a.max(b));
    assert_eq!(run(&[a, b]), whole, "split at {a}/{b} changed the output");
    if std::str::from_utf8(body).is_ok() {
        assert!(std::str::from_utf8(&whole).is_ok());
    }
}
