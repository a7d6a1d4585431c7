//! The mock's per-core accept loop and HTTP/1.1 connection loop.
//!
//! Owns: request-head parsing, request-body framing (Content-Length or chunked, with
//! `Expect: 100-continue`), keep-alive, response framing and the timing of streamed events.
//! Invariants: requests on one connection are answered strictly in order and bytes after one
//! request's body stay buffered for the next (pipelining-safe); every SSE event is written and
//! flushed on its own schedule (no coalescing across an `itl` pause; token i is due at
//! `ttft + i * itl` after the head, absolute deadlines so timer rounding does not accumulate); malformed input gets a 400
//! and a close, never a panic. A reset (`x-mock-reset-after`) sets `SO_LINGER 0` and drops the
//! socket, which makes the kernel send RST.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::dialect::{self, Behavior, Framing, Reply};
use super::{MockError, RecordedRequest, Shared};
use crate::http1::{self, ChunkedDecoder, MAX_BODY_BYTES, MAX_HEADERS, MAX_HEAD_BYTES};

/// Read-buffer growth step.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Pause after a failed `accept` (e.g. EMFILE) before retrying.
const ACCEPT_BACKOFF_MS: u64 = 10;

/// Worker thread entry: builds a monoio runtime (io_uring, falling back to epoll) and serves.
pub fn worker(
    id: usize,
    l: std::net::TcpListener,
    shared: Arc<Shared>,
    tx: Sender<Result<(), MockError>>,
) {
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(MockError::Runtime(e)));
            return;
        }
    };
    rt.block_on(async move {
        let _ = l.set_nonblocking(true);
        let listener = match monoio::net::TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(MockError::Runtime(e)));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        drop(tx);
        let seq = Rc::new(Cell::new((id as u64) << 40));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let fd = stream.as_raw_fd();
                    let shared = shared.clone();
                    let seq = seq.clone();
                    monoio::spawn(async move {
                        if let Some(tls) = &shared.tls {
                            if let Ok(s) = tls.accept(stream).await {
                                serve(s, fd, &shared, &seq).await;
                            }
                        } else {
                            serve(stream, fd, &shared, &seq).await;
                        }
                    });
                }
                Err(_) => monoio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await,
            }
        }
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    None,
    Length(usize),
    Chunked,
}

#[derive(Debug)]
struct Head {
    len: usize,
    method: String,
    path: String,
    keep_alive: bool,
    framing: BodyFraming,
    expect_continue: bool,
    overrides: Vec<(String, String)>,
    all_headers: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug)]
enum HeadError {
    Malformed(&'static str),
}

fn parse_head(buf: &[u8], record: bool) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed("too many headers"))
        }
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let version = req.version.unwrap_or(1);
    let mut keep_alive = version == 1;
    let mut cl: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut expect_continue = false;
    let mut overrides = Vec::new();
    let mut all = record.then(serde_json::Map::new);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v =
                http1::parse_decimal(h.value).ok_or(HeadError::Malformed("bad content-length"))?;
            if cl.is_some_and(|c| c != v) {
                return Err(HeadError::Malformed("conflicting content-length"));
            }
            cl = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = http1::has_token(last, "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            if http1::has_token(h.value, "close") {
                keep_alive = false;
            } else if http1::has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = http1::has_token(h.value, "100-continue");
        } else if name.len() > 7 && name[..7].eq_ignore_ascii_case("x-mock-") {
            overrides.push((
                name[7..].to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            ));
        }
        if let Some(map) = all.as_mut() {
            let key = name.to_ascii_lowercase();
            let val = String::from_utf8_lossy(h.value).into_owned();
            match map.get_mut(&key) {
                Some(serde_json::Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&val);
                }
                _ => {
                    map.insert(key, serde_json::Value::String(val));
                }
            }
        }
    }
    let framing = match (te_seen, cl) {
        (true, Some(_)) => {
            return Err(HeadError::Malformed(
                "both content-length and transfer-encoding",
            ))
        }
        (true, None) if !chunked => {
            return Err(HeadError::Malformed("unsupported transfer-encoding"))
        }
        (true, None) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => {
            if n > MAX_BODY_BYTES as u64 {
                return Err(HeadError::Malformed("body too large"));
            }
            BodyFraming::Length(n as usize)
        }
    };
    Ok(Some(Head {
        len,
        method,
        path,
        keep_alive,
        framing,
        expect_continue,
        overrides,
        all_headers: all,
    }))
}

