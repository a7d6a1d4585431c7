//! Golden fixtures for `sluice::inspect`: every `tests/fixtures/dialects/<dialect>/NAME.{json,
//! sse,ndjson}` is run through the [`UsageAccumulator`] whole, split at every byte boundary and
//! byte by byte; all runs must equal `NAME.expected.json`. Streams are also run through the
//! [`UsageChunkStripper`] (split-invariant output) and property tests check that random splits
//! never change results and random bytes never panic.
//!
//! `NAME.expected.json` fields: `input_tokens`, `output_tokens`, `total_tokens` (all `null` ⇔ no
//! usage), `cached_input_tokens`, `reasoning_tokens`, `model`, `estimated`, `content_events`,
//! `malformed`, `truncated`, `done`, `aborted` (passed to `finish`), optional `headers`
//! (response headers fed first) and optional `dialect` (else the directory name).

use proptest::prelude::*;
use serde_json::Value;
use sluice::inspect::{
    Dialect, Forward, SseSplitter, UsageAccumulator, UsageChunkStripper, UsageReport,
};
use std::path::{Path, PathBuf};

struct Fixture {
    name: String,
    dialect: Dialect,
    streaming: bool,
    body: Vec<u8>,
    expected: Value,
}

fn fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dialects");
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let dir_name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf8")
            .to_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("dialect dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let fname = f
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf8")
                .to_owned();
            if fname.ends_with(".expected.json") {
                continue;
            }
            let (stem, ext) = fname.rsplit_once('.').expect("extension");
            let streaming = match ext {
                "sse" | "ndjson" => true,
                "json" => false,
                _ => continue,
            };
            let exp_path = dir.join(format!("{stem}.expected.json"));
            let expected: Value = serde_json::from_slice(
                &std::fs::read(&exp_path).unwrap_or_else(|_| panic!("missing {exp_path:?}")),
            )
            .expect("expected json");
            let dialect_name = expected["dialect"].as_str().unwrap_or(&dir_name).to_owned();
            out.push(Fixture {
                name: format!("{dir_name}/{fname}"),
                dialect: dialect_name.parse().expect("dialect"),
                streaming,
                body: std::fs::read(&f).expect("fixture"),
                expected,
            });
        }
    }
    assert!(
        out.len() >= 20,
        "expected the fixture set, found {}",
        out.len()
    );
    out
}

fn run<'a>(fx: &Fixture, chunks: impl IntoIterator<Item = &'a [u8]>) -> UsageReport {
    let mut acc = UsageAccumulator::new(fx.dialect, fx.streaming);
    if let Some(h) = fx.expected["headers"].as_object() {
        for (k, v) in h {
            acc.on_response_header(k.as_bytes(), v.as_str().expect("header").as_bytes());
        }
    }
    let mut signalled = 0u64;
    for c in chunks {
        signalled += u64::from(acc.on_body_bytes(c).content_events);
    }
    let aborted = fx.expected["aborted"].as_bool().unwrap_or(false);
    let report = acc.finish(aborted);
    assert_eq!(
        signalled, report.content_events,
        "{}: signals add up",
        fx.name
    );
    report
}

/// The report as the JSON shape of `NAME.expected.json`.
fn as_expected(r: &UsageReport) -> Value {
    let u = r.usage.as_ref();
    serde_json::json!({
        "input_tokens": u.map(|u| u.input_tokens),
        "output_tokens": u.map(|u| u.output_tokens),
        "total_tokens": u.map(|u| u.total_tokens),
        "cached_input_tokens": u.and_then(|u| u.cached_input_tokens),
        "reasoning_tokens": u.and_then(|u| u.reasoning_tokens),
        "model": u.and_then(|u| u.response_model.clone()),
        "estimated": u.is_some_and(|u| u.estimated),
        "content_events": r.content_events,
        "malformed": r.malformed_events,
        "truncated": r.truncated,
        "done": r.done,
        "aborted": r.aborted,
    })
}

fn expected_subset(fx: &Fixture) -> Value {
    let mut e = fx.expected.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("headers");
        o.remove("dialect");
    }
    e
}

#[test]
fn golden_whole_every_split_and_byte_by_byte() {
    for fx in fixtures() {
        let want = expected_subset(&fx);
        let whole = run(&fx, [fx.body.as_slice()]);
        assert_eq!(as_expected(&whole), want, "{} (whole)", fx.name);
        for i in 0..=fx.body.len() {
            let (a, b) = fx.body.split_at(i);
            assert_eq!(run(&fx, [a, b]), whole, "{} split at {i}", fx.name);
        }
        assert_eq!(
            run(&fx, fx.body.chunks(1)),
            whole,
            "{} byte by byte",
            fx.name
        );
    }
}

