//! The per-endpoint circuit breaker, Retry-After cool-down and outstanding-request count.
//!
//! One [`EndpointHealth`] lives in each `snapshot::EndpointRt`, shared by every worker through
//! the snapshot's `Arc`. All state is atomics, so every core sees one breaker per endpoint:
//! five failures spread over four cores open it exactly as five failures on one core would,
//! and an open breaker stops all cores at once. A lock would serialize every request to the
//! endpoint; per-core breakers would need N times the failures to open and would probe N times.
//!
//! State machine (packed with the open deadline into one `AtomicU64`, so a transition is one
//! CAS and no reader ever sees a state without its deadline):
//!
//! ```text
//!   Closed ──(N consecutive failures, or failure rate ≥ R% over ≥ M requests in the window)──▶ Open(until)
//!   Open(until) ──(now ≥ until: the first request to notice)──▶ HalfOpen
//!   HalfOpen ──(a probe succeeds)──▶ Closed (window cleared)
//!   HalfOpen ──(a probe fails)──▶ Open(now + open_ms · 2^k, capped at open_ms_max)
//! ```
//!
//! Half-open lets at most `half_open_probes` requests through at once (an atomic count of
//! probes in flight; a probe slot is always given back, by result or by drop of its
//! [`Attempt`]). The cool-down of a 429 with `Retry-After` is separate from the breaker: it
//! makes the endpoint unavailable until its deadline whatever the breaker state, and the
//! deadline only ever moves later (`fetch_max`).
//!
//! What counts as a failure is the caller's decision (see `proxy::exchange`): 429, 5xx,
//! connect errors and timeouts; a 4xx other than 429 is the client's fault and a success for
//! the endpoint.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::config::BreakerConfig;
use super::window::Window;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const TAG_SHIFT: u32 = 62;
const UNTIL_MASK: u64 = (1 << TAG_SHIFT) - 1;

fn tag(s: u64) -> u64 {
    s >> TAG_SHIFT
}
fn until(s: u64) -> u64 {
    s & UNTIL_MASK
}
fn pack(t: u64, until_ms: u64) -> u64 {
    (t << TAG_SHIFT) | (until_ms & UNTIL_MASK)
}

/// Breaker state, as exported (`sluice_upstream_breaker_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// How a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Normal,
    /// A half-open probe: its result decides the breaker.
    Probe,
}

/// Why an endpoint refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    /// The breaker is open (or half-open with all probe slots taken); `retry_in_ms` until it
    /// may probe.
    Open { retry_in_ms: u64 },
    /// Cooling down after a 429 with Retry-After.
    Cooling { retry_in_ms: u64 },
}

impl Deny {
    pub fn retry_in_ms(self) -> u64 {
        match self {
            Deny::Open { retry_in_ms } | Deny::Cooling { retry_in_ms } => retry_in_ms,
        }
    }
    pub fn reason(self) -> &'static str {
        match self {
            Deny::Open { .. } => "circuit_open",
            Deny::Cooling { .. } => "cooling_down",
        }
    }
}

pub struct EndpointHealth {
    state: AtomicU64,
    consecutive: AtomicU32,
    /// Opens since the breaker last closed: the open time doubles with each.
    opens_in_row: AtomicU32,
    probes: AtomicU32,
    cooldown_until_ms: AtomicU64,
    /// Requests in flight to this endpoint, across all workers (for p2c).
    pub outstanding: AtomicU32,
    /// (requests, failures) over the breaker window.
    window: Window,
    pub opened_total: AtomicU64,
    pub cooldowns_total: AtomicU64,
}

impl EndpointHealth {
    pub fn new(window_ms: u64) -> Self {
        EndpointHealth {
            state: AtomicU64::new(pack(CLOSED, 0)),
            consecutive: AtomicU32::new(0),
            opens_in_row: AtomicU32::new(0),
            probes: AtomicU32::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            outstanding: AtomicU32::new(0),
            window: Window::new(window_ms),
            opened_total: AtomicU64::new(0),
            cooldowns_total: AtomicU64::new(0),
        }
    }

