//! HTTP/1.1 codec: a pure (no IO) parser and writer for message heads and body framing.
//!
//! # What this module owns
//! * [`parse_request`] / [`parse_response`]: turn the bytes at the front of a connection buffer
//!   into a validated [`RequestHead`] / [`ResponseHead`] (RFC 9112 §2–§6). The head is copied
//!   once into a single owned allocation; header names and values are stored as offsets into it.
//! * [`BodyDecoder`]: incremental message-body framing (RFC 9112 §6, §7). It tells the proxy how
//!   many of the following bytes belong to the body so those *raw wire bytes* can be forwarded
//!   verbatim, and hands decoded payload slices to an optional inspector callback.
//! * [`write_chunk`], [`write_request_line`], [`write_header`], ...: serialization helpers.
//!
//! # Invariants
//! * Nothing here panics on any input: no `unwrap`, no unchecked indexing, no `unsafe`.
//! * Every accepted head has exactly one message-body length interpretation (RFC 9112 §6.3);
//!   anything ambiguous in a request (CL+TE, conflicting CL, TE not ending in `chunked`,
//!   obs-fold, whitespace before a colon, bare CR/LF) is rejected, never repaired.
//! * Parsing a head is a pure function of the bytes: feeding a buffer in pieces only ever yields
//!   `Ok(None)` (need more) until the head is complete, then exactly the same result as feeding
//!   it whole. [`BodyDecoder`] state carries across calls split at *any* byte.
//! * Every limit is a named `pub const` ([`HEADER_BYTES_MAX_DEFAULT`], [`CHUNK_EXT_BYTES_MAX`],
//!   [`TRAILER_BYTES_MAX`], ...).
//!
//! # Trade-offs
//! * **Reject, don't repair.** A proxy that "fixes" an ambiguous message forwards something the
//!   upstream may interpret differently (request smuggling). Strict rejection costs nothing for
//!   the clients we front (OpenAI/Anthropic SDKs, curl, vLLM/TGI servers all emit clean HTTP/1.1).
//! * **Raw pass-through of bodies.** Re-chunking costs a copy per byte and changes what the
//!   upstream sees; forwarding the exact framed bytes is zero-copy and, because the framing was
//!   validated strictly, unambiguous. Filters that rewrite a stream re-frame with [`write_chunk`].
//! * **httparse for heads.** It is SIMD-accelerated and battle-tested; we run it with the strict
//!   [`httparse::ParserConfig`] defaults and add what it does not check (bare LF, framing
//!   headers, Host rules, request-target form) in one extra pass over the parsed headers.
//!
//! See `docs/http1.md` for the accept/reject table.

mod body;
#[doc(hidden)]
pub mod fuzzing;
mod head;
mod write;

#[cfg(test)]
mod tests;

pub use body::{
    BodyDecoder, Progress, CHUNK_EXT_BYTES_MAX, CHUNK_SIZE_HEX_DIGITS_MAX, TRAILER_BYTES_MAX,
};
pub use head::{parse_request, parse_response, RequestHead, ResponseHead};
pub use write::{
    canonical_reason, finish_head, is_hop_by_hop, is_valid_header_name, is_valid_header_value,
    write_chunk, write_header, write_header_parsed, write_last_chunk, write_request_line,
    write_status_line,
};

use crate::error::{Classify, Side};

/// Default bound on the whole head (request/status line, all header lines, final CRLF, and any
/// leading empty lines), in bytes.
pub const HEADER_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Default bound on the number of header field lines in one head.
pub const HEADERS_COUNT_MAX_DEFAULT: usize = 100;

/// Limits applied while parsing a head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Maximum size of the head in bytes (everything up to and including the final CRLF).
    pub header_bytes_max: usize,
    /// Maximum number of header field lines.
    pub headers_count_max: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            headers_count_max: HEADERS_COUNT_MAX_DEFAULT,
        }
    }
}

/// Everything that can go wrong while parsing or framing an HTTP/1.x message.
///
/// The `&'static str` payloads are short, fixed descriptions safe to log and to show to clients
/// (they never contain message bytes).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum CodecError {
    /// The head exceeded [`HeadLimits::header_bytes_max`].
    #[error("message head too large")]
    HeadTooLarge,
    /// The head had more than [`HeadLimits::headers_count_max`] header lines.
    #[error("too many header fields")]
    TooManyHeaders,
    /// Syntactically invalid head.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// Ambiguous message framing (request smuggling vector).
    #[error("ambiguous message framing: {0}")]
    Smuggling(&'static str),
    /// Invalid chunked transfer coding.
    #[error("invalid chunked encoding: {0}")]
    BadChunk(&'static str),
    /// Not HTTP/1.0 or HTTP/1.1 (includes the HTTP/2 connection preface).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// The connection closed before the message body was complete.
    #[error("message body truncated by connection close")]
    Truncated,
}

impl Classify for CodecError {
    /// Always [`Side::Downstream`]: this classification describes errors parsing what a *client*
    /// sent. Errors parsing an upstream response are mapped to 502 by the proxy itself.
    fn side(&self) -> Side {
        Side::Downstream
    }

    fn status(&self) -> u16 {
        match self {
            CodecError::HeadTooLarge | CodecError::TooManyHeaders => 431,
            CodecError::Malformed(_)
            | CodecError::Smuggling(_)
            | CodecError::BadChunk(_)
            | CodecError::Truncated => 400,
            CodecError::UnsupportedVersion => 505,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CodecError::HeadTooLarge => "head_too_large",
            CodecError::TooManyHeaders => "too_many_headers",
            CodecError::Malformed(_) => "malformed_request",
            CodecError::Smuggling(_) => "ambiguous_framing",
            CodecError::BadChunk(_) => "bad_chunked_encoding",
            CodecError::UnsupportedVersion => "unsupported_http_version",
            CodecError::Truncated => "truncated_body",
        }
    }
}

/// HTTP/1.x protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    /// `"HTTP/1.0"` or `"HTTP/1.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// Request method. Methods are case-sensitive (RFC 9110 §9.1): `get` is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Connect,
    Trace,
    Other,
}

impl Method {
    /// Classify a method token (exact, case-sensitive match).
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            b"CONNECT" => Method::Connect,
            b"TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }
}

/// How the message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body at all.
    Empty,
    /// Exactly this many bytes (`Content-Length`). `Length(0)` is complete immediately.
    Length(u64),
    /// `Transfer-Encoding` whose final coding is `chunked`.
    Chunked,
    /// Responses only: the body ends when the server closes the connection.
    CloseDelimited,
}

/// `tchar` (RFC 9110 §5.6.2): the bytes of a token (method, header name, transfer-coding).
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// `tchar` (RFC 9110 §5.6.2) as a table: one load per byte instead of a search of the symbols.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

/// HTAB / SP / VCHAR / obs-text: what may appear in a field value or a chunk extension
/// (RFC 9110 §5.5). Excludes CR, LF, NUL, other controls and DEL.
fn is_text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}
