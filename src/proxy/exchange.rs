//! The downstream connection loop and one request/response exchange.
//!
//! Owns: reading request heads, routing, forwarding the request (head rewritten, body streamed),
//! reading the response head, forwarding the response (head rewritten, body streamed), and the
//! decision whether each connection may be reused. Protocol parsing is `http1`'s (no IO there);
//! this module only moves bytes and applies policy.
//!
//! Phases of one exchange, in order (each has one place below):
//! 1. `read_head`: wait for a request head (idle timeout, then header timeout), or a drain.
//! 2. route: the first route of the listener whose match holds; none → 404.
//! 3. `forward_request`: write the rewritten head and stream the body as raw wire bytes.
//! 4. `read_response_head`: first-byte timeout; a reused pooled connection that turns out dead
//!    is retried once on a fresh one when the whole request is still in memory.
//! 5. `forward_response`: write the rewritten head at once (before any body byte arrives: TTFT),
//!    then forward every read from the upstream as soon as it arrives. Nothing is buffered.
//! 6. complete: the upstream connection goes back to the pool only after a clean, complete
//!    exchange; telemetry gets one record.
//!
//! Invariants:
//! * A body is forwarded in the framing it arrived in (raw bytes, validated by `BodyDecoder`);
//!   only close-delimited responses to HTTP/1.1 clients are re-framed as chunked, so the client
//!   connection can stay open.
//! * A response cut short by the upstream is never dressed up as complete: no chunked
//!   terminator is written and the client connection is reset.
//! * A client that goes away mid-stream cancels the upstream exchange; that upstream
//!   connection is dropped, never pooled.
//! * Every error the client can still be told about gets an OpenAI-shaped JSON body.
//!
//! Why the request is forwarded before the response is read (no full duplex): model APIs read
//! the whole request before answering; a server that answers early still gets its answer
//! forwarded, because a failed request write is followed by a read of the response.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::error::ProxyError;
use super::io::Io;
use super::upstream::{self, UpConn};
use crate::error::{write_openai_error, Classify};
use crate::filter::{self, Chain, ExchangeCtx, GenAiRecord, Reject};
use crate::http1::{self, BodyDecoder, BodyKind, CodecError, RequestHead, ResponseHead, Version};
use crate::snapshot::{HostRewrite, ListenerRt, RouteRt, Snapshot, UpstreamRt};
use crate::telemetry::{AccessFields, Outcome, RequestRecord, NONE_IDX};
use crate::worker::{ConnGuard, Worker};

/// Initial capacity of a client connection's read buffer. Small, because most of a sidecar's
/// connections are idle keep-alives or long streams that read nothing from the client.
pub const CLIENT_READ_BYTES_INITIAL: usize = 4 * 1024;
/// First capacity of the buffer an exchange reads the upstream's response into. Every read is
/// forwarded at once, so this bounds per-stream memory, not latency: a token stream's events
/// are far smaller. A read that fills the buffer doubles it (up to
/// [`UPSTREAM_READ_BYTES_MAX`]), so large bodies still move in large reads.
pub const UPSTREAM_READ_BYTES: usize = 4 * 1024;
/// Largest capacity the response read buffer grows to.
pub const UPSTREAM_READ_BYTES_MAX: usize = 64 * 1024;
/// A read buffer that grew beyond this (a large head or body) is shrunk back between requests.
pub const READ_BUFFER_KEEP_BYTES_MAX: usize = 64 * 1024;
/// Body bytes that are copied behind a head into one write instead of a second write.
pub const COALESCE_BYTES_MAX: usize = 16 * 1024;
/// After answering an error and deciding to close, keep reading (and discarding) what the
/// client still sends for at most this long, so the close does not turn into a reset that
/// destroys our error response in the client's receive buffer (nginx's "lingering close").
pub const LINGER_CLOSE_MS: u64 = 500;
/// ... and at most this many bytes.
pub const LINGER_CLOSE_BYTES_MAX: usize = 256 * 1024;
/// `Via` value added to forwarded requests and responses (RFC 9110 §7.6.3).
pub const VIA: &[u8] = b"1.1 sluice";

/// Serve one client connection until it closes, errors, or the worker drains.
pub async fn serve_connection(
    w: Rc<Worker>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    _guard: ConnGuard,
) {
    let mut client = Io::Tcp(stream);
    let mut rbuf: Vec<u8> = Vec::with_capacity(CLIENT_READ_BYTES_INITIAL);
    let mut wbuf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let snap = w.snapshot();
        let Some((lidx, l)) = snap.listener(&listener) else {
            return; // listener removed by a reload: close between requests
        };
        let head = match read_head(&w, &mut client, &mut rbuf, l).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                let status = e.status();
                log_error(&e, &listener, peer);
                record_local(&w, &snap, lidx as u16, status, &e, Instant::now());
                if status != 499 {
                    wbuf.clear();
                    write_error_response(&mut wbuf, &e, Version::Http11, true);
                    let (res, _) = client.write_all(wbuf).await;
                    if res.is_ok() {
                        linger_close(&mut client, rbuf).await;
                    }
                }
                return;
            }
        };
        let (parsed, consumed) = head;
        rbuf.drain(..consumed);
        let ex = Exchange {
            w: &w,
            snap: &snap,
            lidx,
            l,
            peer,
            started: Instant::now(),
        };
        let (keep, local_reply);
        (keep, local_reply, rbuf, wbuf) = ex.run(&mut client, parsed, rbuf, wbuf).await;
        if !keep || w.is_draining() {
            if local_reply {
                linger_close(&mut client, rbuf).await;
            }
            return;
        }
        if rbuf.capacity() > READ_BUFFER_KEEP_BYTES_MAX && rbuf.len() < CLIENT_READ_BYTES_INITIAL {
            rbuf.shrink_to(CLIENT_READ_BYTES_INITIAL);
        }
    }
}

