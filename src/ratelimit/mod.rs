//! Rate limits: requests per second and tokens per minute, per key, local or global (Redis).
//!
//! Owns: the `rate_limits` rule configuration, compiled [`Rule`]s (shared by every core through
//! the snapshot, and kept across reloads while their configuration is unchanged), the
//! per-route [`RateLimitFilter`] the filter chain runs, and the per-exchange
//! [`ExchangeLimits`] (what was taken, to give back or reconcile, and the `x-ratelimit-*`
//! headers).
//!
//! Where it acts (see `docs/ratelimit.md`):
//! * Admission, in filter phase 1 (request head) for rules that need nothing from the body, or
//!   phase 3 (request body) for rules keyed by `model` or limiting tokens. A request without a
//!   body is admitted in phase 1 whatever the rule. Token rules reserve the estimated prompt
//!   tokens plus `max_tokens` (or `max_tokens_default`).
//! * Reconciliation, in phase 7 (completion): the reservation is replaced by the actual usage
//!   the inspection read from the response (refund or extra charge). A refusal by the upstream
//!   without usage costs nothing; an exchange that ended without any usage keeps the
//!   reservation (the conservative choice).
//!
//! Invariants:
//! * No lock and no allocation on the request path: a key is hashed from its parts in place,
//!   interned into a fixed table ([`bucket::Table`]) and admitted with a CAS on one atomic
//!   word. Global rules spend leases from the same slot; Redis is only ever spoken to by the
//!   lease thread ([`redis`]).
//! * A refusal takes nothing: units taken by earlier rules of the same exchange are given
//!   back, so a request refused by one rule does not eat another's budget.
//! * Rules are keyed by their configuration: a reload that leaves a rule unchanged keeps its
//!   buckets (limits survive reloads); a changed rule starts fresh.

pub mod bucket;
pub mod redis;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::{Deserialize, Serialize};

use crate::config::Loc;
use crate::filter::{ExchangeCtx, Reject};
use crate::http1::RequestHead;
use bucket::{Decision, Limit, SlotRef, Table};

/// Rules per route (listener rules included); the exchange keeps what it took in a fixed array.
pub const RULES_PER_ROUTE_MAX: usize = 8;
/// Default output-token reservation when a request names no `max_tokens`.
pub const MAX_TOKENS_DEFAULT: u64 = 1024;
/// Default number of distinct keys a rule tracks before new keys share one overflow bucket.
pub const KEYS_MAX_DEFAULT: usize = 2048;
/// Largest `keys_max` accepted.
pub const KEYS_MAX_MAX: usize = 1 << 20;
/// A key idle (bucket full) for this long may give its slot to a new key.
pub const IDLE_RECLAIM_MS: u64 = 60_000;
/// Prompt bytes per token for the admission estimate (the usual English/code ratio of BPE
/// tokenizers; the reservation is corrected by the actual usage at completion).
pub const PROMPT_BYTES_PER_TOKEN: u64 = 4;
/// Longest header value used as a key part (longer values are hashed up to this length).
pub const KEY_HEADER_BYTES_MAX: usize = 256;

/// One rate-limit rule, as configured on a listener or a route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in metrics, logs and error messages.
    pub name: Loc<String>,
    /// What a bucket is per: any of `caller`, `model`, `route`, `header:<name>`. Empty: one
    /// bucket for everything the rule sees.
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub requests_per_second: Option<u64>,
    /// Requests admitted at once from a full bucket; defaults to `requests_per_second`.
    #[serde(default)]
    pub requests_burst: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Tokens available at once from a full bucket; defaults to `tokens_per_minute`.
    #[serde(default)]
    pub tokens_burst: Option<u64>,
    /// Output tokens reserved for a request that does not say (`max_tokens` and friends).
    #[serde(default = "max_tokens_default")]
    pub max_tokens_default: u64,
    /// `local` (this process) or `global` (shared through `rate_limit.redis`).
    #[serde(default)]
    pub scope: Scope,
    #[serde(default = "keys_max_default")]
    pub keys_max: usize,
    /// Hard budget for streams: a streamed (SSE) answer whose output runs the key's token
    /// bucket dry is cut with a final SSE error event. Off: it finishes, and is charged in full.
    #[serde(default)]
    pub stream_cutoff: bool,
}

fn max_tokens_default() -> u64 {
    MAX_TOKENS_DEFAULT
}
fn keys_max_default() -> usize {
    KEYS_MAX_DEFAULT
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Global,
}

/// Top-level `rate_limit:` settings (the global backend).
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub redis: Option<redis::RedisConfig>,
}

/// A compiled key part.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Caller,
    Model,
    Route,
    Header(String),
}

