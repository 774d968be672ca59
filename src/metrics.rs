//! Process metrics in the Prometheus text format (`GET /metrics`). Fixed-bucket histograms
//! updated with relaxed atomics, so recording costs a few nanoseconds and never takes a lock.
//! Labels never carry an account, an email, a key or a token.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in microseconds.
const BOUNDS_US: [u64; 16] = [
    10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 50_000,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), in microseconds; `None` when
    /// empty or beyond the last bound.
    pub fn quantile_upper_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return BOUNDS_US.get(i).copied();
            }
        }
        None
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            match BOUNDS_US.get(i) {
                Some(bound) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"{}\"}} {cumulative}",
                        *bound as f64 / 1e6
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Everything `/metrics` shows.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Time keybroker itself spends on a proxied call: before the upstream request is sent, and
    /// from the upstream's response head to ours.
    pub proxy_overhead: Histogram,
    /// Time from sending the upstream request to its response head.
    pub upstream_latency: Histogram,
}

impl Metrics {
    pub fn render(&self, spend_queue_depth: usize) -> String {
        let mut out = String::with_capacity(4096);
        self.proxy_overhead.render(
            &mut out,
            "keybroker_proxy_overhead_seconds",
            "Time keybroker adds to a proxied call (handler time minus upstream time).",
        );
        self.upstream_latency.render(
            &mut out,
            "keybroker_upstream_latency_seconds",
            "Time from sending a proxied request upstream to its response head.",
        );
        let _ = writeln!(
            out,
            "# HELP keybroker_spend_writer_queue_depth Spend records waiting to be committed.\n# TYPE keybroker_spend_writer_queue_depth gauge\nkeybroker_spend_writer_queue_depth {spend_queue_depth}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(40));
        }
        h.record(Duration::from_micros(90));
        h.record(Duration::from_micros(400));
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_upper_bound_us(0.5), Some(50));
        assert_eq!(h.quantile_upper_bound_us(0.99), Some(100));
        assert_eq!(h.quantile_upper_bound_us(1.0), Some(500));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.00005\"} 98"), "{s}");
        assert!(s.contains("x_count 100"));
    }
}
