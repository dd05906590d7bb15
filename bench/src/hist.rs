//! Latency histograms: an hdrhistogram in microseconds (3 significant digits, 1 us to 1 h),
//! its summary (p50/p90/p99/p999/max) and a compact export of its non-empty buckets so
//! histograms from several threads or processes merge exactly.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct LatencyHist {
    h: Histogram<u64>,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHist {
    pub fn new() -> Self {
        LatencyHist { h: Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid") }
    }

    /// Records one latency given in nanoseconds (clamped to the histogram's range).
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        self.record_us((ns / 1000).max(1));
    }

    #[inline]
    pub fn record_us(&mut self, us: u64) {
        self.h.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn add(&mut self, other: &LatencyHist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.h.add(&other.h);
    }

    pub fn len(&self) -> u64 {
        self.h.len()
    }

    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    pub fn summary(&self) -> LatencySummary {
        let q = |p: f64| if self.h.is_empty() { 0 } else { self.h.value_at_quantile(p) };
        LatencySummary {
            count: self.h.len(),
            mean_us: if self.h.is_empty() { 0.0 } else { (self.h.mean() * 10.0).round() / 10.0 },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if self.h.is_empty() { 0 } else { self.h.max() },
        }
    }

    /// The non-empty buckets as (value, count) pairs.
    pub fn export(&self) -> HistExport {
        HistExport(self.h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
    }

    pub fn import(e: &HistExport) -> Self {
        let mut h = Self::new();
        for &(v, n) in &e.0 {
            let _ = h.h.record_n(v.clamp(1, MAX_US), n);
        }
        h
    }
}

/// A histogram's non-empty buckets, for JSON transport between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HistExport(pub Vec<(u64, u64)>);

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_round_trip() {
        let mut h = LatencyHist::new();
        for i in 1..=1000u64 {
            h.record_us(i * 100);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((49_900..=50_100).contains(&s.p50_us), "{s:?}");
        assert!((98_900..=99_100).contains(&s.p99_us), "{s:?}");
        let back = LatencyHist::import(&h.export());
        assert_eq!(back.summary(), s);
        let mut sum = back.clone();
        sum.add(&h);
        assert_eq!(sum.len(), 2000);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(LatencyHist::new().summary().count, 0);
    }
}
