//! Request and response head parsing (RFC 9112 §2–§6, RFC 9110 §5).
//!
//! # What it owns
//! [`parse_request`] and [`parse_response`], and the owned [`RequestHead`] / [`ResponseHead`].
//!
//! # How
//! 1. Skip leading empty lines (`CRLF`, RFC 9112 §2.2), then find the end of the head
//!    (`CRLF CRLF`) with a SIMD `memmem` search limited to the first `header_bytes_max` bytes.
//!    Not found: `Ok(None)`, or `HeadTooLarge` once the buffer is longer than the limit.
//! 2. Reject any bare LF in the head (RFC 9112 §2.2 lets a recipient *choose* to accept it; a
//!    proxy must not, because the upstream may choose differently). httparse itself rejects bare
//!    CR, obs-fold and whitespace before the colon with its strict default configuration.
//! 3. Run httparse once over the complete head into a stack array of `MaybeUninit` headers.
//! 4. Copy the head into one `Vec<u8>` that also carries a table of `(offset, len)` pairs for
//!    every header name and value (little-endian `u32`s appended after the head bytes): exactly
//!    one allocation per head, no per-header `String`.
//! 5. One pass over the headers validates framing (`Content-Length`, `Transfer-Encoding`),
//!    `Host`, `Connection` and `Expect`, so accessors are O(1) or a short scan.
//!
//! # Invariants
//! * A head is only returned once complete; the result never depends on bytes after the head.
//! * Every request head returned has exactly one body-length interpretation.
//! * All `&str` accessors return ASCII validated at parse time.
//!
//! # Trade-offs
//! * Searching for `CRLF CRLF` before parsing means a syntax error in an incomplete head is only
//!   reported once the head is complete (or too large). In exchange, a head trickled in byte by
//!   byte costs one `memmem` per read instead of one full httparse run per read, and split
//!   feeding provably gives the same result as whole feeding.
//! * Repeated identical `Content-Length` values (as separate lines or as a list, `5, 5`) are
//!   **merged** (RFC 9110 §8.6 allows either); differing values are rejected. The proxy should
//!   regenerate `Content-Length` from [`RequestHead::body_kind`] rather than copy the lines.

use super::{is_tchar, BodyKind, CodecError, HeadLimits, Method, Version};
use httparse::{Header, ParserConfig, Status};
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Header slots kept on the stack while running httparse; larger `headers_count_max` values fall
/// back to a heap buffer.
const STACK_HEADERS_COUNT: usize = 128;
/// Bytes per header in the span table: name offset, name length, value offset, value length.
const SPAN_ENTRY_BYTES: usize = 16;

/// `(offset, len)` into the owned head bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn get(self, buf: &[u8]) -> &[u8] {
        let start = self.start as usize;
        buf.get(start..start.saturating_add(self.len as usize))
            .unwrap_or(&[])
    }

    /// Span of `part` inside `base`, or an empty span if `part` does not point into `base`
    /// (httparse returns a static `""` for reason phrases containing obs-text).
    fn of(base: &[u8], part: &[u8]) -> Span {
        let b = base.as_ptr() as usize;
        let p = part.as_ptr() as usize;
        match p.checked_sub(b) {
            Some(off) if off.saturating_add(part.len()) <= base.len() => Span {
                start: off as u32,
                len: part.len() as u32,
            },
            _ => Span::default(),
        }
    }

    fn sub(self, from: usize, to: usize) -> Span {
        let to = to.min(self.len as usize);
        let from = from.min(to);
        Span {
            start: self.start + from as u32,
            len: (to - from) as u32,
        }
    }
}

fn as_str(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

/// The owned head bytes plus the header span table, in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeadBuf {
    /// `bytes[..head_len]` is the head as received (start line through the final CRLF);
    /// `bytes[head_len..]` is `count` entries of [`SPAN_ENTRY_BYTES`].
    bytes: Vec<u8>,
    head_len: usize,
    count: usize,
}

impl HeadBuf {
    fn head(&self) -> &[u8] {
        self.bytes.get(..self.head_len).unwrap_or(&[])
    }