fn parse_key_part(s: &str) -> Result<KeyPart, String> {
    match s {
        "caller" => Ok(KeyPart::Caller),
        "model" => Ok(KeyPart::Model),
        "route" => Ok(KeyPart::Route),
        _ => match s.strip_prefix("header:") {
            Some(h)
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(KeyPart::Header(h.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "`{s}` is not a key part (caller, model, route or header:<name>)"
            )),
        },
    }
}

/// Check one rule list; problems are `(line, field suffix, problem)`.
pub fn validate_rules(
    rules: &[RuleConfig],
    has_redis: bool,
    field: &str,
    out: &mut Vec<(u64, String, String)>,
) {
    if rules.len() > RULES_PER_ROUTE_MAX {
        out.push((
            0,
            field.to_string(),
            format!("at most {RULES_PER_ROUTE_MAX} rules"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let line = r.name.line;
        if r.name.value.is_empty() || !names.insert(r.name.value.clone()) {
            out.push((line, format!("{f}.name"), "empty or duplicate".into()));
        }
        for k in &r.key {
            if let Err(e) = parse_key_part(k) {
                out.push((line, format!("{f}.key"), e));
            }
        }
        if r.requests_per_second.is_none() && r.tokens_per_minute.is_none() {
            out.push((
                line,
                f.clone(),
                "set requests_per_second and/or tokens_per_minute".into(),
            ));
        }
        for (v, n) in [
            (r.requests_per_second, "requests_per_second"),
            (r.requests_burst, "requests_burst"),
            (r.tokens_per_minute, "tokens_per_minute"),
            (r.tokens_burst, "tokens_burst"),
        ] {
            if let Some(v) = v {
                if v == 0 || v > 1_000_000_000 {
                    out.push((line, format!("{f}.{n}"), "must be 1..=1000000000".into()));
                }
            }
        }
        if r.keys_max == 0 || r.keys_max > KEYS_MAX_MAX {
            out.push((
                line,
                format!("{f}.keys_max"),
                format!("must be 1..={KEYS_MAX_MAX}"),
            ));
        }
        if r.stream_cutoff && r.tokens_per_minute.is_none() {
            out.push((
                line,
                format!("{f}.stream_cutoff"),
                "needs tokens_per_minute".into(),
            ));
        }
        if r.scope == Scope::Global && !has_redis {
            out.push((
                line,
                format!("{f}.scope"),
                "`global` needs rate_limit.redis".into(),
            ));
        }
    }
}

/// Check every rule list of a configuration and the global backend.
pub fn validate_config(c: &crate::config::Config, out: &mut Vec<(u64, String, String)>) {
    let has_redis = c.rate_limit.redis.is_some();
    if let Some(r) = &c.rate_limit.redis {
        redis::validate(r, out);
    }
    for (i, l) in c.listeners.iter().enumerate() {
        validate_rules(
            &l.rate_limits,
            has_redis,
            &format!("listeners[{i}].rate_limits"),
            out,
        );
        for (j, r) in l.routes.iter().enumerate() {
            let f = format!("listeners[{i}].routes[{j}].rate_limits");
            validate_rules(&r.rate_limits, has_redis, &f, out);
            if l.rate_limits.len() + r.rate_limits.len() > RULES_PER_ROUTE_MAX {
                out.push((
                    r.upstream.line,
                    f,
                    format!(
                        "a route has at most {RULES_PER_ROUTE_MAX} rules, its listener's included"
                    ),
                ));
            }
        }
    }
}

/// Why a request was refused (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Requests,
    Tokens,
    /// A single request needs more tokens than the bucket can ever hold.
    TooLarge,
    /// Global rule, Redis unreachable, `on_unavailable: closed`.
    BackendUnavailable,
    /// A stream cut on its hard budget (`stream_cutoff`).
    StreamCut,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Requests => "requests",
            Reason::Tokens => "tokens",
            Reason::TooLarge => "too_large",
            Reason::BackendUnavailable => "backend_unavailable",
            Reason::StreamCut => "stream_cut",
        }
    }
}

/// Metric handles of one rule (taken at build; the same name shares counters across reloads).
struct RuleMetrics {
    rejected: [metrics::Counter; 5],
    overflow: metrics::Counter,
    fail_open: metrics::Counter,
}

/// A compiled rule. Shared by every route it applies to and by every core.
pub struct Rule {
    pub name: Arc<str>,
    parts: Vec<KeyPart>,
    pub requests: Option<Limit>,
    pub tokens: Option<Limit>,
    pub max_tokens_default: u64,
    pub table: Table,
    /// Global rules: the lease source.
    pub global: Option<Arc<redis::Leases>>,
    /// Whether admission needs the request body (token limit or `model` key).
    pub needs_body: bool,
    /// Cut streams that run the token bucket dry.
    pub stream_cutoff: bool,
    hasher: std::collections::hash_map::RandomState,
    metrics: RuleMetrics,
}

