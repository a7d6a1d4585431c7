//! Adaptive client-side throttling (Google SRE book, "Handling Overload").
//!
//! Per upstream, over a sliding window shared by all workers: `requests` (every request the
//! proxy wanted to send, including those it rejected itself) and `accepts` (requests the
//! upstream answered with something other than 429/5xx/connect failure/timeout). A new request
//! is rejected locally with probability `max(0, (requests - k·accepts) / (requests + 1))`.
//! While the upstream accepts everything the probability is 0; when it starts refusing, sluice
//! sheds the excess before it reaches the upstream, which gives it room to recover, and the
//! rate of requests still sent (≈ k × accepts) keeps measuring whether it has.

use super::config::ThrottleConfig;
use super::window::Window;

pub struct Throttle {
    /// (requests, accepts).
    window: Window,
    k: f64,
}

impl Throttle {
    pub fn new(cfg: &ThrottleConfig) -> Self {
        Throttle {
            window: Window::new(cfg.window_ms),
            k: cfg.k,
        }
    }

    /// The current rejection probability.
    pub fn probability(&self, now_ms: u64) -> f64 {
        let (req, acc) = self.window.read(now_ms);
        ((req - self.k * acc) / (req + 1.0)).max(0.0)
    }

    /// Whether to send the request (`draw` is uniform in [0, 1)). A rejection counts as a
    /// request (that is what makes the probability converge).
    pub fn admit(&self, now_ms: u64, draw: f64) -> bool {
        let p = self.probability(now_ms);
        if p > 0.0 && draw < p {
            self.window.add(now_ms, 1, 0);
            return false;
        }
        true
    }

    /// The result of a request that was sent.
    pub fn on_result(&self, now_ms: u64, accepted: bool) {
        self.window.add(now_ms, 1, accepted as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_in_proportion_to_refusals_and_recovers() {
        let t = Throttle::new(&ThrottleConfig {
            k: 2.0,
            window_ms: 60_000,
            reject_status: 503,
        });
        let now = 1_000;
        for _ in 0..100 {
            t.on_result(now, true);
        }
        assert_eq!(t.probability(now), 0.0);
        assert!(t.admit(now, 0.0));
        // The upstream now refuses everything.
        for _ in 0..300 {
            t.on_result(now, false);
        }
        // requests 400, accepts 100: (400 - 200) / 401.
        let p = t.probability(now);
        assert!((p - 200.0 / 401.0).abs() < 1e-9, "{p}");
        assert!(!t.admit(now, 0.1));
        assert!(t.admit(now, 0.9));
        // Shedding converges: requests grow only by rejections, so p stays below 1.
        let mut sent = 0;
        for i in 0..1000 {
            if t.admit(now, (i as f64 * 0.618_034) % 1.0) {
                sent += 1;
                t.on_result(now, false);
            }
        }
        // Expected: sum of 201 / (requests + 1) as requests go 400 -> 1400, about 250.
        assert!((150..350).contains(&sent), "sent {sent}");
        assert!(t.probability(now) < 1.0);
        // Two windows later the history is gone.
        assert_eq!(t.probability(now + 120_000), 0.0);
    }
}