    fn entry(&self, i: usize) -> (Span, Span) {
        let at = self.head_len + i * SPAN_ENTRY_BYTES;
        let word = |k: usize| -> u32 {
            self.bytes
                .get(at + 4 * k..at + 4 * k + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(u32::from_le_bytes)
                .unwrap_or(0)
        };
        (
            Span {
                start: word(0),
                len: word(1),
            },
            Span {
                start: word(2),
                len: word(3),
            },
        )
    }

    fn header_at(&self, i: usize) -> (&str, &[u8]) {
        let (n, v) = self.entry(i);
        let head = self.head();
        (as_str(n.get(head)), v.get(head))
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        let head = self.head();
        (0..self.count).find_map(|i| {
            let (n, v) = self.entry(i);
            let n = n.get(head);
            (n.len() == name.len() && n.eq_ignore_ascii_case(name.as_bytes())).then(|| v.get(head))
        })
    }

    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        (0..self.count).map(move |i| self.header_at(i))
    }

    fn connection_tokens(&self) -> impl Iterator<Item = &str> {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| list_elements(v))
            // A non-UTF-8 element cannot be a token; skip it rather than yield "".
            .filter_map(|e| std::str::from_utf8(e).ok())
    }
}

/// Elements of a comma-separated list field value with OWS trimmed and empty elements skipped
/// (RFC 9110 §5.6.1).
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
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

/// Facts about the framing-relevant headers, gathered in one pass.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    cl_error: Option<CodecError>,
    te_present: bool,
    /// Final transfer coding is exactly `chunked`.
    te_chunked_final: bool,
    /// `chunked` appears more than once or not last.
    te_chunked_misplaced: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    host: Option<Span>,
    host_count: usize,
    expect_continue: bool,
}

fn parse_content_length(v: &[u8]) -> Result<u64, CodecError> {
    let mut value: Option<u64> = None;
    let mut any = false;
    for e in v.split(|&b| b == b',').map(trim_ows) {
        any = true;
        if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
            return Err(CodecError::Smuggling("invalid Content-Length"));
        }
        let n = e.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let n = n.ok_or(CodecError::Smuggling("Content-Length overflow"))?;
        match value {
            Some(prev) if prev != n => {
                return Err(CodecError::Smuggling("conflicting Content-Length values"))
            }
            _ => value = Some(n),
        }
    }
    match value {
        Some(n) if any => Ok(n),
        _ => Err(CodecError::Smuggling("invalid Content-Length")),
    }
}