impl Rule {
    fn build(cfg: &RuleConfig, leases: Option<Arc<redis::Leases>>) -> Result<Rule, String> {
        let parts = cfg
            .key
            .iter()
            .map(|k| parse_key_part(k))
            .collect::<Result<Vec<_>, _>>()?;
        let requests = cfg
            .requests_per_second
            .map(|r| Limit::new(r, 1_000_000_000, cfg.requests_burst.unwrap_or(r)));
        let tokens = cfg
            .tokens_per_minute
            .map(|t| Limit::new(t, 60_000_000_000, cfg.tokens_burst.unwrap_or(t)));
        let name: Arc<str> = Arc::from(cfg.name.value.as_str());
        let global = match cfg.scope {
            Scope::Local => None,
            Scope::Global => Some(leases.ok_or_else(|| {
                format!("rate limit {}: scope global needs rate_limit.redis", name)
            })?),
        };
        let c = |reason: &'static str| metrics::counter!(crate::ratelimit::names::REJECTED_TOTAL, "rule" => name.to_string(), "reason" => reason);
        Ok(Rule {
            needs_body: tokens.is_some() || parts.contains(&KeyPart::Model),
            stream_cutoff: cfg.stream_cutoff && tokens.is_some(),
            parts,
            requests,
            tokens,
            max_tokens_default: cfg.max_tokens_default,
            table: Table::new(cfg.keys_max, IDLE_RECLAIM_MS * 1_000_000),
            global,
            hasher: Default::default(),
            metrics: RuleMetrics {
                rejected: [
                    c(Reason::Requests.as_str()),
                    c(Reason::Tokens.as_str()),
                    c(Reason::TooLarge.as_str()),
                    c(Reason::BackendUnavailable.as_str()),
                    c(Reason::StreamCut.as_str()),
                ],
                overflow: metrics::counter!(names::KEY_OVERFLOW_TOTAL, "rule" => name.to_string()),
                fail_open: metrics::counter!(names::FAIL_OPEN_TOTAL, "rule" => name.to_string()),
            },
            name,
        })
    }

    fn count(&self, r: Reason) {
        let i = match r {
            Reason::Requests => 0,
            Reason::Tokens => 1,
            Reason::TooLarge => 2,
            Reason::BackendUnavailable => 3,
            Reason::StreamCut => 4,
        };
        self.metrics.rejected[i].increment(1);
    }

    /// The key hash of this request. Global rules hash with SHA-256 (the same key must map
    /// to the same Redis key in every sidecar, whatever its build); local rules with the
    /// process's random SipHash keys (no hash flooding).
    fn key_hash(&self, route: &str, caller: &str, model: Option<&str>, head: &RequestHead) -> u64 {
        fn feed(
            h: &mut dyn FnMut(&[u8]),
            parts: &[KeyPart],
            route: &str,
            caller: &str,
            model: Option<&str>,
            head: &RequestHead,
        ) {
            for p in parts {
                match p {
                    KeyPart::Caller => h(caller.as_bytes()),
                    KeyPart::Model => h(model.unwrap_or("").as_bytes()),
                    KeyPart::Route => h(route.as_bytes()),
                    KeyPart::Header(n) => {
                        let v = head.header(n).unwrap_or(b"");
                        h(&v[..v.len().min(KEY_HEADER_BYTES_MAX)])
                    }
                }
                h(&[0xff]);
            }
        }
        if self.global.is_some() {
            use sha2::Digest;
            let mut d = sha2::Sha256::new();
            d.update(self.name.as_bytes());
            d.update([0xff]);
            feed(
                &mut |b| d.update(b),
                &self.parts,
                route,
                caller,
                model,
                head,
            );
            let out = d.finalize();
            let mut x = [0u8; 8];
            x.copy_from_slice(&out[..8]);
            u64::from_le_bytes(x)
        } else {
            let mut h = self.hasher.build_hasher();
            feed(&mut |b| h.write(b), &self.parts, route, caller, model, head);
            h.finish()
        }
    }
}

/// Metric names of this module (documented in docs/metrics.md).
pub mod names {
    pub const REJECTED_TOTAL: &str = "sluice_ratelimit_rejected_total";
    pub const KEY_OVERFLOW_TOTAL: &str = "sluice_ratelimit_key_overflow_total";
    pub const FAIL_OPEN_TOTAL: &str = "sluice_ratelimit_fail_open_total";
    pub const REDIS_UP: &str = "sluice_ratelimit_redis_up";
    pub const REDIS_ERRORS_TOTAL: &str = "sluice_ratelimit_redis_errors_total";
    pub const LEASE_REFILLS_TOTAL: &str = "sluice_ratelimit_lease_refills_total";
    pub const LEASE_UNITS_TOTAL: &str = "sluice_ratelimit_lease_units_total";
}

