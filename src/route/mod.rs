//! Routing policy of one route: what it matches beyond the request head (the body's `model`),
//! which upstream a request goes to (weighted, optionally sticky splits), what the upstream is
//! sent (model aliases, the failover model), and where it goes when that fails (failover
//! targets, retries).
//!
//! Owns the compiled, read-only [`RoutePolicy`] (one per `snapshot::RouteRt`), the arm choice
//! of a split and the body `model` scan/rewrite ([`model`]). The exchange calls in at fixed
//! points; the IO and ordering stay in `proxy::exchange`, the shared health state in
//! `resilience`.
//!
//! Hot-path invariants:
//! * Route selection does not allocate. A split picks its arm from a hash of the sticky
//!   header value (FNV-1a, computed on the borrowed header bytes) or one random draw.
//! * The request body is read before routing only on listeners where some route matches on
//!   `model`, and before forwarding only on routes whose policy needs it
//!   ([`RoutePolicy::needs_body`]); it is bounded like the filters' body (over the bound it
//!   streams through unrewritten, and a route that must rewrite it answers 413).
//! * The sticky hash is stable across processes and restarts (no random seed): every replica
//!   of the sidecar sends one user to the same arm.

pub mod config;
pub mod model;

use std::collections::HashMap;
use std::sync::Arc;

use crate::http1::RequestHead;
use crate::resilience::budget::RetryBudget;
use crate::snapshot::UpstreamRt;

/// A compiled weighted split.
pub struct Split {
    /// Lower-case header name.
    pub sticky_header: Option<Box<str>>,
    /// (upstream index, cumulative weight end), in configuration order.
    arms: Vec<(usize, u32)>,
    total: u32,
}

impl Split {
    pub fn new(sticky_header: Option<&str>, arms: &[(usize, u32)]) -> Split {
        let mut acc = 0u32;
        let arms = arms
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|&(u, w)| {
                acc = acc.saturating_add(w);
                (u, acc)
            })
            .collect();
        Split {
            sticky_header: sticky_header.map(|h| h.to_ascii_lowercase().into_boxed_str()),
            arms,
            total: acc.max(1),
        }
    }

    /// The upstream for this request: by the sticky header's hash, else at random by weight.
    pub fn pick(&self, head: &RequestHead) -> usize {
        let v = self
            .sticky_header
            .as_deref()
            .and_then(|h| head.header(h))
            .filter(|v| !v.is_empty());
        let point = match v {
            Some(v) => sticky_point(v, self.total),
            None => fastrand::u32(..self.total),
        };
        self.arm_at(point)
    }

    fn arm_at(&self, point: u32) -> usize {
        self.arms
            .iter()
            .find(|(_, end)| point < *end)
            .or(self.arms.last())
            .map(|(u, _)| *u)
            .unwrap_or(0)
    }
}

/// Where a sticky value lands in `0..total`: FNV-1a, then a 64-bit finalizer so that values
/// differing in one byte spread over the whole range.
pub fn sticky_point(v: &[u8], total: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in v {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % total.max(1) as u64) as u32
}

/// A failover target.
pub struct FailoverRt {
    pub upstream: usize,
    pub model: Option<Arc<str>>,
}

/// A compiled retry policy with its shared budget.
pub struct RetryRt {
    pub attempts_max: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub budget: RetryBudget,
}

/// The routing policy of one route.
#[derive(Default)]
pub struct RoutePolicy {
    /// Match on the body's `model` (exact).
    pub model: Option<Box<str>>,
    pub split: Option<Split>,
    pub failover: Vec<FailoverRt>,
    pub retry: Option<RetryRt>,
    /// The body must be read (bounded) before forwarding: to rewrite its model, to replay it
    /// on a retry or failover, or to know whether it asks for a stream (keep-alives).
    pub needs_body: bool,
    /// Some target of this route may be sent another model than the client asked for.
    pub rewrites_model: bool,
    pub connect_timeout_ms: Option<u64>,
    pub sse_keepalive_ms: u64,
}

impl RoutePolicy {
    /// Compile a route's policy. Upstream names were validated with the config.
    pub fn build(
        r: &crate::config::RouteConfig,
        index: &HashMap<String, usize>,
        upstreams: &[Arc<UpstreamRt>],
    ) -> Result<RoutePolicy, String> {
        let find = |name: &str| {
            index
                .get(name)
                .copied()
                .ok_or_else(|| format!("unknown upstream {name}"))
        };
        let split = match &r.split {
            Some(s) => {
                let mut arms = Vec::with_capacity(s.arms.len());
                for a in &s.arms {
                    arms.push((find(&a.upstream.value)?, a.weight));
                }
                Some(Split::new(s.sticky_header.as_deref(), &arms))
            }
            None => None,
        };
        let mut failover = Vec::with_capacity(r.failover.len());
        for f in &r.failover {
            failover.push(FailoverRt {
                upstream: find(&f.upstream.value)?,
                model: f.model.as_deref().map(Arc::from),
            });
        }
        let retry = r.retry.as_ref().map(|c| RetryRt {
            attempts_max: c.attempts_max,
            backoff_base_ms: c.backoff_base_ms,
            backoff_max_ms: c.backoff_max_ms,
            budget: RetryBudget::new(c.budget_percent, c.budget_min_per_s),
        });
        // `original_destination` (transparent listeners) has no index here: no aliases.
        let primary = index.get(&r.upstream.value).copied().unwrap_or(usize::MAX);
        let candidates = std::iter::once(primary)
            .chain(split.iter().flat_map(|s| s.arms.iter().map(|a| a.0)))
            .chain(failover.iter().map(|f| f.upstream));
        let aliased = candidates.into_iter().any(|u| {
            upstreams
                .get(u)
                .is_some_and(|u| !u.policy.aliases.is_empty())
        });
        let sse_keepalive_ms = r.timeouts.sse_keepalive_ms;
        let rewrites_model = aliased || failover.iter().any(|f| f.model.is_some());
        let needs_body = r.matcher.model.is_some()
            || aliased
            || !failover.is_empty()
            || retry.is_some()
            || sse_keepalive_ms > 0;
        Ok(RoutePolicy {
            model: r.matcher.model.as_deref().map(Box::from),
            split,
            failover,
            retry,
            needs_body,
            rewrites_model,
            connect_timeout_ms: r.timeouts.connect_ms,
            sse_keepalive_ms,
        })
    }

    /// The upstream a new request starts on.
    pub fn primary(&self, route_upstream: usize, head: &RequestHead) -> usize {
        match &self.split {
            Some(s) => s.pick(head),
            None => route_upstream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_weights_and_stickiness() {
        let s = Split::new(Some("X-User"), &[(0, 90), (1, 10), (2, 0)]);
        assert_eq!(s.total, 100);
        assert_eq!(s.arm_at(0), 0);
        assert_eq!(s.arm_at(89), 0);
        assert_eq!(s.arm_at(90), 1);
        assert_eq!(s.arm_at(99), 1);
        // Hash points spread evenly: over 20,000 ids, arm shares within 1.5% of 90/10.
        let mut c = [0u32; 2];
        for i in 0..20_000 {
            let id = format!("user-{i}");
            c[s.arm_at(sticky_point(id.as_bytes(), s.total))] += 1;
        }
        let share = c[1] as f64 / 20_000.0;
        assert!((share - 0.10).abs() < 0.015, "{c:?}");
        // Stable: the same value always lands on the same point (no per-process seed).
        assert_eq!(sticky_point(b"alice", 100), sticky_point(b"alice", 100));
        assert_eq!(sticky_point(b"alice", 1_000_000), 475_757);
    }
}
