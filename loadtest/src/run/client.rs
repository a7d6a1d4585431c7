//! The load generator's HTTP/1.1 keep-alive client on monoio: one request at a time per
//! connection, streaming-aware response reading.
//!
//! Owns: writing a pre-encoded request, reading the response head (skipping 1xx), consuming the
//! body by Content-Length, chunked or close framing without copying it, and timing SSE content
//! events. Invariants: a body is never buffered whole (only SSE bytes awaiting a line end are
//! kept); after any error or a `Connection: close` the connection must be dropped
//! ([`Exchange::keep_alive`] false). Trade-off: "content" in an SSE `data:` line is detected by
//! byte patterns (`"content":"x`, `"text":"x`, `"token":{`) rather than JSON parsing, which
//! covers OpenAI, Anthropic and TGI without costing a parse per event.

use std::rc::Rc;
use std::time::Instant;

use memchr::memmem;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::stats::ErrorKind;
use crate::http1::{self, ChunkedDecoder, MAX_HEADERS, MAX_HEAD_BYTES};

/// Read-buffer size per connection.
const READ_BUF_BYTES: usize = 16 * 1024;
/// Longest SSE line kept while waiting for its end.
const MAX_SSE_LINE_BYTES: usize = 1024 * 1024;

/// Tracks SSE content events of one response.
#[derive(Debug, Default)]
pub struct SseTrack {
    pending: Vec<u8>,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Gaps between consecutive content events, in microseconds.
    pub gaps_us: Vec<u64>,
    pub tokens: u64,
}

impl SseTrack {
    pub fn reset(&mut self) {
        self.pending.clear();
        self.first = None;
        self.last = None;
        self.gaps_us.clear();
        self.tokens = 0;
    }

    /// Feeds decoded body bytes that arrived at `now`.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) {
        let mut rest = bytes;
        while let Some(p) = memchr::memchr(b'\n', rest) {
            let line_end = &rest[..p];
            if self.pending.is_empty() {
                self.line(line_end, now);
            } else {
                self.pending.extend_from_slice(line_end);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, now);
                self.pending = line;
                self.pending.clear();
            }
            rest = &rest[p + 1..];
        }
        if self.pending.len() + rest.len() <= MAX_SSE_LINE_BYTES {
            self.pending.extend_from_slice(rest);
        }
    }

    fn line(&mut self, line: &[u8], now: Instant) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if !carries_content(data) {
            return;
        }
        self.tokens += 1;
        if self.first.is_none() {
            self.first = Some(now);
        }
        if let Some(prev) = self.last {
            self.gaps_us
                .push(now.saturating_duration_since(prev).as_micros() as u64);
        }
        self.last = Some(now);
    }
}

/// True when an SSE data payload carries generated text (OpenAI, Anthropic or TGI shape).
pub fn carries_content(data: &[u8]) -> bool {
    for pat in [&b"\"content\":\""[..], b"\"text\":\""] {
        let mut hay = data;
        while let Some(p) = memmem::find(hay, pat) {
            let after = &hay[p + pat.len()..];
            if after.first().is_some_and(|&b| b != b'"') {
                return true;
            }
            hay = after;
        }
    }
    memmem::find(data, b"\"token\":{").is_some()
}

/// Outcome of one request/response exchange.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub keep_alive: bool,
    pub bytes_in: u64,
    pub streamed: bool,
}

/// A plain or TLS client stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Stream {
    async fn read<T: monoio::buf::IoBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all<T: monoio::buf::IoBuf + 'static>(
        &mut self,
        buf: T,
    ) -> monoio::BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                let (r, b) = s.write_all(buf).await;
                match r {
                    Ok(n) => match monoio::io::AsyncWriteRent::flush(&mut **s).await {
                        Ok(()) => (Ok(n), b),
                        Err(e) => (Err(e), b),
                    },
                    Err(e) => (Err(e), b),
                }
            }
        }
    }
}

