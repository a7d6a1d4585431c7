//! W3C Trace Context `traceparent` parsing and formatting, and random trace/span ids.
//!
//! Owns: [`parse_traceparent`], [`format_traceparent`], [`new_trace_id`], [`new_span_id`].
//!
//! Rules (W3C Trace Context, level 1, section 3.2 and 4.3):
//! * `version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex
//!   (2, 32, 16, 2 digits). Uppercase hex is invalid.
//! * Version `ff` is invalid. Version `00` must be exactly 55 characters. A higher version is
//!   parsed by the version-00 layout and may carry more data only after a further `-`.
//! * An all-zero trace-id or parent-id is invalid.
//! * Only the `sampled` bit (0x01) of the flags is interpreted.
//!
//! Invariants: parsing never panics and never allocates; an invalid header yields `None`, and
//! the caller then starts a new trace (the spec's "restart the trace" behaviour).
//!
//! Ids come from `fastrand` (fast, not cryptographic). Trace ids are not secrets, but they must
//! not collide in practice: 122+ random bits per trace id make that negligible.

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span id: the parent of the span sluice creates.
    pub parent_id: [u8; 8],
    /// Trace flag 0x01.
    pub sampled: bool,
}

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN_BYTES: usize = 55;

/// A new random trace id, never all zero.
pub fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// A new random span id, never all zero.
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

fn hex_digit_lower(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decode lowercase hex `src` (exactly `2 * N` bytes) into `N` bytes.
fn decode_hex<const N: usize>(src: &[u8]) -> Option<[u8; N]> {
    if src.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = (hex_digit_lower(pair[0])? << 4) | hex_digit_lower(pair[1])?;
    }
    Some(out)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Parse a `traceparent` header value. `None` when it is invalid per the W3C spec.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    let v = trim_ows(v);
    if v.len() < TRACEPARENT_LEN_BYTES {
        return None;
    }
    let [version] = decode_hex::<1>(v.get(0..2)?)?;
    if version == 0xff {
        return None;
    }
    if version == 0 {
        if v.len() != TRACEPARENT_LEN_BYTES {
            return None;
        }
    } else if v.len() > TRACEPARENT_LEN_BYTES && v[TRACEPARENT_LEN_BYTES] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = decode_hex::<16>(&v[3..35])?;
    let parent_id = decode_hex::<8>(&v[36..52])?;
    let [flags] = decode_hex::<1>(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 0x01 != 0,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// Lowercase hex of `bytes` (for logs and tests).
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Format a version-00 `traceparent` value for the span sluice forwards upstream.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    let mut s = String::with_capacity(TRACEPARENT_LEN_BYTES);
    s.push_str("00-");
    push_hex(&mut s, trace_id);
    s.push('-');
    push_hex(&mut s, span_id);
    s.push_str(if sampled { "-01" } else { "-00" });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let tp = parse_traceparent(VALID.as_bytes()).expect("valid");
        assert_eq!(to_hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled);
        let not_sampled =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid");
        assert!(!not_sampled.sampled);
        // Other flag bits are ignored; only 0x01 means sampled.
        let other = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe")
            .expect("valid");
        assert!(!other.sampled);
    }

    #[test]
    fn format_round_trips() {
        let tp = parse_traceparent(VALID.as_bytes()).expect("valid");
        assert_eq!(format_traceparent(&tp.trace_id, &tp.parent_id, true), VALID);
        for _ in 0..100 {
            let (t, s) = (new_trace_id(), new_span_id());
            let sampled = fastrand::bool();
            let text = format_traceparent(&t, &s, sampled);
            assert_eq!(text.len(), TRACEPARENT_LEN_BYTES);
            let back = parse_traceparent(text.as_bytes()).expect("own output parses");
            assert_eq!(
                (back.trace_id, back.parent_id, back.sampled),
                (t, s, sampled)
            );
        }
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let v = format!(" \t{VALID} ");
        assert!(parse_traceparent(v.as_bytes()).is_some());
    }

    #[test]
    fn rejects_version_ff() {
        assert!(
            parse_traceparent(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
    }

    #[test]
    fn rejects_all_zero_ids() {
        assert!(
            parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none()
        );
    }

    #[test]
    fn rejects_uppercase_hex() {
        assert!(
            parse_traceparent(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01").is_none()
        );
        assert!(
            parse_traceparent(b"0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
    }

    #[test]
    fn rejects_wrong_lengths_and_separators() {
        let cases: &[&[u8]] = &[
            b"",
            b"00",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", // short trace id
            b"00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01", // long trace id
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", // short parent id
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01", // long parent id
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // v00 has no extra
            b"0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", // non-hex
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01".as_bytes(),
        ];
        for c in cases {
            assert!(
                parse_traceparent(c).is_none(),
                "accepted {:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    #[test]
    fn future_versions_parse_the_known_prefix() {
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever"
        )
        .is_some());
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01whatever"
        )
        .is_none());
    }

    #[test]
    fn ids_are_random_and_non_zero() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, [0; 16]);
        assert_ne!(a, b);
        assert_ne!(new_span_id(), [0; 8]);
    }
}
