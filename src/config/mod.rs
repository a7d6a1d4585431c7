//! Configuration: the YAML schema, its loading and its validation.
//!
//! Owns: turning a file into a validated [`Config`], and turning every problem into a
//! [`ConfigError`] that names the file, the line and the field (`file:line: field: problem`).
//!
//! Invariants:
//! * Unknown fields are errors (`deny_unknown_fields` everywhere): a typo never silently
//!   falls back to a default.
//! * A [`Config`] that [`load`] returns has passed *all* validation: every route names an
//!   existing upstream, every address parses, every limit is in range. The proxy never has to
//!   re-check it, so a reload either applies whole or not at all.
//! * Every limit is a named field with its unit last (`header_bytes_max`, `idle_timeout_ms`),
//!   and its default is a named constant here, documented in `docs/configuration.md`.
//!
//! Why serde-saphyr: serde_yaml is deprecated, and its forks lose the field path on semantic
//! errors. serde-saphyr is maintained, panic-free on input, and gives [`Spanned`] values, so
//! semantic checks (an unknown upstream, a bad address) can still point at a line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::Spanned;

/// Default admin bind: loopback only, never the pod IP, unless configured.
pub const ADMIN_BIND_DEFAULT: &str = "127.0.0.1:15000";
/// Default longest time in-flight requests may take to finish on SIGTERM.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default interval at which workers hand telemetry batches to the telemetry thread.
pub const TELEMETRY_FLUSH_INTERVAL_MS_DEFAULT: u64 = 200;
/// Default number of telemetry batches that may wait for the telemetry thread before new
/// batches are dropped (and counted).
pub const TELEMETRY_QUEUE_BATCHES_MAX_DEFAULT: usize = 1024;
/// Default interval for re-resolving upstream hostnames (Kubernetes Service names).
pub const DNS_REFRESH_MS_DEFAULT: u64 = 5_000;
/// Default interval at which the config file is checked for changes.
pub const WATCH_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Default bound on a request or response head, in bytes.
pub const HEADER_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Default bound on the number of header fields in one head.
pub const HEADERS_COUNT_MAX_DEFAULT: usize = 100;
/// Default time a client has to send a complete request head once it started one.
pub const HEADER_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time an idle keep-alive client connection is kept open.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default time to wait for a TCP (and TLS) connection to an upstream.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Default time to wait for the first byte of the upstream's response (time to first token
/// for streams). Model calls are slow: a long default.
pub const FIRST_BYTE_TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Default longest silence between two reads of a body, in either direction.
pub const BODY_IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Default idle upstream connections kept per endpoint per worker.
pub const POOL_IDLE_MAX_DEFAULT: usize = 64;
/// Default time an idle pooled upstream connection is kept before it is closed.
pub const POOL_IDLE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Largest number of workers accepted (one per core; more than this is a typo).
pub const WORKERS_MAX: usize = 256;

/// One configuration problem, with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {problem}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based line; 0 when the problem is not tied to a line (an unreadable file).
    pub line: u64,
    /// Dotted field path, e.g. `listeners[0].routes[1].upstream`.
    pub field: String,
    pub problem: String,
}

/// All problems found in one file. Validation keeps going after the first problem so that
/// `sluice check` lists everything to fix at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A value with the line it was written on, so semantic validation can point at it.
/// Serializes as the bare value (for `/config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc<T> {
    pub value: T,
    pub line: u64,
}

impl<T> Loc<T> {
    pub fn new(value: T) -> Self {
        Loc { value, line: 0 }
    }
}

/// Hashes the value only (the line is not part of the configuration's meaning).
impl<T: std::hash::Hash> std::hash::Hash for Loc<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.value.hash(h)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loc<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<T>::deserialize(d)?;
        Ok(Loc {
            value: s.value,
            line: s.referenced.line(),
        })
    }
}

impl<T: Serialize> Serialize for Loc<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// `io_uring_task_run`: when the kernel runs a ring's completion work (the `IORING_SETUP_*`
/// flags the worker's ring is created with; the epoll fallback ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoUringTaskRun {
    /// The kernel default: completions may interrupt the worker (an IPI) while it runs.
    #[default]
    Interrupt,
    /// `COOP_TASKRUN | TASKRUN_FLAG`: no interrupt; completion work runs at the worker's next
    /// system call (it makes one per loop turn anyway).
    Coop,
    /// `DEFER_TASKRUN | SINGLE_ISSUER`: completion work runs only when the worker waits for
    /// events, batched; nothing runs on its behalf from other CPUs' interrupts.
    Defer,
}

/// `workers: auto` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    #[default]
    Auto,
    Count(usize),
}

impl Workers {
    /// The number of workers to run: `auto` is one per available core.
    pub fn resolve(self) -> usize {
        match self {
            Workers::Count(n) => n,
            // available_parallelism honours the affinity mask (taskset, cpusets).
            Workers::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Workers::Count(n as usize)),
            Raw::S(s) if s == "auto" => Ok(Workers::Auto),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "expected `auto` or a number, got `{s}`"
            ))),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One event loop per worker, each pinned to a core.
    #[serde(default)]
    pub workers: Workers,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default = "drain_timeout_ms_default")]
    pub drain_timeout_ms: u64,
    #[serde(default = "dns_refresh_ms_default")]
    pub dns_refresh_ms: u64,
    #[serde(default = "watch_interval_ms_default")]
    pub watch_interval_ms: u64,
    /// Spin (busy-poll the ring) for up to this long while an exchange waits for its
    /// upstream's answer, instead of parking the worker: lower tail latency for CPU. 0 = off.
    #[serde(default)]
    pub busy_poll_us: u64,
    /// How the kernel runs io_uring completion work for a worker's ring (read at start-up).
    #[serde(default)]
    pub io_uring_task_run: IoUringTaskRun,
    /// Nice value of every thread that is not a worker (telemetry, exporters, admin, watcher,
    /// Redis client), so a worker keeps its core against them; 0 = same priority. Read at
    /// start-up. See `src/background.rs`.
    #[serde(default = "background_thread_nice_default")]
    pub background_thread_nice: i32,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Who is calling: the `caller` label of token, cost and PII metrics.
    #[serde(default)]
    pub caller: CallerConfig,
    /// Prices per model, for cost accounting.
    #[serde(default)]
    pub pricing: PricingConfig,
    /// The PII engine (entities, actions, dictionaries...). Routes opt in with `pii:`.
    #[serde(default)]
    pub pii: Option<crate::pii::PiiConfig>,
    /// OpenTelemetry traces: one span per model call, OTLP/HTTP. Restart to change.
    #[serde(default)]
    pub otel: crate::otel::OtelConfig,
    /// The backend of global rate limits (`rate_limit.redis`).
    #[serde(default)]
    pub rate_limit: crate::ratelimit::RateLimitConfig,
}

