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

use std::cell::{Cell, RefCell};
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
use crate::resilience::{
    self,
    plan::{AttemptResult, Chosen, Plan, Unavailable},
};
use crate::route;
use crate::snapshot::{HostRewrite, ListenerRt, RouteRt, Snapshot, UpstreamRt};
use crate::telemetry::{AccessFields, Outcome, RequestRecord, RoutingRecord, NONE_IDX};
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
/// Bound on a request body read for routing (body `model` match, model rewrite, replay on
/// retry or failover) on a route without filters; with filters, their `body_bytes_max`.
pub const ROUTE_BODY_BYTES_MAX: usize = crate::config::INSPECT_BODY_BYTES_MAX_DEFAULT;
/// Longest upstream or model name echoed in `x-sluice-upstream` / `x-sluice-failover`.
pub const ROUTING_HEADER_NAME_BYTES_MAX: usize = 128;
/// The SSE comment sent while a streaming request waits for its first token.
pub const SSE_KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Serve one client connection until it closes, errors, or the worker drains.
pub async fn serve_connection(
    w: Rc<Worker>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnGuard,
) {
    let rbuf = Vec::with_capacity(CLIENT_READ_BYTES_INITIAL);
    serve_connection_with(w, listener, Io::Tcp(stream), peer, guard, rbuf, None, None).await
}

/// Serve one client connection of any kind (plain, or TLS after `crate::tls::server`'s
/// handshake, with the SPIFFE ID of a verified client certificate).
pub async fn serve_io(
    w: Rc<Worker>,
    listener: Arc<str>,
    client: Io,
    peer: SocketAddr,
    peer_identity: Option<Arc<str>>,
    guard: ConnGuard,
) {
    let rbuf = Vec::with_capacity(CLIENT_READ_BYTES_INITIAL);
    serve_connection_with(w, listener, client, peer, guard, rbuf, None, peer_identity).await
}

/// [`serve_connection`] for a connection whose first bytes were already read (`rbuf`, by the
/// transparent listener's sniffer) and whose original destination may be known (`dst`, for
/// routing by destination and the `original_destination` upstream), or whose TLS client
/// certificate carried a verified SPIFFE ID (`peer_identity`).
#[allow(clippy::too_many_arguments)]
pub async fn serve_connection_with(
    w: Rc<Worker>,
    listener: Arc<str>,
    mut client: Io,
    peer: SocketAddr,
    _guard: ConnGuard,
    mut rbuf: Vec<u8>,
    dst: Option<crate::transparent::ConnDst>,
    peer_identity: Option<Arc<str>>,
) {
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
            peer_identity: peer_identity.as_ref(),
            started: Instant::now(),
            early_head: Cell::new(false),
            strip_cred: Cell::new(false),
            served_by: Cell::new(None),
            routing: RefCell::new(RoutingRecord::default()),
            dst: dst.as_ref(),
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
            match super::timer::timeout_at(d, client.read_append(buf)).await {
                Ok(r) => r,
                Err(_) => return Err(ProxyError::HeaderTimeout(l.header_timeout_ms)),
            }
        } else {
            // Idle between requests: wait for the first byte, the idle timeout or a drain.
            let idle = Duration::from_millis(l.idle_timeout_ms);
            let read = super::timer::timeout(idle, client.read_append(buf));
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
    /// SPIFFE ID of the verified client certificate (mTLS listeners).
    peer_identity: Option<&'a Arc<str>>,
    started: Instant,
    /// An SSE response head (and keep-alive comments) went to the client before the
    /// upstream answered: errors become an SSE error event, never a second head.
    early_head: Cell<bool>,
    /// The caller was authenticated by sluice: its `Authorization`/`x-api-key` is not forwarded.
    strip_cred: Cell<bool>,
    /// The upstream that answered (or was last tried), when routing moved the request.
    served_by: Cell<Option<usize>>,
    /// Retries, failover and the rewritten model, for the record.
    routing: RefCell<RoutingRecord>,
    /// Transparent listeners: where the connection was going.
    dst: Option<&'a crate::transparent::ConnDst>,
}

/// The request body as attempts send it.
enum ReqBody {
    /// Read whole and decoded (for filters or routing); sent with a Content-Length, its
    /// `model` rewritten per attempt when the target asks for another.
    Whole {
        body: Vec<u8>,
        /// A filter changed it (Content-Encoding is dropped).
        changed: bool,
        facts: Option<route::model::BodyFacts>,
    },
    /// Raw wire bytes after the head in the send buffer, from `head_len` on.
    Raw { head_len: usize },
}

/// How an upstream's response head counts for its endpoint.
fn attempt_result(h: &ResponseHead) -> AttemptResult {
    match h.status() {
        429 => AttemptResult::RateLimited(
            h.header("retry-after")
                .and_then(resilience::parse_retry_after_ms),
        ),
        500..=599 => AttemptResult::Failure,
        _ => AttemptResult::Success,
    }
}

/// The error for a request no upstream could take.
fn unavailable(up: &UpstreamRt, u: Unavailable) -> ProxyError {
    if u.reason == "no_endpoint" {
        return ProxyError::NoEndpoint(up.name.clone());
    }
    ProxyError::Unavailable(up.name.clone(), u.reason, u.retry_in_ms, u.status)
}

