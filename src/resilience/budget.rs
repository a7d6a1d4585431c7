//! The retry budget of a route: retries may add at most `budget_percent` of the route's
//! requests over a sliding window, plus `budget_min_per_s` retries per second whatever the
//! traffic (Finagle's and Envoy's retry budgets; a fixed "retry 3 times" multiplies load by 4
//! exactly when the upstream is least able to take it).
//!
//! Shared by all workers (atomics in the route's snapshot entry): the budget is a property of
//! the route, not of a core. Check-then-add is not atomic, so concurrent cores can overdraw by
//! at most one retry each; that bound is documented and harmless.

use super::window::Window;

/// The window a budget is judged over.
pub const RETRY_BUDGET_WINDOW_MS: u64 = 10_000;

pub struct RetryBudget {
    /// (requests, retries).
    window: Window,
    percent: u32,
    min_per_s: u32,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_s: u32) -> Self {
        RetryBudget {
            window: Window::new(RETRY_BUDGET_WINDOW_MS),
            percent,
            min_per_s,
        }
    }

    /// A first attempt: deposits into the budget.
    pub fn on_request(&self, now_ms: u64) {
        self.window.add(now_ms, 1, 0);
    }

    /// Take one retry from the budget, if there is one left.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        let (req, ret) = self.window.read(now_ms);
        let allowed = req * self.percent as f64 / 100.0
            + self.min_per_s as f64 * (RETRY_BUDGET_WINDOW_MS as f64 / 1000.0);
        if ret + 1.0 > allowed {
            return false;
        }
        self.window.add(now_ms, 0, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_a_share_of_requests_plus_a_floor() {
        let b = RetryBudget::new(20, 0);
        let now = 5_000;
        for _ in 0..100 {
            b.on_request(now);
        }
        let granted = (0..100).filter(|_| b.try_retry(now)).count();
        assert_eq!(granted, 20);
        // A floor of 1/s over a 10 s window: 10 retries with no traffic at all.
        let b = RetryBudget::new(20, 1);
        let granted = (0..100).filter(|_| b.try_retry(now)).count();
        assert_eq!(granted, 10);
        // No budget at all.
        let b = RetryBudget::new(0, 0);
        b.on_request(now);
        assert!(!b.try_retry(now));
    }
}