/// Default header naming the calling service.
pub const CALLER_HEADER_DEFAULT: &str = "x-sluice-caller";
/// Default bound on a request body that a filter reads before forwarding.
pub const INSPECT_BODY_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default number of distinct `caller` label values; the rest are reported as `other`.
pub const CALLER_LABELS_MAX_DEFAULT: usize = 64;
/// Default number of distinct model label values; the rest are reported as `other`.
pub const MODEL_LABELS_MAX_DEFAULT: usize = 64;

/// Where the caller identity comes from, tried in order; the first that yields a value wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerSource {
    /// The `caller.header` request header (default `x-sluice-caller`).
    Header,
    /// `key:` + the first 12 hex digits of SHA-256 of the client's API key (`Authorization:
    /// Bearer …` or `x-api-key`). The key itself is never kept.
    ApiKeyHash,
    /// The client's IP address.
    SourceAddress,
    /// `caller.static_name`: the pod's own service, for an outbound sidecar.
    Static,
    /// The SPIFFE ID of the client certificate verified on an mTLS listener.
    PeerIdentity,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    #[serde(default = "caller_sources_default")]
    pub sources: Vec<CallerSource>,
    #[serde(default = "caller_header_default")]
    pub header: String,
    #[serde(default)]
    pub static_name: Option<String>,
    /// Used when no source yields a value.
    #[serde(default = "caller_fallback_default")]
    pub fallback: String,
}

fn caller_sources_default() -> Vec<CallerSource> {
    vec![CallerSource::Header]
}
fn caller_header_default() -> String {
    CALLER_HEADER_DEFAULT.to_string()
}
fn caller_fallback_default() -> String {
    "unknown".to_string()
}

impl Default for CallerConfig {
    fn default() -> Self {
        CallerConfig {
            sources: caller_sources_default(),
            header: caller_header_default(),
            static_name: None,
            fallback: caller_fallback_default(),
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// Cached prompt tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// A YAML file with a `models:` map (e.g. `deploy/pricing.yaml`); inline `models` win.
    #[serde(default)]
    pub file: Option<Loc<String>>,
    /// Model name (or name prefix, longest wins) → price.
    #[serde(default)]
    pub models: BTreeMap<String, Price>,
}

/// The shape of a pricing file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingFile {
    pub models: BTreeMap<String, Price>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IncludeUsage {
    /// Forward streams as they are; count with a tokenizer when the provider reports nothing.
    #[default]
    Off,
    /// Ask OpenAI-style providers for usage in streams whose client did not, and strip the
    /// extra usage chunk so the client sees exactly the stream it asked for.
    Inject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverLimit {
    /// Forward the body uninspected and count it (`sluice_gen_ai_uninspected_total`).
    #[default]
    Pass,
    /// Answer 413.
    Reject,
}

/// Model-traffic inspection on a route: request facts, usage, TTFT, cost.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InspectRouteConfig {
    /// `auto` (by path), or a dialect name: `openai`, `vllm`, `openai_chat`,
    /// `openai_completions`, `openai_embeddings`, `openai_responses`, `anthropic`, `tgi`,
    /// `ollama`.
    #[serde(default = "dialect_auto")]
    pub dialect: Loc<String>,
    #[serde(default)]
    pub include_usage: IncludeUsage,
    #[serde(default = "inspect_body_bytes_max_default")]
    pub body_bytes_max: usize,
    #[serde(default)]
    pub over_limit: OverLimit,
}

fn dialect_auto() -> Loc<String> {
    Loc::new("auto".to_string())
}
fn inspect_body_bytes_max_default() -> usize {
    INSPECT_BODY_BYTES_MAX_DEFAULT
}

/// PII enforcement on a route, using the top-level `pii` engine.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PiiRouteConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Per-entity action overrides for this route (`SSN: block`).
    #[serde(default)]
    pub actions: BTreeMap<String, crate::pii::Action>,
    /// Override the engine's dry-run setting for this route.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

fn drain_timeout_ms_default() -> u64 {
    DRAIN_TIMEOUT_MS_DEFAULT
}
fn dns_refresh_ms_default() -> u64 {
    DNS_REFRESH_MS_DEFAULT
}
fn watch_interval_ms_default() -> u64 {
    WATCH_INTERVAL_MS_DEFAULT
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Loopback by default: the admin port exposes configuration and metrics.
    #[serde(default = "admin_bind_default")]
    pub bind: Loc<String>,
    /// Extra listener serving only the health paths (`/healthz/ready`, `/ready`, `/healthz`):
    /// Istio's 15021, for kubelet probes. Never `/config` or metrics.
    #[serde(default)]
    pub health_bind: Option<Loc<String>>,
    /// Extra listener serving only Prometheus metrics (`/stats/prometheus`, `/metrics`):
    /// Istio's 15090, for scrapers. Never `/config`.
    #[serde(default)]
    pub prometheus_bind: Option<Loc<String>>,
}

fn admin_bind_default() -> Loc<String> {
    Loc::new(ADMIN_BIND_DEFAULT.to_string())
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: admin_bind_default(),
            health_bind: None,
            prometheus_bind: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default)]
    pub enabled: bool,
    /// `stdout`, `stderr` or a file path. Written by the telemetry thread, never a worker.
    #[serde(default = "access_log_path_default")]
    pub path: String,
}

