//! The filter chain: what sluice does *to* model traffic, in a fixed set of phases.
//!
//! Owns: the per-route [`Chain`] (built once per snapshot, shared read-only) and the
//! per-exchange [`ExchangeCtx`] (owned by the exchange, on its worker).
//!
//! Phases, in order, each an `async fn` with one contract (pingora's phases, but async so a
//! filter may await — e.g. a rate limiter waiting on a lease — without blocking the worker):
//!
//! 1. [`Chain::on_request_head`]: may reject. Sets the caller identity.
//! 2. [`Chain::wants_request_body`]: whether the body must be read (bounded by
//!    `body_bytes_max`) before anything is forwarded. Only then is a body buffered.
//! 3. [`Chain::on_request_body`]: may rewrite the body (PII redaction, usage injection) or
//!    reject it (PII `block`, which fails closed on a body it cannot parse).
//!
//!    Then [`Chain::on_request_sent`] (phase 3b): the request is written to the upstream.
//!    Request inspection that nothing before the send depends on runs here, while the upstream
//!    works on the request, instead of in phase 3 on the request's path.
//! 4. [`Chain::on_response_head`]: prepares response inspection; returns whether the response
//!    body must be rewritten (only when sluice changed the request so that the response must be
//!    changed back: the injected usage chunk is stripped).
//! 5. [`Chain::on_response_data`]: sees each decoded body slice *after* it was forwarded, so
//!    inspection never delays a token.
//! 6. [`Chain::rewrite_response_data`]: only in rewrite mode; produces the bytes to forward.
//! 7. [`Chain::on_complete`]: final accounting into a [`GenAiRecord`] for the telemetry thread.
//!
//! Why an enum and not `dyn Filter`: the set is closed and known; enum dispatch costs a branch,
//! needs no boxing, and lets each phase be an ordinary `async fn`.

use std::sync::Arc;
use std::time::Instant;

use sha2::Digest;

use crate::config::{CallerConfig, CallerSource, IncludeUsage, OverLimit};
use crate::http1::{RequestHead, ResponseHead};
use crate::inspect::{self, Dialect, RequestFacts, UsageAccumulator, UsageChunkStripper};
use crate::pii::{self, AuditFinding, Engine, RequestOutcome};

/// A refusal by a filter: answered with this status and an OpenAI-shaped error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Reject {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

pub struct InspectFilter {
    /// `None`: detect by path.
    pub dialect: Option<Dialect>,
    pub include_usage: IncludeUsage,
}

pub struct PiiFilter {
    pub engine: Arc<Engine>,
}

/// The filters a route runs, in order.
pub enum Filter {
    Pii(PiiFilter),
    Inspect(InspectFilter),
    /// Inbound authentication; always first (its identity keys the rate limits).
    Auth(crate::auth::AuthFilter),
    /// Rate limits; after inspection (token limits need the request's facts).
    RateLimit(crate::ratelimit::RateLimitFilter),
}

pub struct Chain {
    pub filters: Vec<Filter>,
    /// Bound on a request body read for inspection.
    pub body_bytes_max: usize,
    pub over_limit: OverLimit,
    /// True when a PII filter may block: then an uninspectable body is refused, never passed.
    pub fails_closed: bool,
}

/// What the chain learned and decided during one exchange.
/// W3C trace context of one model call: continued from the client's `traceparent`, or new.
#[derive(Debug, Clone, Copy)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub parent_span_id: Option<[u8; 8]>,
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceCtx {
    pub fn from_request(head: &RequestHead) -> TraceCtx {
        match head
            .header("traceparent")
            .and_then(crate::otel::parse_traceparent)
        {
            Some(tp) => TraceCtx {
                trace_id: tp.trace_id,
                parent_span_id: Some(tp.parent_id),
                span_id: crate::otel::new_span_id(),
                sampled: tp.sampled,
            },
            None => TraceCtx {
                trace_id: crate::otel::new_trace_id(),
                parent_span_id: None,
                span_id: crate::otel::new_span_id(),
                sampled: true,
            },
        }
    }

    /// The `traceparent` the upstream gets: same trace, our span as its parent.
    pub fn header_value(&self) -> String {
        crate::otel::format_traceparent(&self.trace_id, &self.span_id, self.sampled)
    }
}

