//! Fuzz target: usage extraction, request inspection, include-usage injection and stripping.
//!
//! Owns: the no-panic and split-independence properties of the dialect code on arbitrary
//! bytes. The first input byte picks the dialect, streaming or not, and a split point. The
//! usage report must not depend on the split; a body rewritten by `inject_include_usage` must
//! still inspect as JSON asking for include_usage; the stripper never invents bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::inspect::{
    inject_include_usage, inspect_request, Dialect, Forward, UsageAccumulator,
    UsageChunkStripper,
};

fn report(d: Dialect, streaming: bool, chunks: &[&[u8]]) -> sluice::inspect::UsageReport {
    let mut acc = UsageAccumulator::new(d, streaming);
    acc.on_response_header(b"x-prompt-tokens", b"7");
    for c in chunks {
        acc.on_body_bytes(c);
    }
    acc.finish(false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else {
        return;
    };
    let dialect = Dialect::ALL[usize::from(knob) % Dialect::ALL.len()];
    let streaming = knob & 0x80 != 0;
    let cut = usize::from(knob).wrapping_mul(7919) % (input.len() + 1);
    let (a, b) = input.split_at(cut);

    assert_eq!(
        report(dialect, streaming, &[a, b]),
        report(dialect, streaming, &[input])
    );

    let _ = inspect_request(dialect, input);
    if let Some(rewritten) = inject_include_usage(input) {
        let facts = inspect_request(Dialect::OpenAiChat, &rewritten).expect("rewrite is JSON");
        assert_eq!(facts.include_usage, Some(true));
        assert!(facts.stream);
    }

    let mut s = UsageChunkStripper::new();
    let mut out = 0usize;
    for c in [a, b] {
        s.feed(c, |f| match f {
            Forward::Chunk(r) => out += r.len(),
            Forward::Held(h) => out += h.len(),
        });
    }
    s.finish(|f| {
        if let Forward::Held(h) = f {
            out += h.len();
        }
    });
    assert!(out <= input.len());
});
