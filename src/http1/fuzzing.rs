//! Fuzz bodies shared by the cargo-fuzz targets (`fuzz/fuzz_targets/http1_*.rs`) and by the
//! ordinary proptest-driven `#[test]`s, so CI exercises the same invariants without libFuzzer.
//!
//! Invariants asserted (a violation panics, which is what the fuzzer looks for):
//! * parsing never panics and `consumed <= input.len()`;
//! * head parsing is prefix-monotone: every prefix of the input yields `Ok(None)`, the same
//!   error as the whole input, or (once it contains the whole head) exactly the same head;
//! * body decoding is split-invariant: whole, split at an arbitrary point, and byte-by-byte
//!   feeding give the same payload, the same total consumed, the same `done` and the same error;
//! * a decoder that is not done has consumed all of its input.
//!
//! Not part of the public API (`#[doc(hidden)]`); allocation here is fine.

use super::{parse_request, parse_response, BodyDecoder, BodyKind, CodecError, HeadLimits, Method};

/// What decoding a body produced, for comparing feeding strategies.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BodyRun {
    pub(super) payload: Vec<u8>,
    pub(super) consumed: usize,
    pub(super) done: bool,
    pub(super) err: Option<CodecError>,
}

/// Feed `input` to a fresh decoder in the pieces given by `cuts` (ascending split offsets).
pub(super) fn run_body(kind: BodyKind, input: &[u8], cuts: &[usize]) -> BodyRun {
    let mut d = BodyDecoder::new(kind);
    let mut run = BodyRun {
        payload: Vec::new(),
        consumed: 0,
        done: d.is_done(),
        err: None,
    };
    let mut start = 0;
    let ends = cuts
        .iter()
        .copied()
        .filter(|&c| c <= input.len())
        .chain(std::iter::once(input.len()));
    for end in ends {
        if end < start {
            continue;
        }
        let piece = input.get(run.consumed..end).unwrap_or(&[]);
        start = end;
        match d.advance(piece, |s| run.payload.extend_from_slice(s)) {
            Ok(p) => {
                assert!(p.consumed <= piece.len(), "consumed beyond input");
                if !p.done {
                    assert_eq!(p.consumed, piece.len(), "not done but input left over");
                }
                run.consumed += p.consumed;
                run.done = p.done;
                assert_eq!(d.is_done(), p.done);
                if p.done {
                    break;
                }
            }
            Err(e) => {
                // How much was consumed before the error is meaningless: normalize it.
                run.consumed = 0;
                run.err = Some(e);
                // Errors are sticky.
                assert_eq!(d.advance(b"x", |_| {}), Err(e));
                break;
            }
        }
    }
    run
}

/// Assert that whole, split-at-`split` and byte-by-byte feeding agree; returns the whole run.
pub(super) fn check_body(
    kind: BodyKind,
    input: &[u8],
    split: usize,
) -> (usize, bool, Option<CodecError>) {
    let whole = run_body(kind, input, &[]);
    assert!(whole.consumed <= input.len());
    let split = split % (input.len() + 1);
    let halves = run_body(kind, input, &[split]);
    assert_eq!(whole, halves, "split at {split} differs from whole");
    // Byte-by-byte is quadratic in nothing but still slow for big inputs: cap it.
    if input.len() <= 4096 {
        let cuts: Vec<usize> = (1..input.len()).collect();
        let bytes = run_body(kind, input, &cuts);
        assert_eq!(whole, bytes, "byte-by-byte differs from whole");
    }
    if let BodyKind::Length(n) = kind {
        if whole.done {
            assert_eq!(whole.consumed as u64, n);
        }
    }
    (whole.consumed, whole.done, whole.err)
}

/// Prefix lengths worth checking: all of them for short inputs, a sample otherwise.
fn prefixes(len: usize) -> Vec<usize> {
    if len <= 300 {
        (0..len).collect()
    } else {
        let mut v: Vec<usize> = (0..16).map(|i| len * i / 16).collect();
        v.extend([
            len.saturating_sub(1),
            len.saturating_sub(2),
            len.saturating_sub(4),
        ]);
        v
    }
}

fn limit_sets() -> [HeadLimits; 2] {
    [
        HeadLimits::default(),
        HeadLimits {
            header_bytes_max: 256,
            headers_count_max: 8,
        },
    ]
}

