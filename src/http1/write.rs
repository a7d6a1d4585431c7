//! Serialization helpers for heads and chunked framing (RFC 9112 §3, §4, §5, §7.1).
//!
//! # What it owns
//! Writing start lines, header lines and chunk framing into a caller-provided `Vec<u8>`. The
//! proxy decides *which* headers to send; these functions write them correctly.
//!
//! # Invariants
//! * Output is always well-formed HTTP/1.1, whatever the input: the writers never emit CR, LF
//!   or NUL inside a line (header injection / response splitting is impossible through them).
//!   Invalid bytes are replaced rather than rejected, so the signatures stay infallible:
//!   CR/LF/NUL in values and reason phrases become SP (RFC 9110 §5.5 permits exactly this),
//!   invalid name/method bytes become `_`, and invalid request-target bytes are
//!   percent-encoded. Callers that want to *reject* instead can check
//!   [`is_valid_header_name`] / [`is_valid_header_value`] first.
//! * Only appends to `out`; never clears it.
//!
//! # Trade-offs
//! Sanitizing costs one pass over each value; values on the hot path (forwarded from a parsed
//! head) are already valid, so the pass is a predictable branch-free scan and the copy is a
//! single `extend_from_slice` when nothing needs replacing.

use super::{is_tchar, is_text, Version};

/// A non-empty token (RFC 9110 §5.1).
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_tchar)
}

/// No CR, LF, NUL or other control bytes except HTAB (RFC 9110 §5.5).
pub fn is_valid_header_value(value: &[u8]) -> bool {
    value.iter().all(|&b| is_text(b))
}

/// Append a token, replacing non-token bytes with `_` (empty becomes `_`).
fn put_token(out: &mut Vec<u8>, t: &str) {
    if t.is_empty() {
        out.push(b'_');
    } else if t.bytes().all(is_tchar) {
        out.extend_from_slice(t.as_bytes());
    } else {
        out.extend(t.bytes().map(|b| if is_tchar(b) { b } else { b'_' }));
    }
}

/// Append text, replacing CR, LF, NUL (and other controls except HTAB) with SP.
fn put_text(out: &mut Vec<u8>, v: &[u8]) {
    if is_valid_header_value(v) {
        out.extend_from_slice(v);
    } else {
        out.extend(v.iter().map(|&b| if is_text(b) { b } else { b' ' }));
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `{method} {target} {version}\r\n`. Target bytes outside VCHAR are percent-encoded; an empty
/// target is written as `/`.
pub fn write_request_line(out: &mut Vec<u8>, method: &str, target: &str, version: Version) {
    put_token(out, method);
    out.push(b' ');
    if target.is_empty() {
        out.push(b'/');
    } else if target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        out.extend_from_slice(target.as_bytes());
    } else {
        for b in target.bytes() {
            if (0x21..=0x7e).contains(&b) {
                out.push(b);
            } else {
                out.push(b'%');
                out.push(HEX_UPPER[usize::from(b >> 4)]);
                out.push(HEX_UPPER[usize::from(b & 0xf)]);
            }
        }
    }
    out.push(b' ');
    out.extend_from_slice(version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `{version} {status:03} {reason}\r\n`; an empty reason is replaced by [`canonical_reason`].
/// A status code outside 100..=999 (a caller bug: a status line always has 3 digits) is
/// written as 500 rather than clamped, since clamping low values would produce a 1xx.
pub fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &str, version: Version) {
    let (status, reason) = if (100..=999).contains(&status) {
        (status, reason)
    } else {
        (500, "")
    };
    out.extend_from_slice(version.as_str().as_bytes());
    out.push(b' ');
    let digits = [
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    out.extend_from_slice(&digits);
    out.push(b' ');
    let reason = if reason.is_empty() {
        canonical_reason(status)
    } else {
        reason
    };
    put_text(out, reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `{name}: {value}\r\n` (sanitized, see module docs).
pub fn write_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    put_token(out, name);
    out.extend_from_slice(b": ");
    put_text(out, value);
    out.extend_from_slice(b"\r\n");
}

/// `{name}: {value}\r\n` for a header taken from a head that [`super::parse_request`] or
/// [`super::parse_response`] accepted: httparse (strict) already admitted only token names
/// and HTAB/SP/VCHAR/obs-text values, so they are copied without re-validation (that per-byte
/// check was ~4,000 instructions per proxied exchange). Anything built or changed by sluice goes
/// through [`write_header`].
pub fn write_header_parsed(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    debug_assert!(is_valid_header_name(name) && is_valid_header_value(value));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The empty line ending a head: `\r\n`.
pub fn finish_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// One chunk: `{hex size}\r\n{data}\r\n`. Writes nothing for empty data (an empty chunk would be
/// the last-chunk).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = data.len() as u64;
    let mut i = digits.len();
    while n > 0 && i > 0 {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = HEX_LOWER[(n & 0xf) as usize];
        }
        n >>= 4;
    }
    out.reserve(digits.len() - i + data.len() + 4);
    out.extend_from_slice(digits.get(i..).unwrap_or(b"0"));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last-chunk with no trailers: `0\r\n\r\n`.
pub fn write_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

/// Canonical reason phrase for a status code (RFC 9110 §15), `""` if unknown.
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy `Keep-Alive`, `Proxy-Connection`),
/// case-insensitive. Callers must also drop the names listed in `Connection` tokens.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    HOP.iter()
        .any(|h| h.len() == name.len() && h.eq_ignore_ascii_case(name))
}
