//! Busy polling while an exchange waits for its upstream's answer.
//!
//! Owns: one spinner task per worker and the count of exchanges on this core that are waiting
//! for an upstream response head.
//!
//! Why: between forwarding a request and reading the answer, a worker with nothing else to do
//! parks in `io_uring_enter(GETEVENTS)` and its core goes idle. The answer then has to wake the
//! thread: on a VM that is an IPI to a halted vCPU plus a reschedule, tens of microseconds at the
//! tail. A model sidecar's upstream usually answers quickly (an in-cluster server's first byte,
//! a cached or local model), so for a bounded time after a request went upstream the spinner
//! keeps the runtime's task queue non-empty: monoio then calls the driver's non-blocking
//! `submit` (`io_uring_enter` without waiting, which also runs the ring's task work and reaps
//! completions) on every round instead of parking, and the answer is picked up without a
//! wake-up. This is the same trade as the kernel's `SO_BUSY_POLL` and Envoy-less data planes
//! like DPDK: CPU for tail latency, so it is off by default (`busy_poll_us: 0`).
//!
//! Measured (docs/benchmarks.md, chat-rate-2000, 2026-11-29): on the project's 2-vCPU VM,
//! `busy_poll_us: 200` made latency *worse* (+246/+411 µs p50/p99 over direct against +104/+212
//! µs without) at 2.8× the CPU per request. The vCPUs are likely SMT siblings, so the spin slows
//! the load generator and the mock on the other one; and each round is an `io_uring_enter`. Kept
//! as an option for sidecars with a dedicated physical core, where it is to be measured first.
//!
//! Invariants:
//! * Spinning is bounded: at most `busy_poll_us` per wait episode (from the moment the count of
//!   waiting exchanges goes from 0 to 1), then the spinner sleeps until the count has dropped to
//!   zero and risen again. An idle worker never spins.
//! * No other task is starved: each spin round yields, so every ready task and every completion
//!   is processed between two rounds.
//! * Per-core only (`Cell`/`RefCell`), no cross-core traffic.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Largest accepted `busy_poll_us` (config validation): beyond this, spinning costs a core for
/// what a timer-driven wake-up does as well.
pub const BUSY_POLL_US_MAX: u64 = 10_000;

/// The per-worker state the exchanges and the spinner share.
#[derive(Default)]
pub struct BusyPoll {
    waiting: Cell<u32>,
    /// Budget of the current configuration (0 = off); set by the worker from its snapshot.
    budget_us: Cell<u64>,
    /// The spinner, parked until a wait episode starts (or ends, when it waits for that).
    spinner: RefCell<Option<Waker>>,
    /// Episodes spun, for tests and the admin stats.
    episodes: Cell<u64>,
}

/// Held by an exchange while it waits for an upstream response head.
pub struct WaitGuard<'a> {
    bp: &'a BusyPoll,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let n = self.bp.waiting.get().saturating_sub(1);
        self.bp.waiting.set(n);
        if n == 0 {
            self.bp.wake();
        }
    }
}

impl BusyPoll {
    pub fn set_budget_us(&self, us: u64) {
        self.budget_us.set(us.min(BUSY_POLL_US_MAX));
    }

    pub fn budget_us(&self) -> u64 {
        self.budget_us.get()
    }

    /// Episodes spun since start.
    pub fn episodes(&self) -> u64 {
        self.episodes.get()
    }

    /// An exchange starts waiting for its upstream.
    pub fn wait_upstream(&self) -> WaitGuard<'_> {
        let n = self.waiting.get();
        self.waiting.set(n + 1);
        if n == 0 && self.budget_us.get() > 0 {
            self.wake();
        }
        WaitGuard { bp: self }
    }

    fn wake(&self) {
        if let Some(w) = self.spinner.borrow_mut().take() {
            w.wake();
        }
    }

    /// The spinner task of one worker. Runs until the worker's runtime ends.
    pub async fn run(self: Rc<Self>) {
        loop {
            // Sleep until an episode starts.
            Until {
                bp: &self,
                cond: |bp: &BusyPoll| bp.waiting.get() > 0 && bp.budget_us.get() > 0,
            }
            .await;
            self.episodes.set(self.episodes.get() + 1);
            let end = Instant::now() + Duration::from_micros(self.budget_us.get());
            while self.waiting.get() > 0 && Instant::now() < end {
                YieldNow(false).await;
            }
            // Budget spent (or the answers came): sleep until this episode is over.
            Until {
                bp: &self,
                cond: |bp: &BusyPoll| bp.waiting.get() == 0,
            }
            .await;
        }
    }
}

/// Resolves when `cond` holds; re-checked whenever the spinner is woken.
struct Until<'a, F> {
    bp: &'a BusyPoll,
    cond: F,
}

impl<F: Fn(&BusyPoll) -> bool + Unpin> Future for Until<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if (self.cond)(self.bp) {
            return Poll::Ready(());
        }
        *self.bp.spinner.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Yield once to the runtime: pending, with an immediate self-wake.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_only_while_an_exchange_waits_and_within_budget() {
        crate::testing::rt().block_on(async {
            let bp = Rc::new(BusyPoll::default());
            monoio::spawn(bp.clone().run());
            // Off: no episode.
            {
                let _g = bp.wait_upstream();
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(bp.episodes(), 0);
            bp.set_budget_us(2_000);
            {
                let _g = bp.wait_upstream();
                let _g2 = bp.wait_upstream();
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            // One episode for overlapping waits; the spinner stopped after its budget (the
            // sleep above completed, so the timer was served while spinning).
            monoio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(bp.episodes(), 1);
            {
                let _g = bp.wait_upstream();
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(bp.episodes(), 2);
        });
    }
}