/// Fuzz body: a stream of pipelined requests.
pub fn fuzz_request(data: &[u8]) {
    for limits in limit_sets() {
        let mut rest = data;
        for _ in 0..4 {
            let whole = parse_request(rest, &limits);
            for k in prefixes(rest.len()) {
                let p = parse_request(rest.get(..k).unwrap_or(&[]), &limits);
                match (&p, &whole) {
                    (Ok(None), _) => {}
                    (Err(a), Err(b)) => assert_eq!(a, b, "prefix {k} error differs"),
                    (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b, "prefix {k} head differs"),
                    _ => panic!("prefix {k} gave {p:?} but whole gave {whole:?}"),
                }
            }
            let Ok(Some((head, n))) = whole else { break };
            assert!(n <= rest.len() && n > 0);
            exercise_request(&head);
            assert!(
                !matches!(head.body_kind(), BodyKind::CloseDelimited),
                "requests are never close-delimited"
            );
            let body = rest.get(n..).unwrap_or(&[]);
            let (consumed, done, err) = check_body(head.body_kind(), body, data.len() / 3);
            if !done || err.is_some() {
                break;
            }
            rest = body.get(consumed..).unwrap_or(&[]);
        }
    }
}

fn exercise_request(h: &super::RequestHead) {
    let _ = (
        h.method(),
        h.method_str(),
        h.target(),
        h.path(),
        h.version(),
    );
    let _ = (h.keep_alive(), h.expect_continue(), h.host(), h.raw().len());
    assert_eq!(h.headers().count(), h.header_count());
    for (name, value) in h.headers() {
        assert!(!name.is_empty());
        assert!(h.header(name).is_some());
        assert!(!value.contains(&b'\r') && !value.contains(&b'\n'));
    }
    for t in h.connection_tokens() {
        assert!(!t.is_empty());
    }
}

const METHODS: [Method; 4] = [Method::Get, Method::Head, Method::Post, Method::Connect];

/// Fuzz body: first byte selects the request method, the rest is a response stream.
pub fn fuzz_response(data: &[u8]) {
    let (sel, mut rest) = match data.split_first() {
        Some((&s, r)) => (s, r),
        None => return,
    };
    let method = METHODS[usize::from(sel) % METHODS.len()];
    for limits in limit_sets() {
        for _ in 0..4 {
            let whole = parse_response(rest, &limits);
            for k in prefixes(rest.len()) {
                let p = parse_response(rest.get(..k).unwrap_or(&[]), &limits);
                match (&p, &whole) {
                    (Ok(None), _) => {}
                    (Err(a), Err(b)) => assert_eq!(a, b, "prefix {k} error differs"),
                    (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b, "prefix {k} head differs"),
                    _ => panic!("prefix {k} gave {p:?} but whole gave {whole:?}"),
                }
            }
            let Ok(Some((head, n))) = whole else { break };
            assert!(n <= rest.len() && n > 0);
            let _ = (
                head.status(),
                head.reason(),
                head.version(),
                head.keep_alive(),
            );
            let _ = (head.must_close(), head.is_informational(), head.raw().len());
            assert_eq!(head.headers().count(), head.header_count());
            for t in head.connection_tokens() {
                assert!(!t.is_empty());
            }
            let kind = head.body_kind(method);
            if head.is_informational() {
                assert_eq!(kind, BodyKind::Empty);
            }
            let body = rest.get(n..).unwrap_or(&[]);
            let (consumed, done, err) = check_body(kind, body, usize::from(sel));
            if !done || err.is_some() {
                let mut d = BodyDecoder::new(kind);
                if d.advance(body, |_| {}).is_ok() && !d.is_done() {
                    let eof = d.on_eof();
                    assert_eq!(eof.is_ok(), kind == BodyKind::CloseDelimited);
                }
                break;
            }
            rest = body.get(consumed..).unwrap_or(&[]);
        }
    }
}

/// Fuzz body: first byte selects the split point and body kind, the rest is the body bytes.
pub fn fuzz_chunked(data: &[u8]) {
    let (sel, body) = match data.split_first() {
        Some((&s, r)) => (s, r),
        None => return,
    };
    let kind = match sel % 8 {
        0 => BodyKind::Length(u64::from(sel) * 3),
        1 => BodyKind::CloseDelimited,
        _ => BodyKind::Chunked,
    };
    let split = usize::from(sel) * body.len() / 255;
    check_body(kind, body, split);
}