fn access_log_path_default() -> String {
    "stdout".to_string()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default = "telemetry_flush_interval_ms_default")]
    pub flush_interval_ms: u64,
    #[serde(default = "telemetry_queue_batches_max_default")]
    pub queue_batches_max: usize,
    /// Distinct `caller` label values before the rest become `other`.
    #[serde(default = "caller_labels_max_default")]
    pub caller_labels_max: usize,
    /// Distinct model label values before the rest become `other`.
    #[serde(default = "model_labels_max_default")]
    pub model_labels_max: usize,
}

fn caller_labels_max_default() -> usize {
    CALLER_LABELS_MAX_DEFAULT
}
fn model_labels_max_default() -> usize {
    MODEL_LABELS_MAX_DEFAULT
}

fn background_thread_nice_default() -> i32 {
    crate::background::BACKGROUND_THREAD_NICE_DEFAULT
}

fn telemetry_flush_interval_ms_default() -> u64 {
    TELEMETRY_FLUSH_INTERVAL_MS_DEFAULT
}
fn telemetry_queue_batches_max_default() -> usize {
    TELEMETRY_QUEUE_BATCHES_MAX_DEFAULT
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            flush_interval_ms: TELEMETRY_FLUSH_INTERVAL_MS_DEFAULT,
            queue_batches_max: TELEMETRY_QUEUE_BATCHES_MAX_DEFAULT,
            caller_labels_max: CALLER_LABELS_MAX_DEFAULT,
            model_labels_max: MODEL_LABELS_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Loc<String>,
    pub bind: Loc<String>,
    #[serde(default = "header_bytes_max_default")]
    pub header_bytes_max: usize,
    #[serde(default = "headers_count_max_default")]
    pub headers_count_max: usize,
    #[serde(default = "header_timeout_ms_default")]
    pub header_timeout_ms: u64,
    #[serde(default = "idle_timeout_ms_default")]
    pub idle_timeout_ms: u64,
    /// `explicit` (clients address sluice), or a transparent mode for connections redirected
    /// by iptables (see docs/transparent.md).
    #[serde(default)]
    pub mode: crate::transparent::ListenerMode,
    /// Settings of a transparent listener (sniffing, pass-through); an error on `explicit`.
    #[serde(default)]
    pub transparent: crate::transparent::TransparentConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// TLS termination (or interception) on this listener; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsServerConfig>,
    /// Inbound authentication for every route of the listener (a route's own `auth` wins).
    #[serde(default)]
    pub auth: Option<crate::auth::InboundConfig>,
    /// Rate limits applied to every route of the listener (before the route's own).
    #[serde(default)]
    pub rate_limits: Vec<crate::ratelimit::RuleConfig>,
}

fn header_bytes_max_default() -> usize {
    HEADER_BYTES_MAX_DEFAULT
}
fn headers_count_max_default() -> usize {
    HEADERS_COUNT_MAX_DEFAULT
}
fn header_timeout_ms_default() -> u64 {
    HEADER_TIMEOUT_MS_DEFAULT
}
fn idle_timeout_ms_default() -> u64 {
    IDLE_TIMEOUT_MS_DEFAULT
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Defaults to `<listener>-<index>`; used in metrics and logs.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    pub upstream: Loc<String>,
    #[serde(default)]
    pub timeouts: RouteTimeouts,
    /// Model-traffic inspection (usage, TTFT, cost). Off when absent.
    #[serde(default)]
    pub inspect: Option<InspectRouteConfig>,
    /// PII enforcement with the top-level `pii` engine. Off when absent.
    #[serde(default)]
    pub pii: Option<PiiRouteConfig>,
    /// mTLS authorization: SPIFFE IDs (exact, or a prefix ending in `*`) that may call this
    /// route. Others get 403. Needs a listener with `tls.client_ca_file`.
    #[serde(default)]
    pub allow_identities: Option<Loc<Vec<String>>>,
    /// Weighted split over several upstreams (A/B, canary), optionally sticky on a header.
    #[serde(default)]
    pub split: Option<crate::route::config::SplitConfig>,
    /// Fallback upstreams (and models), tried in order when the chosen upstream is open,
    /// cooling down, throttled or failing.
    #[serde(default)]
    pub failover: Vec<crate::route::config::FailoverTarget>,
    /// Retries before the first response byte. Off when absent.
    #[serde(default)]
    pub retry: Option<crate::route::config::RetryConfig>,
    /// Inbound authentication (replaces the listener's).
    #[serde(default)]
    pub auth: Option<crate::auth::InboundConfig>,
    /// Rate limits of this route (after the listener's).
    #[serde(default)]
    pub rate_limits: Vec<crate::ratelimit::RuleConfig>,
}