/// Rules by identity, so a reload that keeps a rule keeps its buckets.
fn registry() -> &'static Mutex<HashMap<String, Weak<Rule>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Rule>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Compile (or reuse) a rule. `scope_id` names where it is configured (a listener, or a
/// listener's route) so equal configurations in two places do not share buckets.
/// Runs on the control thread (precommit), never on a worker.
pub fn rule(
    scope_id: &str,
    cfg: &RuleConfig,
    global: &RateLimitConfig,
) -> Result<Arc<Rule>, String> {
    let identity = format!(
        "{scope_id}\u{0}{}\u{0}{}",
        serde_json::to_string(cfg).unwrap_or_default(),
        if cfg.scope == Scope::Global {
            serde_json::to_string(global).unwrap_or_default()
        } else {
            String::new()
        }
    );
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(r) = reg.get(&identity).and_then(Weak::upgrade) {
        return Ok(r);
    }
    let leases = match (&global.redis, cfg.scope) {
        (Some(rc), Scope::Global) => Some(redis::leases_for(rc)?),
        _ => None,
    };
    let r = Arc::new(Rule::build(cfg, leases)?);
    reg.insert(identity, Arc::downgrade(&r));
    Ok(r)
}

/// Whether a route's rules make it inspect model traffic (token limits, `model` keys): the
/// snapshot then adds an inspection filter, and start-up warms the tokenizer tables.
pub fn implies_inspection(
    l: &crate::config::ListenerConfig,
    r: &crate::config::RouteConfig,
) -> bool {
    l.rate_limits
        .iter()
        .chain(&r.rate_limits)
        .any(|c| c.tokens_per_minute.is_some() || c.key.iter().any(|k| k == "model"))
}

/// The rate-limit filter of a route: its listener's rules, then its own. `None`: no rules.
pub fn rules_for_route(
    listener: &str,
    route: &str,
    l: &crate::config::ListenerConfig,
    r: &crate::config::RouteConfig,
    global: &RateLimitConfig,
) -> Result<Option<RateLimitFilter>, String> {
    let mut rules = Vec::new();
    for c in &l.rate_limits {
        rules.push(rule(&format!("listener:{listener}"), c, global)?);
    }
    for c in &r.rate_limits {
        rules.push(rule(&format!("route:{listener}/{route}"), c, global)?);
    }
    if rules.is_empty() {
        return Ok(None);
    }
    Ok(Some(RateLimitFilter {
        route: Arc::from(route),
        needs_body: rules.iter().any(|r| r.needs_body),
        stream_cutoff: rules.iter().any(|r| r.stream_cutoff),
        rules,
    }))
}

/// The rate-limit filter of one route: its rules (listener rules first).
pub struct RateLimitFilter {
    pub route: Arc<str>,
    pub rules: Vec<Arc<Rule>>,
    pub needs_body: bool,
    /// A rule cuts streams on its hard budget: SSE answers go through the rewrite path.
    pub stream_cutoff: bool,
}

/// `x-ratelimit-*` values of one exchange: the most restrictive rule of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// (limit, remaining, reset_ns)
    pub requests: Option<(u64, u64, u64)>,
    pub tokens: Option<(u64, u64, u64)>,
    /// Set on a refusal.
    pub retry_after_ns: Option<u64>,
}

impl RateHeaders {
    fn merge(slot: &mut Option<(u64, u64, u64)>, limit: u64, d: &Decision) {
        let v = (limit, d.remaining, d.reset_ns);
        match slot {
            Some(cur) if cur.1 <= v.1 => {}
            _ => *slot = Some(v),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none() && self.retry_after_ns.is_none()
    }

    /// Append the headers (OpenAI's names; reset as a duration like `1s`, `6m0s`, `20ms`).
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut num = [0u8; 24];
        for (kind, v) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some((limit, remaining, reset)) = v else {
                continue;
            };
            let mut name = [0u8; 40];
            for (field, val) in [("limit", limit), ("remaining", remaining)] {
                let n = concat(&mut name, &["x-ratelimit-", field, "-", kind]);
                crate::http1::write_header(out, n, fmt_u64(val, &mut num));
            }
            let n = concat(&mut name, &["x-ratelimit-reset-", kind]);
            let mut d = [0u8; 32];
            crate::http1::write_header(out, n, fmt_duration(reset, &mut d));
        }
        if let Some(r) = self.retry_after_ns {
            let secs = r.div_ceil(1_000_000_000).max(1);
            crate::http1::write_header(out, "retry-after", fmt_u64(secs, &mut num));
            let ms = r.div_ceil(1_000_000).max(1);
            crate::http1::write_header(out, "retry-after-ms", fmt_u64(ms, &mut num));
        }
    }
}

fn concat<'a>(buf: &'a mut [u8; 40], parts: &[&str]) -> &'a str {
    let mut n = 0;
    for p in parts {
        buf[n..n + p.len()].copy_from_slice(p.as_bytes());
        n += p.len();
    }
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