pub struct ExchangeCtx {
    pub caller: Arc<str>,
    pub trace: Option<TraceCtx>,
    pub dialect: Option<Dialect>,
    pub facts: Option<RequestFacts>,
    /// Boxed (like `stripper`): 624 bytes that only inspected answers need would otherwise sit in
    /// every connection task (see proxy::timer on task sizes). One allocation per inspected answer.
    pub usage: Option<Box<UsageAccumulator>>,
    pub stripper: Option<Box<UsageChunkStripper>>,
    pub injected_usage: bool,
    pub body_uninspected: bool,
    pub pii_findings: Vec<AuditFinding>,
    pub first_content_at: Option<Instant>,
    pub last_content_at: Option<Instant>,
    pub content_events: u64,
    pub streaming: bool,
    /// The upstream's response status (0 before the response head).
    pub response_status: u16,
    /// A non-streaming JSON response held for PII redaction (bounded by `body_bytes_max`).
    pub response_hold: Option<Vec<u8>>,
    /// PII redaction of a streamed (SSE) response, event by event with a bounded hold-back.
    pub sse_redact: Option<Box<pii::SseRedactor>>,
    /// Reused buffer between two response rewriters (usage-chunk stripper, then redactor).
    pub rewrite_scratch: Vec<u8>,
    /// What the rate limits took (to give back or reconcile) and the `x-ratelimit-*` values.
    pub ratelimit: crate::ratelimit::ExchangeLimits,
    /// The caller was authenticated by an auth filter (its credential is not forwarded).
    pub authenticated: bool,
    /// Request inspection was left for [`Chain::on_request_sent`].
    pub inspect_deferred: bool,
}

impl ExchangeCtx {
    pub fn new(caller: Arc<str>) -> Self {
        ExchangeCtx {
            caller,
            trace: None,
            dialect: None,
            facts: None,
            usage: None,
            stripper: None,
            injected_usage: false,
            body_uninspected: false,
            pii_findings: Vec::new(),
            first_content_at: None,
            last_content_at: None,
            content_events: 0,
            streaming: false,
            response_status: 0,
            response_hold: None,
            sse_redact: None,
            rewrite_scratch: Vec::new(),
            ratelimit: Default::default(),
            authenticated: false,
            inspect_deferred: false,
        }
    }
}

/// What the chain hands to telemetry for one model call (boxed in the request record).
#[derive(Debug, Clone, Default)]
pub struct GenAiRecord {
    pub caller: Arc<str>,
    pub provider: &'static str,
    pub operation: &'static str,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub usage: Option<inspect::Usage>,
    pub malformed_events: u32,
    pub uninspected: bool,
    pub aborted: bool,
    pub ttft_us: Option<u64>,
    /// Mean time per output token after the first, for streams.
    pub tpot_us: Option<u64>,
    pub pii: Vec<PiiAudit>,
    pub trace: Option<TraceCtx>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
}

/// One PII detection, for metrics and the audit log: where and what kind, never the value.
#[derive(Debug, Clone)]
pub struct PiiAudit {
    pub entity: Arc<str>,
    pub action: &'static str,
    pub direction: &'static str,
    /// JSON path of the string it was found in, e.g. `messages[1].content`.
    pub path: String,
    /// Byte offsets in the decoded string.
    pub start: usize,
    pub end: usize,
}

/// Identify the caller, per `caller.sources` in order.
///
/// `peer_identity` is the SPIFFE ID of a verified client certificate (mTLS listeners).
pub fn caller_of(
    cfg: &CallerConfig,
    head: &RequestHead,
    peer: std::net::SocketAddr,
    peer_identity: Option<&Arc<str>>,
) -> Arc<str> {
    for s in &cfg.sources {
        match s {
            CallerSource::PeerIdentity => {
                if let Some(id) = peer_identity {
                    return id.clone();
                }
            }
            CallerSource::Header => {
                if let Some(v) = head.header(&cfg.header) {
                    if let Ok(v) = std::str::from_utf8(v) {
                        let v = v.trim();
                        if !v.is_empty() && v.len() <= 128 {
                            return intern_caller(v);
                        }
                    }
                }
            }
            CallerSource::ApiKeyHash => {
                // The auth scheme is case-insensitive (RFC 9110 §11.1): `bearer k` is `Bearer k`.
                let key = head
                    .header("authorization")
                    .map(|v| match v.get(..7) {
                        Some(p) if p.eq_ignore_ascii_case(b"bearer ") => &v[7..],
                        _ => v,
                    })
                    .or_else(|| head.header("x-api-key"));
                if let Some(k) = key {
                    return api_key_pseudonym(k);
                }
            }
            CallerSource::SourceAddress => {
                // Formatted on the stack: an IP address is at most 45 characters.
                use std::io::Write;
                let mut buf = [0u8; 48];
                let mut w = &mut buf[..];
                let _ = write!(w, "{}", peer.ip());
                let n = 48 - w.len();
                return intern_caller(std::str::from_utf8(&buf[..n]).unwrap_or_default());
            }
            CallerSource::Static => {
                if let Some(n) = &cfg.static_name {
                    return intern_caller(n);
                }
            }
        }
    }
    intern_caller(&cfg.fallback)
}

