//! Endpoint choice for one attempt: round robin or power of two choices (p2c), skipping
//! endpoints that have no resolved address, whose breaker is open or that cool down after a
//! 429 (passive health: an ejected endpoint simply is not chosen until it may be probed).
//!
//! Round robin keeps its cursor per worker (a `Cell` in the worker's pools): no shared write
//! per request. p2c compares outstanding requests counted across all workers (an atomic per
//! endpoint, incremented when an attempt starts and decremented when it ends): two RMWs per
//! request on the endpoint's line, only when p2c is configured. Per-core counts would be
//! cheaper but blind to the other cores' load on a shared upstream.
//!
//! The scan is over the endpoint list (small: a handful of replicas); nothing is allocated.

use std::cell::Cell;

use super::breaker::{Admit, Deny, EndpointHealth};
use super::config::{Balance, BreakerConfig};

/// The chosen endpoint and how the breaker let it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub endpoint: usize,
    pub admit: Admit,
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// No endpoint has a resolved address.
    NoAddress,
    /// Every endpoint refused; the one that frees up first.
    Denied(Deny),
}

/// What the balancer needs to know about an upstream's endpoints.
pub trait Endpoints {
    fn count(&self) -> usize;
    fn has_address(&self, i: usize) -> bool;
    fn health(&self, i: usize) -> &EndpointHealth;
}

/// Choose an endpoint. `avoid`: the endpoint that just failed (chosen only if no other can
/// be). `rand(n)` is uniform in `0..n`.
pub fn pick(
    eps: &(impl Endpoints + ?Sized),
    balance: Balance,
    breaker: Option<&BreakerConfig>,
    rr: &Cell<usize>,
    now_ms: u64,
    avoid: Option<usize>,
    rand: &mut impl FnMut(usize) -> usize,
) -> Result<Pick, NoPick> {
    let n = eps.count();
    if n == 0 {
        return Err(NoPick::NoAddress);
    }
    if balance == Balance::P2c && n > 1 {
        let a = rand(n);
        let b = (a + 1 + rand(n - 1)) % n;
        let ok = |i: usize| {
            Some(i) != avoid && eps.has_address(i) && eps.health(i).available(breaker, now_ms)
        };
        let load = |i: usize| {
            eps.health(i)
                .outstanding
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let choice = match (ok(a), ok(b)) {
            (true, true) => Some(if load(b) < load(a) { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => None,
        };
        if let Some(i) = choice {
            if let Ok(admit) = eps.health(i).admit(breaker, now_ms) {
                return Ok(Pick { endpoint: i, admit });
            }
        }
        // Both candidates unavailable: fall through to a full scan.
    }
    let start = rr.get();
    rr.set(start.wrapping_add(1));
    let mut denied: Option<Deny> = None;
    let mut any_address = false;
    let mut avoided = None;
    for k in 0..n {
        let i = (start + k) % n;
        if !eps.has_address(i) {
            continue;
        }
        any_address = true;
        if Some(i) == avoid {
            avoided = Some(i);
            continue;
        }
        match eps.health(i).admit(breaker, now_ms) {
            Ok(admit) => return Ok(Pick { endpoint: i, admit }),
            Err(d) => denied = Some(sooner(denied, d)),
        }
    }
    if let Some(i) = avoided {
        match eps.health(i).admit(breaker, now_ms) {
            Ok(admit) => return Ok(Pick { endpoint: i, admit }),
            Err(d) => denied = Some(sooner(denied, d)),
        }
    }
    match (any_address, denied) {
        (_, Some(d)) => Err(NoPick::Denied(d)),
        _ => Err(NoPick::NoAddress),
    }
}

fn sooner(a: Option<Deny>, b: Deny) -> Deny {
    match a {
        Some(a) if a.retry_in_ms() <= b.retry_in_ms() => a,
        _ => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    struct Eps(Vec<(bool, EndpointHealth)>);
    impl Endpoints for Eps {
        fn count(&self) -> usize {
            self.0.len()
        }
        fn has_address(&self, i: usize) -> bool {
            self.0[i].0
        }
        fn health(&self, i: usize) -> &EndpointHealth {
            &self.0[i].1
        }
    }

    fn eps(addr: &[bool]) -> Eps {
        Eps(addr
            .iter()
            .map(|&a| (a, EndpointHealth::new(1000)))
            .collect())
    }

    #[test]
    fn round_robin_skips_unresolved_and_cooling() {
        let e = eps(&[true, false, true, true]);
        let rr = Cell::new(0);
        let mut r = |n: usize| fastrand::usize(..n);
        let seq: Vec<usize> = (0..6)
            .map(|_| {
                pick(&e, Balance::RoundRobin, None, &rr, 10, None, &mut r)
                    .unwrap()
                    .endpoint
            })
            .collect();
        assert_eq!(seq, vec![0, 2, 2, 3, 0, 2]);
        e.0[2].1.cool_down(1000, 10);
        for _ in 0..6 {
            let p = pick(&e, Balance::RoundRobin, None, &rr, 20, None, &mut r).unwrap();
            assert_ne!(p.endpoint, 2);
        }
        // Avoid the endpoint that just failed, unless it is the only one left.
        let p = pick(&e, Balance::RoundRobin, None, &rr, 20, Some(0), &mut r).unwrap();
        assert_eq!(p.endpoint, 3);
        e.0[3].1.cool_down(500, 20);
        let p = pick(&e, Balance::RoundRobin, None, &rr, 20, Some(0), &mut r).unwrap();
        assert_eq!(p.endpoint, 0);
        e.0[0].1.cool_down(300, 20);
        assert_eq!(
            pick(&e, Balance::RoundRobin, None, &rr, 20, None, &mut r),
            Err(NoPick::Denied(Deny::Cooling { retry_in_ms: 300 }))
        );
        let none = eps(&[false, false]);
        assert_eq!(
            pick(&none, Balance::P2c, None, &rr, 20, None, &mut r),
            Err(NoPick::NoAddress)
        );
    }

    #[test]
    fn p2c_prefers_the_less_loaded_endpoint() {
        let e = eps(&[true, true, true]);
        e.0[0].1.outstanding.store(10, Ordering::Relaxed);
        e.0[1].1.outstanding.store(1, Ordering::Relaxed);
        e.0[2].1.outstanding.store(5, Ordering::Relaxed);
        let rr = Cell::new(0);
        let mut counts = [0usize; 3];
        let mut r = |n: usize| fastrand::usize(..n);
        for _ in 0..3000 {
            let p = pick(&e, Balance::P2c, None, &rr, 1, None, &mut r).unwrap();
            counts[p.endpoint] += 1;
        }
        // Endpoint 0 loses every comparison; endpoint 1 wins every one it is in (2/3 of draws).
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 1800 && counts[1] < 2200, "{counts:?}");
    }
}