/// All given conditions must hold. An empty match matches every request.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_exact: Option<String>,
    /// Host header without port, compared case-insensitively.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Header name → exact value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The `model` named in the JSON request body (exact). The body is read (bounded) before
    /// routing only on listeners where some route matches on it.
    #[serde(default)]
    pub model: Option<String>,
    /// Transparent listeners: the original destination's address, an IP or a CIDR
    /// (`10.0.0.0/8`, `fd00::/8`).
    #[serde(default)]
    pub destination: Option<Loc<String>>,
    /// Transparent listeners: the original destination's port.
    #[serde(default)]
    pub destination_port: Option<u16>,
    /// Transparent listeners: makes this a TLS pass-through route, matched on the ClientHello's
    /// server name (exact, or `*.suffix`). Such a route sees no HTTP, so it takes no path,
    /// method, header, inspect or PII settings.
    #[serde(default)]
    pub sni: Option<Loc<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    #[serde(default = "first_byte_timeout_ms_default")]
    pub first_byte_ms: u64,
    #[serde(default = "body_idle_timeout_ms_default")]
    pub idle_ms: u64,
    /// 0 = no limit on the whole exchange.
    #[serde(default)]
    pub total_ms: u64,
    /// Overrides the upstream's `connect_timeout_ms` on this route.
    #[serde(default)]
    pub connect_ms: Option<u64>,
    /// While a streaming request waits for its first byte, send the client an SSE comment
    /// (`: keep-alive`) this often (0 = off). The response head (200, text/event-stream) is
    /// then sent early; see docs/routing.md for what an upstream error becomes.
    #[serde(default)]
    pub sse_keepalive_ms: u64,
}

fn first_byte_timeout_ms_default() -> u64 {
    FIRST_BYTE_TIMEOUT_MS_DEFAULT
}
fn body_idle_timeout_ms_default() -> u64 {
    BODY_IDLE_TIMEOUT_MS_DEFAULT
}