    /// Without side effects: would [`admit`](Self::admit) let a request through now?
    pub fn available(&self, cfg: Option<&BreakerConfig>, now_ms: u64) -> bool {
        if self.cooldown_until_ms.load(Ordering::Acquire) > now_ms {
            return false;
        }
        let Some(cfg) = cfg else { return true };
        let s = self.state.load(Ordering::Acquire);
        match tag(s) {
            CLOSED => true,
            OPEN => now_ms >= until(s),
            _ => self.probes.load(Ordering::Acquire) < cfg.half_open_probes,
        }
    }

    /// Let a request through, or say why not. A `Probe` must be reported with
    /// [`on_result`](Self::on_result) or released with [`release`](Self::release).
    pub fn admit(&self, cfg: Option<&BreakerConfig>, now_ms: u64) -> Result<Admit, Deny> {
        let cool = self.cooldown_until_ms.load(Ordering::Acquire);
        if cool > now_ms {
            return Err(Deny::Cooling {
                retry_in_ms: cool - now_ms,
            });
        }
        let Some(cfg) = cfg else {
            return Ok(Admit::Normal);
        };
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            match tag(s) {
                CLOSED => return Ok(Admit::Normal),
                OPEN => {
                    if now_ms < until(s) {
                        return Err(Deny::Open {
                            retry_in_ms: until(s) - now_ms,
                        });
                    }
                    match self.state.compare_exchange(
                        s,
                        pack(HALF_OPEN, 0),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => s = pack(HALF_OPEN, 0),
                        Err(x) => s = x,
                    }
                }
                _ => {
                    let n = self.probes.fetch_add(1, Ordering::AcqRel);
                    if n < cfg.half_open_probes {
                        return Ok(Admit::Probe);
                    }
                    self.probes.fetch_sub(1, Ordering::AcqRel);
                    return Err(Deny::Open {
                        retry_in_ms: cfg.open_ms.min(1000),
                    });
                }
            }
        }
    }

    /// Give back a probe slot whose request never produced a result (client went away).
    pub fn release(&self, admit: Admit) {
        if admit == Admit::Probe {
            self.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Report the result of an admitted request. Returns true when this opened the breaker.
    pub fn on_result(
        &self,
        cfg: Option<&BreakerConfig>,
        admit: Admit,
        failed: bool,
        now_ms: u64,
    ) -> bool {
        let Some(cfg) = cfg else {
            return false;
        };
        self.release(admit);
        self.window.add(now_ms, 1, failed as u32);
        if !failed {
            self.consecutive.store(0, Ordering::Release);
            let s = self.state.load(Ordering::Acquire);
            if tag(s) == HALF_OPEN
                && admit == Admit::Probe
                && self
                    .state
                    .compare_exchange(s, pack(CLOSED, 0), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.opens_in_row.store(0, Ordering::Release);
                self.window.reset();
            }
            return false;
        }
        let c = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let s = self.state.load(Ordering::Acquire);
        let trip = match tag(s) {
            HALF_OPEN => admit == Admit::Probe,
            CLOSED => {
                let by_count = cfg.consecutive_failures > 0 && c >= cfg.consecutive_failures;
                by_count || {
                    let (total, bad) = self.window.read(now_ms);
                    cfg.failure_rate_percent > 0
                        && total >= cfg.window_requests_min as f64
                        && bad * 100.0 >= cfg.failure_rate_percent as f64 * total
                }
            }
            _ => false,
        };
        if !trip {
            return false;
        }
        let k = self.opens_in_row.load(Ordering::Acquire).min(16);
        let open_ms = cfg.open_ms.saturating_mul(1 << k).min(cfg.open_ms_max);
        if self
            .state
            .compare_exchange(
                s,
                pack(OPEN, now_ms + open_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.opens_in_row.fetch_add(1, Ordering::AcqRel);
            self.opened_total.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A 429 with Retry-After: unavailable for `ms` (the deadline only moves later).
    pub fn cool_down(&self, ms: u64, now_ms: u64) {
        let prev = self
            .cooldown_until_ms
            .fetch_max(now_ms + ms, Ordering::AcqRel);
        if prev <= now_ms {
            self.cooldowns_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (state, remaining cool-down in ms), for gauges.
    pub fn state(&self, now_ms: u64) -> (BreakerState, u64) {
        let s = self.state.load(Ordering::Acquire);
        let st = match tag(s) {
            CLOSED => BreakerState::Closed,
            OPEN if now_ms < until(s) => BreakerState::Open,
            // Open past its deadline: the next request probes.
            _ => BreakerState::HalfOpen,
        };
        let cool = self
            .cooldown_until_ms
            .load(Ordering::Acquire)
            .saturating_sub(now_ms);
        (st, cool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate_percent: 50,
            window_ms: 10_000,
            window_requests_min: 10,
            open_ms: 1000,
            open_ms_max: 4000,
            half_open_probes: 1,
        }
    }

    #[test]
    fn opens_on_consecutive_failures_then_half_opens_and_recovers() {
        let c = cfg();
        let h = EndpointHealth::new(c.window_ms);
        let t = 1_000_000;
        for i in 0..2 {
            assert_eq!(h.admit(Some(&c), t), Ok(Admit::Normal));
            assert!(!h.on_result(Some(&c), Admit::Normal, true, t + i));
        }
        // A success resets the count.
        assert!(!h.on_result(Some(&c), Admit::Normal, false, t));
        for _ in 0..2 {
            assert!(!h.on_result(Some(&c), Admit::Normal, true, t));
        }
        assert!(h.on_result(Some(&c), Admit::Normal, true, t));
        assert_eq!(h.state(t).0, BreakerState::Open);
        assert_eq!(
            h.admit(Some(&c), t + 10),
            Err(Deny::Open { retry_in_ms: 990 })
        );
        assert!(!h.available(Some(&c), t + 999));
        // After open_ms: one probe at a time.
        assert!(h.available(Some(&c), t + 1000));
        assert_eq!(h.admit(Some(&c), t + 1000), Ok(Admit::Probe));
        assert!(h.admit(Some(&c), t + 1000).is_err());
        assert_eq!(h.state(t + 1000).0, BreakerState::HalfOpen);
        // The probe fails: open again, for twice as long.
        assert!(h.on_result(Some(&c), Admit::Probe, true, t + 1001));
        assert!(h.admit(Some(&c), t + 1001 + 1999).is_err());
        assert_eq!(h.admit(Some(&c), t + 1001 + 2000), Ok(Admit::Probe));
        // The probe succeeds: closed, and normal requests flow.
        assert!(!h.on_result(Some(&c), Admit::Probe, false, t + 3002));
        assert_eq!(h.state(t + 3002).0, BreakerState::Closed);
        assert_eq!(h.admit(Some(&c), t + 3002), Ok(Admit::Normal));
        assert_eq!(h.opened_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn opens_on_failure_rate_only_with_enough_requests() {
        let mut c = cfg();
        c.consecutive_failures = 0;
        let h = EndpointHealth::new(c.window_ms);
        let t = 50_000;
        // Alternate: 50% failures, never 3 in a row.
        let mut opened = false;
        for i in 0..20 {
            let failed = i % 2 == 1;
            opened |= h.on_result(Some(&c), Admit::Normal, failed, t);
            if i < 9 {
                assert!(!opened, "opened before window_requests_min at {i}");
            }
        }
        assert!(opened);
    }

    #[test]
    fn released_probe_slot_is_reusable_and_cooldown_wins() {
        let c = cfg();
        let h = EndpointHealth::new(c.window_ms);
        for _ in 0..3 {
            h.on_result(Some(&c), Admit::Normal, true, 0);
        }
        let a = h.admit(Some(&c), 2000).unwrap();
        assert_eq!(a, Admit::Probe);
        h.release(a);
        assert_eq!(h.admit(Some(&c), 2000), Ok(Admit::Probe));
        // Cool-down applies even without a breaker config, and only grows.
        let h = EndpointHealth::new(1000);
        h.cool_down(500, 100);
        h.cool_down(100, 100);
        assert_eq!(h.admit(None, 300), Err(Deny::Cooling { retry_in_ms: 300 }));
        assert_eq!(h.admit(None, 600), Ok(Admit::Normal));
        assert_eq!(h.cooldowns_total.load(Ordering::Relaxed), 1);
    }
}
