//! Configuration of the per-upstream resilience policies: load balancing, the circuit breaker
//! (passive health / outlier ejection), Retry-After cool-downs and adaptive client-side
//! throttling. Referenced from `config::UpstreamConfig`; validated by [`validate_upstream`].

use serde::{Deserialize, Serialize};

/// Default consecutive failures that open an endpoint's breaker.
pub const BREAKER_CONSECUTIVE_FAILURES_DEFAULT: u32 = 5;
/// Default failure rate (percent of requests in the window) that opens a breaker.
pub const BREAKER_FAILURE_RATE_PERCENT_DEFAULT: u32 = 50;
/// Default length of the failure-rate window.
pub const BREAKER_WINDOW_MS_DEFAULT: u64 = 10_000;
/// Default number of requests a window must hold before its failure rate counts.
pub const BREAKER_WINDOW_REQUESTS_MIN_DEFAULT: u32 = 20;
/// Default time an opened breaker stays open before half-open probes are let through.
pub const BREAKER_OPEN_MS_DEFAULT: u64 = 5_000;
/// Default cap of the open time when an endpoint keeps failing its probes (doubling).
pub const BREAKER_OPEN_MS_MAX_DEFAULT: u64 = 60_000;
/// Default concurrent probe requests allowed while half-open.
pub const BREAKER_HALF_OPEN_PROBES_DEFAULT: u32 = 1;
/// Default longest cool-down a 429's `Retry-After` may impose on an endpoint: 0, off. Opt-in
/// because a provider's 429 is often per API key: where clients bring their own keys, cooling
/// the endpoint for one client's limit would refuse every other client too.
pub const RETRY_AFTER_MS_MAX_DEFAULT: u64 = 0;
/// Default SRE-book throttle multiplier K (requests allowed per accept).
pub const THROTTLE_K_DEFAULT: f64 = 2.0;
/// Default adaptive-throttle window.
pub const THROTTLE_WINDOW_MS_DEFAULT: u64 = 60_000;

/// How an upstream's endpoints are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Rotate through the available endpoints (per worker).
    #[default]
    RoundRobin,
    /// Power of two choices: of two random available endpoints, the one with fewer
    /// outstanding requests (counted across all workers).
    P2c,
}

/// Per-endpoint circuit breaker. Absent: endpoints are never ejected (only Retry-After
/// cool-downs apply).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Open after this many failures in a row (0 = off).
    #[serde(default = "consecutive_failures_default")]
    pub consecutive_failures: u32,
    /// Open when this percent of the window's requests failed (0 = off).
    #[serde(default = "failure_rate_percent_default")]
    pub failure_rate_percent: u32,
    #[serde(default = "window_ms_default")]
    pub window_ms: u64,
    /// The failure rate is only judged over at least this many requests.
    #[serde(default = "window_requests_min_default")]
    pub window_requests_min: u32,
    /// Time open before probing; doubles on each failed probe up to `open_ms_max`.
    #[serde(default = "open_ms_default")]
    pub open_ms: u64,
    #[serde(default = "open_ms_max_default")]
    pub open_ms_max: u64,
    /// Probe requests let through at once while half-open; one success closes the breaker.
    #[serde(default = "half_open_probes_default")]
    pub half_open_probes: u32,
}

fn consecutive_failures_default() -> u32 {
    BREAKER_CONSECUTIVE_FAILURES_DEFAULT
}
fn failure_rate_percent_default() -> u32 {
    BREAKER_FAILURE_RATE_PERCENT_DEFAULT
}
fn window_ms_default() -> u64 {
    BREAKER_WINDOW_MS_DEFAULT
}
fn window_requests_min_default() -> u32 {
    BREAKER_WINDOW_REQUESTS_MIN_DEFAULT
}
fn open_ms_default() -> u64 {
    BREAKER_OPEN_MS_DEFAULT
}
fn open_ms_max_default() -> u64 {
    BREAKER_OPEN_MS_MAX_DEFAULT
}
fn half_open_probes_default() -> u32 {
    BREAKER_HALF_OPEN_PROBES_DEFAULT
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: BREAKER_CONSECUTIVE_FAILURES_DEFAULT,
            failure_rate_percent: BREAKER_FAILURE_RATE_PERCENT_DEFAULT,
            window_ms: BREAKER_WINDOW_MS_DEFAULT,
            window_requests_min: BREAKER_WINDOW_REQUESTS_MIN_DEFAULT,
            open_ms: BREAKER_OPEN_MS_DEFAULT,
            open_ms_max: BREAKER_OPEN_MS_MAX_DEFAULT,
            half_open_probes: BREAKER_HALF_OPEN_PROBES_DEFAULT,
        }
    }
}

/// Adaptive client-side throttling (Google SRE book, "Handling Overload"): reject locally
/// with probability `max(0, (requests - k * accepts) / (requests + 1))` over the window.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    #[serde(default = "throttle_k_default")]
    pub k: f64,
    #[serde(default = "throttle_window_ms_default")]
    pub window_ms: u64,
    /// Status of a local rejection when no failover target takes the request: 429 or 503.
    #[serde(default = "throttle_status_default")]
    pub reject_status: u16,
}

fn throttle_k_default() -> f64 {
    THROTTLE_K_DEFAULT
}
fn throttle_window_ms_default() -> u64 {
    THROTTLE_WINDOW_MS_DEFAULT
}
fn throttle_status_default() -> u16 {
    503
}

pub fn retry_after_ms_max_default() -> u64 {
    RETRY_AFTER_MS_MAX_DEFAULT
}

/// Semantic checks; `(field suffix, problem)` pairs, relative to `upstreams.<name>`.
pub fn validate_upstream(
    breaker: Option<&BreakerConfig>,
    throttle: Option<&ThrottleConfig>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(b) = breaker {
        if b.consecutive_failures == 0 && b.failure_rate_percent == 0 {
            out.push((
                "breaker".into(),
                "consecutive_failures and failure_rate_percent are both 0: the breaker never opens"
                    .into(),
            ));
        }
        if b.failure_rate_percent > 100 {
            out.push((
                "breaker.failure_rate_percent".into(),
                "must be 0..=100".into(),
            ));
        }
        if b.window_ms == 0 {
            out.push(("breaker.window_ms".into(), "must be > 0".into()));
        }
        if b.open_ms == 0 || b.open_ms_max < b.open_ms {
            out.push((
                "breaker.open_ms".into(),
                "must be > 0 and <= open_ms_max".into(),
            ));
        }
        if b.half_open_probes == 0 {
            out.push(("breaker.half_open_probes".into(), "must be > 0".into()));
        }
    }
    if let Some(t) = throttle {
        if !(t.k.is_finite() && t.k >= 1.0) {
            out.push(("throttle.k".into(), "must be a number >= 1".into()));
        }
        if t.window_ms == 0 {
            out.push(("throttle.window_ms".into(), "must be > 0".into()));
        }
        if t.reject_status != 429 && t.reject_status != 503 {
            out.push(("throttle.reject_status".into(), "must be 429 or 503".into()));
        }
    }
    out
}