/// One client connection with its read buffer.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connect, and with `tls` handshake (the handshake counts as part of the connect).
    pub async fn connect(
        addr: std::net::SocketAddr,
        tls: Option<&(
            monoio_rustls::TlsConnector,
            rustls_pki_types::ServerName<'static>,
        )>,
    ) -> Result<Self, ErrorKind> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(stream),
            Some((connector, name)) => Stream::Tls(Box::new(
                connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|_| ErrorKind::Connect)?,
            )),
        };
        Ok(Self {
            stream,
            buf: Vec::with_capacity(READ_BUF_BYTES),
        })
    }

    async fn read_more(&mut self) -> Result<usize, ErrorKind> {
        if self.buf.capacity() - self.buf.len() < READ_BUF_BYTES / 4 {
            self.buf.reserve(READ_BUF_BYTES);
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = self.stream.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        res.map_err(|_| ErrorKind::Reset)
    }

    /// Sends `req` and reads the whole response, feeding SSE bodies to `sse`.
    pub async fn exchange(
        &mut self,
        req: Rc<Vec<u8>>,
        sse: &mut SseTrack,
    ) -> Result<Exchange, ErrorKind> {
        let (res, _) = self.stream.write_all(req).await;
        res.map_err(|_| ErrorKind::Reset)?;
        self.buf.clear();
        let mut bytes_in: u64 = 0;
        // Head (skipping interim 1xx responses).
        let (status, keep_alive, framing, is_sse) = loop {
            let parsed = {
                let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut r = httparse::Response::new(&mut hs);
                match r.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let code = r.code.unwrap_or(0);
                        let mut keep_alive = r.version == Some(1);
                        let mut cl = None;
                        let mut chunked = false;
                        let mut sse = false;
                        for h in r.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                cl = Some(http1::parse_decimal(h.value).ok_or(ErrorKind::Parse)?);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = http1::has_token(h.value, "chunked");
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                if http1::has_token(h.value, "close") {
                                    keep_alive = false;
                                } else if http1::has_token(h.value, "keep-alive") {
                                    keep_alive = true;
                                }
                            } else if h.name.eq_ignore_ascii_case("content-type") {
                                sse = h.value.starts_with(b"text/event-stream");
                            }
                        }
                        Some((len, code, keep_alive, cl, chunked, sse))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Err(ErrorKind::Parse),
                }
            };
            match parsed {
                Some((len, code, ka, cl, chunked, sse)) => {
                    bytes_in += len as u64;
                    self.buf.drain(..len);
                    if (100..200).contains(&code) && code != 101 {
                        continue;
                    }
                    let framing = if code == 204 || code == 304 {
                        Framing::Length(0)
                    } else if chunked {
                        Framing::Chunked
                    } else if let Some(n) = cl {
                        Framing::Length(n)
                    } else {
                        Framing::Close
                    };
                    break (code, ka && framing != Framing::Close, framing, sse);
                }
                None => {
                    if self.buf.len() > MAX_HEAD_BYTES {
                        return Err(ErrorKind::Parse);
                    }
                    if self.read_more().await? == 0 {
                        return Err(ErrorKind::Reset);
                    }
                }
            }
        };
        // Body.
        match framing {
            Framing::Length(mut remaining) => loop {
                let take = (remaining as usize).min(self.buf.len());
                if is_sse && take > 0 {
                    sse.feed(&self.buf[..take], Instant::now());
                }
                self.buf.drain(..take);
                remaining -= take as u64;
                bytes_in += take as u64;
                if remaining == 0 {
                    break;
                }
                if self.read_more().await? == 0 {
                    return Err(ErrorKind::Reset);
                }
            },
            Framing::Chunked => {
                let mut dec = ChunkedDecoder::new();
                let mut decoded = Vec::new();
                loop {
                    decoded.clear();
                    let used = dec
                        .feed(&self.buf, is_sse.then_some(&mut decoded))
                        .map_err(|_| ErrorKind::Parse)?;
                    if !decoded.is_empty() {
                        sse.feed(&decoded, Instant::now());
                    }
                    self.buf.drain(..used);
                    bytes_in += used as u64;
                    if dec.is_done() {
                        break;
                    }
                    if self.read_more().await? == 0 {
                        return Err(ErrorKind::Reset);
                    }
                }
            }
            Framing::Close => loop {
                if is_sse && !self.buf.is_empty() {
                    sse.feed(&self.buf, Instant::now());
                }
                bytes_in += self.buf.len() as u64;
                self.buf.clear();
                if self.read_more().await? == 0 {
                    break;
                }
            },
        }
        Ok(Exchange {
            status,
            keep_alive: keep_alive && self.buf.is_empty(),
            bytes_in,
            streamed: is_sse,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_detection_per_dialect() {
        assert!(carries_content(
            br#" {"choices":[{"delta":{"content":"Hi"}}]}"#
        ));
        assert!(!carries_content(
            br#" {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!carries_content(b" [DONE]"));
        assert!(carries_content(
            br#" {"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#
        ));
        assert!(!carries_content(
            br#" {"type":"content_block_start","content_block":{"type":"text","text":""}}"#
        ));
        assert!(carries_content(
            br#"{"token":{"id":1,"text":"a"},"generated_text":null}"#
        ));
        assert!(carries_content(br#" {"choices":[{"text":"x","index":0}]}"#));
    }

    #[test]
    fn sse_lines_split_across_reads() {
        let mut t = SseTrack::default();
        let now = Instant::now();
        let ev = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        for b in ev.iter().chain(ev.iter()) {
            t.feed(std::slice::from_ref(b), now);
        }
        t.feed(b"data: [DONE]\n\n", now);
        assert_eq!(t.tokens, 2);
        assert_eq!(t.gaps_us.len(), 1);
        assert!(t.first.is_some());
    }
}