impl Default for RouteTimeouts {
    fn default() -> Self {
        RouteTimeouts {
            first_byte_ms: FIRST_BYTE_TIMEOUT_MS_DEFAULT,
            idle_ms: BODY_IDLE_TIMEOUT_MS_DEFAULT,
            total_ms: 0,
            connect_ms: None,
            sse_keepalive_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port`; hostnames are resolved at start and re-resolved every `dns_refresh_ms`.
    pub endpoints: Loc<Vec<String>>,
    #[serde(default)]
    pub tls: TlsClientConfig,
    /// `auto` (the endpoint's host), `preserve` (the client's Host) or a literal host.
    #[serde(default = "host_rewrite_default")]
    pub host_rewrite: String,
    #[serde(default = "connect_timeout_ms_default")]
    pub connect_timeout_ms: u64,
    #[serde(default)]
    pub pool: PoolConfig,
    /// Client model → provider model (the client asks for `fast`, the provider gets
    /// `gpt-4o-mini`). The body's `model` is rewritten with a new Content-Length.
    #[serde(default)]
    pub model_aliases: BTreeMap<String, String>,
    /// Endpoint choice: `round_robin` or `p2c` (power of two choices on outstanding requests).
    #[serde(default)]
    pub balance: crate::resilience::config::Balance,
    /// Per-endpoint circuit breaker (passive health, outlier ejection). Off when absent.
    #[serde(default)]
    pub breaker: Option<crate::resilience::config::BreakerConfig>,
    /// Longest cool-down a 429's `Retry-After` puts an endpoint in (0, the default: off).
    #[serde(default = "crate::resilience::config::retry_after_ms_max_default")]
    pub retry_after_ms_max: u64,
    /// Adaptive client-side throttling (SRE book). Off when absent.
    #[serde(default)]
    pub throttle: Option<crate::resilience::config::ThrottleConfig>,
    /// Credential sluice sends to this upstream (the client's is stripped).
    #[serde(default)]
    pub auth: Option<crate::auth::OutboundConfig>,
}

fn host_rewrite_default() -> String {
    "auto".to_string()
}
fn connect_timeout_ms_default() -> u64 {
    CONNECT_TIMEOUT_MS_DEFAULT
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "pool_idle_max_default")]
    pub idle_max: usize,
    #[serde(default = "pool_idle_timeout_ms_default")]
    pub idle_timeout_ms: u64,
}

fn pool_idle_max_default() -> usize {
    POOL_IDLE_MAX_DEFAULT
}
fn pool_idle_timeout_ms_default() -> u64 {
    POOL_IDLE_TIMEOUT_MS_DEFAULT
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_max: POOL_IDLE_MAX_DEFAULT,
            idle_timeout_ms: POOL_IDLE_TIMEOUT_MS_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Server name to send and verify; defaults to the endpoint's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// Extra PEM CA bundle trusted in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<Loc<String>>,
    /// Trust the system roots (and the bundled webpki roots when the system has none).
    #[serde(default = "yes")]
    pub system_roots: bool,
    /// mTLS: the certificate (PEM chain) this sidecar presents to the upstream. Re-read when
    /// it changes.
    #[serde(default)]
    pub client_cert_file: Option<Loc<String>>,
    #[serde(default)]
    pub client_key_file: Option<Loc<String>>,
    /// Verify the upstream by SPIFFE ID (exact, or a prefix ending in `*`) instead of by host
    /// name; the chain is still verified against the trusted roots.
    #[serde(default)]
    pub peer_identities: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for TlsClientConfig {
    fn default() -> Self {
        TlsClientConfig {
            enabled: false,
            sni: None,
            ca_file: None,
            system_roots: true,
            client_cert_file: None,
            client_key_file: None,
            peer_identities: Vec::new(),
        }
    }
}

/// Read, parse and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            field: "-".into(),
            problem: format!("cannot read: {e}"),
        }])
    })?;
    parse(&file, &text)
}

/// Parse and validate configuration text; `file` is only used in error messages.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let path = std::cell::RefCell::new(String::new());
    let res = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, Config>(de).map_err(|e| {
            *path.borrow_mut() = e.path().to_string();
            e.into_inner()
        })
    });
    let cfg = match res {
        Ok(c) => c,
        Err(e) => {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let field = path.into_inner();
            let field = if field.is_empty() || field == "." {
                "-".to_string()
            } else {
                field
            };
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                line,
                field,
                problem: first_line(&e.to_string()),
            }]));
        }
    };
    let mut v = Validator {
        file,
        errors: Vec::new(),
    };
    v.validate(&cfg);
    if v.errors.is_empty() {
        Ok(cfg)
    } else {
        // Scalar fields are not `Loc`-wrapped: find their line in the text.
        for e in v.errors.iter_mut().filter(|e| e.line == 0) {
            e.line = field_line(text, &e.field);
        }
        Err(ConfigErrors(v.errors))
    }
}

/// Line (1-based) of a top-level `field`, or of `parent.child` (block or flow style), in the
/// YAML `text`; 0 when it is not written there (a default value, or a list element).
fn field_line(text: &str, field: &str) -> u64 {
    let mut parts = field.split('.');
    let Some(top) = parts.next().filter(|t| !t.is_empty() && !t.contains('[')) else {
        return 0;
    };
    let key_at = |line: &str, key: &str| {
        line.find(key).is_some_and(|i| {
            let before = line[..i].chars().next_back();
            let after = line[i + key.len()..].trim_start();
            matches!(before, None | Some(' ' | '{' | ',')) && after.starts_with(':')
        })
    };
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines
        .iter()
        .position(|l| !l.starts_with([' ', '\t', '#']) && key_at(l, top))
    else {
        return 0;
    };
    let Some(child) = parts.next() else {
        return start as u64 + 1;
    };
    // The child inside the parent's block: up to the next top-level line.
    for (i, l) in lines.iter().enumerate().skip(start) {
        if i > start && !l.is_empty() && !l.starts_with([' ', '\t', '#']) {
            break;
        }
        let body = if i == start { &l[top.len()..] } else { l };
        if key_at(body, child) {
            return i as u64 + 1;
        }
    }
    start as u64 + 1
}

/// serde-saphyr renders a snippet under the message; keep the message line only.
fn first_line(s: &str) -> String {
    let mut l = s.lines().next().unwrap_or(s).trim();
    l = l.strip_prefix("error: ").unwrap_or(l);
    // Drop a "line X column Y: " prefix or " at line X column Y" suffix: we report the line.
    if l.starts_with("line ") {
        if let Some(i) = l.find(": ") {
            l = &l[i + 2..];
        }
    }
    match l.find(" at line ") {
        Some(i) => l[..i].to_string(),
        None => l.to_string(),
    }
}

struct Validator<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    /// `admin.health_bind` and `admin.prometheus_bind`: valid addresses, and no two admin
    /// listeners on one address (the second bind would fail at start).
    fn validate_admin_extra_binds(&mut self, a: &AdminConfig) {
        let main = a.bind.value.parse::<SocketAddr>().ok();
        let mut seen: Vec<SocketAddr> = main.into_iter().collect();
        for (field, bind) in [
            ("admin.health_bind", &a.health_bind),
            ("admin.prometheus_bind", &a.prometheus_bind),
        ] {
            let Some(b) = bind else { continue };
            match b.value.parse::<SocketAddr>() {
                Ok(addr) if seen.contains(&addr) => self.err(
                    b.line,
                    field,
                    format!("`{addr}` is already used by another admin listener"),
                ),
                Ok(addr) => seen.push(addr),
                Err(_) => self.err(
                    b.line,
                    field,
                    format!("`{}` is not an ip:port address", b.value),
                ),
            }
        }
    }

    fn err(&mut self, line: u64, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            field: field.into(),
            problem: problem.into(),
        });
    }

    fn validate(&mut self, c: &Config) {
        if let Workers::Count(n) = c.workers {
            if n == 0 || n > WORKERS_MAX {
                self.err(0, "workers", format!("must be `auto` or 1..={WORKERS_MAX}"));
            }
        }
        if c.admin.bind.value.parse::<SocketAddr>().is_err() {
            self.err(
                c.admin.bind.line,
                "admin.bind",
                format!("`{}` is not an ip:port address", c.admin.bind.value),
            );
        }
        self.validate_admin_extra_binds(&c.admin);
        if c.telemetry.flush_interval_ms == 0 {
            self.err(0, "telemetry.flush_interval_ms", "must be > 0");
        }
        if c.telemetry.queue_batches_max == 0 {
            self.err(0, "telemetry.queue_batches_max", "must be > 0");
        }
        if c.busy_poll_us > crate::busypoll::BUSY_POLL_US_MAX {
            self.err(
                0,
                "busy_poll_us",
                format!("must be <= {}", crate::busypoll::BUSY_POLL_US_MAX),
            );
        }
        if c.watch_interval_ms == 0 {
            self.err(0, "watch_interval_ms", "must be > 0");
        }
        if !(0..=crate::background::BACKGROUND_THREAD_NICE_MAX).contains(&c.background_thread_nice)
        {
            self.err(
                0,
                "background_thread_nice",
                format!(
                    "must be 0..={} (a nice value; 0 = same priority as the workers)",
                    crate::background::BACKGROUND_THREAD_NICE_MAX
                ),
            );
        }
        if c.listeners.is_empty() {
            self.err(0, "listeners", "at least one listener is required");
        }
        let mut names = std::collections::HashSet::new();
        let mut binds = std::collections::HashSet::new();
        for (i, l) in c.listeners.iter().enumerate() {
            let f = format!("listeners[{i}]");
            if !names.insert(l.name.value.clone()) {
                self.err(l.name.line, format!("{f}.name"), "duplicate listener name");
            }
            match l.bind.value.parse::<SocketAddr>() {
                Ok(a) => {
                    if !binds.insert(a) {
                        self.err(l.bind.line, format!("{f}.bind"), "duplicate bind address");
                    }
                }
                Err(_) => self.err(
                    l.bind.line,
                    format!("{f}.bind"),
                    format!("`{}` is not an ip:port address", l.bind.value),
                ),
            }
            if l.header_bytes_max < 1024 || l.header_bytes_max > 1024 * 1024 {
                self.err(
                    l.bind.line,
                    format!("{f}.header_bytes_max"),
                    "must be between 1024 and 1048576",
                );
            }
            if l.headers_count_max == 0 || l.headers_count_max > 1024 {
                self.err(
                    l.bind.line,
                    format!("{f}.headers_count_max"),
                    "must be between 1 and 1024",
                );
            }
            if l.header_timeout_ms == 0 {
                self.err(l.bind.line, format!("{f}.header_timeout_ms"), "must be > 0");
            }
            if l.idle_timeout_ms == 0 {
                self.err(l.bind.line, format!("{f}.idle_timeout_ms"), "must be > 0");
            }
            for (line, field, problem) in crate::transparent::validate_listener(l) {
                self.err(line, format!("{f}.{field}"), problem);
            }
            if let Some(t) = &l.tls {
                for (line, field, problem) in t.validate(l.bind.line) {
                    let field = if field.is_empty() {
                        format!("{f}.tls")
                    } else {
                        format!("{f}.tls.{field}")
                    };
                    self.err(line, field, problem);
                }
            }
            let verifies_clients = l.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
            for (j, r) in l.routes.iter().enumerate() {
                let rf = format!("{f}.routes[{j}]");
                if let Some(a) = &r.allow_identities {
                    if !verifies_clients {
                        self.err(
                            a.line,
                            format!("{rf}.allow_identities"),
                            "needs a listener with tls.client_ca_file (no caller would have an identity)",
                        );
                    }
                    if a.value.is_empty() {
                        self.err(
                            a.line,
                            format!("{rf}.allow_identities"),
                            "empty list: nobody could call this route",
                        );
                    }
                    for (k, id) in a.value.iter().enumerate() {
                        if let Err(e) = crate::tls::spiffe::IdentityPattern::parse(id) {
                            self.err(a.line, format!("{rf}.allow_identities[{k}]"), e);
                        }
                    }
                }
                if r.upstream.value == crate::transparent::ORIGINAL_DESTINATION {
                    // Reserved name, checked with the listener's mode by `validate_listener`.
                } else if !c.upstreams.contains_key(&r.upstream.value) {
                    self.err(
                        r.upstream.line,
                        format!("{rf}.upstream"),
                        format!("no upstream named `{}`", r.upstream.value),
                    );
                }
                if let Some(p) = &r.matcher.path_prefix {
                    if !p.starts_with('/') {
                        self.err(
                            r.upstream.line,
                            format!("{rf}.match.path_prefix"),
                            "must start with /",
                        );
                    }
                }
                if let Some(p) = &r.matcher.path_exact {
                    if !p.starts_with('/') {
                        self.err(
                            r.upstream.line,
                            format!("{rf}.match.path_exact"),
                            "must start with /",
                        );
                    }
                }
                if let Some(m) = &r.matcher.method {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                        self.err(
                            r.upstream.line,
                            format!("{rf}.match.method"),
                            "must be an upper-case method name like POST",
                        );
                    }
                }
                for name in r.matcher.headers.keys() {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        self.err(
                            r.upstream.line,
                            format!("{rf}.match.headers"),
                            format!("`{name}` is not a header name"),
                        );
                    }
                }
                if let Some(i) = &r.inspect {
                    if i.dialect.value != "auto"
                        && i.dialect.value.parse::<crate::inspect::Dialect>().is_err()
                    {
                        self.err(
                            i.dialect.line,
                            format!("{rf}.inspect.dialect"),
                            format!("unknown dialect `{}`", i.dialect.value),
                        );
                    }
                    if i.body_bytes_max == 0 || i.body_bytes_max > 64 * 1024 * 1024 {
                        self.err(
                            i.dialect.line.max(r.upstream.line),
                            format!("{rf}.inspect.body_bytes_max"),
                            "must be between 1 and 67108864",
                        );
                    }
                }
                if let Some(p) = &r.pii {
                    if c.pii.is_none() && p.enabled {
                        self.err(
                            r.upstream.line,
                            format!("{rf}.pii"),
                            "route enables PII but there is no top-level `pii:` engine",
                        );
                    }
                }
                if let Some(m) = &r.matcher.model {
                    if m.is_empty() {
                        self.err(
                            r.upstream.line,
                            format!("{rf}.match.model"),
                            "must not be empty",
                        );
                    }
                }
                if r.timeouts.connect_ms == Some(0) {
                    self.err(
                        r.upstream.line,
                        format!("{rf}.timeouts.connect_ms"),
                        "must be > 0",
                    );
                }
                let view = crate::route::config::RouteView {
                    upstream: &r.upstream,
                    split: r.split.as_ref(),
                    failover: &r.failover,
                    retry: r.retry.as_ref(),
                };
                let known = |n: &str| c.upstreams.contains_key(n);
                for (line, field, problem) in crate::route::config::validate_route(&view, &known) {
                    self.err(line, format!("{rf}.{field}"), problem);
                }
                if r.timeouts.first_byte_ms == 0 || r.timeouts.idle_ms == 0 {
                    self.err(
                        r.upstream.line,
                        format!("{rf}.timeouts"),
                        "first_byte_ms and idle_ms must be > 0",
                    );
                }
            }
        }
        if c.caller.sources.contains(&CallerSource::Static) && c.caller.static_name.is_none() {
            self.err(
                0,
                "caller.static_name",
                "required when caller.sources lists `static`",
            );
        }
        if c.telemetry.caller_labels_max == 0 || c.telemetry.model_labels_max == 0 {
            self.err(
                0,
                "telemetry",
                "caller_labels_max and model_labels_max must be > 0",
            );
        }
        if let Some(f) = &c.pricing.file {
            if let Err(e) = load_pricing_file(&f.value) {
                self.err(f.line, "pricing.file", e);
            }
        }
        for (m, p) in &c.pricing.models {
            if !(p.input_usd_per_mtok >= 0.0 && p.output_usd_per_mtok >= 0.0)
                || p.cached_input_usd_per_mtok
                    .is_some_and(|x| x.is_nan() || x < 0.0)
            {
                self.err(0, format!("pricing.models.{m}"), "prices must be >= 0");
            }
        }
        if c.otel.enabled {
            if let Err(e) = c.otel.validate() {
                self.err(0, "otel", e);
            }
        }
        if let Some(p) = &c.pii {
            // The real key is read when the snapshot is built; a stand-in checks the rest.
            let built = if p.hash_key.is_some() {
                crate::pii::Engine::with_hash_key(p, &[0u8; 32])
            } else {
                crate::pii::Engine::new(p)
            };
            if let Err(e) = built {
                self.err(0, "pii", e.to_string());
            }
        }
        let mut policy = Vec::new();
        crate::ratelimit::validate_config(c, &mut policy);
        crate::auth::validate_config(c, &mut policy);
        for (line, field, problem) in policy {
            self.err(line, field, problem);
        }
        for (name, u) in &c.upstreams {
            let f = format!("upstreams.{name}");
            if name == crate::transparent::ORIGINAL_DESTINATION {
                self.err(
                    u.endpoints.line,
                    f.clone(),
                    "`original_destination` is reserved for the original destination of a transparent connection",
                );
            }
            if u.endpoints.value.is_empty() {
                self.err(
                    u.endpoints.line,
                    format!("{f}.endpoints"),
                    "at least one endpoint is required",
                );
            }
            for (k, ep) in u.endpoints.value.iter().enumerate() {
                if let Err(p) = split_host_port(ep) {
                    self.err(u.endpoints.line, format!("{f}.endpoints[{k}]"), p);
                }
            }
            if u.connect_timeout_ms == 0 {
                self.err(
                    u.endpoints.line,
                    format!("{f}.connect_timeout_ms"),
                    "must be > 0",
                );
            }
            if u.host_rewrite.is_empty() {
                self.err(
                    u.endpoints.line,
                    format!("{f}.host_rewrite"),
                    "must be `auto`, `preserve` or a host name",
                );
            }
            if let Some(ca) = &u.tls.ca_file {
                if !u.tls.enabled {
                    self.err(
                        ca.line,
                        format!("{f}.tls.ca_file"),
                        "set, but tls.enabled is false",
                    );
                } else if let Err(e) = std::fs::metadata(&ca.value) {
                    self.err(
                        ca.line,
                        format!("{f}.tls.ca_file"),
                        format!("`{}`: {e}", ca.value),
                    );
                }
            }
            for (a, b, an, bn) in [
                (
                    &u.tls.client_cert_file,
                    &u.tls.client_key_file,
                    "client_cert_file",
                    "client_key_file",
                ),
                (
                    &u.tls.client_key_file,
                    &u.tls.client_cert_file,
                    "client_key_file",
                    "client_cert_file",
                ),
            ] {
                if let Some(x) = a {
                    if !u.tls.enabled {
                        self.err(
                            x.line,
                            format!("{f}.tls.{an}"),
                            "set, but tls.enabled is false",
                        );
                    } else if b.is_none() {
                        self.err(
                            x.line,
                            format!("{f}.tls.{bn}"),
                            format!("required with {an}"),
                        );
                    } else if let Err(e) = std::fs::metadata(&x.value) {
                        self.err(
                            x.line,
                            format!("{f}.tls.{an}"),
                            format!("`{}`: {e}", x.value),
                        );
                    } else if let (Some(k), "client_cert_file") = (b, an) {
                        // Both in place: load them, so `sluice check` catches a bad pair.
                        if std::fs::metadata(&k.value).is_ok() {
                            if let Err(e) = crate::tls::load_certified_key(&x.value, &k.value) {
                                self.err(x.line, format!("{f}.tls.{an}"), e);
                            }
                        }
                    }
                }
            }
            for (k, id) in u.tls.peer_identities.iter().enumerate() {
                if !u.tls.enabled {
                    self.err(
                        u.endpoints.line,
                        format!("{f}.tls.peer_identities"),
                        "set, but tls.enabled is false",
                    );
                    break;
                }
                if let Err(e) = crate::tls::spiffe::IdentityPattern::parse(id) {
                    self.err(u.endpoints.line, format!("{f}.tls.peer_identities[{k}]"), e);
                }
            }
            for (field, problem) in crate::resilience::config::validate_upstream(
                u.breaker.as_ref(),
                u.throttle.as_ref(),
            ) {
                self.err(u.endpoints.line, format!("{f}.{field}"), problem);
            }
            for (from, to) in &u.model_aliases {
                if from.is_empty() || to.is_empty() {
                    self.err(
                        u.endpoints.line,
                        format!("{f}.model_aliases"),
                        "model names must not be empty",
                    );
                }
            }
            if u.tls.enabled && !u.tls.system_roots && u.tls.ca_file.is_none() {
                self.err(
                    u.endpoints.line,
                    format!("{f}.tls"),
                    "system_roots is false and no ca_file is given: nothing would be trusted",
                );
            }
        }
    }
}

/// Read a pricing file. Errors name the file and line.
pub fn load_pricing_file(path: &str) -> Result<BTreeMap<String, Price>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("`{path}`: {e}"))?;
    serde_saphyr::from_str::<PricingFile>(&text)
        .map(|f| f.models)
        .map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            format!("{path}:{line}: {}", first_line(&e.to_string()))
        })
}

/// Split `host:port` (IPv6 as `[::1]:443`). The port is required: an implicit port is a
/// frequent source of "it worked on my machine".
pub fn split_host_port(ep: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = ep.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| format!("`{ep}`: unterminated [ipv6]"))?;
        let port = rest[end + 1..]
            .strip_prefix(':')
            .ok_or_else(|| format!("`{ep}`: expected host:port"))?;
        (rest[..end].to_string(), port)
    } else {
        let i = ep
            .rfind(':')
            .ok_or_else(|| format!("`{ep}`: expected host:port"))?;
        (ep[..i].to_string(), &ep[i + 1..])
    };
    if host.is_empty() {
        return Err(format!("`{ep}`: empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{ep}`: `{port}` is not a port number"))?;
    if port == 0 {
        return Err(format!("`{ep}`: port 0"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
workers: 2
admin: { bind: 127.0.0.1:15000 }
listeners:
  - name: outbound
    bind: 127.0.0.1:15001
    routes:
      - match: { path_prefix: /v1/ }
        upstream: openai
upstreams:
  openai:
    endpoints: ["127.0.0.1:19090"]
    tls: { enabled: false }
"#;

    #[test]
    fn admin_extra_binds_parse_and_conflicts_are_errors() {
        let ok = GOOD.replace(
            "admin: { bind: 127.0.0.1:15000 }",
            "admin: { bind: 127.0.0.1:15000, health_bind: 0.0.0.0:15021, prometheus_bind: 0.0.0.0:15090 }",
        );
        let c = parse("t.yaml", &ok).unwrap();
        assert_eq!(c.admin.health_bind.unwrap().value, "0.0.0.0:15021");
        assert_eq!(c.admin.prometheus_bind.unwrap().value, "0.0.0.0:15090");
        let dup = GOOD.replace(
            "admin: { bind: 127.0.0.1:15000 }",
            "admin:\n  bind: 127.0.0.1:15000\n  health_bind: 0.0.0.0:15021\n  prometheus_bind: 0.0.0.0:15021",
        );
        let e = parse("t.yaml", &dup).unwrap_err().to_string();
        assert!(e.contains("t.yaml:6: admin.prometheus_bind"), "{e}");
        assert!(e.contains("already used"), "{e}");
        let bad = GOOD.replace(
            "admin: { bind: 127.0.0.1:15000 }",
            "admin: { health_bind: nowhere }",
        );
        let e = parse("t.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("admin.health_bind"), "{e}");
    }

    #[test]
    fn scalar_field_errors_name_their_line() {
        let bad = GOOD.replace(
            "workers: 2",
            "workers: 2\nbackground_thread_nice: 25\nbusy_poll_us: 999999",
        );
        let e = parse("t.yaml", &bad).unwrap_err().to_string();
        assert!(
            e.contains("t.yaml:3: background_thread_nice: must be 0..=19"),
            "{e}"
        );
        assert!(e.contains("t.yaml:4: busy_poll_us"), "{e}");
        // Nested, in block and in flow style.
        let block = format!("{GOOD}telemetry:\n  queue_batches_max: 4\n  flush_interval_ms: 0\n");
        let e = parse("t.yaml", &block).unwrap_err().to_string();
        assert!(e.contains("t.yaml:16: telemetry.flush_interval_ms"), "{e}");
        let flow = format!("{GOOD}telemetry: {{ flush_interval_ms: 0 }}\n");
        let e = parse("t.yaml", &flow).unwrap_err().to_string();
        assert!(e.contains("t.yaml:14: telemetry.flush_interval_ms"), "{e}");
        assert_eq!(field_line("a: 1\n", "b"), 0);
        assert_eq!(field_line("ab: 1\nb: 2\n", "b"), 2);
        assert_eq!(field_line("x:\n  ab: 1\n  b: 2\n", "x.b"), 3);
        assert_eq!(field_line("x:\n  a: 1\ny:\n  b: 2\n", "x.b"), 1);
    }

    #[test]
    fn issue_example_parses() {
        let c = parse("t.yaml", GOOD).unwrap();
        assert_eq!(c.workers, Workers::Count(2));
        assert_eq!(c.listeners[0].routes[0].upstream.value, "openai");
        assert_eq!(c.listeners[0].routes[0].upstream.line, 9);
        assert_eq!(
            c.upstreams["openai"].endpoints.value,
            vec!["127.0.0.1:19090"]
        );
    }

    #[test]
    fn workers_auto() {
        let c = parse("t.yaml", &GOOD.replace("workers: 2", "workers: auto")).unwrap();
        assert_eq!(c.workers, Workers::Auto);
        assert!(c.workers.resolve() >= 1);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let bad = GOOD.replace("path_prefix: /v1/", "path_prefx: /v1/");
        let e = parse("t.yaml", &bad).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("t.yaml:8: listeners[0].routes[0].match"),
            "{s}"
        );
        assert!(s.contains("path_prefx"), "{s}");
    }

    #[test]
    fn unknown_top_level_field() {
        let e = parse("t.yaml", &format!("{GOOD}\nbogus: 1\n")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("bogus"), "{s}");
        assert!(
            s.starts_with("t.yaml:15: bogus: unknown field `bogus`"),
            "{s}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let bad = GOOD
            .replace("upstream: openai", "upstream: nope")
            .replace("bind: 127.0.0.1:15001", "bind: localhost")
            .replace("\"127.0.0.1:19090\"", "\"127.0.0.1\"");
        let e = parse("t.yaml", &bad).unwrap_err();
        let s = e.to_string();
        assert_eq!(e.0.len(), 3, "{s}");
        assert!(
            s.contains("t.yaml:6: listeners[0].bind: `localhost` is not an ip:port"),
            "{s}"
        );
        assert!(
            s.contains("t.yaml:9: listeners[0].routes[0].upstream: no upstream named `nope`"),
            "{s}"
        );
        assert!(
            s.contains("t.yaml:12: upstreams.openai.endpoints[0]"),
            "{s}"
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        let bad = GOOD.replace("workers: 2", "workers: lots");
        let e = parse("t.yaml", &bad).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.yaml:2: workers:"), "{s}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("t.yaml", "listeners:\n  - name: [unclosed\n").unwrap_err();
        assert!(e.0[0].line >= 2, "{e}");
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.b:443").unwrap(), ("a.b".into(), 443));
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1".into(), 80));
        assert!(split_host_port("a.b").is_err());
        assert!(split_host_port("a.b:0").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("[::1]80").is_err());
    }
}
