//! Timeouts whose timer lives outside the future that waits: a boxed `monoio::time::Sleep`,
//! allocated only when the wait actually pends.
//!
//! Why: monoio's `Sleep` is 640 bytes with 128-byte alignment (its timer entry is cache-line
//! padded). `monoio::time::timeout` embeds one in every future that awaits it, and the
//! connection task of `proxy::exchange` awaited several of them in nested states, so that task
//! was 9,472 bytes (`-Zprint-type-sizes`, 2026-11-29), about half of the memory an idle
//! keep-alive connection or an open stream costs. Here the waiting future holds a pointer.
//!
//! Trade-off: one 640-byte allocation per wait that pends (a read that is not ready at once),
//! from mimalloc's thread-local free list, instead of ~2.5 KiB more per connection. Reusing the
//! boxed timers from a per-core pool was tried and dropped: re-arming a `Sleep` that monoio's
//! wheel still holds at an extended deadline lost wake-ups (an SSE keep-alive tick never fired
//! on the second exchange of a worker), so every wait gets a fresh timer, exactly like
//! `monoio::time::timeout`.
//!
//! Invariants:
//! * Same semantics as `monoio::time::timeout_at`: the inner future is polled first, so a result
//!   that is ready at the deadline wins; on expiry the inner future is dropped (with monoio that
//!   loses an in-flight read's data: callers close the connection, as before).
//! * A future that is ready on its first poll never allocates a timer.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use monoio::time::{Instant, Sleep};

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

pin_project_lite::pin_project! {
    /// A future with a deadline; holds only a pointer to its timer.
    pub struct Timeout<F> {
        #[pin]
        f: F,
        at: Instant,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        if let Poll::Ready(v) = me.f.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let at = *me.at;
        let sleep = me
            .sleep
            .get_or_insert_with(|| Box::pin(monoio::time::sleep_until(at)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `f` until `at`. The timer is allocated only if `f` is not ready at once.
pub fn timeout_at<F: Future>(at: Instant, f: F) -> Timeout<F> {
    Timeout { f, at, sleep: None }
}

/// Runs `f` for at most `d`.
pub fn timeout<F: Future>(d: Duration, f: F) -> Timeout<F> {
    timeout_at(Instant::now() + d, f)
}

/// Sleeps until `at` on a boxed timer (a plain `monoio::time::sleep_until` would put a 640-byte
/// `Sleep` into the caller's future).
pub async fn sleep_until(at: Instant) {
    let _ = timeout_at(at, std::future::pending::<()>()).await;
}

/// Sleeps for `d` on a boxed timer.
pub async fn sleep(d: Duration) {
    sleep_until(Instant::now() + d).await
}

/// Which of two deadlines ran out: the per-read idle timeout or an overall one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle,
    Total,
}

/// Runs `f` for at most `idle`, and never past `total`: one timer for both. On expiry, the
/// second value says which ran out.
pub fn timeout_idle_total<F: Future>(
    idle: Duration,
    total: Instant,
    f: F,
) -> (Timeout<F>, Expired) {
    let idle_at = Instant::now() + idle;
    let (at, which) = if total <= idle_at {
        (total, Expired::Total)
    } else {
        (idle_at, Expired::Idle)
    };
    (timeout_at(at, f), which)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::rt;

    #[test]
    fn ready_future_wins() {
        rt().block_on(async {
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
            let short = monoio::time::sleep(Duration::from_millis(2));
            assert_eq!(timeout(Duration::from_secs(5), short).await, Ok(()));
        });
    }

    #[test]
    fn expires_every_time() {
        rt().block_on(async {
            for _ in 0..3 {
                let t0 = std::time::Instant::now();
                let r = timeout(
                    Duration::from_millis(20),
                    monoio::time::sleep(Duration::from_secs(5)),
                )
                .await;
                assert_eq!(r, Err(TimedOut));
                let el = t0.elapsed();
                assert!(
                    el >= Duration::from_millis(19) && el < Duration::from_secs(2),
                    "{el:?}"
                );
            }
        });
    }

    #[test]
    fn idle_and_total_name_the_deadline_that_ran_out() {
        rt().block_on(async {
            let never = monoio::time::sleep(Duration::from_secs(5));
            let total = Instant::now() + Duration::from_millis(10);
            let (t, which) = timeout_idle_total(Duration::from_secs(1), total, never);
            assert_eq!((t.await, which), (Err(TimedOut), Expired::Total));
            let never = monoio::time::sleep(Duration::from_secs(5));
            let total = Instant::now() + Duration::from_secs(1);
            let (t, which) = timeout_idle_total(Duration::from_millis(10), total, never);
            assert_eq!((t.await, which), (Err(TimedOut), Expired::Idle));
        });
    }
}

#[cfg(test)]
mod nested_tests {
    use super::*;
    use crate::testing::rt;

    /// Polls `sleep_ms` of work inside a `total` timeout through repeated 100 ms outer
    /// timeouts (the SSE keep-alive loop's shape); returns the inner result and how many outer
    /// timeouts fired first.
    async fn ticks_around(total: Duration, sleep_ms: u64) -> (Result<(), TimedOut>, u32) {
        let inner = timeout(total, monoio::time::sleep(Duration::from_millis(sleep_ms)));
        let mut inner = std::pin::pin!(inner);
        let mut ticks = 0;
        loop {
            match timeout(Duration::from_millis(100), inner.as_mut()).await {
                Ok(r) => return (r, ticks),
                Err(_) => ticks += 1,
            }
        }
    }

    #[test]
    fn a_short_outer_timeout_fires_around_a_pending_inner_one() {
        rt().block_on(async {
            let t0 = std::time::Instant::now();
            let (r, ticks) = ticks_around(Duration::from_millis(2000), 400).await;
            assert_eq!(r, Ok(()));
            assert!(ticks >= 3, "ticks {ticks} after {:?}", t0.elapsed());
        });
    }

    #[test]
    fn keepalive_loop_works_again_after_a_first_exchange() {
        rt().block_on(async {
            for round in 0..3 {
                let t0 = std::time::Instant::now();
                let (r, ticks) = ticks_around(Duration::from_secs(30), 350).await;
                assert_eq!(r, Ok(()));
                assert!(
                    ticks >= 2,
                    "round {round}: ticks {ticks} after {:?}",
                    t0.elapsed()
                );
            }
        });
    }
}
