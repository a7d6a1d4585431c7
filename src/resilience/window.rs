//! A lock-free sliding window of two counters, shared by all workers.
//!
//! Two fixed buckets (current and previous) of `window_ms` each; a read weighs the previous
//! bucket by the part of it still inside the sliding window (the classic two-bucket estimate
//! used by rate limiters). Both counters of a bucket are packed into one `AtomicU64` (high 32
//! bits: `a`, low 32 bits: `b`), so one `fetch_add` records an event and a read sees a
//! consistent pair.
//!
//! Races: the bucket roll-over is a CAS on the epoch; the winner moves `cur` into `prev`. An
//! event recorded by another core between the CAS and the swap lands in the previous bucket
//! instead of the current one. That shifts at most a few events by one window, which the
//! policies built on this (breaker failure rate, throttle, retry budget) tolerate by design:
//! they are estimates over thousands of requests, and exactness would need a lock.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Window {
    window_ms: u64,
    epoch: AtomicU64,
    cur: AtomicU64,
    prev: AtomicU64,
}

const LO: u64 = 0xffff_ffff;

impl Window {
    pub fn new(window_ms: u64) -> Self {
        Window {
            window_ms: window_ms.max(1),
            epoch: AtomicU64::new(0),
            cur: AtomicU64::new(0),
            prev: AtomicU64::new(0),
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn roll(&self, now_ms: u64) {
        let idx = now_ms / self.window_ms;
        let e = self.epoch.load(Ordering::Acquire);
        if idx > e
            && self
                .epoch
                .compare_exchange(e, idx, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let c = self.cur.swap(0, Ordering::AcqRel);
            self.prev
                .store(if idx == e + 1 { c } else { 0 }, Ordering::Release);
        }
    }

    /// Record `a` and `b` (each < 2^32 per window).
    pub fn add(&self, now_ms: u64, a: u32, b: u32) {
        self.roll(now_ms);
        self.cur
            .fetch_add(((a as u64) << 32) | b as u64, Ordering::AcqRel);
    }

    /// The sliding-window estimate of (a, b).
    pub fn read(&self, now_ms: u64) -> (f64, f64) {
        self.roll(now_ms);
        let c = self.cur.load(Ordering::Acquire);
        let p = self.prev.load(Ordering::Acquire);
        let into = (now_ms % self.window_ms) as f64 / self.window_ms as f64;
        let w = 1.0 - into;
        (
            (c >> 32) as f64 + (p >> 32) as f64 * w,
            (c & LO) as f64 + (p & LO) as f64 * w,
        )
    }

    /// Forget everything (a breaker that closed starts a clean window).
    pub fn reset(&self) {
        self.cur.store(0, Ordering::Release);
        self.prev.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_slides() {
        let w = Window::new(1000);
        for _ in 0..10 {
            w.add(100, 1, 0);
        }
        w.add(200, 1, 1);
        assert_eq!(w.read(300), (11.0, 1.0));
        // Half-way through the next bucket: half of the previous one still counts.
        assert_eq!(w.read(1500), (5.5, 0.5));
        w.add(1500, 2, 2);
        assert_eq!(w.read(1500), (7.5, 2.5));
        // Two windows later nothing is left.
        assert_eq!(w.read(3500), (0.0, 0.0));
        w.add(3600, 1, 0);
        w.reset();
        assert_eq!(w.read(3700), (0.0, 0.0));
    }
}