/// Caller names remembered per worker thread, most recently used first: a sidecar sees a handful
/// of callers, so the name of a request is a clone of a cached `Arc<str>` rather than a new
/// allocation per request. Bounded; never leaves its thread.
pub const CALLER_INTERN_MAX: usize = 64;

thread_local! {
    static CALLER_NAMES: std::cell::RefCell<Vec<Arc<str>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn intern_caller(v: &str) -> Arc<str> {
    CALLER_NAMES.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(i) = c.iter().position(|n| **n == *v) {
            c[..=i].rotate_right(1);
            return c[0].clone();
        }
        let a: Arc<str> = Arc::from(v);
        if c.len() >= CALLER_INTERN_MAX {
            c.pop();
        }
        c.insert(0, a.clone());
        a
    })
}

/// API-key pseudonyms remembered per worker thread. A sidecar's callers use a handful of keys,
/// so this spares a SHA-256 and a string per request (measured: ~7k instructions of ~50k per
/// inspected request). Bounded; most recently used first; never leaves its thread, never logged.
pub const KEY_PSEUDONYM_CACHE_MAX: usize = 32;

/// (API key, its pseudonym), most recently used first.
type KeyPseudonyms = Vec<(Box<[u8]>, Arc<str>)>;

thread_local! {
    static KEY_PSEUDONYMS: std::cell::RefCell<KeyPseudonyms> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `key:` + the first 6 bytes of SHA-256(key) in hex: stable, not reversible, never the key.
fn api_key_pseudonym(k: &[u8]) -> Arc<str> {
    KEY_PSEUDONYMS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(i) = c.iter().position(|(key, _)| **key == *k) {
            c[..=i].rotate_right(1);
            return c[0].1.clone();
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let d = sha2::Sha256::digest(k);
        let mut s = String::with_capacity(16);
        s.push_str("key:");
        for b in &d[..6] {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        let v: Arc<str> = Arc::from(s);
        if c.len() >= KEY_PSEUDONYM_CACHE_MAX {
            c.pop();
        }
        c.insert(0, (k.into(), v.clone()));
        v
    })
}

fn operation_of(d: Option<Dialect>) -> &'static str {
    match d {
        Some(Dialect::OpenAiEmbeddings) => "embeddings",
        Some(Dialect::OpenAiCompletions) | Some(Dialect::Tgi) => "text_completion",
        Some(Dialect::OpenAiResponses) => "chat",
        Some(_) => "chat",
        None => "unknown",
    }
}

/// Request inspection of a decoded body; `None` (counted as uninspected) when it is not JSON
/// the inspector understands: such a body is forwarded untouched.
fn inspect_body(
    ctx: &mut ExchangeCtx,
    d: Dialect,
    head: &RequestHead,
    body: &[u8],
) -> Option<RequestFacts> {
    let opts = inspect::RequestOptions {
        path: head.path(),
        prompt_text_bytes_max: inspect::PROMPT_TEXT_BYTES_MAX,
    };
    match inspect::inspect_request_with(d, body, &opts) {
        Ok(facts) => Some(facts),
        Err(_) => {
            ctx.body_uninspected = true;
            None
        }
    }
}

fn provider_of(d: Option<Dialect>) -> &'static str {
    match d {
        Some(Dialect::Anthropic) => "anthropic",
        Some(Dialect::Tgi) => "tgi",
        Some(Dialect::Ollama) => "ollama",
        Some(_) => "openai",
        None => "unknown",
    }
}

impl Chain {
    fn pii(&self) -> Option<&PiiFilter> {
        self.filters.iter().find_map(|f| match f {
            Filter::Pii(p) => Some(p),
            _ => None,
        })
    }

    fn ratelimit(&self) -> Option<&crate::ratelimit::RateLimitFilter> {
        self.filters.iter().find_map(|f| match f {
            Filter::RateLimit(r) => Some(r),
            _ => None,
        })
    }

