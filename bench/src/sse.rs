//! Streamed calls, measured with our own client because oha cannot see chunks: time to the first
//! chunk and the gap between consecutive chunks, for the same SSE upstream behind each arm.

use std::time::Instant;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::oha::Target;
use crate::upstream::STREAM_BODY;

/// What a set of streams measured. Histograms in microseconds.
pub struct Streams {
    pub first_chunk: Histogram<u64>,
    pub gap: Histogram<u64>,
    pub completed: u64,
    pub errors: u64,
}

impl Streams {
    pub fn json(&self) -> Value {
        json!({
            "completed": self.completed, "errors": self.errors,
            "first_chunk_ms": {"p50": ms(&self.first_chunk, 0.5), "p99": ms(&self.first_chunk, 0.99)},
            "gap_ms": {"p50": ms(&self.gap, 0.5), "p99": ms(&self.gap, 0.99), "max": ms(&self.gap, 1.0)},
        })
    }
}

/// Quantile `q` of a microsecond histogram, in milliseconds.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Microseconds, 1 µs to 60 s, 3 significant figures.
pub fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

pub fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .http1_only()
        .build()?)
}

/// One stream: (time to first chunk, gaps between chunks), µs. `None` when it failed.
async fn one(client: &reqwest::Client, t: &Target) -> Result<(u64, Vec<u64>), String> {
    let mut rb = client
        .post(&t.url)
        .header("content-type", "application/json")
        .body(STREAM_BODY);
    if let Some(token) = &t.token {
        rb = rb.bearer_auth(token);
    }
    let start = Instant::now();
    let mut res = rb.send().await.map_err(|e| format!("sending: {e}"))?;
    if !res.status().is_success() {
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        return Err(format!("status {status}: {body}"));
    }
    let (mut first, mut gaps, mut last) = (None, Vec::new(), None::<Instant>);
    while res
        .chunk()
        .await
        .map_err(|e| format!("reading: {e}"))?
        .is_some()
    {
        let now = Instant::now();
        match last {
            None => first = Some((now - start).as_micros() as u64),
            Some(prev) => gaps.push((now - prev).as_micros() as u64),
        }
        last = Some(now);
    }
    Ok((first.ok_or("no chunk before the end")?, gaps))
}

/// `concurrency` streams at a time, `rounds` times over.
pub async fn measure(t: &Target, concurrency: usize, rounds: usize) -> Result<Streams> {
    let client = client()?;
    let mut out = Streams {
        first_chunk: hist()?,
        gap: hist()?,
        completed: 0,
        errors: 0,
    };
    for _ in 0..rounds {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, t) = (client.clone(), t.clone());
                tokio::spawn(async move { one(&client, &t).await.ok() })
            })
            .collect();
        for task in tasks {
            match task.await? {
                Some((first, gaps)) => {
                    out.completed += 1;
                    out.first_chunk.record(first.max(1))?;
                    for g in gaps {
                        out.gap.record(g.max(1))?;
                    }
                }
                None => out.errors += 1,
            }
        }
    }
    Ok(out)
}

/// `n` streams open at once; while they run, `sample` is called every 50 ms and the largest value
/// it returned is kept. Returns (completed, errors, largest sample).
pub async fn hold_open(t: &Target, n: usize, sample: impl Fn() -> f64) -> Result<(u64, u64, f64)> {
    let client = client()?;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, t) = (client.clone(), t.clone());
            tokio::spawn(async move { one(&client, &t).await.err() })
        })
        .collect();
    let mut peak: f64 = 0.0;
    while !tasks.iter().all(|t| t.is_finished()) {
        peak = peak.max(sample());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Why streams failed, counted by reason, so a failure can be told from the harness's own
    // (a refused connection) or keybroker's (its status and error body).
    let (mut ok, mut errors) = (0, 0);
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for task in tasks {
        match task.await? {
            None => ok += 1,
            Some(reason) => {
                errors += 1;
                *reasons.entry(reason).or_default() += 1;
            }
        }
    }
    for (reason, n) in reasons.iter().take(10) {
        eprintln!("  {n} stream(s) failed: {reason}");
    }
    Ok((ok, errors, peak))
}
