//! `proxy-bench`: what keybroker's proxy adds to a call, measured against calling the same
//! upstream directly, on one machine. It starts a fast local upstream (an OpenAI-style chat
//! completion with `usage`, and an SSE variant), runs the release `keybroker` binary as its own
//! process (full path: token lookup, decrypt, ceiling reservation, forward, metering, settle,
//! redacted logging at `info`), and reports:
//! - added latency p50/p99/p99.9 at concurrency 1;
//! - latency at fixed open-loop rates (measured from each request's scheduled start, so a slow
//!   response cannot hide queueing), direct vs proxied;
//! - the highest closed-loop throughput through the proxy;
//! - SSE: added time to first byte and added gap between chunks;
//! - keybroker's own in-process overhead histogram from `/metrics`.
//!
//! Figures go to stdout as Markdown and to `target/bench/proxy.json`. Environment:
//! `KEYBROKER_BIN` (default `target/release/keybroker`), `BENCH_SECONDS` (default 5).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

mod scrape;
use scrape::{quantiles, scrape};

const SSE_CHUNKS: usize = 16;
const SSE_GAP: Duration = Duration::from_millis(5);

fn chat_body() -> &'static str {
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#
}

async fn upstream(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let streaming = body.windows(13).any(|w| w == b"\"stream\":true");
    if !streaming {
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(chat_body());
    }
    let _ = req;
    let chunks = futures_util::stream::iter(0..SSE_CHUNKS + 2).then(|i| async move {
        if i > 0 {
            tokio::time::sleep(SSE_GAP).await;
        }
        let line = if i < SSE_CHUNKS {
            format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n")
        } else if i == SSE_CHUNKS {
            "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":16,\"total_tokens\":28}}\n\n".to_owned()
        } else {
            "data: [DONE]\n\n".to_owned()
        };
        Ok::<_, actix_web::Error>(web::Bytes::from(line))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(chunks)
}

/// The upstream on its own thread and actix runtime, one worker.
fn start_upstream() -> Result<u16> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sys = actix_web::rt::System::new();
        sys.block_on(async move {
            let server = match HttpServer::new(|| App::new().default_service(web::to(upstream)))
                .workers(1)
                .bind(("127.0.0.1", 0))
            {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!(e)));
                    return;
                }
            };
            let port = server.addrs().first().map(|a| a.port()).unwrap_or(0);
            let _ = tx.send(Ok(port));
            let _ = server.run().await;
        });
    });
    rx.recv()?
}

struct Keybroker {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Drop for Keybroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start_keybroker(upstream_port: u16) -> Result<Keybroker> {
    let bin = std::env::var("KEYBROKER_BIN").unwrap_or_else(|_| "target/release/keybroker".into());
    let dir = std::env::temp_dir().join(format!("kb-bench-{}", std::process::id()));
    let mut child = Command::new(&bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env(
            "KEYBROKER_UPSTREAM_OPENAI",
            format!("http://127.0.0.1:{upstream_port}"),
        )
        .env("KEYBROKER_LOG", "info")
        .env("KEYBROKER_PROXY_RATE_PER_MINUTE", "100000000")
        .env("KEYBROKER_PROXY_MAX_IN_FLIGHT", "100000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {bin} (build it with `cargo build --release`)"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines.next().ok_or_else(|| anyhow!("keybroker exited"))??;
        if line.contains("keybroker listening") {
            let port = line
                .split("port=")
                .nth(1)
                .and_then(|p| p.split_whitespace().next())
                .ok_or_else(|| anyhow!("no port"))?;
            break port.parse()?;
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Keybroker {
        child,
        port,
        _dir: dir,
    })
}

/// Signs up, stores an OpenAI key, sets a generous ceiling and returns a tool token.
async fn set_up(base: &str) -> Result<String> {
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": "bench@example.com", "password": "a long bench password"}))
        .send()
        .await?;
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-kb_session="))
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow!("no session cookie"))?
        .to_owned();
    let csrf = res.json::<Value>().await?["csrf_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        client
            .request(method, format!("{base}{path}"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&body)
            .send()
    };
    let key = "sk-proj-BENCHabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
    if !call(
        reqwest::Method::POST,
        "/api/v1/keys",
        json!({"provider": "openai", "key": key}),
    )
    .await?
    .status()
    .is_success()
    {
        bail!("could not store the key");
    }
    call(
        reqwest::Method::PUT,
        "/api/v1/ceilings/openai",
        json!({"limit_usd": "100000.00"}),
    )
    .await?;
    let res = call(
        reqwest::Method::POST,
        "/api/v1/tokens",
        json!({"name": "bench"}),
    )
    .await?;
    Ok(res.json::<Value>().await?["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[derive(Clone)]
struct Target {
    url: String,
    token: Option<String>,
}

impl Target {
    fn request(&self, client: &reqwest::Client, body: &'static str) -> reqwest::RequestBuilder {
        let rb = client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body);
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }
}

const REQUEST: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#;
const STREAM_REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50,"stream":true}"#;

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .http1_only()
        .build()?)
}

/// Microseconds, 1 µs to 60 s, 3 significant figures.
fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

async fn one(client: &reqwest::Client, t: &Target, body: &'static str) -> bool {
    match t.request(client, body).send().await {
        Ok(res) => res.status().is_success() && res.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// Sequential requests: latency at concurrency 1.
async fn sequential(t: &Target, n: usize) -> Result<(Histogram<u64>, u64)> {
    let client = client()?;
    let (mut h, mut errors) = (hist()?, 0);
    for _ in 0..n {
        let start = Instant::now();
        if !one(&client, t, REQUEST).await {
            errors += 1;
        }
        h.record(start.elapsed().as_micros() as u64)?;
    }
    Ok((h, errors))
}

/// Open loop at `rate` requests/s for `secs`: each request is timed from when it was due.
async fn fixed_rate(t: &Target, rate: u64, secs: u64) -> Result<(Histogram<u64>, u64, u64)> {
    let client = client()?;
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let total = rate * secs;
    let start = tokio::time::Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + period * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, t, errors) = (client.clone(), t.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let ok = one(&client, &t, REQUEST).await;
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            due.elapsed().as_micros() as u64
        }));
    }
    let mut h = hist()?;
    for task in tasks {
        h.record(task.await?)?;
    }
    let achieved = (total as f64 / start.elapsed().as_secs_f64()) as u64;
    Ok((h, errors.load(Ordering::Relaxed), achieved))
}