    /// The `x-ratelimit-*` (and, on a refusal, `retry-after`) values every answer carries.
    pub fn rate_headers<'c>(
        &self,
        ctx: &'c ExchangeCtx,
    ) -> Option<&'c crate::ratelimit::RateHeaders> {
        let h = &ctx.ratelimit.headers;
        (!h.is_empty()).then_some(h)
    }

    /// Phase 7 part: token reservations replaced by the actual usage.
    fn reconcile_limits(&self, ctx: &mut ExchangeCtx, usage: Option<&inspect::Usage>) {
        if let Some(r) = self.ratelimit() {
            let actual = usage.map(|u| u.total_tokens.max(u.input_tokens + u.output_tokens));
            let billed = actual.is_some() || (200..300).contains(&ctx.response_status);
            r.reconcile(ctx, actual, billed);
        }
    }

    fn inspect(&self) -> Option<&InspectFilter> {
        self.filters.iter().find_map(|f| match f {
            Filter::Inspect(i) => Some(i),
            _ => None,
        })
    }

    /// Phase 1.
    pub async fn on_request_head(
        &self,
        ctx: &mut ExchangeCtx,
        head: &RequestHead,
    ) -> Result<(), Reject> {
        if let Some(i) = self.inspect() {
            ctx.dialect = Dialect::resolve(i.dialect, head.method_str(), head.path());
        }
        for f in &self.filters {
            match f {
                Filter::Auth(a) => a.on_request_head(ctx, head)?,
                Filter::RateLimit(r) => r.on_request_head(ctx, head).await?,
                Filter::Pii(_) | Filter::Inspect(_) => {}
            }
        }
        Ok(())
    }

    /// Phase 2: whether the request body must be read before forwarding.
    pub fn wants_request_body(&self, ctx: &ExchangeCtx, head: &RequestHead) -> bool {
        if matches!(head.body_kind(), crate::http1::BodyKind::Empty) {
            return false;
        }
        self.filters.iter().any(|f| match f {
            Filter::Pii(p) => p.engine.enabled(),
            Filter::Inspect(_) => ctx.dialect.is_some(),
            Filter::Auth(_) => false,
            Filter::RateLimit(r) => r.needs_body,
        })
    }

    /// The body exceeded `body_bytes_max`: `Ok` = forward it uninspected (rate limits that
    /// waited for the body are applied now, with the default token estimate).
    pub async fn on_body_over_limit(
        &self,
        ctx: &mut ExchangeCtx,
        head: &RequestHead,
    ) -> Result<(), Reject> {
        if self.fails_closed || self.over_limit == OverLimit::Reject {
            return Err(Reject {
                status: 413,
                code: "request_too_large_to_inspect",
                message: format!(
                    "request body exceeds the inspection limit of {} bytes",
                    self.body_bytes_max
                ),
            });
        }
        ctx.body_uninspected = true;
        if let Some(r) = self.ratelimit() {
            r.on_request_body(ctx, head, self.body_bytes_max).await?;
        }
        Ok(())
    }

    /// Phase 3. `body` is the whole decoded request body; it may be replaced. Returns whether
    /// it changed (the caller then re-frames it with a new Content-Length and drops
    /// Content-Encoding).
    pub async fn on_request_body(
        &self,
        ctx: &mut ExchangeCtx,
        head: &RequestHead,
        body: &mut Vec<u8>,
    ) -> Result<bool, Reject> {
        let mut changed = false;
        let encoding = head
            .header("content-encoding")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"));
        for f in &self.filters {
            match f {
                Filter::Pii(p) => {
                    if !p.engine.enabled() {
                        continue;
                    }
                    let enc = if changed { None } else { encoding };
                    match pii::redact_request(&p.engine, body, enc) {
                        Ok(RequestOutcome::Unchanged { findings }) => {
                            ctx.pii_findings.extend(findings)
                        }
                        Ok(RequestOutcome::Rewritten { body: b, findings }) => {
                            ctx.pii_findings.extend(findings);
                            *body = b;
                            changed = true;
                        }
                        Ok(RequestOutcome::Blocked { entities, findings }) => {
                            ctx.pii_findings.extend(findings);
                            let names: Vec<&str> = entities.iter().map(|e| &**e).collect();
                            return Err(Reject {
                                status: 400,
                                code: "pii_blocked",
                                message: format!(
                                    "request blocked: it contains {}",
                                    names.join(", ")
                                ),
                            });
                        }
                        Err(e) => {
                            use crate::error::Classify;
                            // Fail closed: a body the engine cannot read is never forwarded.
                            return Err(Reject {
                                status: e.status(),
                                code: e.code(),
                                message: format!("request refused by PII policy: {e}"),
                            });
                        }
                    }
                }
                Filter::Inspect(i) => {
                    let Some(d) = ctx.dialect else { continue };
                    if encoding.is_some() && !changed {
                        // Compressed and not decoded by a PII filter: leave it alone.
                        ctx.body_uninspected = true;
                        continue;
                    }
                    if self.inspect_can_wait(i) {
                        ctx.inspect_deferred = true;
                        continue;
                    }
                    let Some(facts) = inspect_body(ctx, d, head, body) else {
                        continue;
                    };
                    if i.include_usage == IncludeUsage::Inject
                        && facts.stream
                        && d.supports_include_usage()
                        && facts.include_usage != Some(true)
                    {
                        if let Some(b) = inspect::inject_include_usage(body) {
                            *body = b;
                            changed = true;
                            ctx.injected_usage = true;
                        }
                    }
                    ctx.facts = Some(facts);
                }
                Filter::Auth(_) => {}
                Filter::RateLimit(r) => r.on_request_body(ctx, head, body.len()).await?,
            }
        }
        Ok(changed)
    }

    /// Whether request inspection may wait until the request is sent (phase 3b). It may
    /// unless something before the send reads its facts: usage injection rewrites the body
    /// by the `stream` flag, and rate limits that wait for the body reserve tokens by the
    /// prompt size and output cap.
    fn inspect_can_wait(&self, i: &InspectFilter) -> bool {
        i.include_usage != IncludeUsage::Inject && !self.ratelimit().is_some_and(|r| r.needs_body)
    }

    /// Phase 3b: the request (head and whole `body`, as forwarded) has been written to the
    /// upstream, or every attempt to send it failed. Runs the request inspection that phase 3
    /// left for now ([`ExchangeCtx::inspect_deferred`]); idempotent.
    ///
    /// Why here: parsing a prompt of a few KiB costs microseconds (simd-json needs its own
    /// copy of the document, and the prompt text kept for token estimation is copied out
    /// again). Done after the write, it overlaps the upstream's work on the request, which
    /// for a model takes far longer, so it leaves the request's added latency; the facts are
    /// first needed at the response head (phase 4).
    pub async fn on_request_sent(&self, ctx: &mut ExchangeCtx, head: &RequestHead, body: &[u8]) {
        if !std::mem::take(&mut ctx.inspect_deferred) {
            return;
        }
        let Some(d) = ctx.dialect else { return };
        if let Some(facts) = inspect_body(ctx, d, head, body) {
            ctx.facts = Some(facts);
        }
    }

    /// Phase 4. Returns true when the response body must go through
    /// [`Chain::rewrite_response_data`] instead of being forwarded verbatim.
    pub async fn on_response_head(&self, ctx: &mut ExchangeCtx, r: &ResponseHead) -> bool {
        ctx.response_status = r.status();
        let ctype = r.header("content-type").unwrap_or(b"");
        let mut rewrite = false;
        // A non-streaming JSON completion is held (bounded) and redacted whole: PII in a
        // model's answer must not reach the app either. A stream is redacted event by event:
        // only the hold-back of the text (at most the longest entity) is delayed, never an
        // event, so time to first token keeps. Compressed answers are forwarded as they are.
        if let Some(p) = self.pii() {
            let json = ctype.windows(4).any(|w| w.eq_ignore_ascii_case(b"json"));
            let plain = (200..300).contains(&r.status()) && r.header("content-encoding").is_none();
            if plain && starts_with_ci(ctype, b"text/event-stream") {
                if p.engine.streaming_enabled() {
                    ctx.sse_redact = Some(Box::new(pii::SseRedactor::new(Arc::clone(&p.engine))));
                    rewrite = true;
                }
            } else if p.engine.responses_enabled() && plain && json {
                ctx.response_hold = Some(Vec::new());
                rewrite = true;
            }
        }
        let inspect_rewrite = self.on_response_head_inspect(ctx, r, ctype);
        // A hard token budget on streams: SSE answers go through the rewrite path so that a
        // stream that runs the budget dry can end with an error event.
        let guard = self.ratelimit().is_some_and(|l| l.stream_cutoff)
            && ctx.streaming
            && (200..300).contains(&r.status())
            && starts_with_ci(ctype, b"text/event-stream")
            && r.header("content-encoding").is_none();
        ctx.ratelimit.guard_stream = guard;
        rewrite | inspect_rewrite | guard
    }

    /// Whether a guarded stream was cut on its hard budget (the exchange ends it).
    pub fn stream_cut(&self, ctx: &ExchangeCtx) -> bool {
        ctx.ratelimit.is_cut()
    }

    fn on_response_head_inspect(
        &self,
        ctx: &mut ExchangeCtx,
        r: &ResponseHead,
        ctype: &[u8],
    ) -> bool {
        let Some(d) = ctx.dialect else { return false };
        if self.inspect().is_none() {
            return false;
        }
        let streaming = starts_with_ci(ctype, b"text/event-stream")
            || starts_with_ci(ctype, b"application/x-ndjson")
            || (d == Dialect::Ollama && ctx.facts.as_ref().is_some_and(|f| f.stream));
        ctx.streaming = streaming;
        let mut acc = UsageAccumulator::new(d, streaming);
        if let Some(f) = &ctx.facts {
            acc = acc.with_request(f);
        }
        for (n, v) in r.headers() {
            acc.on_response_header(n.as_bytes(), v);
        }
        ctx.usage = Some(Box::new(acc));
        if ctx.injected_usage && streaming && (200..300).contains(&r.status()) {
            ctx.stripper = Some(Box::new(UsageChunkStripper::new()));
            return true;
        }
        false
    }

    /// Phase 5: a decoded body slice that has already been forwarded.
    pub async fn on_response_data(&self, ctx: &mut ExchangeCtx, data: &[u8]) {
        let Some(acc) = ctx.usage.as_mut() else {
            return;
        };
        let sig = acc.on_body_bytes(data);
        if sig.content_events > 0 {
            let now = Instant::now();
            if ctx.first_content_at.is_none() {
                ctx.first_content_at = Some(now);
            }
            ctx.last_content_at = Some(now);
            ctx.content_events += sig.content_events as u64;
            if ctx.ratelimit.guard_stream {
                if let Some(r) = self.ratelimit() {
                    r.on_stream_progress(ctx);
                }
            }
        }
    }

    /// Phase 6 (rewrite mode only): append the bytes to forward for `data` to `out`.
    pub async fn rewrite_response_data(
        &self,
        ctx: &mut ExchangeCtx,
        data: &[u8],
        out: &mut Vec<u8>,
    ) {
        if ctx.ratelimit.is_cut() {
            return; // cut on its hard budget: nothing more is forwarded
        }
        if let Some(hold) = ctx.response_hold.as_mut() {
            if hold.len() + data.len() <= self.body_bytes_max {
                hold.extend_from_slice(data);
                return;
            }
            // Too large to hold: release what was held and forward the rest as it comes,
            // uninspected (a response is never refused; counted in the uninspected metric).
            out.extend_from_slice(hold);
            out.extend_from_slice(data);
            ctx.response_hold = None;
            ctx.body_uninspected = true;
            return;
        }
        self.rewrite_stages(ctx, data, out);
        // A guarded stream that ran its hard token budget dry ends here with an error event.
        if ctx.ratelimit.guard_stream {
            if let Some(r) = self.ratelimit() {
                r.write_cut(ctx, out);
            }
        }
    }

    /// Stage 1: strip the usage chunk sluice asked for; stage 2: redact the stream.
    fn rewrite_stages(&self, ctx: &mut ExchangeCtx, data: &[u8], out: &mut Vec<u8>) {
        let Some(red) = ctx.sse_redact.as_mut() else {
            match ctx.stripper.as_mut() {
                Some(s) => s.feed(data, |fwd| match fwd {
                    inspect::Forward::Chunk(r) => out.extend_from_slice(&data[r]),
                    inspect::Forward::Held(b) => out.extend_from_slice(b),
                }),
                None => out.extend_from_slice(data),
            }
            return;
        };
        match ctx.stripper.as_mut() {
            Some(s) => {
                let mut mid = std::mem::take(&mut ctx.rewrite_scratch);
                mid.clear();
                s.feed(data, |fwd| match fwd {
                    inspect::Forward::Chunk(r) => mid.extend_from_slice(&data[r]),
                    inspect::Forward::Held(b) => mid.extend_from_slice(b),
                });
                red.feed(&mid, out);
                ctx.rewrite_scratch = mid;
            }
            None => red.feed(data, out),
        }
    }

    /// The upstream cut a rewritten response short: release what may still be released before
    /// the client's stream is broken. A stream's held text goes out redacted; a held JSON
    /// answer is dropped (it cannot be redacted whole and is never released unredacted).
    pub async fn abort_response_rewrite(&self, ctx: &mut ExchangeCtx, out: &mut Vec<u8>) {
        ctx.response_hold = None;
        if let Some(red) = ctx.sse_redact.as_mut() {
            red.finish(out);
        }
    }

    /// End of a rewritten stream: bytes still held by the rewriter.
    pub async fn finish_response_rewrite(&self, ctx: &mut ExchangeCtx, out: &mut Vec<u8>) {
        if let (Some(hold), Some(p)) = (ctx.response_hold.take(), self.pii()) {
            match pii::redact_response(&p.engine, &hold, None) {
                Ok(RequestOutcome::Rewritten { body, findings }) => {
                    ctx.pii_findings.extend(findings);
                    out.extend_from_slice(&body);
                }
                Ok(RequestOutcome::Unchanged { findings })
                | Ok(RequestOutcome::Blocked { findings, .. }) => {
                    ctx.pii_findings.extend(findings);
                    out.extend_from_slice(&hold);
                }
                Err(_) => {
                    // Not JSON the engine can read: forwarded as it came, counted.
                    ctx.body_uninspected = true;
                    out.extend_from_slice(&hold);
                }
            }
            return;
        }
        let mut mid = std::mem::take(&mut ctx.rewrite_scratch);
        mid.clear();
        if let Some(s) = ctx.stripper.as_mut() {
            let sink = if ctx.sse_redact.is_some() {
                &mut mid
            } else {
                &mut *out
            };
            s.finish(|fwd| {
                if let inspect::Forward::Held(b) = fwd {
                    sink.extend_from_slice(b)
                }
            });
        }
        if let Some(red) = ctx.sse_redact.as_mut() {
            red.feed(&mid, out);
            red.finish(out);
        }
        ctx.rewrite_scratch = mid;
    }

    /// Phase 7: the exchange is over (`aborted`: cut short by either side).
    pub async fn on_complete(
        &self,
        ctx: &mut ExchangeCtx,
        started: Instant,
        aborted: bool,
    ) -> Option<Box<GenAiRecord>> {
        if let Some(red) = ctx.sse_redact.as_mut() {
            ctx.pii_findings.extend(red.take_findings());
            if red.uninspected() > 0 {
                ctx.body_uninspected = true;
            }
        }
        let pii: Vec<_> = ctx
            .pii_findings
            .iter()
            .map(|f| PiiAudit {
                entity: f.name.clone(),
                action: f.action.as_str(),
                direction: f.direction.as_str(),
                path: f.path.clone(),
                start: f.start,
                end: f.end,
            })
            .collect();
        if ctx.dialect.is_none() {
            self.reconcile_limits(ctx, None);
            if pii.is_empty() {
                return None;
            }
            return Some(Box::new(GenAiRecord {
                caller: ctx.caller.clone(),
                pii,
                ..Default::default()
            }));
        }
        let mut report = ctx.usage.as_mut().map(|a| a.finish(aborted));
        // A refusal (429, 5xx, 4xx) that reports no usage was not processed by the provider:
        // nothing is billed, so nothing is estimated either.
        if !(200..300).contains(&ctx.response_status) {
            if let Some(r) = report.as_mut() {
                if r.usage.as_ref().is_some_and(|u| u.estimated) {
                    r.usage = None;
                }
            }
        }
        self.reconcile_limits(ctx, report.as_ref().and_then(|r| r.usage.as_ref()));
        let now_unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        let facts = ctx.facts.as_ref();
        let ttft_us = ctx
            .first_content_at
            .map(|t| t.duration_since(started).as_micros() as u64);
        let tpot_us = match (ctx.first_content_at, ctx.last_content_at, &report) {
            (Some(a), Some(b), Some(r)) => {
                let out = r.usage.as_ref().map(|u| u.output_tokens).unwrap_or(0);
                (out > 1).then(|| b.duration_since(a).as_micros() as u64 / (out - 1))
            }
            _ => None,
        };
        Some(Box::new(GenAiRecord {
            caller: ctx.caller.clone(),
            provider: provider_of(ctx.dialect),
            operation: operation_of(ctx.dialect),
            request_model: facts.and_then(|f| f.model.clone()),
            response_model: report
                .as_ref()
                .and_then(|r| r.usage.as_ref())
                .and_then(|u| u.response_model.clone()),
            stream: ctx.streaming,
            max_tokens: facts.and_then(|f| f.max_tokens),
            usage: report.as_ref().and_then(|r| r.usage.clone()),
            malformed_events: report.as_ref().map(|r| r.malformed_events).unwrap_or(0),
            uninspected: ctx.body_uninspected || report.as_ref().is_some_and(|r| r.uninspected),
            aborted,
            ttft_us: if ctx.streaming { ttft_us } else { None },
            tpot_us: if ctx.streaming { tpot_us } else { None },
            pii,
            trace: ctx.trace,
            start_unix_ns: now_unix_ns.saturating_sub(elapsed_ns),
            end_unix_ns: now_unix_ns,
        }))
    }
}