/// Wait for and parse one request head. `Ok(None)`: the client closed cleanly between requests
/// (or the worker is draining and the connection is idle).
async fn read_head(
    w: &Worker,
    client: &mut Io,
    rbuf: &mut Vec<u8>,
    l: &ListenerRt,
) -> Result<Option<(RequestHead, usize)>, ProxyError> {
    let mut deadline: Option<monoio::time::Instant> = None;
    loop {
        if !rbuf.is_empty() {
            if let Some(h) = http1::parse_request(rbuf, &l.limits)? {
                return Ok(Some(h));
            }
        }
        let buf = std::mem::take(rbuf);
        let (res, buf) = if let Some(d) = deadline {
            match monoio::time::timeout_at(d, client.read_append(buf)).await {
                Ok(r) => r,
                Err(_) => return Err(ProxyError::HeaderTimeout(l.header_timeout_ms)),
            }
        } else {
            // Idle between requests: wait for the first byte, the idle timeout or a drain.
            let idle = Duration::from_millis(l.idle_timeout_ms);
            let read = monoio::time::timeout(idle, client.read_append(buf));
            monoio::select! {
                r = read => match r {
                    Ok(r) => r,
                    Err(_) => return Ok(None),
                },
                _ = w.drain.wait() => return Ok(None),
            }
        };
        *rbuf = buf;
        match res {
            Ok(0) => {
                if rbuf.is_empty() {
                    return Ok(None);
                }
                return Err(ProxyError::ClientClosed);
            }
            Ok(_) => {
                if deadline.is_none() {
                    deadline = Some(
                        monoio::time::Instant::now() + Duration::from_millis(l.header_timeout_ms),
                    );
                }
            }
            Err(_) => return Err(ProxyError::ClientClosed),
        }
    }
}

struct Exchange<'a> {
    w: &'a Rc<Worker>,
    snap: &'a Snapshot,
    lidx: usize,
    l: &'a ListenerRt,
    peer: SocketAddr,
    started: Instant,
}

/// What happened to the response, for the record and the keep-alive decision.
struct Done {
    status: u16,
    outcome: Outcome,
    error: Option<ProxyError>,
    bytes_in: u64,
    bytes_out: u64,
    upstream_first_byte: Option<Instant>,
    overhead: Duration,
    keep_client: bool,
}

impl<'a> Exchange<'a> {
    /// Run one exchange. Returns whether the client connection may carry another request,
    /// whether sluice answered itself (so unread request bytes may follow), and the buffers.
    async fn run(
        &self,
        client: &mut Io,
        head: RequestHead,
        rbuf: Vec<u8>,
        wbuf: Vec<u8>,
    ) -> (bool, bool, Vec<u8>, Vec<u8>) {
        let route = self.route(&head);
        let request_id = request_id(&head);
        let access = self.w.telemetry.borrow().access_log.then(|| {
            Box::new(AccessFields {
                method: head.method_str().to_string(),
                path: head.path().to_string(),
                request_id: request_id.clone(),
                peer: self.peer.to_string(),
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            })
        });
        let (ridx, route) = match route {
            Some(r) => r,
            None => {
                let e = ProxyError::NoRoute {
                    method: head.method_str().to_string(),
                    path: head.path().chars().take(256).collect(),
                };
                // The unread body (if any) would be taken for the next request: close.
                let keep = matches!(head.body_kind(), BodyKind::Empty)
                    && head.keep_alive()
                    && !self.w.is_draining();
                let mut wbuf = wbuf;
                wbuf.clear();
                write_error_response(&mut wbuf, &e, head.version(), !keep);
                let (res, wbuf) = client.write_all(wbuf).await;
                log_error(&e, &self.l.name, self.peer);
                self.record(
                    NONE_IDX,
                    NONE_IDX,
                    Done {
                        status: 404,
                        outcome: Outcome::LocalReply,
                        error: Some(e),
                        bytes_in: 0,
                        bytes_out: 0,
                        upstream_first_byte: None,
                        overhead: self.started.elapsed(),
                        keep_client: keep,
                    },
                    access,
                    None,
                );
                return (keep && res.is_ok(), true, rbuf, wbuf);
            }
        };
        let up = &self.snap.upstreams[route.upstream];
        let mut ctx = route.chain.as_ref().map(|_| {
            let mut c = ExchangeCtx::new(filter::caller_of(
                &self.snap.config.caller,
                &head,
                self.peer,
            ));
            if self.snap.config.otel.enabled {
                c.trace = Some(filter::TraceCtx::from_request(&head));
            }
            c
        });
        let fx = match (route.chain.as_deref(), ctx.as_mut()) {
            (Some(c), Some(x)) => Some((c, x)),
            _ => None,
        };
        let (done, rbuf, wbuf) = self
            .proxy(client, &head, route, up, &request_id, fx, rbuf, wbuf)
            .await;
        let gen_ai = match (route.chain.as_deref(), ctx.as_mut()) {
            (Some(c), Some(x)) => {
                let aborted = matches!(
                    done.outcome,
                    Outcome::DownstreamAbort | Outcome::UpstreamAbort
                );
                c.on_complete(x, self.started, aborted).await
            }
            _ => None,
        };
        let keep = done.keep_client;
        let local = done.outcome == Outcome::LocalReply;
        self.record(ridx as u16, route.upstream as u16, done, access, gen_ai);
        (keep, local, rbuf, wbuf)
    }