/// Reads more bytes, appending to `buf`. Returns (bytes read or error, buffer).
async fn read_more<S: AsyncReadRent>(
    io: &mut S,
    mut buf: Vec<u8>,
) -> (std::io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = io.read(buf.slice_mut(len..cap)).await;
    (res, slice.into_inner())
}

async fn send<S: AsyncWriteRent>(io: &mut S, data: Vec<u8>) -> std::io::Result<()> {
    let (res, _) = io.write_all(data).await;
    res?;
    io.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is the connection's live socket (owned by the stream still in scope at every
    // call site); the option struct is a valid, correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn sleep_until(t: std::time::Instant) {
    if t > std::time::Instant::now() {
        monoio::time::sleep_until(monoio::time::Instant::from_std(t)).await;
    }
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        monoio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    mut io: S,
    fd: RawFd,
    sh: &Shared,
    seq: &Cell<u64>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let record = sh.recorder.enabled();
    loop {
        // 1. Request head.
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf, record) {
                    Ok(Some(h)) => break h,
                    Ok(None) if buf.len() > MAX_HEAD_BYTES => {
                        let r = dialect::error_reply(431, "request head too large", 1);
                        let _ = write_reply(&mut io, fd, r, &default_behavior(sh), false).await;
                        return;
                    }
                    Ok(None) => {}
                    Err(HeadError::Malformed(why)) => {
                        let r = dialect::error_reply(400, why, 1);
                        let _ = write_reply(&mut io, fd, r, &default_behavior(sh), false).await;
                        return;
                    }
                }
            }
            let (res, b) = read_more(&mut io, buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        buf.drain(..head.len);

        // 2. Request body.
        let need_more = match head.framing {
            BodyFraming::None => false,
            BodyFraming::Length(n) => buf.len() < n,
            BodyFraming::Chunked => true,
        };
        if head.expect_continue
            && need_more
            && send(&mut io, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await
                .is_err()
        {
            return;
        }
        let body = match head.framing {
            BodyFraming::None => Vec::new(),
            BodyFraming::Length(n) => {
                while buf.len() < n {
                    let (res, b) = read_more(&mut io, buf).await;
                    buf = b;
                    match res {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let rest = buf.split_off(n);
                std::mem::replace(&mut buf, rest)
            }
            BodyFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                let mut out = Vec::new();
                loop {
                    match dec.feed(&buf, Some(&mut out)) {
                        Ok(used) => {
                            buf.drain(..used);
                        }
                        Err(e) => {
                            let r = dialect::error_reply(400, &e.to_string(), 1);
                            let _ = write_reply(&mut io, fd, r, &default_behavior(sh), false).await;
                            return;
                        }
                    }
                    if dec.is_done() {
                        break;
                    }
                    let (res, b) = read_more(&mut io, buf).await;
                    buf = b;
                    match res {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                out
            }
        };

        // 3. Answer.
        let keep_alive = head.keep_alive;
        let mut beh = default_behavior(sh);
        let reply = match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/__mock/health") => Reply::json(200, &serde_json::json!({"status": "ok"})),
            ("GET", "/__mock/requests") => Reply::Body {
                status: 200,
                content_type: "application/json",
                body: sh.recorder.snapshot_json(),
                extra_headers: Vec::new(),
                generated: false,
            },
            ("DELETE", "/__mock/requests") => {
                sh.recorder.clear();
                Reply::json(200, &serde_json::json!({"cleared": true}))
            }
            ("POST", "/__mock/fault") => match sh.fault.set_json(&body) {
                Ok(f) => Reply::json(
                    200,
                    &serde_json::json!({"status": f.map(|x| x.0), "retry_after_s": f.map(|x| x.1)}),
                ),
                Err(e) => dialect::error_reply(400, &e, 1),
            },
            (method, path) => {
                if let Some(headers) = head.all_headers {
                    sh.recorder.push(RecordedRequest {
                        method: method.to_string(),
                        path: path.to_string(),
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                let n = seq.get() + 1;
                seq.set(n);
                match sh.fault.get() {
                    // A runtime fault wins over tags and headers: a storm hits every request.
                    Some((status, retry_after_s)) => {
                        let mut ov = head.overrides;
                        ov.push(("status".into(), status.to_string()));
                        ov.push(("retry-after".into(), retry_after_s.to_string()));
                        dialect::route(method, path, &body, &mut beh, &ov, n)
                    }
                    None => dialect::route(method, path, &body, &mut beh, &head.overrides, n),
                }
            }
        };
        match write_reply(&mut io, fd, reply, &beh, keep_alive).await {
            Ok(true) if keep_alive => {}
            _ => return,
        }
    }
}

fn default_behavior(sh: &Shared) -> Behavior {
    Behavior::defaults(
        sh.cfg.ttft_ms,
        sh.cfg.itl_ms,
        sh.cfg.tokens,
        sh.cfg.response_bytes,
    )
}

/// Writes one reply. Returns `Ok(true)` if the connection may carry another request.
async fn write_reply<S: AsyncWriteRent>(
    io: &mut S,
    fd: RawFd,
    reply: Reply,
    beh: &Behavior,
    keep_alive: bool,
) -> std::io::Result<bool> {
    sleep_ms(beh.slow_first_byte_ms).await;
    match reply {
        Reply::Body {
            status,
            content_type,
            body,
            extra_headers,
            generated,
        } => {
            if generated {
                let gen = beh.ttft_ms.saturating_add(
                    beh.itl_ms
                        .saturating_mul(u64::from(beh.tokens.saturating_sub(1))),
                );
                sleep_ms(gen).await;
                if beh.reset_after.is_some() {
                    set_linger_zero(fd);
                    return Ok(false);
                }
            }
            let framing = if status == 200 {
                beh.framing
            } else {
                Framing::Length
            };
            let close = !keep_alive || framing == Framing::Close;
            let mut out = format!(
                "HTTP/1.1 {status} {}\r\nserver: sluice-mock\r\ncontent-type: {content_type}\r\n",
                reason(status)
            );
            for (k, v) in &extra_headers {
                out.push_str(k);
                out.push_str(": ");
                out.push_str(v);
                out.push_str("\r\n");
            }
            match framing {
                Framing::Length => out.push_str(&format!("content-length: {}\r\n", body.len())),
                Framing::Chunked => out.push_str("transfer-encoding: chunked\r\n"),
                Framing::Close => {}
            }
            if close {
                out.push_str("connection: close\r\n");
            }
            out.push_str("\r\n");
            let mut out = out.into_bytes();
            if framing == Framing::Chunked {
                // Split into up to four chunks so clients exercise their chunk scanner.
                let step = body.len().div_ceil(4).max(1);
                for part in body.chunks(step) {
                    out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            } else {
                out.extend_from_slice(&body);
            }
            send(io, out).await?;
            Ok(!close)
        }
        Reply::Stream(plan) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nserver: sluice-mock\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n{}\r\n",
                if keep_alive { "" } else { "connection: close\r\n" }
            );
            send(io, head.into_bytes()).await?;
            // Absolute deadlines (first token at ttft, token i at ttft + i*itl): the 1 ms timer
            // granularity then cannot accumulate over a long stream.
            let t0 = std::time::Instant::now() + Duration::from_millis(beh.ttft_ms);
            sleep_until(t0).await;
            let mut pending: Vec<u8> = Vec::new();
            for ev in &plan.prelude {
                push_chunk(&mut pending, ev);
            }
            for (i, ev) in plan.tokens.iter().enumerate() {
                if beh.reset_after == Some(i as u32) {
                    if !pending.is_empty() {
                        send(io, std::mem::take(&mut pending)).await?;
                    }
                    set_linger_zero(fd);
                    return Ok(false);
                }
                if i > 0 {
                    let due = t0 + Duration::from_millis(beh.itl_ms.saturating_mul(i as u64));
                    sleep_until(due).await;
                }
                push_chunk(&mut pending, ev);
                send(io, std::mem::take(&mut pending)).await?;
            }
            if beh
                .reset_after
                .is_some_and(|n| n as usize >= plan.tokens.len())
            {
                set_linger_zero(fd);
                return Ok(false);
            }
            for ev in &plan.epilogue {
                push_chunk(&mut pending, ev);
            }
            pending.extend_from_slice(b"0\r\n\r\n");
            send(io, pending).await?;
            Ok(keep_alive)
        }
    }
}

fn push_chunk(out: &mut Vec<u8>, ev: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
    out.extend_from_slice(ev);
    out.extend_from_slice(b"\r\n");
}
