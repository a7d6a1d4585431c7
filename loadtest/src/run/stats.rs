//! Measurement state of a run: HdrHistograms (latency, time to first token, inter-chunk gaps),
//! counters and error classification, plus the serialisable summary.
//!
//! Owns: units and bounds of every histogram (microseconds, 1 us .. [`HIST_MAX_US`], 3
//! significant digits) and the percentile math. Invariants: only successful (2xx) responses
//! enter the latency histograms; every request in the window lands in exactly one of
//! `ok` or one error kind; values outside the bounds are clamped, never dropped.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest recordable value, in microseconds (1 hour).
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by every histogram.
pub const HIST_SIGFIG: u8 = 3;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).unwrap_or_else(|_| {
        // Unreachable with the constant bounds above; fall back to an auto-resizing histogram.
        Histogram::new(HIST_SIGFIG).unwrap_or_else(|_| unreachable!("sigfig 3 is valid"))
    })
}

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Connect,
    Timeout,
    Status,
    Reset,
    Parse,
}

/// Error counts by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub status: u64,
    pub reset: u64,
    pub parse: u64,
}

impl ErrorCounts {
    pub fn add(&mut self, k: ErrorKind) {
        match k {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Status => self.status += 1,
            ErrorKind::Reset => self.reset += 1,
            ErrorKind::Parse => self.parse += 1,
        }
    }
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status + self.reset + self.parse
    }
    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.status += o.status;
        self.reset += o.reset;
        self.parse += o.parse;
    }
}

/// Raw per-worker measurements; merged after the run.
#[derive(Debug, Clone)]
pub struct Stats {
    pub latency: Histogram<u64>,
    pub ttft: Histogram<u64>,
    pub itl: Histogram<u64>,
    pub ok: u64,
    pub errors: ErrorCounts,
    pub status_codes: BTreeMap<u16, u64>,
    pub tokens: u64,
    pub bytes_in: u64,
    /// Sum over streamed requests of (tokens / stream duration), for the mean per-stream rate.
    pub stream_rate_sum: f64,
    pub streams: u64,
    /// Open loop: slots in the window that were never sent.
    pub missed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency: new_hist(),
            ttft: new_hist(),
            itl: new_hist(),
            ok: 0,
            errors: ErrorCounts::default(),
            status_codes: BTreeMap::new(),
            tokens: 0,
            bytes_in: 0,
            stream_rate_sum: 0.0,
            streams: 0,
            missed: 0,
        }
    }
}

/// Records `v` (microseconds) clamped into the histogram's range.
pub fn record_us(h: &mut Histogram<u64>, v: u64) {
    let _ = h.record(v.clamp(1, HIST_MAX_US));
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        let _ = self.latency.add(&o.latency);
        let _ = self.ttft.add(&o.ttft);
        let _ = self.itl.add(&o.itl);
        self.ok += o.ok;
        self.errors.merge(&o.errors);
        for (k, v) in &o.status_codes {
            *self.status_codes.entry(*k).or_default() += v;
        }
        self.tokens += o.tokens;
        self.bytes_in += o.bytes_in;
        self.stream_rate_sum += o.stream_rate_sum;
        self.streams += o.streams;
        self.missed += o.missed;
    }
}

/// Percentile summary of one histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// (percentile, value) points on a log scale of 1/(1-p), for HdrHistogram-style plots.
    #[serde(default)]
    pub curve: Vec<(f64, u64)>,
}

/// Curve points: 0%, then 10 points per decade of 1/(1-p) up to 99.999%, then 100%.
pub const CURVE_DECADES: u32 = 5;
/// Points per decade on the percentile curve.
pub const CURVE_POINTS_PER_DECADE: u32 = 10;

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let mut curve = Vec::new();
        for k in 0..=(CURVE_DECADES * CURVE_POINTS_PER_DECADE) {
            let p = 1.0 - 10f64.powf(-(f64::from(k)) / f64::from(CURVE_POINTS_PER_DECADE));
            curve.push((p * 100.0, h.value_at_quantile(p)));
        }
        curve.push((100.0, h.max()));
        Self {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            curve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_uniform_1_to_1000() {
        let mut h = new_hist();
        for v in 1..=1000 {
            record_us(&mut h, v);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert_eq!(p.p999, 999);
        assert_eq!(p.max, 1000);
        assert!((p.mean - 500.5).abs() < 1.0);
        assert!(p
            .curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(p.curve.last().unwrap().1, 1000);
    }

    #[test]
    fn clamping_and_merge() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        record_us(&mut a.latency, 0);
        record_us(&mut b.latency, u64::MAX);
        a.errors.add(ErrorKind::Reset);
        b.errors.add(ErrorKind::Status);
        *b.status_codes.entry(429).or_default() += 1;
        a.merge(&b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.latency.min(), 1);
        assert!(a.latency.max() >= HIST_MAX_US);
        assert_eq!(a.errors.total(), 2);
        assert_eq!(a.status_codes[&429], 1);
        assert_eq!(
            Percentiles::of(&Stats::default().latency),
            Percentiles::default()
        );
    }
}
