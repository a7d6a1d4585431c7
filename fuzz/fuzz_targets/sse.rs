//! Fuzz target: SSE and NDJSON splitting.
//!
//! Owns: the split-independence and no-panic properties of `SseSplitter` / `NdjsonSplitter` on
//! arbitrary bytes. The first input byte picks a split point and a small event limit (so the
//! oversized path is exercised); the rest is the stream. Events from the whole input, from the
//! two-way split and from byte-by-byte feeding must be identical, and carried bytes must stay
//! within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::inspect::{NdjsonSplitter, SseSplitter};

type Ev = (Vec<u8>, Vec<u8>, std::ops::Range<u64>);

fn sse(chunks: &[&[u8]], limit: usize) -> (Vec<Ev>, u32, bool) {
    let mut s = SseSplitter::with_limit(limit);
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, |e| {
            assert!(e.data.len() <= limit);
            out.push((e.event.to_vec(), e.data.to_vec(), e.span))
        });
    }
    let over = s.oversized_events();
    (out, over, s.finish())
}

fn ndjson(chunks: &[&[u8]], limit: usize) -> (Vec<Vec<u8>>, u32, bool) {
    let mut s = NdjsonSplitter::with_limit(limit);
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, |l| out.push(l.to_vec()));
    }
    let unterminated = s.finish(|l| out.push(l.to_vec()));
    (out, s.oversized_lines(), unterminated)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let limit = 16 + usize::from(knob & 0x3f) * 4;
    let cut = usize::from(knob).wrapping_mul(7919) % (input.len() + 1);
    let (a, b) = input.split_at(cut);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();

    let whole = sse(&[input], limit);
    assert_eq!(sse(&[a, b], limit), whole);
    assert_eq!(sse(&bytes, limit), whole);

    let whole = ndjson(&[input], limit);
    assert_eq!(ndjson(&[a, b], limit), whole);
    assert_eq!(ndjson(&bytes, limit), whole);
});
