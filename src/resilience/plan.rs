//! The attempt plan of one exchange: which upstream and endpoint each attempt goes to, and
//! whether a failed attempt is followed by a retry (same upstream, budget and backoff) or a
//! failover (the route's next fallback upstream and model).
//!
//! The exchange asks [`Plan::first`] before connecting and [`Plan::next`] after a failure; it
//! decides *whether* a failure may be retried at all (only before the first response byte
//! reached the client, and only when the whole request is still in memory). An
//! [`AttemptGuard`] reports the attempt's result to the endpoint's breaker and the upstream's
//! throttle, and gives back what it holds (a half-open probe slot, an outstanding count) when
//! dropped, whatever path the exchange took.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::balance::{self, NoPick, Pick};
use super::breaker::Admit;
use super::config::Balance;
use crate::route::RoutePolicy;
use crate::snapshot::UpstreamRt;

/// Why no attempt could be made on an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    pub upstream: usize,
    /// `circuit_open`, `cooling_down`, `throttled` or `no_endpoint`.
    pub reason: &'static str,
    pub retry_in_ms: u64,
    /// The status to answer with when nothing else takes the request.
    pub status: u16,
}

/// The result of an attempt, as the breaker and the throttle see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Success,
    /// 5xx, connect error, timeout, a connection closed before any response.
    Failure,
    /// 429, with the Retry-After in ms if the upstream sent one.
    RateLimited(Option<u64>),
}

/// One attempt on one endpoint.
pub struct AttemptGuard<'s> {
    up: &'s UpstreamRt,
    pub endpoint: usize,
    admit: Admit,
    reported: bool,
    counted: bool,
}

impl<'s> AttemptGuard<'s> {
    fn new(up: &'s UpstreamRt, p: Pick) -> Self {
        let counted = up.policy.balance == Balance::P2c;
        if counted {
            up.endpoints[p.endpoint]
                .health
                .outstanding
                .fetch_add(1, Ordering::Relaxed);
        }
        AttemptGuard {
            up,
            endpoint: p.endpoint,
            admit: p.admit,
            reported: false,
            counted,
        }
    }

    /// Report the result (once; later calls are ignored).
    pub fn report(&mut self, r: AttemptResult, now_ms: u64) {
        if self.reported {
            return;
        }
        self.reported = true;
        let pol = &self.up.policy;
        let ep = &self.up.endpoints[self.endpoint];
        if let AttemptResult::RateLimited(Some(ms)) = r {
            if pol.retry_after_ms_max > 0 && ms > 0 {
                ep.health.cool_down(ms.min(pol.retry_after_ms_max), now_ms);
                tracing::info!(upstream = %self.up.name, endpoint = %ep.authority, cooldown_ms = ms.min(pol.retry_after_ms_max), "429 with Retry-After: endpoint cooling down");
            }
        }
        let failed = r != AttemptResult::Success;
        if ep
            .health
            .on_result(pol.breaker.as_ref(), self.admit, failed, now_ms)
        {
            tracing::warn!(upstream = %self.up.name, endpoint = %ep.authority, "circuit breaker opened");
        } else if self.admit == Admit::Probe && !failed {
            tracing::info!(upstream = %self.up.name, endpoint = %ep.authority, "circuit breaker closed after a successful probe");
        }
        if let Some((t, _)) = &pol.throttle {
            t.on_result(now_ms, !failed);
        }
    }

    /// The response failed after its head was accepted (cut short, stalled): one more failure
    /// for the breaker.
    pub fn late_failure(&self, now_ms: u64) {
        let pol = &self.up.policy;
        self.up.endpoints[self.endpoint].health.on_result(
            pol.breaker.as_ref(),
            Admit::Normal,
            true,
            now_ms,
        );
    }
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        let h = &self.up.endpoints[self.endpoint].health;
        if !self.reported {
            h.release(self.admit);
        }
        if self.counted {
            h.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A chosen target: upstream index, endpoint and its guard.
pub struct Chosen<'s> {
    pub upstream: usize,
    pub guard: AttemptGuard<'s>,
}

/// The plan of one exchange.
pub struct Plan<'s> {
    upstreams: &'s [Arc<UpstreamRt>],
    /// A transparent listener's original destination (index `transparent::ORIGINAL_DST_IDX`).
    dynamic: Option<&'s Arc<UpstreamRt>>,
    policy: &'s RoutePolicy,
    /// The upstream the request started on (after the split).
    pub primary: usize,
    /// The upstream of the current attempt.
    pub current: usize,
    /// The model a failover target asks for (overrides aliases).
    pub failover_model: Option<Arc<str>>,
    attempts_on_current: u32,
    next_failover: usize,
    pub retries: u8,
    pub failovers: u8,
    last_endpoint: Option<usize>,
}