fn strip_all<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, u32) {
    let mut s = UsageChunkStripper::new();
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, |f| match f {
            Forward::Chunk(r) => out.extend_from_slice(&c[r]),
            Forward::Held(b) => out.extend_from_slice(b),
        });
    }
    s.finish(|f| {
        if let Forward::Held(b) = f {
            out.extend_from_slice(b);
        }
    });
    (out, s.dropped_events())
}

/// Events as (type, data) pairs.
fn events(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut s = SseSplitter::new();
    let mut out = Vec::new();
    s.feed(bytes, |e| out.push((e.event.to_vec(), e.data.to_vec())));
    out
}

#[test]
fn stripper_removes_exactly_the_usage_chunk() {
    for fx in fixtures() {
        if !fx.streaming || !fx.dialect.supports_include_usage() {
            continue;
        }
        let whole = strip_all([fx.body.as_slice()]);
        for i in 0..=fx.body.len() {
            let (a, b) = fx.body.split_at(i);
            assert_eq!(strip_all([a, b]), whole, "{} split at {i}", fx.name);
        }
        assert_eq!(
            strip_all(fx.body.chunks(1)),
            whole,
            "{} byte by byte",
            fx.name
        );
        // The client sees the same events minus the usage-only ones.
        let before = events(&fx.body);
        let after = events(&whole.0);
        let kept: Vec<_> = before
            .iter()
            .filter(|(_, d)| !sluice::inspect::is_usage_only_chunk(d))
            .cloned()
            .collect();
        assert_eq!(after, kept, "{}", fx.name);
        assert_eq!(before.len() - after.len(), whole.1 as usize, "{}", fx.name);
        let had_usage = fx.expected["input_tokens"].is_u64()
            && !fx.expected["estimated"].as_bool().unwrap_or(false);
        assert_eq!(whole.1 > 0, had_usage, "{}", fx.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random multi-way splits give the same report as the whole body.
    #[test]
    fn random_splits_never_change_results(seed in any::<u64>(), cuts in proptest::collection::vec(any::<u16>(), 0..12)) {
        let all = fixtures();
        let fx = &all[(seed % all.len() as u64) as usize];
        let mut points: Vec<usize> = cuts.iter().map(|&c| c as usize % (fx.body.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in points {
            chunks.push(&fx.body[prev..p]);
            prev = p;
        }
        chunks.push(&fx.body[prev..]);
        prop_assert_eq!(run(fx, chunks.iter().copied()), run(fx, [fx.body.as_slice()]));
    }

    /// Arbitrary bytes, arbitrarily split, never panic, whatever the dialect and framing.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), split in any::<usize>(), d in 0usize..7, streaming in any::<bool>()) {
        let dialect = Dialect::ALL[d];
        let cut = split % (bytes.len() + 1);
        let mut acc = UsageAccumulator::new(dialect, streaming);
        acc.on_body_bytes(&bytes[..cut]);
        acc.on_body_bytes(&bytes[cut..]);
        let _ = acc.finish(false);
        let _ = sluice::inspect::inspect_request(dialect, &bytes);
        let _ = sluice::inspect::inject_include_usage(&bytes);
        let (out, _) = strip_all([&bytes[..cut], &bytes[cut..]]);
        prop_assert!(out.len() <= bytes.len());
    }

    /// SSE-looking random input: splitter events do not depend on the split.
    #[test]
    fn sse_like_input_split_invariant(parts in proptest::collection::vec(prop_oneof![
        Just(&b"data: "[..]), Just(&b"data:"[..]), Just(&b"event: x"[..]), Just(&b":c"[..]),
        Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..]), Just(&b"{\"usage\":{}}"[..]),
        Just(&b"id: 1"[..]), Just(&b"retry: 5"[..]), Just(&b"\xEF\xBB\xBF"[..]), Just(&b"xyz"[..]),
    ], 0..40), split in any::<usize>()) {
        let input: Vec<u8> = parts.concat();
        let cut = split % (input.len() + 1);
        let collect = |chunks: &[&[u8]]| {
            let mut s = SseSplitter::with_limit(64);
            let mut out = Vec::new();
            for c in chunks {
                s.feed(c, |e| out.push((e.event.to_vec(), e.data.to_vec(), e.span.clone())));
            }
            (out, s.oversized_events(), s.finish())
        };
        let whole = collect(&[&input]);
        prop_assert_eq!(collect(&[&input[..cut], &input[cut..]]), whole.clone());
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(collect(&bytes), whole);
    }
}
