//! keybroker's own histograms, scraped from `/metrics` (Prometheus text format): every
//! `keybroker_*_seconds` histogram, so metrics added later are reported without a change here.
//! Quantiles are interpolated linearly inside the bucket that holds them, as Prometheus'
//! `histogram_quantile` does, and come with that bucket's bounds.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

/// Histogram name → cumulative buckets (upper bound in µs, count), in order.
pub type Snapshot = BTreeMap<String, Vec<(f64, u64)>>;

pub async fn scrape(base: &str) -> Result<Snapshot> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut out = Snapshot::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once("_bucket{") else {
            continue;
        };
        if !name.starts_with("keybroker_") || !name.ends_with("_seconds") {
            continue;
        }
        // Only the `le` label is read; a histogram with other labels is summed per bound.
        let le = rest
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("+Inf");
        let bound = le.parse::<f64>().map_or(f64::INFINITY, |s| s * 1e6);
        let count: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse::<f64>().ok())
            .map_or(0, |c| c as u64);
        let buckets = out.entry(name.to_owned()).or_default();
        match buckets.iter_mut().find(|b| b.0 == bound) {
            Some(b) => b.1 += count,
            None => buckets.push((bound, count)),
        }
    }
    for buckets in out.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(out)
}

/// The sum of every sample of counter `name` (all label sets) on `/metrics`; 0 when absent.
pub async fn counter(base: &str, name: &str) -> Result<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(counter_in(&text, name))
}

fn counter_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One quantile: the interpolated value and the bucket it fell in (µs). `value` is `None` when it
/// fell beyond the last finite bound.
#[derive(Debug, Clone, Copy)]
pub struct Quantile {
    pub value: Option<f64>,
    pub lower: f64,
    pub upper: f64,
}

impl Quantile {
    pub fn json(&self) -> Value {
        json!({"us": self.value, "bucket_us": [self.lower, if self.upper.is_finite() { json!(self.upper) } else { json!("+Inf") }]})
    }

    pub fn text(&self) -> String {
        match self.value {
            Some(v) => format!("{v:.0} µs (bucket {:.0}–{:.0})", self.lower, self.upper),
            None => format!("> {:.0} µs", self.lower),
        }
    }
}

/// The quantiles of what one histogram recorded between two scrapes.
#[derive(Debug, Clone)]
pub struct Delta {
    pub count: u64,
    pub p50: Option<Quantile>,
    pub p99: Option<Quantile>,
}

impl Delta {
    pub fn json(&self) -> Value {
        json!({"count": self.count, "p50": self.p50.map(|q| q.json()), "p99": self.p99.map(|q| q.json())})
    }
}

pub fn delta(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, Delta> {
    after
        .iter()
        .map(|(name, buckets)| {
            let old = before.get(name);
            let d: Vec<(f64, u64)> = buckets
                .iter()
                .map(|&(le, n)| {
                    let was = old
                        .and_then(|o| o.iter().find(|b| b.0 == le))
                        .map_or(0, |b| b.1);
                    (le, n.saturating_sub(was))
                })
                .collect();
            let count = d.last().map_or(0, |b| b.1);
            let delta = Delta {
                count,
                p50: quantile(&d, 0.5),
                p99: quantile(&d, 0.99),
            };
            (name.clone(), delta)
        })
        .collect()
}

/// Quantile `q` of cumulative buckets, linearly interpolated within its bucket.
fn quantile(cumulative: &[(f64, u64)], q: f64) -> Option<Quantile> {
    let total = cumulative.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0);
    for &(upper, count) in cumulative {
        if count as f64 >= rank && count > below {
            let value = upper
                .is_finite()
                .then(|| lower + (upper - lower) * (rank - below as f64) / (count - below) as f64);
            return Some(Quantile {
                value,
                lower,
                upper,
            });
        }
        (lower, below) = (upper, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_summed_over_its_labels_and_no_other_metric() {
        let text = "# TYPE keybroker_leases_total counter\n\
                    keybroker_leases_total{result=\"granted\"} 5\n\
                    keybroker_leases_total{result=\"refused\"} 2\n\
                    keybroker_leases_total_other 100\n\
                    keybroker_leases 7\n";
        assert_eq!(counter_in(text, "keybroker_leases_total"), 7.0);
        assert_eq!(counter_in(text, "keybroker_absent_total"), 0.0);
    }

    #[test]
    fn quantile_interpolates_inside_its_bucket() {
        // 100 values: 50 in (0, 10], 40 in (10, 20], 10 in (20, 50].
        let b = [(10.0, 50), (20.0, 90), (50.0, 100), (f64::INFINITY, 100)];
        let p50 = quantile(&b, 0.5).map(|q| (q.value, q.lower, q.upper));
        assert_eq!(p50, Some((Some(10.0), 0.0, 10.0)));
        let p99 = quantile(&b, 0.99).map(|q| (q.value, q.lower, q.upper));
        assert_eq!(p99, Some((Some(47.0), 20.0, 50.0)));
    }

    #[test]
    fn quantile_beyond_the_last_bound_has_no_value() {
        let b = [(10.0, 1), (f64::INFINITY, 100)];
        let q = quantile(&b, 0.99).map(|q| (q.value, q.lower));
        assert_eq!(q, Some((None, 10.0)));
    }
}