fn connect_ms(pol: &route::RoutePolicy, up: &UpstreamRt) -> u64 {
    pol.connect_timeout_ms.unwrap_or(up.connect_timeout_ms)
}

/// A new (never pooled) connection to the same endpoint: the retry after a reused pooled
/// connection turned out dead, on write or before any response byte.
async fn fresh_conn(
    w: &Worker,
    up: &UpstreamRt,
    endpoint: usize,
    pol: &route::RoutePolicy,
) -> Result<UpConn, ProxyError> {
    upstream::acquire_at(&w.pools, up, endpoint, true, connect_ms(pol, up)).await
}

/// Whether a name may be echoed in a response header (visible ASCII, bounded): model names
/// come from request bodies and must never inject header lines.
fn header_safe(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= ROUTING_HEADER_NAME_BYTES_MAX
        && v.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// `x-sluice-upstream: <upstream>[/<model>]` and, after a failover,
/// `x-sluice-failover: <from>-><to>`.
fn write_routing_headers(out: &mut Vec<u8>, up: &str, model: Option<&str>, from: Option<&str>) {
    if !header_safe(up) {
        return;
    }
    let start = out.len();
    out.extend_from_slice(b"x-sluice-upstream: ");
    out.extend_from_slice(up.as_bytes());
    if let Some(m) = model.filter(|m| header_safe(m)) {
        out.push(b'/');
        out.extend_from_slice(m.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(f) = from.filter(|f| header_safe(f)) {
        out.extend_from_slice(b"x-sluice-failover: ");
        out.extend_from_slice(f.as_bytes());
        out.extend_from_slice(b"->");
        out.extend_from_slice(up.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    debug_assert!(out[start..].ends_with(b"\r\n"));
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
        mut rbuf: Vec<u8>,
        mut wbuf: Vec<u8>,
    ) -> (bool, bool, Vec<u8>, Vec<u8>) {
        let request_id = request_id(&head);
        let access = self.w.telemetry.borrow().access_log.then(|| {
            Box::new(AccessFields {
                method: head.method_str().to_string(),
                path: head.path().to_string(),
                request_id: request_id.clone(),
                peer: self.peer.to_string(),
                peer_identity: self.peer_identity.cloned(),
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            })
        });
        // A listener with a route on the body's `model` reads the body (bounded) before
        // routing; elsewhere routing looks at the head only.
        let mut pre: Option<(Buffered, BodyDecoder)> = None;
        let mut body_model: Option<String> = None;
        if self.l.match_model && !matches!(head.body_kind(), BodyKind::Empty | BodyKind::Length(0))
        {
            match self
                .read_body_for_routing(client, &head, &mut rbuf, &mut wbuf)
                .await
            {
                Ok((b, d)) => {
                    if let Buffered::Whole(body, _) = &b {
                        body_model = route::model::scan(body).and_then(|f| f.model);
                    }
                    pre = Some((b, d));
                }
                Err(e) => {
                    let (done, rbuf, wbuf) = if matches!(e, ProxyError::ClientClosed) {
                        (self.client_gone(0), rbuf, wbuf)
                    } else {
                        self.local_error(client, &head, e, rbuf, wbuf, false, self.started)
                            .await
                    };
                    let keep = done.keep_client;
                    self.record(NONE_IDX, NONE_IDX, done, access, None);
                    return (keep, true, rbuf, wbuf);
                }
            }
        }
        let route = self.route(&head, body_model.as_deref());
        let dyn_up;
        let routed = match route {
            None => Err((
                NONE_IDX,
                NONE_IDX,
                ProxyError::NoRoute {
                    method: head.method_str().to_string(),
                    path: head.path().chars().take(256).collect(),
                },
            )),
            Some((ridx, r)) => match &r.allow_identities {
                Some(allow)
                    if !crate::tls::spiffe::allowed(allow, self.peer_identity.map(|s| &**s)) =>
                {
                    let who: Arc<str> = self
                        .peer_identity
                        .cloned()
                        .unwrap_or_else(|| Arc::from("(none)"));
                    Err((
                        ridx as u16,
                        r.upstream as u16,
                        ProxyError::IdentityNotAllowed(who, r.name.clone()),
                    ))
                }
                _ if r.upstream == crate::transparent::ORIGINAL_DST_IDX => match self.dst {
                    Some(d) => {
                        dyn_up = self.w.transparent.upstream_for_dst(d, &self.l.transparent);
                        Ok((ridx, r, &dyn_up))
                    }
                    None => Err((ridx as u16, NONE_IDX, ProxyError::NoOriginalDestination)),
                },
                _ => Ok((ridx, r, &self.snap.upstreams[r.upstream])),
            },
        };
        let (ridx, route, up) = match routed {
            Ok(r) => r,
            Err((ridx, uidx, e)) => {
                let status = e.status();
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
                    ridx,
                    uidx,
                    Done {
                        status,
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
        let mut ctx = route.chain.as_ref().map(|_| {
            let mut c = ExchangeCtx::new(filter::caller_of(
                &self.snap.config.caller,
                &head,
                self.peer,
                self.peer_identity,
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
        let primary = route.policy.primary(route.upstream, &head);
        let mut plan = Plan::new(&self.snap.upstreams, &route.policy, primary);
        if route.upstream == crate::transparent::ORIGINAL_DST_IDX {
            plan = plan.with_dynamic(up);
        }
        let mut sent_model = None;
        let (done, rbuf, wbuf) = self
            .proxy(
                client,
                &head,
                route,
                &request_id,
                fx,
                rbuf,
                wbuf,
                &mut plan,
                &mut sent_model,
                pre,
            )
            .await;
        self.note_routing(&plan, sent_model);
        drop(plan);
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

    /// The retries, failover and model of the exchange, for its record.
    fn note_routing(&self, plan: &Plan<'_>, sent_model: Option<Arc<str>>) {
        self.served_by.set(Some(plan.current));
        if plan.retries == 0 && plan.failovers == 0 && sent_model.is_none() {
            return;
        }
        let mut r = self.routing.borrow_mut();
        r.retries = plan.retries;
        r.failovers = plan.failovers;
        if plan.failovers > 0 {
            r.failover_from = plan.primary as u16;
        }
        r.upstream_model = sent_model;
    }

    /// Read the body before routing (a route of this listener matches on `model`), after a
    /// 100 Continue if the client waits for one.
    async fn read_body_for_routing(
        &self,
        client: &mut Io,
        head: &RequestHead,
        rbuf: &mut Vec<u8>,
        wbuf: &mut Vec<u8>,
    ) -> Result<(Buffered, BodyDecoder), ProxyError> {
        if head.expect_continue() {
            let mut b = std::mem::take(wbuf);
            b.clear();
            http1::write_status_line(&mut b, 100, "", Version::Http11);
            http1::finish_head(&mut b);
            let (res, b) = client.write_all(b).await;
            *wbuf = b;
            if res.is_err() {
                return Err(ProxyError::ClientClosed);
            }
        }
        let mut decoder = BodyDecoder::new(head.body_kind());
        let b = self
            .read_request_body(
                client,
                rbuf,
                &mut decoder,
                ROUTE_BODY_BYTES_MAX,
                crate::config::BODY_IDLE_TIMEOUT_MS_DEFAULT,
            )
            .await?;
        Ok((b, decoder))
    }

    fn route(&self, head: &RequestHead, model: Option<&str>) -> Option<(usize, &'a RouteRt)> {
        let path = head.path();
        let host = head.host().map(strip_port);
        self.l.routes.iter().enumerate().find(|(_, r)| {
            if !crate::transparent::http_route_matches(r, self.dst) {
                return false;
            }
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
            if let Some(m) = &r.policy.model {
                if model != Some(&**m) {
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
        route: &'a RouteRt,
        request_id: &str,
        mut fx: Option<(&Chain, &mut ExchangeCtx)>,
        mut rbuf: Vec<u8>,
        mut wbuf: Vec<u8>,
        plan: &mut Plan<'a>,
        sent_model: &mut Option<Arc<str>>,
        pre: Option<(Buffered, BodyDecoder)>,
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

        // Choose where the first attempt goes (split arm; per endpoint the breaker, cool-down
        // and balancer; the upstream's throttle; a failover target when the primary cannot
        // take it), then connect (or take a pooled connection) before telling the client to
        // send its body: a 100 Continue for a request we cannot forward would waste the
        // client's upload. Connect failures move on to the next attempt at once: nothing was
        // sent yet.
        let pol = &route.policy;
        let first = {
            let pools = self.w.pools.borrow();
            plan.first(pools.rr(), resilience::now_ms())
        };
        let mut chosen = match first {
            Ok(c) => c,
            Err(u) => {
                let e = unavailable(plan.upstream(u.upstream), u);
                let body_read = rbuf.is_empty();
                return self
                    .local_error(client, head, e, rbuf, wbuf, body_read, t_head)
                    .await;
            }
        };
        let mut up: &Arc<UpstreamRt> = plan.upstream(chosen.upstream);
        let acquired = upstream::acquire_at(
            &self.w.pools,
            up,
            chosen.guard.endpoint,
            false,
            connect_ms(pol, up),
        )
        .await;
        let mut conn = match acquired {
            Ok(c) => c,
            Err(e) => {
                chosen
                    .guard
                    .report(AttemptResult::Failure, resilience::now_ms());
                match self
                    .switch(plan, &mut chosen, total_deadline, Some(e))
                    .await
                {
                    Ok(c) => {
                        up = plan.upstream(chosen.upstream);
                        c
                    }
                    Err(e) => {
                        let e = e.unwrap_or(ProxyError::NoEndpoint(up.name.clone()));
                        let body_read = rbuf.is_empty();
                        return self
                            .local_error(client, head, e, rbuf, wbuf, body_read, t_head)
                            .await;
                    }
                }
            }
        };
        if pre.is_none()
            && head.expect_continue()
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
        let traceparent = fx
            .as_ref()
            .and_then(|(_, ctx)| ctx.trace.as_ref())
            .map(|t| t.header_value());
        let mut decoder = BodyDecoder::new(head.body_kind());
        let body_done;
        // What an attempt sends after its head; kept so that another attempt can resend it.
        let mut req_body: ReqBody;
        // An authenticated caller's credential is never forwarded (the upstream gets sluice's).
        self.strip_cred
            .set(fx.as_ref().is_some_and(|(_, ctx)| ctx.authenticated));

        // Phases 2-3: a filter that needs the body gets it whole (bounded), before anything
        // is forwarded; so does a routing policy that must rewrite or replay it. Otherwise
        // the body streams through as it arrives.
        let chain_wants = match fx.as_ref() {
            Some((chain, ctx)) => chain.wants_request_body(ctx, head),
            None => false,
        };
        let routing_wants = pol.needs_body && !matches!(head.body_kind(), BodyKind::Empty);
        let limit = fx
            .as_ref()
            .map(|(c, _)| c.body_bytes_max)
            .unwrap_or(ROUTE_BODY_BYTES_MAX);
        let buffered = match pre {
            Some((b, d)) => {
                decoder = d;
                Some(Ok(b))
            }
            None if chain_wants || routing_wants => Some(
                self.read_request_body(
                    client,
                    &mut rbuf,
                    &mut decoder,
                    limit,
                    route.body_idle_timeout_ms,
                )
                .await,
            ),
            None => None,
        };
        match buffered {
            Some(Ok(Buffered::Whole(mut body, raw_len))) => {
                bytes_in += raw_len as u64;
                let mut changed = false;
                if let (true, Some((chain, ctx))) = (chain_wants, fx.as_mut()) {
                    match chain.on_request_body(ctx, head, &mut body).await {
                        Ok(c) => changed = c,
                        Err(r) => {
                            self.w.pools.borrow_mut().put(conn, up.pool_idle_max);
                            let rl = chain.rate_headers(ctx).copied();
                            return self
                                .reject_with(client, head, r, rbuf, wbuf, true, t_head, rl)
                                .await;
                        }
                    }
                }
                let facts = (pol.needs_body || self.l.match_model)
                    .then(|| route::model::scan(&body))
                    .flatten();
                req_body = ReqBody::Whole {
                    body,
                    changed,
                    facts,
                };
                *sent_model = self.fill_request(
                    &mut wbuf,
                    head,
                    up,
                    chosen.guard.endpoint,
                    request_id,
                    traceparent.as_deref(),
                    &mut req_body,
                    plan,
                );
                body_done = true;
            }
            Some(Ok(Buffered::OverLimit(raw))) => {
                if let (true, Some((chain, ctx))) = (chain_wants, fx.as_mut()) {
                    if let Err(r) = chain.on_body_over_limit(ctx, head).await {
                        self.w.pools.borrow_mut().discard(conn);
                        let rl = chain.rate_headers(ctx).copied();
                        return self
                            .reject_with(client, head, r, rbuf, wbuf, false, t_head, rl)
                            .await;
                    }
                }
                // The target may need another model than the body names (an alias, or the
                // failover target chosen already), and the body is too large to rewrite.
                if pol.rewrites_model
                    && (!up.policy.aliases.is_empty() || plan.failover_model.is_some())
                {
                    self.w.pools.borrow_mut().discard(conn);
                    let e = ProxyError::BodyTooLargeToRoute(limit);
                    return self
                        .local_error(client, head, e, rbuf, wbuf, false, t_head)
                        .await;
                }
                bytes_in += raw.len() as u64;
                let ep = &up.endpoints[chosen.guard.endpoint];
                self.upstream_head(
                    &mut wbuf,
                    head,
                    up,
                    &ep.authority,
                    request_id,
                    BodyFraming::AsReceived,
                    traceparent.as_deref(),
                );
                req_body = ReqBody::Raw {
                    head_len: wbuf.len(),
                };
                wbuf.extend_from_slice(&raw);
                body_done = decoder.is_done();
            }
            Some(Err(e)) => {
                self.w.pools.borrow_mut().put(conn, up.pool_idle_max);
                if matches!(e, ProxyError::ClientClosed) {
                    return (self.client_gone(bytes_in), rbuf, wbuf);
                }
                return self
                    .local_error(client, head, e, rbuf, wbuf, false, t_head)
                    .await;
            }
            None => {
                let ep = &up.endpoints[chosen.guard.endpoint];
                self.upstream_head(
                    &mut wbuf,
                    head,
                    up,
                    &ep.authority,
                    request_id,
                    BodyFraming::AsReceived,
                    traceparent.as_deref(),
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
                // bounded by what one read brought in, and it makes the request replayable
                // (on a stale pooled connection, or on another attempt) when it is complete.
                req_body = ReqBody::Raw {
                    head_len: wbuf.len(),
                };
                wbuf.extend_from_slice(&rbuf[..first.consumed]);
                rbuf.drain(..first.consumed);
                body_done = first.done;
            }
        }
        let replayable = body_done;
        // SSE keep-alives only for a streaming request from an HTTP/1.1 client (they need
        // chunked framing towards the client).
        let keepalive_ms = match &req_body {
            ReqBody::Whole { facts: Some(f), .. }
                if f.stream && head.version() == Version::Http11 =>
            {
                pol.sse_keepalive_ms
            }
            _ => 0,
        };

        // Attempts: send, then read the response head. A pooled connection found dead is
        // replaced once by a fresh one to the same endpoint (not an endpoint failure). A
        // failed attempt (connect error, timeout, closed, 429, 5xx) is reported to the
        // endpoint's breaker and, while the whole request is in memory and no upstream byte
        // reached the client, followed by a retry or a failover per the plan. Once the
        // response head is accepted there is no way back: a stream is never retried.
        let mut stale_retried = false;
        let mut first_send = true;
        let (resp, mut ubuf) = loop {
            let t_before_send = Instant::now();
            let (res, b) = conn.io.write_all(wbuf).await;
            wbuf = b;
            let failed: ProxyError = match res {
                Err(e) => {
                    let stale = conn.reused && replayable && !stale_retried;
                    self.w.pools.borrow_mut().discard(conn);
                    if stale {
                        stale_retried = true;
                        match fresh_conn(self.w, up, chosen.guard.endpoint, pol).await {
                            Ok(c) => {
                                conn = c;
                                continue;
                            }
                            Err(e) => e,
                        }
                    } else {
                        ProxyError::UpstreamWrite(up.name.clone(), e)
                    }
                }
                Ok(()) => {
                    if first_send {
                        overhead += t_before_send.duration_since(t_head);
                        first_send = false;
                        // Phase 3b, while the upstream works on the request.
                        request_sent(&mut fx, head, &req_body).await;
                    }
                    // Stream the rest of the request body, if any (then it cannot be replayed).
                    if !body_done {
                        let r = self
                            .stream_request_body(client, &mut conn, &mut decoder, rbuf, route, up)
                            .await;
                        rbuf = r.1;
                        match r.0 {
                            Ok(n) => bytes_in += n,
                            Err(e) => {
                                self.w.pools.borrow_mut().discard(conn);
                                if matches!(e, ProxyError::ClientClosed) {
                                    return (self.client_gone(bytes_in), rbuf, wbuf);
                                }
                                if matches!(e, ProxyError::UpstreamWrite(..)) {
                                    chosen
                                        .guard
                                        .report(AttemptResult::Failure, resilience::now_ms());
                                }
                                return self
                                    .local_error(client, head, e, rbuf, wbuf, false, t_head)
                                    .await;
                            }
                        }
                    }
                    let ubuf = Vec::with_capacity(UPSTREAM_READ_BYTES);
                    let reused = conn.reused;
                    match self
                        .read_response_head(
                            &mut conn,
                            ubuf,
                            route,
                            up,
                            total_deadline,
                            client,
                            keepalive_ms,
                            client_keep,
                        )
                        .await
                    {
                        (Ok(h), ubuf) => {
                            let result = attempt_result(&h.0);
                            chosen.guard.report(result, resilience::now_ms());
                            if result != AttemptResult::Success && replayable {
                                // `Err`: no attempt left; the client gets this answer.
                                if let Ok(c) =
                                    self.switch(plan, &mut chosen, total_deadline, None).await
                                {
                                    self.w.pools.borrow_mut().discard(conn);
                                    conn = c;
                                    up = plan.upstream(chosen.upstream);
                                    *sent_model = self.fill_request(
                                        &mut wbuf,
                                        head,
                                        up,
                                        chosen.guard.endpoint,
                                        request_id,
                                        traceparent.as_deref(),
                                        &mut req_body,
                                        plan,
                                    );
                                    continue;
                                }
                            }
                            break (h, ubuf);
                        }
                        (Err(ProxyError::ClientClosed), _) => {
                            self.w.pools.borrow_mut().discard(conn);
                            return (self.client_gone(bytes_in), rbuf, wbuf);
                        }
                        (Err(e), ubuf) => {
                            let stale = reused
                                && replayable
                                && !stale_retried
                                && ubuf.is_empty()
                                && matches!(e, ProxyError::UpstreamClosed(_));
                            self.w.pools.borrow_mut().discard(conn);
                            if stale {
                                stale_retried = true;
                                match fresh_conn(self.w, up, chosen.guard.endpoint, pol).await {
                                    Ok(c) => {
                                        conn = c;
                                        continue;
                                    }
                                    Err(e) => e,
                                }
                            } else {
                                e
                            }
                        }
                    }
                }
            };
            // The attempt failed before any response: tell the breaker, then try the next
            // attempt if the request can be sent again.
            chosen
                .guard
                .report(AttemptResult::Failure, resilience::now_ms());
            if !replayable {
                return self
                    .local_error(client, head, failed, rbuf, wbuf, false, t_head)
                    .await;
            }
            match self
                .switch(plan, &mut chosen, total_deadline, Some(failed))
                .await
            {
                Ok(c) => {
                    conn = c;
                    up = plan.upstream(chosen.upstream);
                    *sent_model = self.fill_request(
                        &mut wbuf,
                        head,
                        up,
                        chosen.guard.endpoint,
                        request_id,
                        traceparent.as_deref(),
                        &mut req_body,
                        plan,
                    );
                }
                Err(e) => {
                    // Never sent: phase 3b still runs, so the record names the model.
                    request_sent(&mut fx, head, &req_body).await;
                    let e = e.unwrap_or(ProxyError::NoEndpoint(up.name.clone()));
                    return self
                        .local_error(client, head, e, rbuf, wbuf, false, t_head)
                        .await;
                }
            }
        };
        let (rhead, rconsumed) = resp;
        let t_first_byte = Instant::now();
        let early = self.early_head.get();
        if early && !(200..300).contains(&rhead.status()) {
            // The client already has a 200 SSE head: the error becomes an SSE error event.
            self.w.pools.borrow_mut().discard(conn);
            let e = ProxyError::StatusAfterStreamStart(up.name.clone(), rhead.status());
            return self
                .local_error(client, head, e, rbuf, wbuf, false, t_head)
                .await;
        }
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
        // After an early SSE head the client expects chunks: a chunked upstream body goes on
        // verbatim, any other framing is re-chunked.
        let out_mode =
            if early && !matches!(out_mode, OutMode::Rewrite) && !matches!(kind, BodyKind::Chunked)
            {
                OutMode::Rechunk
            } else {
                out_mode
            };
        let chunked_out = matches!(out_mode, OutMode::Rewrite | OutMode::Rechunk);
        let keep_client = client_keep
            && (!matches!(kind, BodyKind::CloseDelimited) || chunked_out)
            && !self.w.is_draining();
        let upstream_reusable =
            rhead.keep_alive() && !rhead.must_close() && !matches!(kind, BodyKind::CloseDelimited);
        wbuf.clear();
        let client_model = match &req_body {
            ReqBody::Whole { facts: Some(f), .. } => f.model.as_deref(),
            _ => None,
        };
        let model = sent_model.as_deref().or(client_model);
        let from = (plan.failovers > 0).then(|| &*self.snap.upstreams[plan.primary].name);
        if !early {
            write_client_head(
                &mut wbuf,
                &rhead,
                head.version(),
                keep_client,
                chunked_out,
                kind,
                (&up.name, model, from),
                fx.as_ref().and_then(|(chain, ctx)| chain.rate_headers(ctx)),
            );
        }
        let t_resp_head = Instant::now();
        let mut head_pending = !early;

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
                Some(d) => {
                    let (read, which) = super::timer::timeout_idle_total(idle, d, read);
                    read.await.map_err(|_| match which {
                        super::timer::Expired::Idle => ProxyError::UpstreamBodyTimeout(
                            up.name.clone(),
                            route.body_idle_timeout_ms,
                        ),
                        super::timer::Expired::Total => {
                            ProxyError::TotalTimeout(route.total_timeout_ms)
                        }
                    })
                }
                None => super::timer::timeout(idle, read).await.map_err(|_| {
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
        // An upstream that cut a redacted stream short: the text its redactor still holds goes
        // out (redacted) before the client's stream is broken, so no completion byte is lost.
        if let (Err(e), OutMode::Rewrite, false) = (&outcome, out_mode, head_pending) {
            if !matches!(e, ProxyError::ClientClosed) {
                if let Some((chain, ctx)) = fx.as_mut() {
                    let mut out = std::mem::take(&mut rewritten);
                    out.clear();
                    chain.abort_response_rewrite(ctx, &mut out).await;
                    if !out.is_empty() {
                        wbuf.clear();
                        http1::write_chunk(&mut wbuf, &out);
                        let (_, b) = client.write_all(wbuf).await;
                        wbuf = b;
                    }
                }
            }
        }

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
                    chosen.guard.late_failure(resilience::now_ms());
                    Outcome::UpstreamAbort
                };
                d.error = Some(e);
            }
        }
        (d, rbuf, wbuf)
    }

    /// Move on to the plan's next attempt after a failed one: wait its backoff (never past
    /// the total deadline), then connect; a connect failure is reported and the plan asked
    /// again. `Err(last)`: no attempt left; `last` is the most recent error (`None` if only
    /// the failed response itself is left to forward).
    async fn switch(
        &self,
        plan: &mut Plan<'a>,
        chosen: &mut Chosen<'a>,
        total_deadline: Option<monoio::time::Instant>,
        mut last: Option<ProxyError>,
    ) -> Result<UpConn, Option<ProxyError>> {
        loop {
            let next = {
                let pools = self.w.pools.borrow();
                plan.next(pools.rr(), resilience::now_ms())
            };
            let Some((backoff_ms, next)) = next else {
                return Err(last);
            };
            if backoff_ms > 0 {
                let wake = monoio::time::Instant::now() + Duration::from_millis(backoff_ms);
                if total_deadline.is_some_and(|d| wake >= d) {
                    return Err(last);
                }
                super::timer::sleep_until(wake).await;
            }
            // The previous attempt's guard (already reported) goes here.
            *chosen = next;
            let up = plan.upstream(chosen.upstream);
            match upstream::acquire_at(
                &self.w.pools,
                up,
                chosen.guard.endpoint,
                false,
                plan.connect_timeout_ms().unwrap_or(up.connect_timeout_ms),
            )
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => {
                    chosen
                        .guard
                        .report(AttemptResult::Failure, resilience::now_ms());
                    last = Some(e);
                }
            }
        }
    }

    /// Write the request for the current attempt into `wbuf`: the head for its upstream and
    /// endpoint, and the body (its `model` rewritten when the target asks for another).
    /// Returns the model sent when it was rewritten.
    #[allow(clippy::too_many_arguments)]
    fn fill_request(
        &self,
        wbuf: &mut Vec<u8>,
        head: &RequestHead,
        up: &UpstreamRt,
        endpoint: usize,
        request_id: &str,
        traceparent: Option<&str>,
        body: &mut ReqBody,
        plan: &Plan<'_>,
    ) -> Option<Arc<str>> {
        let authority = &up.endpoints[endpoint].authority;
        match body {
            ReqBody::Whole {
                body,
                changed,
                facts,
            } => {
                wbuf.clear();
                let client_model = facts.as_ref().and_then(|f| f.model.as_deref());
                let spans = facts.as_ref().map(|f| &f.model_spans[..]).unwrap_or(&[]);
                let send = plan
                    .model_for(client_model)
                    .filter(|m| Some(&**m) != client_model && !spans.is_empty());
                // The body as this attempt sends it: with the target's model, or as it is.
                let rewritten = send.as_ref().map(|m| route::model::rewrite(body, spans, m));
                let out: &[u8] = rewritten.as_deref().unwrap_or(body);
                let framing = BodyFraming::Length {
                    len: out.len(),
                    drop_encoding: rewritten.is_some() || *changed,
                };
                self.upstream_head(wbuf, head, up, authority, request_id, framing, traceparent);
                wbuf.extend_from_slice(out);
                send
            }
            ReqBody::Raw { head_len } => {
                let tail = wbuf.split_off((*head_len).min(wbuf.len()));
                wbuf.clear();
                self.upstream_head(
                    wbuf,
                    head,
                    up,
                    authority,
                    request_id,
                    BodyFraming::AsReceived,
                    traceparent,
                );
                *head_len = wbuf.len();
                wbuf.extend_from_slice(&tail);
                None
            }
        }
    }

    /// One SSE keep-alive while a streaming request waits for its first token. The first
    /// one sends the response head (200, `text/event-stream`, chunked) ahead of the upstream.
    async fn send_keepalive(&self, client: &mut Io, client_keep: bool) -> Result<(), ()> {
        let mut out = Vec::with_capacity(256);
        if !self.early_head.get() {
            http1::write_status_line(&mut out, 200, "OK", Version::Http11);
            http1::write_header(&mut out, "content-type", b"text/event-stream");
            http1::write_header(&mut out, "cache-control", b"no-cache");
            http1::write_header(&mut out, "via", VIA);
            http1::write_header(&mut out, "transfer-encoding", b"chunked");
            if !client_keep {
                http1::write_header(&mut out, "connection", b"close");
            }
            http1::finish_head(&mut out);
            self.early_head.set(true);
        }
        http1::write_chunk(&mut out, SSE_KEEPALIVE);
        let (res, _) = client.write_all(out).await;
        res.map_err(|_| ())
    }

    /// Read a whole request body for the filters, bounded by `limit` decoded bytes.
    async fn read_request_body(
        &self,
        client: &mut Io,
        rbuf: &mut Vec<u8>,
        decoder: &mut BodyDecoder,
        limit: usize,
        idle_ms: u64,
    ) -> Result<Buffered, ProxyError> {
        let idle = Duration::from_millis(idle_ms);
        // A Content-Length body's wire bytes are its decoded bytes: it needs no raw copy (for
        // the over-limit case) and its size is known up front (one allocation).
        let length_framed = matches!(decoder.kind(), BodyKind::Length(_));
        let mut body = match decoder.bytes_remaining_hint() {
            Some(n) if length_framed => Vec::with_capacity((n as usize).min(limit + 1)),
            _ => Vec::new(),
        };
        let mut raw_len = 0usize;
        let mut raw_kept: Vec<u8> = Vec::new();
        loop {
            let mut over = false;
            let before = body.len();
            let p = decoder.advance(rbuf, |d| {
                if body.len() + d.len() > limit {
                    over = true;
                } else {
                    body.extend_from_slice(d);
                }
            })?;
            if !length_framed {
                raw_kept.extend_from_slice(&rbuf[..p.consumed]);
            }
            raw_len += p.consumed;
            if over {
                // Forward what was read as it came; the rest streams after it.
                if length_framed {
                    body.truncate(before);
                    body.extend_from_slice(&rbuf[..p.consumed]);
                    raw_kept = body;
                }
                rbuf.drain(..p.consumed);
                return Ok(Buffered::OverLimit(raw_kept));
            }
            rbuf.drain(..p.consumed);
            if p.done {
                return Ok(Buffered::Whole(body, raw_len));
            }
            let buf = std::mem::take(rbuf);
            let (res, b) = match super::timer::timeout(idle, client.read_append(buf)).await {
                Ok(r) => r,
                Err(_) => return Err(ProxyError::ClientBodyTimeout(idle_ms)),
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
            let (res, b) = match super::timer::timeout(idle, client.read_append(rbuf)).await {
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
    /// With `keepalive_ms > 0`, an SSE keep-alive goes to the client every `keepalive_ms`
    /// while nothing has arrived (the read itself is never dropped for it: only the timer
    /// races the read). `Err(ClientClosed)`: a keep-alive could not be written.
    #[allow(clippy::too_many_arguments)]
    async fn read_response_head(
        &self,
        conn: &mut UpConn,
        mut ubuf: Vec<u8>,
        route: &RouteRt,
        up: &UpstreamRt,
        total_deadline: Option<monoio::time::Instant>,
        client: &mut Io,
        keepalive_ms: u64,
        client_keep: bool,
    ) -> (Result<(ResponseHead, usize), ProxyError>, Vec<u8>) {
        let mut deadline =
            monoio::time::Instant::now() + Duration::from_millis(route.first_byte_timeout_ms);
        if let Some(t) = total_deadline {
            deadline = deadline.min(t);
        }
        let limits = self.l.limits;
        // Busy-poll (when configured) while this exchange waits for the answer.
        let _spin = self.w.busy.wait_upstream();
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
            let read = super::timer::timeout_at(deadline, conn.io.read_append(ubuf));
            let r = if keepalive_ms == 0 {
                read.await
            } else {
                let mut read = std::pin::pin!(read);
                loop {
                    let tick = Duration::from_millis(keepalive_ms);
                    match super::timer::timeout(tick, read.as_mut()).await {
                        Ok(r) => break r,
                        Err(_) => {
                            if self.send_keepalive(client, client_keep).await.is_err() {
                                return (Err(ProxyError::ClientClosed), Vec::new());
                            }
                        }
                    }
                }
            };
            let (res, b) = match r {
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
            && !self.w.is_draining()
            && !self.early_head.get();
        wbuf.clear();
        if self.early_head.get() {
            // The client has a 200 SSE head already: an SSE error event in the OpenAI error
            // shape, then the end of the stream (and of the connection).
            write_sse_error(&mut wbuf, &e);
        } else {
            write_error_response(&mut wbuf, &e, head.version(), !keep);
        }
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
            upstream: match (self.served_by.get(), upstream) {
                (Some(u), x) if x != NONE_IDX => u as u16,
                _ => upstream,
            },
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
            routing: self.routing.take(),
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
        match super::timer::timeout_at(deadline, client.read_append(buf)).await {
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
        routing: RoutingRecord::default(),
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
    uuid_v4(fastrand::u64(..), fastrand::u64(..))
}

/// An RFC 9562 version-4 UUID in its 36-character text form from 128 random bits. Written by
/// hand: `format!` with five width specs cost ~2,500 instructions per request (callgrind), a
/// tenth of a whole pass-through exchange.
fn uuid_v4(a: u64, b: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, word) in [a, b].into_iter().enumerate() {
        for nib in (0..16).rev() {
            // Dashes after hex digits 8, 12, 16 and 20 (before 8-4-4-4-12 groups).
            let pos = i * 16 + (15 - nib);
            if matches!(pos, 8 | 12 | 16 | 20) {
                out[o] = b'-';
                o += 1;
            }
            out[o] = HEX[((word >> (nib * 4)) & 0xf) as usize];
            o += 1;
        }
    }
    // Every byte is ASCII hex or '-'.
    out.iter().map(|&c| char::from(c)).collect()
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

impl Exchange<'_> {
    /// [`write_upstream_head`] for this exchange's client (its address for `X-Forwarded-For`,
    /// whether its credential is stripped): attempts differ only in target and body framing.
    #[allow(clippy::too_many_arguments)]
    fn upstream_head(
        &self,
        out: &mut Vec<u8>,
        head: &RequestHead,
        up: &UpstreamRt,
        authority: &str,
        request_id: &str,
        framing: BodyFraming,
        traceparent: Option<&str>,
    ) {
        write_upstream_head(
            out,
            head,
            up,
            authority,
            self.peer,
            request_id,
            framing,
            traceparent,
            self.strip_cred.get(),
        );
    }
}

/// Filter phase 3b for a request whose body was read whole (a streamed body has no deferred
/// inspection). Idempotent: the chain runs it once.
async fn request_sent(
    fx: &mut Option<(&Chain, &mut ExchangeCtx)>,
    head: &RequestHead,
    req_body: &ReqBody,
) {
    if let (Some((chain, ctx)), ReqBody::Whole { body, .. }) = (fx.as_mut(), req_body) {
        chain.on_request_sent(ctx, head, body).await;
    }
}

/// The request head as the upstream sees it: origin-form target, hop-by-hop headers and those
/// named in `Connection` removed, `Expect` answered by us, Host per `host_rewrite`,
/// `X-Forwarded-For` appended, `X-Request-Id` set, `Via` appended, framing kept.
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
        http1::write_header_parsed(out, name, value);
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
#[allow(clippy::too_many_arguments)]
fn write_client_head(
    out: &mut Vec<u8>,
    r: &ResponseHead,
    client_version: Version,
    keep: bool,
    rechunk: bool,
    kind: BodyKind,
    routing: (&str, Option<&str>, Option<&str>),
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
        http1::write_header_parsed(out, name, value);
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
    write_routing_headers(out, routing.0, routing.1, routing.2);
    if !keep {
        http1::write_header(out, "connection", b"close");
    } else if client_version == Version::Http10 {
        http1::write_header(out, "connection", b"keep-alive");
    }
    http1::finish_head(out);
}

/// An error as the last event of an SSE stream whose head was already sent:
/// `event: error` + `data: {"error":{...}}`, then the chunked terminator.
fn write_sse_error(out: &mut Vec<u8>, e: &ProxyError) {
    let mut ev = Vec::with_capacity(200);
    ev.extend_from_slice(b"event: error\ndata: ");
    write_openai_error(&mut ev, e.status(), e.code(), &e.to_string());
    ev.extend_from_slice(b"\n\n");
    http1::write_chunk(out, &ev);
    http1::write_last_chunk(out);
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
    if let Some(s) = e.retry_after_s() {
        http1::write_header(out, "retry-after", s.to_string().as_bytes());
    }
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
    fn uuid_v4_matches_the_formatted_reference() {
        for (a, b) in [
            (0u64, 0u64),
            (u64::MAX, u64::MAX),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
        ] {
            let (ra, rb) = (
                (a & 0xffff_ffff_ffff_0fff) | 0x4000,
                (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000,
            );
            let want = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                ra >> 32,
                (ra >> 16) & 0xffff,
                ra & 0xffff,
                rb >> 48,
                rb & 0xffff_ffff_ffff
            );
            assert_eq!(uuid_v4(a, b), want);
        }
    }

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