    fn route(&self, head: &RequestHead) -> Option<(usize, &'a RouteRt)> {
        let path = head.path();
        let host = head.host().map(strip_port);
        self.l.routes.iter().enumerate().find(|(_, r)| {
            if let Some(p) = &r.path_exact {
                if path_only(path) != p {
                    return false;
                }
            }
            if let Some(p) = &r.path_prefix {
                if !path.starts_with(p.as_str()) {
                    return false;
                }
            }
            if let Some(h) = &r.host {
                match host {
                    Some(x) if x.eq_ignore_ascii_case(h) => {}
                    _ => return false,
                }
            }
            if let Some(m) = &r.method {
                if head.method_str() != m {
                    return false;
                }
            }
            r.headers
                .iter()
                .all(|(n, v)| head.header(n).is_some_and(|x| x == v.as_slice()))
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        client: &mut Io,
        head: &RequestHead,
        route: &RouteRt,
        up: &Arc<UpstreamRt>,
        request_id: &str,
        mut fx: Option<(&Chain, &mut ExchangeCtx)>,
        mut rbuf: Vec<u8>,
        mut wbuf: Vec<u8>,
    ) -> (Done, Vec<u8>, Vec<u8>) {
        let client_keep = head.keep_alive() && !self.w.is_draining();
        let total_deadline = (route.total_timeout_ms > 0)
            .then(|| monoio::time::Instant::now() + Duration::from_millis(route.total_timeout_ms));
        let mut bytes_in = 0u64;
        let mut overhead = Duration::ZERO;
        let t_head = Instant::now();

        // Phase 1: request head filters.
        if let Some((chain, ctx)) = fx.as_mut() {
            if let Err(r) = chain.on_request_head(ctx, head).await {
                let body_read = skip_buffered_body(head, &mut rbuf);
                let rl = chain.rate_headers(ctx).copied();
                return self
                    .reject_with(client, head, r, rbuf, wbuf, body_read, t_head, rl)
                    .await;
            }
        }

        // Connect (or take a pooled connection) before telling the client to send its body:
        // a 100 Continue for a request we cannot forward would waste the client's upload.
        let mut conn = match upstream::acquire(&self.w.pools, up, false).await {
            Ok(c) => c,
            Err(e) => {
                let body_read = rbuf.is_empty();
                return self
                    .local_error(client, head, e, rbuf, wbuf, body_read, t_head)
                    .await;
            }
        };
        if head.expect_continue()
            && !matches!(head.body_kind(), BodyKind::Empty | BodyKind::Length(0))
        {
            wbuf.clear();
            http1::write_status_line(&mut wbuf, 100, "", Version::Http11);
            http1::finish_head(&mut wbuf);
            let (res, b) = client.write_all(wbuf).await;
            wbuf = b;
            if res.is_err() {
                self.w.pools.borrow_mut().put(conn, up.pool_idle_max);
                return (self.client_gone(0), rbuf, wbuf);
            }
        }

        wbuf.clear();
        let ep = &up.endpoints[conn.key.endpoint];
        let traceparent = fx
            .as_ref()
            .and_then(|(_, ctx)| ctx.trace.as_ref())
            .map(|t| t.header_value());
        let mut decoder = BodyDecoder::new(head.body_kind());
        let body_done;
        let strip_cred = fx.as_ref().is_some_and(|(_, ctx)| ctx.authenticated);

        // Phases 2-3: a filter that needs the body gets it whole (bounded), before anything
        // is forwarded; otherwise the body streams through as it arrives.
        let wants_body = match fx.as_ref() {
            Some((chain, ctx)) => chain.wants_request_body(ctx, head),
            None => false,
        };
        if let (true, Some((chain, ctx))) = (wants_body, fx.as_mut()) {
            let r = self
                .read_request_body(client, &mut rbuf, &mut decoder, chain.body_bytes_max, route)
                .await;
            match r {
                Ok(Buffered::Whole(mut body, raw_len)) => {
                    bytes_in += raw_len as u64;
                    match chain.on_request_body(ctx, head, &mut body).await {
                        Ok(changed) => {
                            let framing = BodyFraming::Length {
                                len: body.len(),
                                drop_encoding: changed,
                            };
                            write_upstream_head(
                                &mut wbuf,
                                head,
                                up,
                                &ep.authority,
                                self.peer,
                                request_id,
                                framing,
                                traceparent.as_deref(),
                                strip_cred,
                            );
                            wbuf.extend_from_slice(&body);
                            body_done = true;
                        }
                        Err(r) => {
                            self.w.pools.borrow_mut().put(conn, up.pool_idle_max);
                            let rl = chain.rate_headers(ctx).copied();
                            return self
                                .reject_with(client, head, r, rbuf, wbuf, true, t_head, rl)
                                .await;
                        }
                    }
                }
                Ok(Buffered::OverLimit(raw)) => {
                    if let Err(r) = chain.on_body_over_limit(ctx, head).await {
                        self.w.pools.borrow_mut().discard(conn);
                        let rl = chain.rate_headers(ctx).copied();
                        return self
                            .reject_with(client, head, r, rbuf, wbuf, false, t_head, rl)
                            .await;
                    }
                    bytes_in += raw.len() as u64;
                    write_upstream_head(
                        &mut wbuf,
                        head,
                        up,
                        &ep.authority,
                        self.peer,
                        request_id,
                        BodyFraming::AsReceived,
                        traceparent.as_deref(),
                        strip_cred,
                    );
                    wbuf.extend_from_slice(&raw);
                    body_done = decoder.is_done();
                }
                Err(e) => {
                    self.w.pools.borrow_mut().put(conn, up.pool_idle_max);
                    if matches!(e, ProxyError::ClientClosed) {
                        return (self.client_gone(bytes_in), rbuf, wbuf);
                    }
                    return self
                        .local_error(client, head, e, rbuf, wbuf, false, t_head)
                        .await;
                }
            }
        } else {
            write_upstream_head(
                &mut wbuf,
                head,
                up,
                &ep.authority,
                self.peer,
                request_id,
                BodyFraming::AsReceived,
                traceparent.as_deref(),
                strip_cred,
            );
            let first = match decoder.advance(&rbuf, |_| {}) {
                Ok(p) => p,
                Err(e) => {
                    self.w.pools.borrow_mut().put(conn, up.pool_idle_max);
                    return self
                        .local_error(
                            client,
                            head,
                            ProxyError::BadRequest(e),
                            rbuf,
                            wbuf,
                            false,
                            t_head,
                        )
                        .await;
                }
            };
            bytes_in += first.consumed as u64;
            // Head and the body bytes that came with it go out in one write. The copy is
            // bounded by what one read brought in, and it makes the request replayable on a
            // stale pooled connection when it is complete.
            wbuf.extend_from_slice(&rbuf[..first.consumed]);
            rbuf.drain(..first.consumed);
            body_done = first.done;
        }
        let replayable = body_done;

        // Send; retry once on a fresh connection if a reused one is dead before any response.
        let mut attempt = 0;
        let (resp, mut ubuf) = loop {
            attempt += 1;
            let t_before_send = Instant::now();
            let (res, b) = conn.io.write_all(wbuf).await;
            wbuf = b;
            if let Err(e) = res {
                if conn.reused && replayable && attempt == 1 {
                    self.w.pools.borrow_mut().discard(conn);
                    match upstream::acquire(&self.w.pools, up, true).await {
                        Ok(c) => {
                            conn = c;
                            continue;
                        }
                        Err(e) => {
                            return self
                                .local_error(client, head, e, rbuf, wbuf, false, t_head)
                                .await;
                        }
                    }
                }
                self.w.pools.borrow_mut().discard(conn);
                let e = ProxyError::UpstreamWrite(up.name.clone(), e);
                return self
                    .local_error(client, head, e, rbuf, wbuf, false, t_head)
                    .await;
            }
            if attempt == 1 {
                overhead += t_before_send.duration_since(t_head);
            }
            // Stream the rest of the request body, if any.
            if !body_done && attempt == 1 {
                let r = self
                    .stream_request_body(client, &mut conn, &mut decoder, rbuf, route, up)
                    .await;
                rbuf = r.1;
                match r.0 {
                    Ok(n) => bytes_in += n,
                    Err(e) => {
                        self.w.pools.borrow_mut().discard(conn);
                        let client_gone = matches!(e, ProxyError::ClientClosed);
                        if client_gone {
                            return (self.client_gone(bytes_in), rbuf, wbuf);
                        }
                        return self
                            .local_error(client, head, e, rbuf, wbuf, false, t_head)
                            .await;
                    }
                }
            }
            let ubuf = Vec::with_capacity(UPSTREAM_READ_BYTES);
            match self
                .read_response_head(&mut conn, ubuf, route, up, total_deadline)
                .await
            {
                (Ok(h), ubuf) => break (h, ubuf),
                (Err(e), ubuf) => {
                    let retry = conn.reused
                        && replayable
                        && attempt == 1
                        && ubuf.is_empty()
                        && matches!(e, ProxyError::UpstreamClosed(_));
                    self.w.pools.borrow_mut().discard(conn);
                    if retry {
                        match upstream::acquire(&self.w.pools, up, true).await {
                            Ok(c) => {
                                conn = c;
                                continue;
                            }
                            Err(e) => {
                                return self
                                    .local_error(client, head, e, rbuf, wbuf, false, t_head)
                                    .await;
                            }
                        }
                    }
                    return self
                        .local_error(client, head, e, rbuf, wbuf, false, t_head)
                        .await;
                }
            }
        };
        let (rhead, rconsumed) = resp;
        let t_first_byte = Instant::now();
        // The request is sent: while the response streams (for minutes, for a model), the
        // client read buffer is idle. Free it unless it holds a pipelined request; the next
        // head read allocates a fresh one. This keeps memory per open stream low.
        if rbuf.is_empty() {
            rbuf = Vec::new();
        }
        ubuf.drain(..rconsumed);

        // Phase 4: response head filters; may switch the body into rewrite mode.
        let mut rewrite = match fx.as_mut() {
            Some((chain, ctx)) => chain.on_response_head(ctx, &rhead).await,
            None => false,
        };
        if rewrite && head.version() == Version::Http10 {
            // No chunked framing towards an HTTP/1.0 client: forward unchanged instead.
            rewrite = false;
        }
        let inspecting = fx.as_ref().is_some_and(|(_, ctx)| ctx.usage.is_some());

        // Response head to the client, at once, before any body byte.
        let kind = rhead.body_kind(head.method());
        let out_mode = if rewrite && !matches!(kind, BodyKind::Empty) {
            OutMode::Rewrite
        } else if matches!(kind, BodyKind::CloseDelimited) && head.version() == Version::Http11 {
            OutMode::Rechunk
        } else {
            OutMode::Raw
        };
        let chunked_out = matches!(out_mode, OutMode::Rewrite | OutMode::Rechunk);
        let keep_client = client_keep
            && (!matches!(kind, BodyKind::CloseDelimited) || chunked_out)
            && !self.w.is_draining();
        let upstream_reusable =
            rhead.keep_alive() && !rhead.must_close() && !matches!(kind, BodyKind::CloseDelimited);
        wbuf.clear();
        write_client_head(
            &mut wbuf,
            &rhead,
            head.version(),
            keep_client,
            chunked_out,
            kind,
            fx.as_ref().and_then(|(chain, ctx)| chain.rate_headers(ctx)),
        );
        let t_resp_head = Instant::now();
        let mut head_pending = true;

        // Phases 5-6: forward every upstream read as soon as it arrives.
        let mut rdecoder = BodyDecoder::new(kind);
        let mut bytes_out = 0u64;
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        // Decoded input and rewritten output of rewrite mode, reused across reads.
        let mut scratch: Vec<u8> = Vec::new();
        let mut rewritten: Vec<u8> = Vec::new();
        let idle = Duration::from_millis(route.body_idle_timeout_ms);
        let mut upstream_clean = true;
        let mut eof = false;
        let mut stream_cut = false;
        let fail = |e: ProxyError, client: &mut Io| {
            client.set_reset_on_close();
            e
        };
        let outcome: Result<(), ProxyError> = loop {
            // 1. Frame what is in ubuf.
            ranges.clear();
            let base = ubuf.as_ptr() as usize;
            let p = if eof {
                match rdecoder.on_eof() {
                    Ok(()) => http1::Progress {
                        consumed: 0,
                        done: true,
                    },
                    Err(e) => {
                        break Err(fail(
                            ProxyError::UpstreamAborted(up.name.clone(), e.to_string()),
                            client,
                        ))
                    }
                }
            } else {
                match rdecoder.advance(&ubuf, |d| {
                    let s = d.as_ptr() as usize - base;
                    ranges.push((s, s + d.len()));
                }) {
                    Ok(p) => p,
                    Err(e) => break Err(fail(ProxyError::BadResponse(up.name.clone(), e), client)),
                }
            };
            if p.consumed < ubuf.len() {
                // Bytes after the end of the response: the upstream broke framing.
                upstream_clean = false;
            }
            // 2. Write: head (if pending) + body, in as few writes as possible.
            let res = match out_mode {
                OutMode::Raw => {
                    if head_pending && p.consumed <= COALESCE_BYTES_MAX {
                        wbuf.extend_from_slice(&ubuf[..p.consumed]);
                        let (r, b) = client.write_all(wbuf).await;
                        wbuf = b;
                        r
                    } else {
                        if head_pending {
                            let (r, b) = client.write_all(wbuf).await;
                            wbuf = b;
                            if r.is_err() {
                                break Err(ProxyError::ClientClosed);
                            }
                        }
                        let (r, b) = client.write_range(ubuf, 0, p.consumed).await;
                        ubuf = b;
                        r
                    }
                }
                OutMode::Rechunk | OutMode::Rewrite => {
                    if !head_pending {
                        wbuf.clear();
                    }
                    scratch.clear();
                    let mut cut = false;
                    if matches!(out_mode, OutMode::Rewrite) {
                        if let Some((chain, ctx)) = fx.as_mut() {
                            let mut dec = std::mem::take(&mut scratch);
                            let mut out = std::mem::take(&mut rewritten);
                            out.clear();
                            for &(s, e) in &ranges {
                                dec.extend_from_slice(&ubuf[s..e]);
                            }
                            // Inspection sees the upstream's bytes (it needs the usage chunk
                            // that the rewrite strips).
                            chain.on_response_data(ctx, &dec).await;
                            chain.rewrite_response_data(ctx, &dec, &mut out).await;
                            // A stream cut on its token budget ends here, cleanly framed.
                            cut = chain.stream_cut(ctx);
                            if p.done || cut {
                                chain.finish_response_rewrite(ctx, &mut out).await;
                            }
                            http1::write_chunk(&mut wbuf, &out);
                            scratch = dec;
                            rewritten = out;
                        }
                    } else {
                        for &(s, e) in &ranges {
                            http1::write_chunk(&mut wbuf, &ubuf[s..e]);
                        }
                    }
                    if p.done || cut {
                        http1::write_last_chunk(&mut wbuf);
                    }
                    stream_cut = cut;
                    if wbuf.is_empty() {
                        Ok(())
                    } else {
                        let (r, b) = client.write_all(wbuf).await;
                        wbuf = b;
                        r
                    }
                }
            };
            if head_pending {
                overhead += t_resp_head.duration_since(t_first_byte);
                head_pending = false;
                if matches!(out_mode, OutMode::Raw) && !p.done {
                    // Raw forwarding writes from the read buffer: the head buffer is idle
                    // for the rest of a stream.
                    wbuf = Vec::new();
                }
            }
            bytes_out += p.consumed as u64;
            if res.is_err() {
                break Err(ProxyError::ClientClosed);
            }
            // 3. Inspect what was just forwarded (never before: a token is not delayed).
            if inspecting && !matches!(out_mode, OutMode::Rewrite) {
                if let Some((chain, ctx)) = fx.as_mut() {
                    for &(s, e) in &ranges {
                        chain.on_response_data(ctx, &ubuf[s..e]).await;
                    }
                }
            }
            if stream_cut {
                // The upstream is still sending: its connection is dropped, never pooled.
                upstream_clean = false;
                break Ok(());
            }
            if p.done {
                if eof {
                    upstream_clean = false;
                }
                break Ok(());
            }
            // 4. Read more. A previous read that filled the buffer means a large body: grow.
            if ubuf.len() == ubuf.capacity() && ubuf.capacity() < UPSTREAM_READ_BYTES_MAX {
                let cap = ubuf.capacity();
                ubuf.reserve(cap);
            }
            ubuf.clear();
            let read = conn.io.read_append(ubuf);
            let r = match total_deadline {
                Some(d) => match monoio::time::timeout_at(d, monoio::time::timeout(idle, read))
                    .await
                {
                    Ok(r) => r.map_err(|_| {
                        ProxyError::UpstreamBodyTimeout(up.name.clone(), route.body_idle_timeout_ms)
                    }),
                    Err(_) => Err(ProxyError::TotalTimeout(route.total_timeout_ms)),
                },
                None => monoio::time::timeout(idle, read).await.map_err(|_| {
                    ProxyError::UpstreamBodyTimeout(up.name.clone(), route.body_idle_timeout_ms)
                }),
            };
            let (res, b) = match r {
                Ok(x) => x,
                Err(e) => {
                    // The read future (and its buffer) went with the timeout.
                    ubuf = Vec::new();
                    break Err(fail(e, client));
                }
            };
            ubuf = b;
            match res {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) => {
                    break Err(fail(
                        ProxyError::UpstreamAborted(up.name.clone(), e.to_string()),
                        client,
                    ))
                }
            }
        };
        let _ = ubuf;

        let mut d = Done {
            status: rhead.status(),
            outcome: Outcome::Complete,
            error: None,
            bytes_in,
            bytes_out,
            upstream_first_byte: Some(t_first_byte),
            overhead,
            keep_client,
        };
        match outcome {
            Ok(()) => {
                if upstream_reusable && upstream_clean && rdecoder.is_done() {
                    self.w.pools.borrow_mut().put(conn, up.pool_idle_max);
                } else {
                    self.w.pools.borrow_mut().discard(conn);
                }
            }
            Err(e) => {
                // Either side cut the exchange: the upstream connection is dropped (which
                // cancels the upstream request), never pooled.
                self.w.pools.borrow_mut().discard(conn);
                d.keep_client = false;
                d.outcome = if matches!(e, ProxyError::ClientClosed) {
                    Outcome::DownstreamAbort
                } else {
                    log_error(&e, &self.l.name, self.peer);
                    Outcome::UpstreamAbort
                };
                d.error = Some(e);
            }
        }
        (d, rbuf, wbuf)
    }

    /// Read a whole request body for the filters, bounded by `limit` decoded bytes.
    async fn read_request_body(
        &self,
        client: &mut Io,
        rbuf: &mut Vec<u8>,
        decoder: &mut BodyDecoder,
        limit: usize,
        route: &RouteRt,
    ) -> Result<Buffered, ProxyError> {
        let idle = Duration::from_millis(route.body_idle_timeout_ms);
        let mut body = Vec::new();
        let mut raw_len = 0usize;
        let mut raw_kept: Vec<u8> = Vec::new();
        loop {
            let mut over = false;
            let p = decoder.advance(rbuf, |d| {
                if body.len() + d.len() > limit {
                    over = true;
                } else {
                    body.extend_from_slice(d);
                }
            })?;
            raw_kept.extend_from_slice(&rbuf[..p.consumed]);
            raw_len += p.consumed;
            rbuf.drain(..p.consumed);
            if over {
                // Forward what was read as it came; the rest streams after it.
                return Ok(Buffered::OverLimit(raw_kept));
            }
            if p.done {
                return Ok(Buffered::Whole(body, raw_len));
            }
            let buf = std::mem::take(rbuf);
            let (res, b) = match monoio::time::timeout(idle, client.read_append(buf)).await {
                Ok(r) => r,
                Err(_) => return Err(ProxyError::ClientBodyTimeout(route.body_idle_timeout_ms)),
            };
            *rbuf = b;
            match res {
                Ok(0) | Err(_) => return Err(ProxyError::ClientClosed),
                Ok(_) => {}
            }
        }
    }

    /// Answer a filter's refusal, with the rate-limit headers of the exchange.
    #[allow(clippy::too_many_arguments)]
    async fn reject_with(
        &self,
        client: &mut Io,
        head: &RequestHead,
        r: Reject,
        rbuf: Vec<u8>,
        mut wbuf: Vec<u8>,
        may_keep: bool,
        t_head: Instant,
        rate_limits: Option<crate::ratelimit::RateHeaders>,
    ) -> (Done, Vec<u8>, Vec<u8>) {
        let keep = may_keep && head.keep_alive() && !self.w.is_draining();
        wbuf.clear();
        let mut body = Vec::with_capacity(160);
        write_openai_error(&mut body, r.status, r.code, &r.message);
        http1::write_status_line(&mut wbuf, r.status, "", Version::Http11);
        http1::write_header(&mut wbuf, "content-type", b"application/json");
        http1::write_header(
            &mut wbuf,
            "content-length",
            body.len().to_string().as_bytes(),
        );
        http1::write_header(&mut wbuf, "x-sluice-error", r.code.as_bytes());
        if let Some(rl) = &rate_limits {
            rl.write(&mut wbuf);
        }
        if !keep {
            http1::write_header(&mut wbuf, "connection", b"close");
        }
        http1::finish_head(&mut wbuf);
        wbuf.extend_from_slice(&body);
        let (res, wbuf) = client.write_all(wbuf).await;
        tracing::info!(listener = %self.l.name, peer = %self.peer, code = r.code, status = r.status, "request refused by a filter");
        (
            Done {
                status: r.status,
                outcome: Outcome::LocalReply,
                error: None,
                bytes_in: 0,
                bytes_out: 0,
                upstream_first_byte: None,
                overhead: t_head.elapsed(),
                keep_client: keep && res.is_ok(),
            },
            rbuf,
            wbuf,
        )
    }

    /// Forward the rest of a request body that did not arrive with the head.
    async fn stream_request_body(
        &self,
        client: &mut Io,
        conn: &mut UpConn,
        decoder: &mut BodyDecoder,
        mut rbuf: Vec<u8>,
        route: &RouteRt,
        up: &UpstreamRt,
    ) -> (Result<u64, ProxyError>, Vec<u8>) {
        let idle = Duration::from_millis(route.body_idle_timeout_ms);
        let mut total = 0u64;
        let mut last_read = 0usize;
        loop {
            debug_assert!(rbuf.is_empty());
            // A read that filled the buffer means a large body: read it in larger pieces.
            if last_read == rbuf.capacity() && rbuf.capacity() < UPSTREAM_READ_BYTES_MAX {
                let cap = rbuf.capacity();
                rbuf.reserve(cap);
            }
            let (res, b) = match monoio::time::timeout(idle, client.read_append(rbuf)).await {
                Ok(r) => r,
                Err(_) => {
                    return (
                        Err(ProxyError::ClientBodyTimeout(route.body_idle_timeout_ms)),
                        Vec::with_capacity(CLIENT_READ_BYTES_INITIAL),
                    )
                }
            };
            rbuf = b;
            match res {
                Ok(0) | Err(_) => return (Err(ProxyError::ClientClosed), rbuf),
                Ok(n) => last_read = n,
            }
            let p = match decoder.advance(&rbuf, |_| {}) {
                Ok(p) => p,
                Err(e) => return (Err(ProxyError::BadRequest(e)), rbuf),
            };
            let (res, b) = conn.io.write_range(rbuf, 0, p.consumed).await;
            rbuf = b;
            if let Err(e) = res {
                return (Err(ProxyError::UpstreamWrite(up.name.clone(), e)), rbuf);
            }
            total += p.consumed as u64;
            rbuf.drain(..p.consumed);
            if p.done {
                return (Ok(total), rbuf);
            }
        }
    }

    /// Read the final response head (1xx informational heads are skipped: `100 Continue` was
    /// answered by sluice itself and `Expect` is not forwarded).
    async fn read_response_head(
        &self,
        conn: &mut UpConn,
        mut ubuf: Vec<u8>,
        route: &RouteRt,
        up: &UpstreamRt,
        total_deadline: Option<monoio::time::Instant>,
    ) -> (Result<(ResponseHead, usize), ProxyError>, Vec<u8>) {
        let mut deadline =
            monoio::time::Instant::now() + Duration::from_millis(route.first_byte_timeout_ms);
        if let Some(t) = total_deadline {
            deadline = deadline.min(t);
        }
        let limits = self.l.limits;
        loop {
            if !ubuf.is_empty() {
                match http1::parse_response(&ubuf, &limits) {
                    Ok(Some((h, n))) => {
                        if h.is_informational() {
                            ubuf.drain(..n);
                            continue;
                        }
                        return (Ok((h, n)), ubuf);
                    }
                    Ok(None) => {}
                    Err(e) => return (Err(ProxyError::BadResponse(up.name.clone(), e)), ubuf),
                }
            }
            let (res, b) = match monoio::time::timeout_at(deadline, conn.io.read_append(ubuf)).await
            {
                Ok(r) => r,
                Err(_) => {
                    return (
                        Err(ProxyError::FirstByteTimeout(
                            up.name.clone(),
                            route.first_byte_timeout_ms,
                        )),
                        Vec::new(),
                    )
                }
            };
            ubuf = b;
            match res {
                Ok(0) => {
                    let e = if ubuf.is_empty() {
                        ProxyError::UpstreamClosed(up.name.clone())
                    } else {
                        ProxyError::BadResponse(up.name.clone(), CodecError::Truncated)
                    };
                    return (Err(e), ubuf);
                }
                Ok(_) => {}
                Err(_) => return (Err(ProxyError::UpstreamClosed(up.name.clone())), ubuf),
            }
        }
    }

    /// Answer the client with an error of our own. `may_keep`: the request body was fully
    /// consumed, so the connection can carry on.
    /// The exchange ends with an answer of sluice's own; the buffers are handed back.
    #[allow(clippy::too_many_arguments)]
    async fn local_error(
        &self,
        client: &mut Io,
        head: &RequestHead,
        e: ProxyError,
        rbuf: Vec<u8>,
        mut wbuf: Vec<u8>,
        may_keep: bool,
        t_head: Instant,
    ) -> (Done, Vec<u8>, Vec<u8>) {
        let keep = may_keep
            && matches!(head.body_kind(), BodyKind::Empty)
            && head.keep_alive()
            && !self.w.is_draining();
        wbuf.clear();
        write_error_response(&mut wbuf, &e, head.version(), !keep);
        let (res, wbuf) = client.write_all(wbuf).await;
        log_error(&e, &self.l.name, self.peer);
        (
            Done {
                status: e.status(),
                outcome: Outcome::LocalReply,
                error: Some(e),
                bytes_in: 0,
                bytes_out: 0,
                upstream_first_byte: None,
                overhead: t_head.elapsed(),
                keep_client: keep && res.is_ok(),
            },
            rbuf,
            wbuf,
        )
    }

    fn client_gone(&self, bytes_in: u64) -> Done {
        Done {
            status: 499,
            outcome: Outcome::DownstreamAbort,
            error: Some(ProxyError::ClientClosed),
            bytes_in,
            bytes_out: 0,
            upstream_first_byte: None,
            overhead: Duration::ZERO,
            keep_client: false,
        }
    }

    fn record(
        &self,
        route: u16,
        upstream: u16,
        d: Done,
        access: Option<Box<AccessFields>>,
        gen_ai: Option<Box<GenAiRecord>>,
    ) {
        let (code, side) = match &d.error {
            Some(e) => (e.code(), e.side().as_str()),
            None => ("", ""),
        };
        let r = RequestRecord {
            generation: self.snap.generation,
            worker: self.w.id as u16,
            listener: self.lidx as u16,
            route,
            upstream,
            status: d.status,
            outcome: d.outcome,
            error_code: code,
            error_side: side,
            duration_us: self.started.elapsed().as_micros() as u64,
            upstream_first_byte_us: d
                .upstream_first_byte
                .map(|t| t.duration_since(self.started).as_micros() as u64)
                .unwrap_or(0),
            overhead_us: d.overhead.as_micros() as u64,
            bytes_in: d.bytes_in,
            bytes_out: d.bytes_out,
            access,
            gen_ai,
        };
        let full = {
            let mut t = self.w.telemetry.borrow_mut();
            t.push(r);
            t.records.len() >= crate::telemetry::LOCAL_RECORDS_MAX
        };
        if full {
            self.w.flush_telemetry(false);
        }
    }
}

/// Half-close, then read and discard what the client still sends, bounded in time and bytes.
async fn linger_close(client: &mut Io, mut buf: Vec<u8>) {
    client.shutdown().await;
    let deadline = monoio::time::Instant::now() + Duration::from_millis(LINGER_CLOSE_MS);
    let mut total = 0usize;
    while total < LINGER_CLOSE_BYTES_MAX {
        buf.clear();
        match monoio::time::timeout_at(deadline, client.read_append(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                total += n;
                buf = b;
            }
            _ => return,
        }
    }
}

fn record_local(
    w: &Rc<Worker>,
    snap: &Snapshot,
    lidx: u16,
    status: u16,
    e: &ProxyError,
    started: Instant,
) {
    let r = RequestRecord {
        generation: snap.generation,
        worker: w.id as u16,
        listener: lidx,
        route: NONE_IDX,
        upstream: NONE_IDX,
        status,
        outcome: if status == 499 {
            Outcome::DownstreamAbort
        } else {
            Outcome::LocalReply
        },
        error_code: e.code(),
        error_side: e.side().as_str(),
        duration_us: started.elapsed().as_micros() as u64,
        upstream_first_byte_us: 0,
        overhead_us: 0,
        bytes_in: 0,
        bytes_out: 0,
        access: None,
        gen_ai: None,
    };
    w.telemetry.borrow_mut().push(r);
}

fn log_error(e: &ProxyError, listener: &str, peer: SocketAddr) {
    match e.side() {
        crate::error::Side::Downstream => {
            tracing::debug!(listener, %peer, code = e.code(), status = e.status(), "{e}")
        }
        _ => tracing::warn!(listener, %peer, code = e.code(), status = e.status(), "{e}"),
    }
}

/// `X-Request-Id` from the client, or a new random (v4 UUID shaped) one.
fn request_id(head: &RequestHead) -> String {
    if let Some(v) = head.header("x-request-id") {
        if let Ok(s) = std::str::from_utf8(v) {
            if !s.is_empty() && s.len() <= 128 {
                return s.to_string();
            }
        }
    }
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// A refusal before the body was read: a body already in the read buffer is skipped so the
/// connection can carry on; one still to come (or chunked) means the connection must close.
fn skip_buffered_body(head: &RequestHead, rbuf: &mut Vec<u8>) -> bool {
    match head.body_kind() {
        BodyKind::Empty | BodyKind::Length(0) => true,
        BodyKind::Length(n) if rbuf.len() as u64 >= n => {
            rbuf.drain(..n as usize);
            true
        }
        _ => false,
    }
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split(']').next().map(|s| &s[1..]).unwrap_or(h);
    }
    h.rsplit_once(':').map(|(a, _)| a).unwrap_or(h)
}

fn format_ip(ip: std::net::IpAddr, buf: &mut [u8; 64]) -> &str {
    use std::io::Write;
    let mut c = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(c, "{ip}");
    let n = c.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

/// Whether `name` is listed in the head's `Connection` header(s). Iterates the tokens in place
/// (no collection per request); heads without a `Connection` header skip it entirely.
fn is_connection_token<'a>(mut tokens: impl Iterator<Item = &'a str>, name: &str) -> bool {
    tokens.any(|t| t.eq_ignore_ascii_case(name))
}

/// The request head as the upstream sees it: origin-form target, hop-by-hop headers and those
/// named in `Connection` removed, `Expect` answered by us, Host per `host_rewrite`,
/// `X-Forwarded-For` appended, `X-Request-Id` set, `Via` appended, framing kept.
/// How the forwarded request body is framed.
#[derive(Clone, Copy)]
enum BodyFraming {
    /// As the client sent it (Content-Length or chunked, forwarded verbatim).
    AsReceived,
    /// A buffered body of `len` bytes; `drop_encoding` when a filter decoded or rewrote it.
    Length { len: usize, drop_encoding: bool },
}

/// A request body read for the filters.
enum Buffered {
    /// The whole decoded body, and how many wire bytes it took.
    Whole(Vec<u8>, usize),
    /// Over the limit: the raw wire bytes read so far (to forward as they are).
    OverLimit(Vec<u8>),
}

/// How response body bytes are written to the client.
#[derive(Clone, Copy)]
enum OutMode {
    /// The upstream's wire bytes, verbatim.
    Raw,
    /// Decoded and re-framed as chunked (close-delimited responses to HTTP/1.1 clients).
    Rechunk,
    /// Decoded, passed through the filters' rewrite, re-framed as chunked.
    Rewrite,
}

#[allow(clippy::too_many_arguments)]
fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    up: &UpstreamRt,
    authority: &str,
    peer: SocketAddr,
    request_id: &str,
    framing: BodyFraming,
    traceparent: Option<&str>,
    strip_credentials: bool,
) {
    http1::write_request_line(out, head.method_str(), head.path(), Version::Http11);
    // The client's credential never reaches an upstream whose credential sluice injects, nor
    // any upstream once sluice authenticated the client with it.
    let strip_credentials = strip_credentials || up.credential.is_some();
    // The client address, formatted once into a stack buffer (no String per request).
    let mut ip_buf = [0u8; 64];
    let ip = format_ip(peer.ip(), &mut ip_buf);
    let has_connection = head.header("connection").is_some();
    let mut xff_done = false;
    let mut via_done = false;
    let mut rid_seen = false;
    let host_value: Option<&str> = match &up.host_rewrite {
        HostRewrite::Auto => Some(authority),
        HostRewrite::Literal(h) => Some(h.as_str()),
        HostRewrite::Preserve => None,
    };
    if let Some(h) = host_value {
        http1::write_header(out, "host", h.as_bytes());
    }
    for (name, value) in head.headers() {
        if http1::is_hop_by_hop(name)
            || (has_connection && is_connection_token(head.connection_tokens(), name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("expect")
            || (strip_credentials && crate::auth::is_credential_header(name))
        {
            continue;
        }
        if traceparent.is_some()
            && (name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate"))
        {
            continue;
        }
        if let BodyFraming::Length { drop_encoding, .. } = framing {
            if name.eq_ignore_ascii_case("content-length")
                || (drop_encoding && name.eq_ignore_ascii_case("content-encoding"))
            {
                continue;
            }
        }
        if name.eq_ignore_ascii_case("host") {
            if host_value.is_none() {
                http1::write_header(out, "host", value);
            }
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") && !xff_done {
            let mut v = value.to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip.as_bytes());
            http1::write_header(out, "x-forwarded-for", &v);
            xff_done = true;
            continue;
        }
        if name.eq_ignore_ascii_case("via") && !via_done {
            let mut v = value.to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(VIA);
            http1::write_header(out, "via", &v);
            via_done = true;
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            rid_seen = true;
        }
        http1::write_header(out, name, value);
    }
    if head.host().is_none() && host_value.is_none() {
        http1::write_header(out, "host", authority.as_bytes());
    }
    if !xff_done {
        http1::write_header(out, "x-forwarded-for", ip.as_bytes());
    }
    if !via_done {
        http1::write_header(out, "via", VIA);
    }
    if !rid_seen {
        http1::write_header(out, "x-request-id", request_id.as_bytes());
    }
    if let Some(tp) = traceparent {
        http1::write_header(out, "traceparent", tp.as_bytes());
    }
    if let Some(c) = &up.credential {
        c.write_header(out);
    }
    match framing {
        BodyFraming::AsReceived => {
            if matches!(head.body_kind(), BodyKind::Chunked) {
                http1::write_header(out, "transfer-encoding", b"chunked");
            }
        }
        BodyFraming::Length { len, .. } => {
            http1::write_header(out, "content-length", len.to_string().as_bytes());
        }
    }
    http1::finish_head(out);
}

/// The response head as the client sees it.
fn write_client_head(
    out: &mut Vec<u8>,
    r: &ResponseHead,
    client_version: Version,
    keep: bool,
    rechunk: bool,
    kind: BodyKind,
    rate_limits: Option<&crate::ratelimit::RateHeaders>,
) {
    http1::write_status_line(out, r.status(), r.reason(), Version::Http11);
    let has_connection = r.header("connection").is_some();
    let mut via_done = false;
    for (name, value) in r.headers() {
        if http1::is_hop_by_hop(name)
            || (has_connection && is_connection_token(r.connection_tokens(), name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("via") && !via_done {
            let mut v = value.to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(VIA);
            http1::write_header(out, "via", &v);
            via_done = true;
            continue;
        }
        if rate_limits.is_some()
            && name.len() > 12
            && name.as_bytes()[..12].eq_ignore_ascii_case(b"x-ratelimit-")
        {
            // sluice's own limits replace the provider's in the answer.
            continue;
        }
        if (matches!(kind, BodyKind::Chunked) || rechunk)
            && name.eq_ignore_ascii_case("content-length")
        {
            // TE wins over CL (RFC 9112 §6.3); never send both. A re-framed body (rewritten by
            // a filter) has a length the upstream's header no longer describes.
            continue;
        }
        http1::write_header(out, name, value);
    }
    if !via_done {
        http1::write_header(out, "via", VIA);
    }
    if let Some(rl) = rate_limits {
        rl.write(out);
    }
    if matches!(kind, BodyKind::Chunked) || rechunk {
        http1::write_header(out, "transfer-encoding", b"chunked");
    }
    if !keep {
        http1::write_header(out, "connection", b"close");
    } else if client_version == Version::Http10 {
        http1::write_header(out, "connection", b"keep-alive");
    }
    http1::finish_head(out);
}

/// A complete error response with an OpenAI-shaped JSON body.
pub fn write_error_response(out: &mut Vec<u8>, e: &ProxyError, version: Version, close: bool) {
    let status = e.status();
    let mut body = Vec::with_capacity(160);
    write_openai_error(&mut body, status, e.code(), &e.to_string());
    http1::write_status_line(
        out,
        status,
        "",
        if version == Version::Http10 {
            Version::Http10
        } else {
            Version::Http11
        },
    );
    http1::write_header(out, "content-type", b"application/json");
    http1::write_header(out, "content-length", body.len().to_string().as_bytes());
    http1::write_header(out, "x-sluice-error", e.code().as_bytes());
    if close {
        http1::write_header(out, "connection", b"close");
    }
    http1::finish_head(out);
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_ip_fits_the_longest_addresses() {
        let mut b = [0u8; 64];
        assert_eq!(
            format_ip("203.0.113.255".parse().unwrap(), &mut b),
            "203.0.113.255"
        );
        let v6: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        let s = format_ip(v6, &mut b).to_string();
        assert_eq!(s.parse::<std::net::IpAddr>().unwrap(), v6);
    }

    #[test]
    fn connection_tokens_match_case_insensitively() {
        assert!(is_connection_token(
            ["keep-alive", "X-Hop"].into_iter(),
            "x-hop"
        ));
        assert!(!is_connection_token(["keep-alive"].into_iter(), "x-hop"));
    }
}