fn fmt_u64(v: u64, buf: &mut [u8; 24]) -> &[u8] {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// A duration as OpenAI writes it: `20ms`, `1.5s`, `6m0s`.
fn fmt_duration(ns: u64, buf: &mut [u8; 32]) -> &[u8] {
    use std::io::Write;
    let mut c = std::io::Cursor::new(&mut buf[..]);
    let ms = ns.div_ceil(1_000_000);
    let _ = if ms < 1000 {
        write!(c, "{ms}ms")
    } else if ms < 60_000 {
        let frac = ms % 1000;
        if frac == 0 {
            write!(c, "{}s", ms / 1000)
        } else {
            write!(c, "{}.{frac:03}s", ms / 1000)
        }
    } else {
        let m = ms / 60_000;
        let rest = ms % 60_000;
        let frac = rest % 1000;
        if frac == 0 {
            write!(c, "{m}m{}s", rest / 1000)
        } else {
            write!(c, "{m}m{}.{frac:03}s", rest / 1000)
        }
    };
    let n = c.position() as usize;
    &buf[..n]
}

#[derive(Debug, Clone, Copy, Default)]
struct Taken {
    rule: u8,
    slot: Option<SlotRef>,
    requests: bool,
    tokens: u64,
}

/// What one exchange took from its route's rules.
#[derive(Debug, Default)]
pub struct ExchangeLimits {
    taken: [Taken; RULES_PER_ROUTE_MAX],
    n: u8,
    /// Bit i: rule i was evaluated.
    done: u8,
    reconciled: bool,
    /// A streamed answer is watched against the hard budget.
    pub guard_stream: bool,
    cut: Cut,
    pub headers: RateHeaders,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Cut {
    #[default]
    No,
    /// The budget ran dry: the error event is still to be written.
    Pending(u8),
    /// The error event was written: nothing more is forwarded.
    Done,
}

impl ExchangeLimits {
    /// The stream was cut: nothing more may be forwarded.
    pub fn is_cut(&self) -> bool {
        self.cut == Cut::Done
    }

    fn give_back(&mut self, rules: &[Arc<Rule>], now: u64) {
        for t in &self.taken[..self.n as usize] {
            let Some(slot) = t.slot else { continue };
            let rule = &rules[t.rule as usize];
            let s = rule.table.get(slot);
            if rule.global.is_some() {
                if t.requests {
                    s.lease_requests.fetch_add(1, Ordering::AcqRel);
                }
                if t.tokens > 0 {
                    s.lease_tokens.fetch_add(t.tokens as i64, Ordering::AcqRel);
                }
                continue;
            }
            if let (true, Some(l)) = (t.requests, rule.requests) {
                l.refund(&s.tat_requests, now, 1);
            }
            if let (true, Some(l)) = (t.tokens > 0, rule.tokens) {
                l.refund(&s.tat_tokens, now, t.tokens);
            }
        }
        self.n = 0;
    }
}

enum Lease {
    Admitted,
    Empty,
    Down,
}

impl RateLimitFilter {
    /// Phase 1: admit the rules that need nothing from the body (all of them when there is
    /// no body).
    pub async fn on_request_head(
        &self,
        ctx: &mut ExchangeCtx,
        head: &RequestHead,
    ) -> Result<(), Reject> {
        let no_body = matches!(head.body_kind(), crate::http1::BodyKind::Empty);
        self.admit(ctx, head, |r| no_body || !r.needs_body, None)
            .await
    }

    /// Phase 3 (or the body could not be read for inspection): the remaining rules, with the
    /// request's facts when inspection found them.
    pub async fn on_request_body(
        &self,
        ctx: &mut ExchangeCtx,
        head: &RequestHead,
        body_len: usize,
    ) -> Result<(), Reject> {
        self.admit(ctx, head, |_| true, Some(body_len)).await
    }

    /// The tokens a request reserves.
    fn estimate(&self, rule: &Rule, ctx: &ExchangeCtx, body_len: Option<usize>) -> u64 {
        match &ctx.facts {
            Some(f) => {
                f.prompt_bytes.div_ceil(PROMPT_BYTES_PER_TOKEN)
                    + f.max_tokens.unwrap_or(rule.max_tokens_default)
            }
            None => body_len.unwrap_or(0) as u64 / PROMPT_BYTES_PER_TOKEN + rule.max_tokens_default,
        }
    }

    async fn admit(
        &self,
        ctx: &mut ExchangeCtx,
        head: &RequestHead,
        select: impl Fn(&Rule) -> bool,
        body_len: Option<usize>,
    ) -> Result<(), Reject> {
        for (i, rule) in self.rules.iter().enumerate() {
            if ctx.ratelimit.done & (1 << i) != 0 || !select(rule) {
                continue;
            }
            ctx.ratelimit.done |= 1 << i;
            let now = bucket::now_ns();
            let model = ctx.facts.as_ref().and_then(|f| f.model.as_deref());
            let hash = rule.key_hash(&self.route, &ctx.caller, model, head);
            let slot = rule.table.lookup(hash, now);
            if slot == SlotRef::Overflow {
                rule.metrics.overflow.increment(1);
            }
            let s = rule.table.get(slot);
            s.last_ns.store(now, Ordering::Relaxed);
            let tokens = if rule.tokens.is_some() {
                self.estimate(rule, ctx, body_len)
            } else {
                0
            };
            let mut taken = Taken {
                rule: i as u8,
                slot: Some(slot),
                requests: false,
                tokens: 0,
            };
            let refusal = match &rule.global {
                None => self.admit_local(rule, slot, now, tokens, ctx, &mut taken),
                Some(g) => {
                    self.admit_global(rule, g, slot, tokens, ctx, &mut taken)
                        .await
                }
            };
            let n = ctx.ratelimit.n as usize;
            if n < RULES_PER_ROUTE_MAX {
                ctx.ratelimit.taken[n] = taken;
                ctx.ratelimit.n += 1;
            }
            if let Some((reason, retry_ns)) = refusal {
                rule.count(reason);
                ctx.ratelimit.give_back(&self.rules, bucket::now_ns());
                ctx.ratelimit.headers.retry_after_ns = Some(retry_ns);
                return Err(reject(rule, reason, retry_ns));
            }
        }
        Ok(())
    }

    fn admit_local(
        &self,
        rule: &Rule,
        slot: SlotRef,
        now: u64,
        tokens: u64,
        ctx: &mut ExchangeCtx,
        taken: &mut Taken,
    ) -> Option<(Reason, u64)> {
        let s = rule.table.get(slot);
        if let Some(l) = rule.requests {
            let d = l.take(&s.tat_requests, now, 1);
            RateHeaders::merge(&mut ctx.ratelimit.headers.requests, l.limit, &d);
            if !d.admitted {
                return Some((Reason::Requests, d.retry_after_ns));
            }
            taken.requests = true;
        }
        if let Some(l) = rule.tokens {
            if tokens > l.burst {
                let (rem, reset) = l.peek(&s.tat_tokens, now);
                RateHeaders::merge(
                    &mut ctx.ratelimit.headers.tokens,
                    l.limit,
                    &Decision {
                        admitted: false,
                        remaining: rem,
                        reset_ns: reset,
                        retry_after_ns: 0,
                    },
                );
                return Some((Reason::TooLarge, l.period_ns));
            }
            let d = l.take(&s.tat_tokens, now, tokens);
            RateHeaders::merge(&mut ctx.ratelimit.headers.tokens, l.limit, &d);
            if !d.admitted {
                return Some((Reason::Tokens, d.retry_after_ns));
            }
            taken.tokens = tokens;
        }
        None
    }

    async fn admit_global(
        &self,
        rule: &Arc<Rule>,
        g: &Arc<redis::Leases>,
        slot: SlotRef,
        tokens: u64,
        ctx: &mut ExchangeCtx,
        taken: &mut Taken,
    ) -> Option<(Reason, u64)> {
        let s = rule.table.get(slot);
        if let Some(l) = rule.requests {
            match self
                .take_lease(rule, g, slot, redis::Kind::Requests, 1)
                .await
            {
                Lease::Admitted => taken.requests = true,
                Lease::Down => {
                    if g.fail_open() {
                        rule.metrics.fail_open.increment(1);
                    } else {
                        return Some((Reason::BackendUnavailable, g.retry_ns()));
                    }
                }
                Lease::Empty => {
                    let retry = s
                        .next_ask_ns
                        .load(Ordering::Relaxed)
                        .saturating_sub(bucket::now_ns())
                        .max(l.interval_ns);
                    ctx.ratelimit.headers.requests = Some((l.limit, 0, retry));
                    return Some((Reason::Requests, retry));
                }
            }
            let rem = s.lease_requests.load(Ordering::Relaxed).max(0) as u64;
            RateHeaders::merge(
                &mut ctx.ratelimit.headers.requests,
                l.limit,
                &Decision {
                    admitted: true,
                    remaining: rem + s.remote_requests.load(Ordering::Relaxed),
                    reset_ns: l.interval_ns.saturating_mul(l.limit.saturating_sub(rem)),
                    retry_after_ns: 0,
                },
            );
        }
        if let Some(l) = rule.tokens {
            if tokens > l.burst {
                return Some((Reason::TooLarge, l.period_ns));
            }
            match self
                .take_lease(rule, g, slot, redis::Kind::Tokens, tokens)
                .await
            {
                Lease::Admitted => taken.tokens = tokens,
                Lease::Down => {
                    if g.fail_open() {
                        rule.metrics.fail_open.increment(1);
                    } else {
                        return Some((Reason::BackendUnavailable, g.retry_ns()));
                    }
                }
                Lease::Empty => {
                    let retry = s
                        .next_ask_ns
                        .load(Ordering::Relaxed)
                        .saturating_sub(bucket::now_ns())
                        .max(l.interval_ns);
                    ctx.ratelimit.headers.tokens = Some((l.limit, 0, retry));
                    return Some((Reason::Tokens, retry));
                }
            }
            let rem = s.lease_tokens.load(Ordering::Relaxed).max(0) as u64;
            RateHeaders::merge(
                &mut ctx.ratelimit.headers.tokens,
                l.limit,
                &Decision {
                    admitted: true,
                    remaining: rem + s.remote_tokens.load(Ordering::Relaxed),
                    reset_ns: l.interval_ns.saturating_mul(l.limit.saturating_sub(rem)),
                    retry_after_ns: 0,
                },
            );
        }
        None
    }

    /// Spend `n` leased units. Leases are prefetched at half a batch, so a request normally
    /// finds units in the slot and never waits; one that finds it dry (a key never seen, or a
    /// burst faster than a refill) waits for the refill in flight, bounded by `lease_wait_ms`,
    /// unless Redis already answered that the shared bucket is empty.
    async fn take_lease(
        &self,
        rule: &Arc<Rule>,
        g: &Arc<redis::Leases>,
        slot: SlotRef,
        kind: redis::Kind,
        n: u64,
    ) -> Lease {
        let s = rule.table.get(slot);
        let bal = match kind {
            redis::Kind::Requests => &s.lease_requests,
            redis::Kind::Tokens => &s.lease_tokens,
        };
        let deadline = bucket::now_ns() + g.lease_wait_ns();
        loop {
            let n = n as i64;
            let prev = bal.fetch_sub(n, Ordering::AcqRel);
            if prev >= n {
                if prev - n <= g.low_water(rule, kind) as i64 {
                    // Prefetch: the next lease is on its way before this one runs out.
                    g.request(rule, slot, kind, 0);
                }
                return Lease::Admitted;
            }
            bal.fetch_add(n, Ordering::AcqRel);
            let want = (n - prev.max(0)) as u64;
            g.request(rule, slot, kind, want);
            if !g.is_up() {
                return Lease::Down;
            }
            // Wait (bounded) for a refill in flight, unless Redis already said the shared
            // bucket is empty for now.
            let now = bucket::now_ns();
            if s.next_ask_ns.load(Ordering::Relaxed) > now || now >= deadline {
                return Lease::Empty;
            }
            crate::proxy::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Phase 5 on a guarded stream: charge output beyond the reservation as it arrives
    /// (prompt estimate + content events so far); when a bucket refuses, the stream is to be
    /// cut.
    pub fn on_stream_progress(&self, ctx: &mut ExchangeCtx) {
        if ctx.ratelimit.cut != Cut::No {
            return;
        }
        let prompt = ctx
            .facts
            .as_ref()
            .map(|f| f.prompt_bytes.div_ceil(PROMPT_BYTES_PER_TOKEN))
            .unwrap_or(0);
        let used = prompt + ctx.content_events;
        let now = bucket::now_ns();
        for k in 0..ctx.ratelimit.n as usize {
            let t = ctx.ratelimit.taken[k];
            let rule = &self.rules[t.rule as usize];
            let (Some(slot), Some(l)) = (t.slot, rule.tokens) else {
                continue;
            };
            if !rule.stream_cutoff || t.tokens == 0 || used <= t.tokens {
                continue;
            }
            let over = used - t.tokens;
            let s = rule.table.get(slot);
            let ok = match &rule.global {
                None => l.take(&s.tat_tokens, now, over).admitted,
                Some(g) => {
                    let prev = s.lease_tokens.fetch_sub(over as i64, Ordering::AcqRel);
                    if prev >= over as i64 {
                        true
                    } else {
                        s.lease_tokens.fetch_add(over as i64, Ordering::AcqRel);
                        g.request(rule, slot, redis::Kind::Tokens, over);
                        // Dry here is not dry there: cut only once Redis said it is empty.
                        s.next_ask_ns.load(Ordering::Relaxed) <= now
                    }
                }
            };
            if ok {
                ctx.ratelimit.taken[k].tokens += over;
            } else {
                rule.count(Reason::StreamCut);
                ctx.ratelimit.cut = Cut::Pending(t.rule);
                return;
            }
        }
    }

    /// Rewrite path of a guarded stream: after the budget ran dry, append the final SSE error
    /// event once; returns true when the stream is cut (drop what follows).
    pub fn write_cut(&self, ctx: &mut ExchangeCtx, out: &mut Vec<u8>) -> bool {
        match ctx.ratelimit.cut {
            Cut::No => false,
            Cut::Done => true,
            Cut::Pending(i) => {
                let name = self.rules.get(i as usize).map(|r| &*r.name).unwrap_or("");
                out.extend_from_slice(b"data: ");
                crate::error::write_openai_error(
                    out,
                    429,
                    "rate_limit_exceeded",
                    &format!("rate limit `{name}` reached (tokens per minute): stream cut"),
                );
                out.extend_from_slice(b"\n\n");
                ctx.ratelimit.cut = Cut::Done;
                true
            }
        }
    }

    /// Phase 7: replace the token reservation by the actual usage. `actual`: total tokens
    /// the response reported (or estimated); `None` when unknown. `billed`: false for a
    /// refusal by the upstream (nothing was processed).
    pub fn reconcile(&self, ctx: &mut ExchangeCtx, actual: Option<u64>, billed: bool) {
        if ctx.ratelimit.reconciled {
            return;
        }
        ctx.ratelimit.reconciled = true;
        let now = bucket::now_ns();
        for t in &ctx.ratelimit.taken[..ctx.ratelimit.n as usize] {
            let Some(slot) = t.slot else { continue };
            let rule = &self.rules[t.rule as usize];
            let Some(l) = rule.tokens else { continue };
            if t.tokens == 0 {
                continue;
            }
            let actual = match (actual, billed) {
                (_, false) => 0,
                (Some(a), true) => a,
                (None, true) => continue, // unknown: the reservation stands
            };
            let s = rule.table.get(slot);
            if rule.global.is_some() {
                let delta = t.tokens as i64 - actual as i64;
                s.lease_tokens.fetch_add(delta, Ordering::AcqRel);
                continue;
            }
            if actual > t.tokens {
                l.charge(&s.tat_tokens, now, actual - t.tokens);
            } else {
                l.refund(&s.tat_tokens, now, t.tokens - actual);
            }
        }
    }
}

fn reject(rule: &Rule, reason: Reason, retry_ns: u64) -> Reject {
    let secs = retry_ns.div_ceil(1_000_000_000).max(1);
    match reason {
        Reason::BackendUnavailable => Reject {
            status: 503,
            code: "rate_limit_unavailable",
            message: format!(
                "rate limit `{}` cannot be checked (its backend is unreachable); retry in {secs}s",
                rule.name
            ),
        },
        Reason::TooLarge => Reject {
            status: 429,
            code: "rate_limit_exceeded",
            message: format!(
                "request too large for rate limit `{}`: it needs more tokens than the limit allows",
                rule.name
            ),
        },
        Reason::Requests | Reason::Tokens | Reason::StreamCut => Reject {
            status: 429,
            code: "rate_limit_exceeded",
            message: format!(
                "rate limit `{}` reached ({}); retry in {secs}s",
                rule.name,
                if reason == Reason::Requests {
                    "requests per second"
                } else {
                    "tokens per minute"
                }
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_like_openai() {
        let mut b = [0u8; 32];
        assert_eq!(fmt_duration(20_000_000, &mut b), b"20ms");
        assert_eq!(fmt_duration(1_000_000_000, &mut b), b"1s");
        assert_eq!(fmt_duration(1_500_000_000, &mut b), b"1.500s");
        assert_eq!(fmt_duration(360_000_000_000, &mut b), b"6m0s");
        let mut n = [0u8; 24];
        assert_eq!(fmt_u64(0, &mut n), b"0");
        assert_eq!(
            fmt_u64(18446744073709551615, &mut n),
            b"18446744073709551615"
        );
    }

    #[test]
    fn headers_render() {
        let h = RateHeaders {
            requests: Some((10, 9, 100_000_000)),
            tokens: Some((1000, 0, 60_000_000_000)),
            retry_after_ns: Some(1_200_000_000),
        };
        let mut out = Vec::new();
        h.write(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("x-ratelimit-limit-requests: 10\r\n"), "{s}");
        assert!(s.contains("x-ratelimit-remaining-requests: 9\r\n"), "{s}");
        assert!(s.contains("x-ratelimit-reset-requests: 100ms\r\n"), "{s}");
        assert!(s.contains("x-ratelimit-remaining-tokens: 0\r\n"), "{s}");
        assert!(s.contains("x-ratelimit-reset-tokens: 1m0s\r\n"), "{s}");
        assert!(s.contains("retry-after: 2\r\n"), "{s}");
        assert!(s.contains("retry-after-ms: 1200\r\n"), "{s}");
    }

    #[test]
    fn validation_names_fields() {
        let r: RuleConfig =
            serde_json::from_str(r#"{"name":"a","key":["caller","header:x tenant"],"keys_max":0}"#)
                .unwrap();
        let mut out = Vec::new();
        validate_rules(&[r], false, "rate_limits", &mut out);
        let all: Vec<String> = out.iter().map(|e| format!("{}: {}", e.1, e.2)).collect();
        assert!(
            all.iter().any(|e| e.starts_with("rate_limits[0].key")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|e| e.contains("requests_per_second and/or")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|e| e.starts_with("rate_limits[0].keys_max")),
            "{all:?}"
        );
    }
}