fn gather(head: &[u8], headers: &[Header<'_>]) -> Fields {
    let mut f = Fields::default();
    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                f.host_count += 1;
                if f.host.is_none() {
                    f.host = Some(Span::of(head, value));
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect")
                && value.eq_ignore_ascii_case(b"100-continue") =>
            {
                f.expect_continue = true;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in list_elements(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        f.conn_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        f.conn_keep_alive = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                match parse_content_length(value) {
                    Ok(n) => match f.content_length {
                        Some(prev) if prev != n => {
                            f.cl_error.get_or_insert(CodecError::Smuggling(
                                "conflicting Content-Length values",
                            ));
                        }
                        _ => f.content_length = Some(n),
                    },
                    Err(e) => {
                        f.cl_error.get_or_insert(e);
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                f.te_present = true;
                for coding in list_elements(value) {
                    if f.te_chunked_final {
                        // Something follows a `chunked` coding.
                        f.te_chunked_misplaced = true;
                    }
                    f.te_chunked_final = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
            _ => {}
        }
    }
    f
}

fn httparse_error(e: httparse::Error, start_line: &[u8]) -> CodecError {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => CodecError::TooManyHeaders,
        E::Version => {
            // `HTTP/<digit>.<digit>` that is not 1.0/1.1 (incl. the HTTP/2 preface): 505.
            let is_http_version = |w: &[u8]| matches!(w, [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit());
            if start_line.split(|&b| b == b' ').any(is_http_version) {
                CodecError::UnsupportedVersion
            } else {
                CodecError::Malformed("invalid HTTP version")
            }
        }
        E::HeaderName => CodecError::Malformed("invalid header name"),
        E::HeaderValue => CodecError::Malformed("invalid header value"),
        E::NewLine => CodecError::Malformed("invalid line ending"),
        E::Status => CodecError::Malformed("invalid status line"),
        E::Token => CodecError::Malformed("invalid request line"),
    }
}

/// Refine httparse's generic header errors into the specific smuggling vectors, for logs/tests.
fn classify_header_error(head: &[u8], e: CodecError) -> CodecError {
    if e != CodecError::Malformed("invalid header name") {
        return e;
    }
    // Skip the start line.
    let mut lines = head.split(|&b| b == b'\n').skip(1);
    for line in lines.by_ref() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        match line.first() {
            Some(b' ' | b'\t') => return CodecError::Smuggling("obs-fold (line folding)"),
            Some(_) => {}
            None => break,
        }
        let Some(name_end) = line.iter().position(|&b| b == b':') else {
            return e;
        };
        let name = line.get(..name_end).unwrap_or(&[]);
        let trimmed = trim_ows(name);
        if trimmed.is_empty() || !trimmed.iter().all(|&b| is_tchar(b)) {
            // The offending line is a plain invalid name: keep the generic error.
            return e;
        }
        if trimmed.len() != name.len() {
            return CodecError::Smuggling("whitespace between header name and colon");
        }
    }
    e
}

/// Where the head is, if complete.
enum Located {
    NeedMore,
    /// `start` = after leading empty lines, `end` = after the final CRLF.
    Head {
        start: usize,
        end: usize,
    },
}

fn locate(buf: &[u8], limits: &HeadLimits, skip_empty_lines: bool) -> Result<Located, CodecError> {
    let window = buf
        .get(..buf.len().min(limits.header_bytes_max))
        .unwrap_or(buf);
    let mut start = 0;
    if skip_empty_lines {
        loop {
            match window.get(start..) {
                Some([b'\r', b'\n', ..]) => start += 2,
                Some([b'\r']) => break,
                Some([b'\r', ..]) => return Err(CodecError::Malformed("bare CR")),
                Some([b'\n', ..]) => return Err(CodecError::Malformed("bare LF")),
                _ => break,
            }
        }
    }
    let rest = window.get(start..).unwrap_or(&[]);
    static HEAD_END: OnceLock<memchr::memmem::Finder<'static>> = OnceLock::new();
    let finder = HEAD_END.get_or_init(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    let found = finder.find(rest).map(|p| start + p + 4);
    let region = match found {
        Some(end) => window.get(..end).unwrap_or(window),
        None => window,
    };
    // Bare LF: every LF in the head must follow a CR (RFC 9112 §2.2, see module docs).
    for i in memchr::memchr_iter(b'\n', region) {
        if i == 0 || region.get(i - 1) != Some(&b'\r') {
            return Err(CodecError::Malformed("bare LF"));
        }
    }
    match found {
        Some(end) => Ok(Located::Head { start, end }),
        None if buf.len() > limits.header_bytes_max => Err(CodecError::HeadTooLarge),
        None => Ok(Located::NeedMore),
    }
}

/// Copy `head` and the header spans into one allocation.
fn build_headbuf(head: &[u8], headers: &[Header<'_>]) -> Result<HeadBuf, CodecError> {
    if u32::try_from(head.len()).is_err() {
        return Err(CodecError::HeadTooLarge);
    }
    let mut bytes = Vec::with_capacity(head.len() + headers.len() * SPAN_ENTRY_BYTES);
    bytes.extend_from_slice(head);
    for h in headers {
        let n = Span::of(head, h.name.as_bytes());
        let v = Span::of(head, h.value);
        for w in [n.start, n.len, v.start, v.len] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
    }
    Ok(HeadBuf {
        bytes,
        head_len: head.len(),
        count: headers.len(),
    })
}

/// Run `f` with an uninitialized header slot buffer of `n` entries (stack for the usual sizes).
fn with_header_slots<'b, R>(n: usize, f: impl FnOnce(&mut [MaybeUninit<Header<'b>>]) -> R) -> R {
    if n <= STACK_HEADERS_COUNT {
        let mut slots = [const { MaybeUninit::<Header<'b>>::uninit() }; STACK_HEADERS_COUNT];
        f(slots.get_mut(..n).unwrap_or(&mut []))
    } else {
        let mut slots = vec![MaybeUninit::<Header<'b>>::uninit(); n];
        f(&mut slots)
    }
}

fn first_line(head: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'\r', head).unwrap_or(head.len());
    head.get(..end).unwrap_or(head)
}

fn version_of(minor: Option<u8>) -> Result<Version, CodecError> {
    match minor {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(CodecError::UnsupportedVersion),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A parsed, validated request head. Owns one copy of the head bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    hb: HeadBuf,
    method: Method,
    method_span: Span,
    target: Span,
    /// `None`: path is `"/"` (absolute-form with an empty path).
    path: Option<Span>,
    host: Option<Span>,
    version: Version,
    body_kind: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
}

impl RequestHead {
    pub fn method(&self) -> Method {
        self.method
    }

    /// The method token exactly as sent.
    pub fn method_str(&self) -> &str {
        as_str(self.method_span.get(self.hb.head()))
    }

    /// The request-target as sent (origin-form, absolute-form, authority-form or `*`).
    pub fn target(&self) -> &str {
        as_str(self.target.get(self.hb.head()))
    }

    /// Path and query. For absolute-form the path part of the URI (`"/"` if empty); for
    /// asterisk-form `"*"`; for authority-form (CONNECT) `""`.
    pub fn path(&self) -> &str {
        match self.path {
            Some(s) => as_str(s.get(self.hb.head())),
            None => "/",
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// First header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.hb.header(name)
    }

    /// All headers in wire order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.hb.headers()
    }

    pub fn header_count(&self) -> usize {
        self.hb.count
    }

    /// Validated at parse time: `Chunked`, `Length(n)` (including `Length(0)`), or `Empty`.
    /// Requests are never close-delimited (RFC 9112 §6.3 rule 7).
    pub fn body_kind(&self) -> BodyKind {
        self.body_kind
    }

    /// HTTP/1.1: unless `Connection: close`. HTTP/1.0: only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored on 1.0, RFC 9110 §10.1.1).
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    /// Authority of an absolute-form or authority-form target, else the `Host` header
    /// (RFC 9112 §3.2.2). `None` only for an HTTP/1.0 request without `Host`.
    pub fn host(&self) -> Option<&str> {
        self.host.map(|s| as_str(s.get(self.hb.head())))
    }

    /// Tokens listed in all `Connection` headers (trimmed, as sent; compare case-insensitively).
    pub fn connection_tokens(&self) -> impl Iterator<Item = &str> {
        self.hb.connection_tokens()
    }

    /// The head bytes exactly as received (request line through the final CRLF, without any
    /// leading empty lines).
    pub fn raw(&self) -> &[u8] {
        self.hb.head()
    }
}

/// Bytes allowed in a request-target: printable ASCII except `#` (no fragments on the wire).
fn valid_target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'#'
}

/// `reg-name / IP-literal / IPv4address [ ":" port ]` characters (RFC 3986 §3.2.2). Empty is
/// valid (RFC 9112 §3.2).
fn valid_authority(a: &[u8]) -> bool {
    a.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// Split a request-target into (path span or `None` for "/", authority span if any).
fn classify_target(
    method: Method,
    target: Span,
    head: &[u8],
) -> Result<(Option<Span>, Option<Span>), CodecError> {
    let t = target.get(head);
    if !t.iter().all(|&b| valid_target_byte(b)) {
        return Err(CodecError::Malformed("invalid byte in request-target"));
    }
    if method == Method::Connect {
        // authority-form only (RFC 9112 §3.2.3).
        if t.contains(&b'/') || t.contains(&b'@') || !valid_authority(t) || t.is_empty() {
            return Err(CodecError::Malformed("CONNECT requires authority-form"));
        }
        return Ok((Some(target.sub(0, 0)), Some(target)));
    }
    match t.first() {
        Some(b'/') => Ok((Some(target), None)),
        Some(b'*') if t.len() == 1 && method == Method::Options => Ok((Some(target), None)),
        _ => {
            // absolute-form: scheme "://" authority path-abempty [ "?" query ]
            let scheme_end = t
                .windows(3)
                .position(|w| w == b"://")
                .ok_or(CodecError::Malformed("invalid request-target"))?;
            let scheme = t.get(..scheme_end).unwrap_or(&[]);
            let scheme_ok = matches!(scheme.first(), Some(c) if c.is_ascii_alphabetic())
                && scheme
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
            if !scheme_ok {
                return Err(CodecError::Malformed("invalid request-target scheme"));
            }
            let auth_start = scheme_end + 3;
            let rest = t.get(auth_start..).unwrap_or(&[]);
            let auth_len = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let authority = target.sub(auth_start, auth_start + auth_len);
            let a = authority.get(head);
            if a.is_empty() || a.contains(&b'@') || !valid_authority(a) {
                // userinfo is deprecated and a phishing vector (RFC 9110 §4.2.4).
                return Err(CodecError::Malformed("invalid authority in request-target"));
            }
            let path_start = auth_start + auth_len;
            let path = match rest.get(auth_len) {
                Some(b'/') => Some(target.sub(path_start, t.len())),
                // "http://h?q" → path "/?q" is not representable as a sub-slice; reject.
                Some(_) => return Err(CodecError::Malformed("absolute-form query without path")),
                None => None,
            };
            Ok((path, Some(authority)))
        }
    }
}

/// Parse a request head from the front of `buf`.
///
/// * `Ok(None)`: the head is incomplete; read more and call again with the grown buffer.
/// * `Ok(Some((head, n)))`: `buf[..n]` was the head (including skipped leading empty lines);
///   the body (if any) starts at `buf[n]`.
/// * `Err(_)`: reject the request (see [`crate::error::Classify`] for the status) and close.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, CodecError> {
    let (start, end) = match locate(buf, limits, true)? {
        Located::NeedMore => return Ok(None),
        Located::Head { start, end } => (start, end),
    };
    let head = buf.get(start..end).unwrap_or(&[]);

    let parsed = with_header_slots(limits.headers_count_max, |slots| {
        let mut req = httparse::Request::new(&mut []);
        let config = ParserConfig::default();
        match config.parse_request_with_uninit_headers(&mut req, head, slots) {
            Ok(Status::Complete(n)) if n == head.len() => {
                let method = req.method.unwrap_or("").as_bytes();
                let target = req.path.unwrap_or("").as_bytes();
                Ok((
                    Span::of(head, method),
                    Span::of(head, target),
                    req.version,
                    build_headbuf(head, req.headers)?,
                    gather(head, req.headers),
                ))
            }
            Ok(_) => Err(CodecError::Malformed("head ended early")),
            Err(e) => Err(classify_header_error(
                head,
                httparse_error(e, first_line(head)),
            )),
        }
    });
    let (method_span, target, version, hb, f) = parsed?;
    let version = version_of(version)?;
    let method = Method::from_bytes(method_span.get(hb.head()));
    let (path, target_authority) = classify_target(method, target, hb.head())?;
    if f.host_count > 1 {
        return Err(CodecError::Malformed("multiple Host headers"));
    }
    if version == Version::Http11 && f.host_count == 0 {
        return Err(CodecError::Malformed("missing Host header"));
    }
    if let Some(h) = f.host {
        if !valid_authority(h.get(hb.head())) {
            return Err(CodecError::Malformed("invalid Host header"));
        }
    }
    let body_kind = if f.te_present {
        if version == Version::Http10 {
            return Err(CodecError::Smuggling(
                "Transfer-Encoding in HTTP/1.0 request",
            ));
        }
        if f.content_length.is_some() || f.cl_error.is_some() {
            return Err(CodecError::Smuggling(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !f.te_chunked_final || f.te_chunked_misplaced {
            return Err(CodecError::Smuggling(
                "Transfer-Encoding final coding is not chunked",
            ));
        }
        BodyKind::Chunked
    } else if let Some(e) = f.cl_error {
        return Err(e);
    } else if let Some(n) = f.content_length {
        BodyKind::Length(n)
    } else {
        BodyKind::Empty
    };
    let keep_alive = match version {
        Version::Http11 => !f.conn_close,
        Version::Http10 => f.conn_keep_alive && !f.conn_close,
    };
    Ok(Some((
        RequestHead {
            method,
            method_span,
            target,
            path,
            host: target_authority.or(f.host),
            version,
            body_kind,
            keep_alive,
            expect_continue: f.expect_continue && version == Version::Http11,
            hb,
        },
        end,
    )))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Framing decided from the response headers alone (the request method may still override).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespFraming {
    Chunked,
    Length(u64),
    Close,
}

/// A parsed, validated response head. Owns one copy of the head bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    hb: HeadBuf,
    status: u16,
    reason: Span,
    version: Version,
    framing: RespFraming,
    keep_alive: bool,
    must_close: bool,
}

impl ResponseHead {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Reason phrase as sent; `""` if absent or if it contained obs-text.
    pub fn reason(&self) -> &str {
        as_str(self.reason.get(self.hb.head()))
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.hb.header(name)
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.hb.headers()
    }

    pub fn header_count(&self) -> usize {
        self.hb.count
    }

    /// Whether the upstream connection may be reused after this response, judging by the head
    /// alone: `Connection` semantics per version, and `false` if [`Self::must_close`]. A
    /// [`BodyKind::CloseDelimited`] body also ends the connection; check [`Self::body_kind`].
    pub fn keep_alive(&self) -> bool {
        self.keep_alive && !self.must_close
    }

    /// The framing was suspicious (both `Content-Length` and `Transfer-Encoding`, or
    /// `Transfer-Encoding` on HTTP/1.0, RFC 9112 §6.1): `Transfer-Encoding` was honoured but the
    /// connection must not be reused.
    pub fn must_close(&self) -> bool {
        self.must_close
    }

    pub fn connection_tokens(&self) -> impl Iterator<Item = &str> {
        self.hb.connection_tokens()
    }

    /// RFC 9112 §6.3 message-length rules, given the method of the request this answers.
    /// A 2xx answer to CONNECT is `Empty`: what follows is a tunnel, not a body.
    pub fn body_kind(&self, request_method: Method) -> BodyKind {
        let s = self.status;
        if request_method == Method::Head
            || (100..200).contains(&s)
            || s == 204
            || s == 304
            || (request_method == Method::Connect && (200..300).contains(&s))
        {
            return BodyKind::Empty;
        }
        match self.framing {
            RespFraming::Chunked => BodyKind::Chunked,
            RespFraming::Length(n) => BodyKind::Length(n),
            RespFraming::Close => BodyKind::CloseDelimited,
        }
    }

    /// 1xx: forward it and read the next head for the same request. (101 Switching Protocols
    /// is also 1xx; the caller decides whether it supports upgrades.)
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// The head bytes exactly as received.
    pub fn raw(&self) -> &[u8] {
        self.hb.head()
    }
}

/// Parse a response head from the front of `buf`. Same contract as [`parse_request`].
///
/// Leading empty lines are *not* skipped for responses (RFC 9112 §2.2 only allows it before a
/// request-line); they are a framing error in the previous response.
pub fn parse_response(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(ResponseHead, usize)>, CodecError> {
    let (start, end) = match locate(buf, limits, false)? {
        Located::NeedMore => return Ok(None),
        Located::Head { start, end } => (start, end),
    };
    let head = buf.get(start..end).unwrap_or(&[]);
    if head.starts_with(b"\r\n") {
        return Err(CodecError::Malformed("empty line before status line"));
    }

    let parsed = with_header_slots(limits.headers_count_max, |slots| {
        let mut resp = httparse::Response::new(&mut []);
        let config = ParserConfig::default();
        match config.parse_response_with_uninit_headers(&mut resp, head, slots) {
            Ok(Status::Complete(n)) if n == head.len() => Ok((
                resp.code.unwrap_or(0),
                Span::of(head, resp.reason.unwrap_or("").as_bytes()),
                resp.version,
                build_headbuf(head, resp.headers)?,
                gather(head, resp.headers),
            )),
            Ok(_) => Err(CodecError::Malformed("head ended early")),
            Err(e) => Err(classify_header_error(
                head,
                httparse_error(e, first_line(head)),
            )),
        }
    });
    let (status, reason, version, hb, f) = parsed?;
    let version = version_of(version)?;
    if status < 100 {
        return Err(CodecError::Malformed("invalid status code"));
    }
    let mut must_close = false;
    let framing = if f.te_present {
        // TE overrides CL (RFC 9112 §6.3 rule 3); either combination is a red flag.
        must_close = f.content_length.is_some() || f.cl_error.is_some();
        if version == Version::Http10 {
            must_close = true;
            RespFraming::Close
        } else if f.te_chunked_final && f.te_chunked_misplaced {
            return Err(CodecError::Smuggling("chunked applied more than once"));
        } else if f.te_chunked_final {
            RespFraming::Chunked
        } else {
            RespFraming::Close
        }
    } else if let Some(e) = f.cl_error {
        return Err(e);
    } else if let Some(n) = f.content_length {
        RespFraming::Length(n)
    } else {
        RespFraming::Close
    };
    let keep_alive = match version {
        Version::Http11 => !f.conn_close,
        Version::Http10 => f.conn_keep_alive && !f.conn_close,
    };
    Ok(Some((
        ResponseHead {
            hb,
            status,
            reason,
            version,
            framing,
            keep_alive,
            must_close,
        },
        end,
    )))
}
