//! Resilience: what keeps the system standing when a provider answers 429 and 5xx.
//!
//! Owns the policies and their shared state; the exchange (`proxy::exchange`) only calls in at
//! three points: choosing a target (breaker + cool-down + throttle + balancer), reporting an
//! attempt's result, and deciding whether a failed attempt may be retried (budget + backoff).
//!
//! * [`breaker`]: per-endpoint circuit breaker, Retry-After cool-down, outstanding count.
//! * [`throttle`]: SRE-book adaptive client-side throttling per upstream.
//! * [`budget`]: per-route retry budget.
//! * [`balance`]: endpoint choice (round robin, power of two choices), skipping ejected ones.
//! * [`plan`]: the attempts of one exchange (retry or failover) and their result reporting.
//! * [`window`]: the lock-free sliding window they share.
//!
//! Why atomics in `Arc`s and not per-core state: a breaker, a throttle and a budget are
//! statements about an upstream or a route as a whole. Per-core copies would each need their
//! own failures to open (N cores → N× the damage before anyone stops) and would each probe a
//! recovering upstream separately. The state lives in the read-only snapshot entries
//! (`EndpointRt`, `UpstreamRt`, `RouteRt`), so it costs no lookup: the exchange already holds
//! the pointer. Upstreams whose configuration is unchanged keep their `Arc` across reloads, so
//! a reload neither closes an open breaker nor forgets a cool-down. All of it is off unless
//! configured; with nothing configured an exchange does no atomic operation here at all.
//!
//! Why sit beside `proxy` and not inside it: the state machines are pure (time is passed in)
//! and unit-tested without sockets; the exchange owns IO and ordering, this module owns policy.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod plan;
pub mod throttle;
pub mod window;

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on a monotonic clock shared by all threads (since the first call). Deadlines
/// in the shared state are expressed on it.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1: 0 means "never" in deadlines.
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Full-jitter exponential backoff before retry number `retry` (1-based): uniform in
/// `[0, min(max, base · 2^(retry-1))]` (AWS's "full jitter": spreads synchronized clients).
pub fn backoff_ms(base_ms: u64, max_ms: u64, retry: u32, draw: f64) -> u64 {
    let exp = base_ms.saturating_mul(1u64 << retry.saturating_sub(1).min(20));
    let cap = exp.min(max_ms);
    (cap as f64 * draw.clamp(0.0, 1.0)) as u64
}

/// Parse a `Retry-After` value: delay-seconds (the only form model providers send; an
/// HTTP-date is ignored). Fractions are accepted (`1.5`), as some providers send them.
pub fn parse_retry_after_ms(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n.saturating_mul(1000));
    }
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f >= 0.0).then_some((f * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        assert_eq!(backoff_ms(25, 250, 1, 1.0), 25);
        assert_eq!(backoff_ms(25, 250, 2, 1.0), 50);
        assert_eq!(backoff_ms(25, 250, 5, 1.0), 250);
        assert_eq!(backoff_ms(25, 250, 60, 0.5), 125);
        assert_eq!(backoff_ms(25, 250, 3, 0.0), 0);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after_ms(b"2"), Some(2000));
        assert_eq!(parse_retry_after_ms(b" 1.5 "), Some(1500));
        assert_eq!(parse_retry_after_ms(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after_ms(b"-1"), None);
    }
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An upstream's resilience policy and shared counters (one per `snapshot::UpstreamRt`).
pub struct UpstreamPolicy {
    pub balance: config::Balance,
    pub breaker: Option<config::BreakerConfig>,
    pub retry_after_ms_max: u64,
    pub throttle: Option<(throttle::Throttle, u16)>,
    /// Client model → provider model.
    pub aliases: HashMap<Box<str>, Arc<str>>,
    pub stats: UpstreamStats,
}

/// Local rejections of requests to an upstream, by reason (exported by the telemetry thread).
#[derive(Default)]
pub struct UpstreamStats {
    pub rejected_circuit_open: AtomicU64,
    pub rejected_cooling_down: AtomicU64,
    pub rejected_throttled: AtomicU64,
}

impl UpstreamStats {
    pub fn count(&self, reason: &str) {
        let c = match reason {
            "circuit_open" => &self.rejected_circuit_open,
            "cooling_down" => &self.rejected_cooling_down,
            _ => &self.rejected_throttled,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, count) pairs.
    pub fn read(&self) -> [(&'static str, u64); 3] {
        [
            (
                "circuit_open",
                self.rejected_circuit_open.load(Ordering::Relaxed),
            ),
            (
                "cooling_down",
                self.rejected_cooling_down.load(Ordering::Relaxed),
            ),
            ("throttled", self.rejected_throttled.load(Ordering::Relaxed)),
        ]
    }
}

impl UpstreamPolicy {
    pub fn new(
        balance: config::Balance,
        breaker: Option<config::BreakerConfig>,
        retry_after_ms_max: u64,
        throttle: Option<&config::ThrottleConfig>,
        aliases: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        UpstreamPolicy {
            balance,
            breaker,
            retry_after_ms_max,
            throttle: throttle.map(|t| (throttle::Throttle::new(t), t.reject_status)),
            aliases: aliases
                .iter()
                .map(|(k, v)| (Box::from(k.as_str()), Arc::from(v.as_str())))
                .collect(),
            stats: UpstreamStats::default(),
        }
    }

    /// The breaker window of this upstream's endpoints.
    pub fn window_ms(&self) -> u64 {
        self.breaker
            .as_ref()
            .map(|b| b.window_ms)
            .unwrap_or(config::BREAKER_WINDOW_MS_DEFAULT)
    }

    /// The provider model for a client model, if aliased.
    pub fn alias(&self, model: &str) -> Option<&Arc<str>> {
        if self.aliases.is_empty() {
            return None;
        }
        self.aliases.get(model)
    }
}
