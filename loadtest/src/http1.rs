//! Minimal HTTP/1.1 framing pieces shared by the mock server and the load generator.
//!
//! Owns: the incremental chunked-body decoder, header lookups and the size limits both sides
//! enforce. Invariants: the decoder never allocates beyond [`MAX_CHUNK_LINE_BYTES`] for size and
//! trailer lines, never panics on any input, and reports how many input bytes it consumed so the
//! caller can keep pipelined bytes that follow the body. Trade-off: chunk extensions and trailers
//! are accepted and discarded (a mock and a load generator have no use for them).

use thiserror::Error;

/// Largest request or response head either side accepts.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest number of header fields parsed per message.
pub const MAX_HEADERS: usize = 96;
/// Largest chunk-size or trailer line accepted by the chunked decoder.
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Largest request body the mock accepts (and response body the client buffers for parsing).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Framing errors; all of them mean "close the connection".
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("invalid chunk size line")]
    BadChunkSize,
    #[error("chunk line longer than {MAX_CHUNK_LINE_BYTES} bytes")]
    ChunkLineTooLong,
    #[error("missing CRLF after chunk data")]
    BadChunkTerminator,
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    Done,
}

/// Incremental decoder for `Transfer-Encoding: chunked` bodies.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
    total: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            line: Vec::new(),
            total: 0,
        }
    }

    /// True once the terminating zero chunk and trailer section were consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds `input`; appends decoded data to `out` when given. Returns the number of input bytes
    /// consumed (less than `input.len()` only when the body ended inside `input`).
    pub fn feed(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Size | State::Trailer => {
                    let rest = &input[i..];
                    let (line_part, complete) = match memchr::memchr(b'\n', rest) {
                        Some(p) => (&rest[..=p], true),
                        None => (rest, false),
                    };
                    if self.line.len() + line_part.len() > MAX_CHUNK_LINE_BYTES {
                        return Err(FramingError::ChunkLineTooLong);
                    }
                    self.line.extend_from_slice(line_part);
                    i += line_part.len();
                    if !complete {
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let trimmed = trim_crlf(&line);
                    if self.state == State::Trailer {
                        if trimmed.is_empty() {
                            self.state = State::Done;
                        }
                        continue;
                    }
                    let size = parse_chunk_size(trimmed)?;
                    if size == 0 {
                        self.state = State::Trailer;
                    } else {
                        self.total = self.total.saturating_add(size);
                        if self.total > MAX_BODY_BYTES as u64 {
                            return Err(FramingError::BodyTooLarge);
                        }
                        self.state = State::Data(size);
                    }
                }
                State::Data(remaining) => {
                    let avail = (input.len() - i) as u64;
                    let take = remaining.min(avail) as usize;
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(&input[i..i + take]);
                    }
                    i += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                }
                State::DataCr => {
                    match input[i] {
                        b'\r' => self.state = State::DataLf,
                        b'\n' => self.state = State::Size,
                        _ => return Err(FramingError::BadChunkTerminator),
                    }
                    i += 1;
                }
                State::DataLf => {
                    if input[i] != b'\n' {
                        return Err(FramingError::BadChunkTerminator);
                    }
                    i += 1;
                    self.state = State::Size;
                }
            }
        }
        Ok(i)
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let Some((&last, rest)) = l.split_last() {
        if last == b'\n' || last == b'\r' {
            l = rest;
        } else {
            break;
        }
    }
    l
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let hex = match memchr::memchr(b';', line) {
        Some(p) => &line[..p],
        None => line,
    };
    let hex = trim_ascii(hex);
    if hex.is_empty() || hex.len() > 15 {
        return Err(FramingError::BadChunkSize);
    }
    let mut v: u64 = 0;
    for &b in hex {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(FramingError::BadChunkSize),
        };
        v = v * 16 + u64::from(d);
    }
    Ok(v)
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &s[start..end.max(start)]
}

/// Case-insensitive header lookup over httparse headers.
pub fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// True when a comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ascii(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a decimal header value (Content-Length style); `None` on anything else.
pub fn parse_decimal(value: &[u8]) -> Option<u64> {
    let v = trim_ascii(value);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_in_pieces_with_extensions_and_trailers() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let a = d.feed(&body[..split], Some(&mut out)).unwrap();
            let consumed = if d.is_done() {
                a
            } else {
                assert_eq!(a, split);
                split + d.feed(&body[split..], Some(&mut out)).unwrap()
            };
            assert!(d.is_done());
            assert_eq!(out, b"hello world");
            assert_eq!(&body[consumed..], b"NEXT");
        }
    }

    #[test]
    fn chunked_rejects_garbage() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"zz\r\n", None), Err(FramingError::BadChunkSize));
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.feed(b"1\r\nab\r\n", None),
            Err(FramingError::BadChunkTerminator)
        );
        let mut d = ChunkedDecoder::new();
        let long = vec![b'1'; MAX_CHUNK_LINE_BYTES + 1];
        assert_eq!(d.feed(&long, None), Err(FramingError::ChunkLineTooLong));
    }

    #[test]
    fn decimal_and_tokens() {
        assert_eq!(parse_decimal(b" 42 "), Some(42));
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b"1,2"), None);
        assert!(has_token(b"gzip, Chunked", "chunked"));
        assert!(!has_token(b"chunkedx", "chunked"));
    }
}
