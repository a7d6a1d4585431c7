//! Configuration of a route's routing policy: weighted splits, failover targets, retries and
//! the extra timeouts. Referenced from `config::RouteConfig`; validated by [`validate_route`].

use serde::{Deserialize, Serialize};

use crate::config::Loc;

/// Default attempts of one request on its upstream, the first included (1 = no retry).
pub const RETRY_ATTEMPTS_MAX_DEFAULT: u32 = 2;
/// Default first backoff before a retry; doubles per retry, with full jitter.
pub const RETRY_BACKOFF_BASE_MS_DEFAULT: u64 = 25;
/// Default cap of one backoff.
pub const RETRY_BACKOFF_MAX_MS_DEFAULT: u64 = 250;
/// Default retry budget: retries may add at most this percent to the route's requests.
pub const RETRY_BUDGET_PERCENT_DEFAULT: u32 = 20;
/// Default retries always allowed per second, whatever the budget (low-traffic routes).
pub const RETRY_BUDGET_MIN_PER_S_DEFAULT: u32 = 3;
/// Largest number of arms of one split.
pub const SPLIT_ARMS_MAX: usize = 16;
/// Largest number of failover targets of one route.
pub const FAILOVER_TARGETS_MAX: usize = 8;

/// A weighted split of a route's traffic over several upstreams (A/B, canary).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// The same value of this request header always picks the same arm (a hash of the value).
    /// Requests without it are spread at random by weight.
    #[serde(default)]
    pub sticky_header: Option<String>,
    pub arms: Vec<SplitArm>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitArm {
    pub upstream: Loc<String>,
    /// Relative weight (integers; 90 and 10 is a 90/10 split).
    pub weight: u32,
}

/// Where a request goes when its upstream is open, cooling down, throttled or failing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverTarget {
    pub upstream: Loc<String>,
    /// The model the fallback upstream gets (the body's `model` is rewritten). Absent: the
    /// model is kept (after the fallback upstream's own aliases).
    #[serde(default)]
    pub model: Option<String>,
}

/// Retries of a failed attempt (connect error, timeout, 429, 5xx) before any response byte
/// reached the client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts on one upstream, the first included.
    #[serde(default = "retry_attempts_max_default")]
    pub attempts_max: u32,
    #[serde(default = "retry_backoff_base_ms_default")]
    pub backoff_base_ms: u64,
    #[serde(default = "retry_backoff_max_ms_default")]
    pub backoff_max_ms: u64,
    /// Retries may add at most this percent of the route's requests (Finagle-style budget).
    #[serde(default = "retry_budget_percent_default")]
    pub budget_percent: u32,
    /// Retries per second always allowed, whatever the budget.
    #[serde(default = "retry_budget_min_per_s_default")]
    pub budget_min_per_s: u32,
}

fn retry_attempts_max_default() -> u32 {
    RETRY_ATTEMPTS_MAX_DEFAULT
}
fn retry_backoff_base_ms_default() -> u64 {
    RETRY_BACKOFF_BASE_MS_DEFAULT
}
fn retry_backoff_max_ms_default() -> u64 {
    RETRY_BACKOFF_MAX_MS_DEFAULT
}
fn retry_budget_percent_default() -> u32 {
    RETRY_BUDGET_PERCENT_DEFAULT
}
fn retry_budget_min_per_s_default() -> u32 {
    RETRY_BUDGET_MIN_PER_S_DEFAULT
}

/// The routing part of a route's configuration, checked against the upstream names.
pub struct RouteView<'a> {
    pub upstream: &'a Loc<String>,
    pub split: Option<&'a SplitConfig>,
    pub failover: &'a [FailoverTarget],
    pub retry: Option<&'a RetryConfig>,
}

/// Semantic checks: `(line, field suffix, problem)`, relative to the route's field path.
pub fn validate_route(
    r: &RouteView<'_>,
    has_upstream: &dyn Fn(&str) -> bool,
) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    let line = r.upstream.line;
    if let Some(s) = r.split {
        if s.arms.is_empty() || s.arms.len() > SPLIT_ARMS_MAX {
            out.push((
                line,
                "split.arms".into(),
                format!("must list 1..={SPLIT_ARMS_MAX} arms"),
            ));
        }
        let total: u64 = s.arms.iter().map(|a| a.weight as u64).sum();
        if total == 0 {
            out.push((line, "split.arms".into(), "weights sum to 0".into()));
        }
        for (i, a) in s.arms.iter().enumerate() {
            if !has_upstream(&a.upstream.value) {
                out.push((
                    a.upstream.line,
                    format!("split.arms[{i}].upstream"),
                    format!("no upstream named `{}`", a.upstream.value),
                ));
            }
        }
        if !s.arms.iter().any(|a| a.upstream.value == r.upstream.value) {
            out.push((
                line,
                "upstream".into(),
                "with a split, the route's upstream must be one of the arms".into(),
            ));
        }
        if let Some(h) = &s.sticky_header {
            if !is_header_name(h) {
                out.push((
                    line,
                    "split.sticky_header".into(),
                    format!("`{h}` is not a header name"),
                ));
            }
        }
    }
    if r.failover.len() > FAILOVER_TARGETS_MAX {
        out.push((
            line,
            "failover".into(),
            format!("at most {FAILOVER_TARGETS_MAX} targets"),
        ));
    }
    for (i, f) in r.failover.iter().enumerate() {
        if !has_upstream(&f.upstream.value) {
            out.push((
                f.upstream.line,
                format!("failover[{i}].upstream"),
                format!("no upstream named `{}`", f.upstream.value),
            ));
        }
        if f.model.as_deref().is_some_and(|m| m.is_empty()) {
            out.push((
                f.upstream.line,
                format!("failover[{i}].model"),
                "must not be empty".into(),
            ));
        }
    }
    if let Some(rt) = r.retry {
        if rt.attempts_max == 0 || rt.attempts_max > 10 {
            out.push((line, "retry.attempts_max".into(), "must be 1..=10".into()));
        }
        if rt.backoff_max_ms < rt.backoff_base_ms {
            out.push((
                line,
                "retry.backoff_max_ms".into(),
                "must be >= backoff_base_ms".into(),
            ));
        }
        if rt.budget_percent > 1000 {
            out.push((
                line,
                "retry.budget_percent".into(),
                "must be 0..=1000".into(),
            ));
        }
    }
    out
}

pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