/// Closed loop with `concurrency` clients for `secs`: requests per second.
async fn closed_loop(t: &Target, concurrency: usize, secs: u64) -> Result<(f64, u64)> {
    let client = client()?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, t, done, errors) = (client.clone(), t.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if one(&client, &t, REQUEST).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok((
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    ))
}

/// Streams: time to first byte, and the largest gap between chunks beyond the upstream's own.
async fn streams(t: &Target, n: usize) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let client = client()?;
    let (mut ttfb, mut gaps) = (hist()?, hist()?);
    for _ in 0..n {
        let start = Instant::now();
        let mut res = t.request(&client, STREAM_REQUEST).send().await?;
        let mut last: Option<Instant> = None;
        while res.chunk().await?.is_some() {
            let now = Instant::now();
            match last {
                None => ttfb.record((now - start).as_micros() as u64)?,
                Some(prev) => gaps.record((now - prev).as_micros() as u64)?,
            }
            last = Some(now);
        }
    }
    Ok((ttfb, gaps))
}

fn q(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

const OVERHEAD: &str = "keybroker_proxy_overhead_seconds";
const HOLD_WAIT: &str = "keybroker_hold_commit_wait_seconds";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let up = start_upstream()?;
    let kb = start_keybroker(up)?;
    let base = format!("http://127.0.0.1:{}", kb.port);
    let token = set_up(&base).await?;
    let direct = Target {
        url: format!("http://127.0.0.1:{up}/v1/chat/completions"),
        token: None,
    };
    let proxied = Target {
        url: format!("{base}/proxy/openai/v1/chat/completions"),
        token: Some(token),
    };

    // Warm both paths (connection pools, caches).
    sequential(&direct, 500).await?;
    sequential(&proxied, 500).await?;

    let mut report = serde_json::Map::new();
    let mut md =
        String::from("| measurement | direct | through keybroker | added |\n|---|---|---|---|\n");

    let (hd, ed) = sequential(&direct, 3000).await?;
    let (hp, ep) = sequential(&proxied, 3000).await?;
    for (name, qq) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        md += &format!(
            "| concurrency 1, {name} (ms) | {:.3} | {:.3} | {:.3} |\n",
            q(&hd, qq),
            q(&hp, qq),
            q(&hp, qq) - q(&hd, qq)
        );
    }
    report.insert(
        "concurrency_1".into(),
        json!({
            "direct_ms": {"p50": q(&hd, 0.5), "p99": q(&hd, 0.99), "p999": q(&hd, 0.999)},
            "proxied_ms": {"p50": q(&hp, 0.5), "p99": q(&hp, 0.99), "p999": q(&hp, 0.999)},
            "errors": ed + ep,
        }),
    );

    let start_overhead = scrape(&base, OVERHEAD).await?;
    let start_wait = scrape(&base, HOLD_WAIT).await?;
    let mut at_1000 = (Value::Null, Value::Null);
    let mut rates = Vec::new();
    for rate in [500u64, 1000, 2000] {
        let (hd, ed, ad) = fixed_rate(&direct, rate, secs).await?;
        let (o0, w0) = (
            scrape(&base, OVERHEAD).await?,
            scrape(&base, HOLD_WAIT).await?,
        );
        let (hp, ep, ap) = fixed_rate(&proxied, rate, secs).await?;
        if rate == 1000 {
            let (o1, w1) = (
                scrape(&base, OVERHEAD).await?,
                scrape(&base, HOLD_WAIT).await?,
            );
            at_1000 = (quantiles(&o0, &o1), quantiles(&w0, &w1));
        }
        md += &format!(
            "| {rate} req/s open loop, p50 / p99 (ms) | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |\n",
            q(&hd, 0.5), q(&hd, 0.99), q(&hp, 0.5), q(&hp, 0.99), q(&hp, 0.5) - q(&hd, 0.5), q(&hp, 0.99) - q(&hd, 0.99)
        );
        rates.push(json!({"rate": rate, "achieved_direct": ad, "achieved_proxied": ap, "errors_direct": ed, "errors_proxied": ep,
            "direct_ms": {"p50": q(&hd, 0.5), "p99": q(&hd, 0.99), "p999": q(&hd, 0.999)},
            "proxied_ms": {"p50": q(&hp, 0.5), "p99": q(&hp, 0.99), "p999": q(&hp, 0.999)}}));
    }
    report.insert("fixed_rate".into(), Value::Array(rates));

    let (rd, erd) = closed_loop(&direct, 64, secs).await?;
    let (rp, erp) = closed_loop(&proxied, 64, secs).await?;
    md += &format!("| closed loop, 64 clients (req/s) | {rd:.0} | {rp:.0} | |\n");
    report.insert(
        "closed_loop_64".into(),
        json!({"direct_rps": rd, "proxied_rps": rp, "errors_direct": erd, "errors_proxied": erp}),
    );

    let (td, gd) = streams(&direct, 30).await?;
    let (tp, gp) = streams(&proxied, 30).await?;
    md += &format!("| SSE time to first byte, p50 / p99 (ms) | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |\n",
        q(&td, 0.5), q(&td, 0.99), q(&tp, 0.5), q(&tp, 0.99), q(&tp, 0.5) - q(&td, 0.5), q(&tp, 0.99) - q(&td, 0.99));
    md += &format!("| SSE gap between chunks, p50 / max (ms) | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |\n",
        q(&gd, 0.5), q(&gd, 1.0), q(&gp, 0.5), q(&gp, 1.0), q(&gp, 0.5) - q(&gd, 0.5), q(&gp, 1.0) - q(&gd, 1.0));
    report.insert("sse".into(), json!({
        "ttfb_ms": {"direct_p50": q(&td, 0.5), "direct_p99": q(&td, 0.99), "proxied_p50": q(&tp, 0.5), "proxied_p99": q(&tp, 0.99)},
        "gap_ms": {"direct_p50": q(&gd, 0.5), "direct_max": q(&gd, 1.0), "proxied_p50": q(&gp, 0.5), "proxied_max": q(&gp, 1.0)},
        "upstream_gap_ms": SSE_GAP.as_secs_f64() * 1000.0,
    }));

    let overhead = quantiles(&start_overhead, &scrape(&base, OVERHEAD).await?);
    let wait = quantiles(&start_wait, &scrape(&base, HOLD_WAIT).await?);
    md += &format!(
        "| in-process overhead, whole run incl. overload (µs, bucket upper bounds) | | p50 ≤ {} / p99 ≤ {} / p99.9 ≤ {} | |\n",
        overhead["p50_us_at_most"], overhead["p99_us_at_most"], overhead["p999_us_at_most"]
    );
    md += &format!(
        "| of which waiting for the hold's commit, whole run (µs) | | p50 ≤ {} / p99 ≤ {} / p99.9 ≤ {} | |\n",
        wait["p50_us_at_most"], wait["p99_us_at_most"], wait["p999_us_at_most"]
    );
    md += &format!(
        "| in-process overhead at 1000 req/s (µs, bucket upper bounds) | | p50 ≤ {} / p99 ≤ {} / p99.9 ≤ {} | |\n",
        at_1000.0["p50_us_at_most"], at_1000.0["p99_us_at_most"], at_1000.0["p999_us_at_most"]
    );
    md += &format!(
        "| of which waiting for the hold's commit, at 1000 req/s (µs) | | p50 ≤ {} / p99 ≤ {} / p99.9 ≤ {} | |\n",
        at_1000.1["p50_us_at_most"], at_1000.1["p99_us_at_most"], at_1000.1["p999_us_at_most"]
    );
    report.insert("in_process_overhead_at_1000_rps".into(), at_1000.0);
    report.insert("hold_commit_wait_at_1000_rps".into(), at_1000.1);
    report.insert("in_process_overhead".into(), overhead);
    report.insert("hold_commit_wait".into(), wait);
    report.insert(
        "machine".into(),
        json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "note": "load generator, upstream and keybroker share this machine's cores",
        }),
    );

    println!("{md}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/proxy.json",
        serde_json::to_string_pretty(&Value::Object(report))?,
    )?;
    println!("(all figures also in target/bench/proxy.json)");
    drop(kb);
    Ok(())
}