fn starts_with_ci(v: &[u8], prefix: &[u8]) -> bool {
    v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, HeadLimits};

    fn head(extra: &str) -> RequestHead {
        let raw = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        parse_request(raw.as_bytes(), &HeadLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn cfg(sources: Vec<CallerSource>) -> CallerConfig {
        CallerConfig {
            sources,
            header: "x-sluice-caller".into(),
            static_name: Some("billing".into()),
            fallback: "unknown".into(),
        }
    }

    fn inspect_chain(include_usage: IncludeUsage) -> Chain {
        Chain {
            filters: vec![Filter::Inspect(InspectFilter {
                dialect: None,
                include_usage,
            })],
            body_bytes_max: 1 << 20,
            over_limit: OverLimit::Pass,
            fails_closed: false,
        }
    }

    #[test]
    fn request_inspection_waits_for_the_send_unless_the_body_depends_on_it() {
        let h = head("content-type: application/json\r\n");
        let body =
            br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        crate::testing::rt().block_on(async {
            // Nothing before the send reads the facts: phase 3 leaves the body alone, 3b
            // inspects it (once).
            let chain = inspect_chain(IncludeUsage::Off);
            let mut ctx = ExchangeCtx::new("c".into());
            chain.on_request_head(&mut ctx, &h).await.expect("head");
            let mut b = body.to_vec();
            assert!(!chain
                .on_request_body(&mut ctx, &h, &mut b)
                .await
                .expect("body"));
            assert!(ctx.facts.is_none() && ctx.inspect_deferred);
            chain.on_request_sent(&mut ctx, &h, &b).await;
            let f = ctx.facts.take().expect("facts after the send");
            assert_eq!((f.model.as_deref(), f.stream), (Some("gpt-4o-mini"), true));
            chain.on_request_sent(&mut ctx, &h, &b).await;
            assert!(ctx.facts.is_none(), "3b runs once");

            // Usage injection rewrites the body by its `stream` flag: inspected in phase 3.
            let chain = inspect_chain(IncludeUsage::Inject);
            let mut ctx = ExchangeCtx::new("c".into());
            chain.on_request_head(&mut ctx, &h).await.expect("head");
            let mut b = body.to_vec();
            assert!(chain
                .on_request_body(&mut ctx, &h, &mut b)
                .await
                .expect("body"));
            assert!(ctx.facts.is_some() && !ctx.inspect_deferred && ctx.injected_usage);

            // A body that is not JSON is counted as uninspected after the send as well.
            let chain = inspect_chain(IncludeUsage::Off);
            let mut ctx = ExchangeCtx::new("c".into());
            chain.on_request_head(&mut ctx, &h).await.expect("head");
            let mut b = b"not json".to_vec();
            chain
                .on_request_body(&mut ctx, &h, &mut b)
                .await
                .expect("body");
            assert!(!ctx.body_uninspected);
            chain.on_request_sent(&mut ctx, &h, &b).await;
            assert!(ctx.body_uninspected && ctx.facts.is_none());
        });
    }

    #[test]
    fn caller_sources_in_order() {
        let peer: std::net::SocketAddr = "10.0.0.7:5555".parse().unwrap();
        let h = head("x-sluice-caller: checkout\r\nauthorization: Bearer sk-secret\r\n");
        assert_eq!(
            &*caller_of(&cfg(vec![CallerSource::Header]), &h, peer, None),
            "checkout"
        );
        let k = caller_of(&cfg(vec![CallerSource::ApiKeyHash]), &h, peer, None);
        assert!(k.starts_with("key:") && k.len() == 16, "{k}");
        assert!(!k.contains("sk-secret"));
        // Same key, same pseudonym; the Bearer prefix is not part of the key.
        let h2 = head("x-api-key: sk-secret\r\n");
        assert_eq!(
            caller_of(&cfg(vec![CallerSource::ApiKeyHash]), &h2, peer, None),
            k
        );
        let none = head("");
        assert_eq!(
            &*caller_of(
                &cfg(vec![CallerSource::Header, CallerSource::Static]),
                &none,
                peer,
                None
            ),
            "billing"
        );
        assert_eq!(
            &*caller_of(&cfg(vec![CallerSource::SourceAddress]), &none, peer, None),
            "10.0.0.7"
        );
        assert_eq!(
            &*caller_of(&cfg(vec![CallerSource::Header]), &none, peer, None),
            "unknown"
        );
        let id: Arc<str> = Arc::from("spiffe://td/ns/a/sa/b");
        let both = cfg(vec![CallerSource::PeerIdentity, CallerSource::Header]);
        assert_eq!(&*caller_of(&both, &h, peer, Some(&id)), &*id);
        // No verified identity: the next source answers.
        assert_eq!(&*caller_of(&both, &h, peer, None), "checkout");
        let v6: std::net::SocketAddr = "[2001:db8::7]:5555".parse().unwrap();
        assert_eq!(
            &*caller_of(&cfg(vec![CallerSource::SourceAddress]), &none, v6, None),
            "2001:db8::7"
        );
    }

    #[test]
    fn caller_names_are_interned_per_worker_and_bounded() {
        let peer: std::net::SocketAddr = "10.0.0.7:5555".parse().unwrap();
        let c = cfg(vec![CallerSource::Header]);
        let h = head("x-sluice-caller: search-svc\r\n");
        let a = caller_of(&c, &h, peer, None);
        let b = caller_of(&c, &h, peer, None);
        assert!(Arc::ptr_eq(&a, &b), "the second request reuses the name");
        // Many distinct callers never grow the cache past its bound, and names stay right.
        for i in 0..(CALLER_INTERN_MAX * 3) {
            let hi = head(&format!("x-sluice-caller: svc-{i}\r\n"));
            assert_eq!(&*caller_of(&c, &hi, peer, None), format!("svc-{i}"));
        }
        assert!(CALLER_NAMES.with(|n| n.borrow().len()) <= CALLER_INTERN_MAX);
        assert_eq!(&*caller_of(&c, &h, peer, None), "search-svc");
    }

    #[test]
    fn trace_context_is_continued_or_started() {
        let h = head("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n");
        let t = TraceCtx::from_request(&h);
        assert_eq!(
            crate::otel::to_hex(&t.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            t.parent_span_id.map(|p| crate::otel::to_hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(t
            .header_value()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        let fresh = TraceCtx::from_request(&head(""));
        assert!(fresh.parent_span_id.is_none());
    }
}