impl<'s> Plan<'s> {
    pub fn new(upstreams: &'s [Arc<UpstreamRt>], policy: &'s RoutePolicy, primary: usize) -> Self {
        Plan {
            upstreams,
            dynamic: None,
            policy,
            primary,
            current: primary,
            failover_model: None,
            attempts_on_current: 0,
            next_failover: 0,
            retries: 0,
            failovers: 0,
            last_endpoint: None,
        }
    }

    /// The route's connect timeout override.
    pub fn connect_timeout_ms(&self) -> Option<u64> {
        self.policy.connect_timeout_ms
    }

    /// A plan whose primary is a transparent connection's original destination.
    pub fn with_dynamic(mut self, up: &'s Arc<UpstreamRt>) -> Self {
        self.dynamic = Some(up);
        self
    }

    /// The upstream at an index of the snapshot (or the original destination). Indices come
    /// from the same snapshot as the upstream list, validated when it was built.
    pub fn upstream(&self, i: usize) -> &'s Arc<UpstreamRt> {
        match self.dynamic {
            Some(d) if i == crate::transparent::ORIGINAL_DST_IDX => d,
            _ => &self.upstreams[i],
        }
    }

    /// The first attempt: the primary upstream, else the first failover target that can take
    /// it. `Err`: nothing can; the primary's reason.
    pub fn first(
        &mut self,
        rr: &std::cell::Cell<usize>,
        now_ms: u64,
    ) -> Result<Chosen<'s>, Unavailable> {
        if let Some(r) = &self.policy.retry {
            r.budget.on_request(now_ms);
        }
        match self.try_upstream(self.current, None, rr, now_ms) {
            Ok(c) => {
                self.attempts_on_current = 1;
                Ok(c)
            }
            Err(u) => self.failover(rr, now_ms).ok_or(u),
        }
    }

    /// After a failed attempt: the next one and the backoff to wait before it, or `None` (no
    /// attempt left: the exchange answers with what it has).
    pub fn next(&mut self, rr: &std::cell::Cell<usize>, now_ms: u64) -> Option<(u64, Chosen<'s>)> {
        if let Some(r) = &self.policy.retry {
            if self.attempts_on_current < r.attempts_max {
                // An endpoint first, then the budget: a retry that cannot be sent (every
                // endpoint ejected) must not spend it. A dropped guard gives back what it took.
                let c = self
                    .try_upstream(self.current, self.last_endpoint, rr, now_ms)
                    .ok()
                    .filter(|_| r.budget.try_retry(now_ms));
                if let Some(c) = c {
                    self.attempts_on_current += 1;
                    self.retries = self.retries.saturating_add(1);
                    let backoff = super::backoff_ms(
                        r.backoff_base_ms,
                        r.backoff_max_ms,
                        self.attempts_on_current - 1,
                        fastrand::f64(),
                    );
                    return Some((backoff, c));
                }
            }
        }
        self.failover(rr, now_ms).map(|c| (0, c))
    }

    fn failover(&mut self, rr: &std::cell::Cell<usize>, now_ms: u64) -> Option<Chosen<'s>> {
        while let Some(f) = self.policy.failover.get(self.next_failover) {
            self.next_failover += 1;
            if let Ok(c) = self.try_upstream(f.upstream, None, rr, now_ms) {
                self.current = f.upstream;
                self.failover_model = f.model.clone();
                self.attempts_on_current = 1;
                self.failovers = self.failovers.saturating_add(1);
                return Some(c);
            }
        }
        None
    }

    fn try_upstream(
        &mut self,
        u: usize,
        avoid: Option<usize>,
        rr: &std::cell::Cell<usize>,
        now_ms: u64,
    ) -> Result<Chosen<'s>, Unavailable> {
        let up: &'s UpstreamRt = self.upstream(u);
        let pol = &up.policy;
        if let Some((t, status)) = &pol.throttle {
            if !t.admit(now_ms, fastrand::f64()) {
                pol.stats.count("throttled");
                return Err(Unavailable {
                    upstream: u,
                    reason: "throttled",
                    retry_in_ms: 1000,
                    status: *status,
                });
            }
        }
        let picked = balance::pick(
            &up.endpoints[..],
            pol.balance,
            pol.breaker.as_ref(),
            rr,
            now_ms,
            avoid,
            &mut |n| fastrand::usize(..n),
        );
        match picked {
            Ok(p) => {
                self.last_endpoint = Some(p.endpoint);
                Ok(Chosen {
                    upstream: u,
                    guard: AttemptGuard::new(up, p),
                })
            }
            Err(NoPick::NoAddress) => Err(Unavailable {
                upstream: u,
                reason: "no_endpoint",
                retry_in_ms: 0,
                status: 503,
            }),
            Err(NoPick::Denied(d)) => {
                pol.stats.count(d.reason());
                Err(Unavailable {
                    upstream: u,
                    reason: d.reason(),
                    retry_in_ms: d.retry_in_ms(),
                    status: if d.reason() == "cooling_down" {
                        429
                    } else {
                        503
                    },
                })
            }
        }
    }

    /// The model to send to the current upstream for a client that asked for `client_model`:
    /// the failover target's model, else the upstream's alias. `None`: send it unchanged.
    pub fn model_for(&self, client_model: Option<&str>) -> Option<Arc<str>> {
        if let Some(m) = &self.failover_model {
            return Some(m.clone());
        }
        let m = client_model?;
        self.upstream(self.current).policy.alias(m).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use std::cell::Cell;

    fn snapshot(extra_route: &str, extra_a: &str) -> Snapshot {
        let yaml = format!(
            r#"
listeners:
  - name: l
    bind: 127.0.0.1:1
    routes:
      - match: {{ path_prefix: / }}
        upstream: a
{extra_route}
upstreams:
  a:
    endpoints: ["127.0.0.1:2", "127.0.0.1:3"]
{extra_a}
  b: {{ endpoints: ["127.0.0.1:4"] }}
  c: {{ endpoints: ["127.0.0.1:5"] }}
"#
        );
        let cfg = crate::config::parse("t.yaml", &yaml).unwrap();
        Snapshot::build(cfg, 1, None).unwrap()
    }

    #[test]
    fn retries_other_endpoint_then_fails_over_in_order() {
        let s = snapshot(
            "        retry: { attempts_max: 2, budget_percent: 100 }\n        failover: [ { upstream: b, model: small }, { upstream: c } ]",
            "",
        );
        let route = &s.listeners[0].routes[0];
        let rr = Cell::new(0);
        let mut p = Plan::new(&s.upstreams, &route.policy, 0);
        let mut c = p.first(&rr, 10).unwrap();
        assert_eq!((c.upstream, c.guard.endpoint), (0, 0));
        c.guard.report(AttemptResult::Failure, 10);
        let (_, mut c) = p.next(&rr, 10).unwrap();
        // The retry avoids the endpoint that failed.
        assert_eq!((c.upstream, c.guard.endpoint, p.retries), (0, 1, 1));
        c.guard.report(AttemptResult::Failure, 10);
        let (backoff, c) = p.next(&rr, 10).unwrap();
        assert_eq!((c.upstream, backoff, p.failovers), (1, 0, 1));
        assert_eq!(p.model_for(Some("big")).as_deref(), Some("small"));
        // Retries apply per upstream: `b` gets its one retry, then `c` takes over.
        let (_, c) = p.next(&rr, 10).unwrap();
        assert_eq!((c.upstream, p.retries), (1, 2));
        let (_, c) = p.next(&rr, 10).unwrap();
        assert_eq!((c.upstream, p.failovers), (2, 2));
        assert_eq!(p.model_for(Some("big")), None);
        let (_, c) = p.next(&rr, 10).unwrap();
        assert_eq!((c.upstream, p.retries), (2, 3));
        assert!(p.next(&rr, 10).is_none());
    }

    #[test]
    fn cooling_primary_goes_straight_to_failover_and_aliases_apply() {
        let s = snapshot(
            "        failover: [ { upstream: b } ]",
            "    model_aliases: { fast: gpt-4o-mini }",
        );
        let route = &s.listeners[0].routes[0];
        assert!(route.policy.needs_body && route.policy.rewrites_model);
        let rr = Cell::new(0);
        let mut p = Plan::new(&s.upstreams, &route.policy, 0);
        assert_eq!(p.model_for(Some("fast")).as_deref(), Some("gpt-4o-mini"));
        assert_eq!(p.model_for(Some("other")), None);
        for ep in &s.upstreams[0].endpoints {
            ep.health.cool_down(1000, 5);
        }
        let c = p.first(&rr, 10).unwrap();
        assert_eq!((c.upstream, p.failovers), (1, 1));
        // Nothing left: the primary's reason comes back.
        let mut p = Plan::new(&s.upstreams, &route.policy, 0);
        s.upstreams[1].endpoints[0].health.cool_down(1000, 5);
        let u = p.first(&rr, 10).err().unwrap();
        assert_eq!((u.upstream, u.reason, u.status), (0, "cooling_down", 429));
        assert!(u.retry_in_ms <= 995);
    }
}
