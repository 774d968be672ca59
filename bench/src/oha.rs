//! The load generator for plain (non-streamed) calls: `oha`, run as a child process on the load
//! cores, its JSON summary parsed. oha does closed loop (`-c N`) and open loop at a fixed rate
//! (`-q R --latency-correction`: each latency is counted from when the request was due, so a
//! stalled server cannot hide its queue).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Pinning};

/// Where a run sends its requests.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// `Authorization: Bearer …` (keybroker's tool token), if any.
    pub token: Option<String>,
}

/// How hard and how long.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    /// Open loop at this many requests per second; `None` for closed loop.
    pub rate: Option<u64>,
    pub duration: Duration,
    pub delay_ms: u64,
}

/// What one oha run measured. Latencies in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Outcome {
    pub fn json(&self) -> Value {
        json!({"requests": self.requests, "errors": self.errors, "rps": self.rps,
            "p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999})
    }
}

pub fn version(oha: &Path) -> String {
    std::process::Command::new(oha)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_owned())
}

/// Runs oha once against `target` (as a tokio child process: the runtime is not blocked).
pub async fn run(oha: &Path, pin: &Pinning, target: &Target, load: Load) -> Result<Outcome> {
    let mut cmd = procs::command(pin.load.as_deref(), oha);
    cmd.args(["--no-tui", "--output-format", "json", "-w", "-m", "POST"])
        .args(["-T", "application/json"])
        .args(["-d", &crate::upstream::request_body(load.delay_ms)])
        .args(["-c", &load.connections.to_string()])
        .args(["-z", &format!("{}ms", load.duration.as_millis())])
        // oha's own runtime gets the load cores' threads, not the whole machine's.
        .args(["--worker-threads", &pin.load_threads.to_string()]);
    if let Some(rate) = load.rate {
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    if let Some(token) = &target.token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    cmd.arg(&target.url).stdin(Stdio::null());
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .with_context(|| format!("running {}", oha.display()))?;
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&out.stdout)
}

fn parse(stdout: &[u8]) -> Result<Outcome> {
    let v: Value = serde_json::from_slice(stdout).context("oha's JSON output")?;
    let ok: u64 = v["statusCodeDistribution"]
        .as_object()
        .map(|codes| {
            codes
                .iter()
                .filter(|(code, _)| code.starts_with('2'))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let sum_of = |key: &str| -> u64 {
        v[key]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let requests = sum_of("statusCodeDistribution") + sum_of("errorDistribution");
    let pct = |p: &str| -> Result<f64> {
        v["latencyPercentiles"][p]
            .as_f64()
            .map(|s| s * 1000.0)
            .ok_or_else(|| anyhow!("no {p} in oha's output"))
    };
    if requests == 0 {
        bail!("oha made no request: {}", String::from_utf8_lossy(stdout));
    }
    Ok(Outcome {
        requests,
        errors: requests - ok,
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50: pct("p50")?,
        p99: pct("p99")?,
        p999: pct("p99.9")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oha_json_counting_non_2xx_and_transport_errors() {
        // The shape oha 1.16 prints with `--output-format json` (trimmed).
        let out = br#"{"summary":{"successRate":0.99,"requestsPerSec":199.06},
            "latencyPercentiles":{"p50":0.000194,"p99":0.014004,"p99.9":0.0150,"p99.99":0.0150},
            "statusCodeDistribution":{"200":57,"502":1},"errorDistribution":{"connection closed":2}}"#;
        let o = parse(out).unwrap();
        assert_eq!((o.requests, o.errors), (60, 3));
        assert!((o.p50 - 0.194).abs() < 1e-9 && (o.p99 - 14.004).abs() < 1e-9);
        assert!((o.p999 - 15.0).abs() < 1e-9 && (o.rps - 199.06).abs() < 1e-9);
    }

    #[test]
    fn a_run_with_no_request_is_an_error() {
        let out = br#"{"summary":{},"latencyPercentiles":{},"statusCodeDistribution":{},"errorDistribution":{}}"#;
        assert!(parse(out).is_err());
    }
}
