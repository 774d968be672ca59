//! Histograms read from keybroker's `/metrics`, shared by `proxy-bench` and `proxy-drills`.

use anyhow::Result;
use serde_json::{json, Value};

/// The cumulative buckets of one histogram on `/metrics`: (upper bound in µs, count).
pub async fn scrape(base: &str, metric: &str) -> Result<Vec<(f64, u64)>> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let prefix = format!("{metric}_bucket");
    let mut buckets = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("+Inf");
        let count: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        buckets.push((le.parse::<f64>().unwrap_or(f64::INFINITY) * 1e6, count));
    }
    Ok(buckets)
}

/// Quantiles (as bucket upper bounds, µs) of what was recorded between two scrapes.
pub fn quantiles(before: &[(f64, u64)], after: &[(f64, u64)]) -> Value {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - before.iter().find(|b| b.0 == *le).map_or(0, |b| b.1),
            )
        })
        .collect();
    let total = delta.last().map_or(0, |b| b.1);
    let at = |q: f64| {
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        delta
            .iter()
            .find(|b| b.1 >= rank)
            .map_or(f64::INFINITY, |b| b.0)
    };
    json!({"count": total, "p50_us_at_most": at(0.5), "p99_us_at_most": at(0.99), "p999_us_at_most": at(0.999)})
}
