//! Fuzz target: the request body `model` scan and rewrite used for routing and aliasing.
//!
//! Owns: no panic on arbitrary bytes, and the rewrite's contract: when the scan finds `model`
//! values, the rewritten body scans again with the new model at the same number of places, and
//! every byte outside the replaced values is unchanged (the prefix before the first value and
//! the suffix after the last are identical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::route::model::{rewrite, scan};

fuzz_target!(|data: &[u8]| {
    let Some(f) = scan(data) else { return };
    for s in &f.model_spans {
        assert!(s.start < s.end && s.end <= data.len());
    }
    if f.model_spans.is_empty() || f.model.is_none() {
        return;
    }
    let out = rewrite(data, &f.model_spans, "m\"x\u{1}");
    let g = scan(&out).expect("a rewritten object still scans");
    assert_eq!(g.model.as_deref(), Some("m\"x\u{1}"));
    assert_eq!(g.model_spans.len(), f.model_spans.len());
    let first = f.model_spans[0].start;
    let last = f.model_spans[f.model_spans.len() - 1].end;
    assert_eq!(&out[..first], &data[..first]);
    assert_eq!(&out[out.len() - (data.len() - last)..], &data[last..]);
});
