//! `proxy-drills`: the long fault drills of issue 9, run by hand (`bench/drills/run.sh`). Each
//! starts the release `keybroker` binary against a fast local upstream and measures the proxy
//! while something hostile happens beside it:
//! - `slowloris`: connections sending their head a byte at a time, and bodies trickled slowly;
//! - `login-storm`: concurrent logins (argon2id at OWASP cost), once with the default hashing
//!   pool and once with it effectively unbounded (`KEYBROKER_PASSWORD_HASHERS=512`, the old
//!   behaviour);
//! - `soak`: a steady rate for `SOAK_MINUTES` (default 10), sampling VmRSS and open descriptors.
//!
//! Proxy latency is measured open-loop at `RATE` calls/s (default 50) from each call's scheduled
//! start, unloaded first and then under the disturbance; the drill reports p50/p99 and the p99
//! ratio. Markdown on stdout, every figure in `target/bench/drills.json`. Targets: p99 under load
//! ≤ 2 × unloaded p99; soak: zero errors, after a minute's warm-up RSS never more than 32 MiB over
//! its first sample, and no more than 16 descriptors more at the end than at that sample.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

mod scrape;
mod setup;

const OVERHEAD: &str = "keybroker_proxy_overhead_seconds";

const EMAIL: &str = "drills@example.com";
const PASSWORD: &str = "a long drills password";
const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":50}"#;

async fn upstream() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"id":"chatcmpl-d","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#)
}

/// The upstream on its own thread and actix runtime.
fn start_upstream() -> Result<u16> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match HttpServer::new(|| App::new().default_service(web::to(upstream)))
                .workers(1)
                .bind(("127.0.0.1", 0))
            {
                Ok(server) => {
                    let _ = tx.send(Ok(server.addrs().first().map(|a| a.port()).unwrap_or(0)));
                    let _ = server.run().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow!(e)));
                }
            }
        });
    });
    rx.recv()?
}

struct Keybroker {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Keybroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Keybroker {
    fn start(upstream_port: u16, name: &str, env: &[(&str, &str)]) -> Result<Keybroker> {
        let bin =
            std::env::var("KEYBROKER_BIN").unwrap_or_else(|_| "target/release/keybroker".into());
        let dir = std::env::temp_dir().join(format!("kb-drill-{name}-{}", std::process::id()));
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
            .env("KEYBROKER_LOGIN_ATTEMPTS_PER_ACCOUNT", "100000000")
            .env("KEYBROKER_LOGIN_ATTEMPTS_PER_CLIENT", "100000000")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {bin} (build it with `cargo build --release`)"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines.next().ok_or_else(|| anyhow!("keybroker exited"))??;
            if line.contains("keybroker listening") {
                break line
                    .split("port=")
                    .nth(1)
                    .and_then(|p| p.split_whitespace().next())
                    .ok_or_else(|| anyhow!("no port"))?
                    .parse()?;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Keybroker { child, port, dir })
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (VmRSS in KiB, open descriptors) of the server process.
    fn resources(&self) -> Result<(u64, u64)> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        Ok((rss, fds))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Measured {
    hist: Histogram<u64>,
    errors: u64,
}

/// Proxied calls at `rate` per second for `secs`, open loop: latency counts from each call's
/// scheduled start.
async fn at_rate(base: &str, token: &str, rate: u64, secs: u64) -> Result<Measured> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{base}/proxy/openai/v1/chat/completions");
    let started = tokio::time::Instant::now();
    let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tasks = Vec::new();
    for i in 0..rate * secs {
        let due = started + gap * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due).await;
        let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let ok = match client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(CHAT)
                .send()
                .await
            {
                Ok(res) => res.status() == 200 && res.bytes().await.is_ok(),
                Err(_) => false,
            };
            (ok, due.elapsed())
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (ok, took) = t.await?;
        if ok {
            hist.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))?;
        } else {
            errors += 1;
        }
    }
    Ok(Measured { hist, errors })
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn summary(name: &str, unloaded: &Measured, loaded: &Measured, extra: Value) -> Value {
    let ratio = ms(&loaded.hist, 0.99) / ms(&unloaded.hist, 0.99).max(0.001);
    println!(
        "| {name} | {:.2} / {:.2} | {:.2} / {:.2} | {ratio:.2} | {} | {} |",
        ms(&unloaded.hist, 0.5),
        ms(&unloaded.hist, 0.99),
        ms(&loaded.hist, 0.5),
        ms(&loaded.hist, 0.99),
        unloaded.errors + loaded.errors,
        if ratio <= 2.0 { "met" } else { "missed" }
    );
    json!({"drill": name, "unloaded_p50_ms": ms(&unloaded.hist, 0.5), "unloaded_p99_ms": ms(&unloaded.hist, 0.99),
        "loaded_p50_ms": ms(&loaded.hist, 0.5), "loaded_p99_ms": ms(&loaded.hist, 0.99), "p99_ratio": ratio,
        "errors": unloaded.errors + loaded.errors, "extra": extra})
}

/// Opens a connection and sends `head` one byte every `gap`; opens another when it is closed.
async fn slow_writer(
    port: u16,
    head: Vec<u8>,
    gap: Duration,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for b in &head {
            if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(gap).await;
        }
        closed.fetch_add(1, Ordering::Relaxed);
    }
}

async fn slowloris(upstream: u16, rate: u64, secs: u64) -> Result<Value> {
    let kb = Keybroker::start(
        upstream,
        "slowloris",
        &[("KEYBROKER_BODY_TIMEOUT_SECS", "10")],
    )?;
    let token = setup::account(&kb.base(), std::slice::from_ref(&kb.dir), EMAIL, PASSWORD).await?;
    at_rate(&kb.base(), &token, rate, 2).await?; // warm-up
    let unloaded = at_rate(&kb.base(), &token, rate, secs).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let heads = env_u64("SLOW_HEADS", 1000);
    let bodies = env_u64("SLOW_BODIES", 200);
    let mut tasks = Vec::new();
    for _ in 0..heads {
        let head = b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec();
        tasks.push(tokio::spawn(slow_writer(
            kb.port,
            head,
            Duration::from_millis(200),
            stop.clone(),
            closed.clone(),
        )));
    }
    for _ in 0..bodies {
        let mut bytes = format!("POST /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n").into_bytes();
        // The head at once, then the body a byte every 200 ms.
        let head_len = bytes.len();
        bytes.extend(std::iter::repeat_n(b' ', 100_000));
        let (stop, closed) = (stop.clone(), closed.clone());
        let port = kb.port;
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if s.write_all(&bytes[..head_len]).await.is_err() {
                    continue;
                }
                for b in &bytes[head_len..] {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                closed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, fds) = kb.resources()?;
    let loaded = at_rate(&kb.base(), &token, rate, secs).await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    Ok(summary(
        &format!("slowloris ({heads} slow heads, {bodies} slow bodies)"),
        &unloaded,
        &loaded,
        json!({"connections_ended_by_server": closed.load(Ordering::Relaxed), "rss_kib_under_attack": rss, "fds_under_attack": fds}),
    ))
}

async fn login_storm(upstream: u16, rate: u64, secs: u64, hashers: Option<&str>) -> Result<Value> {
    let env: Vec<(&str, &str)> = hashers
        .map(|h| vec![("KEYBROKER_PASSWORD_HASHERS", h)])
        .unwrap_or_default();
    let kb = Keybroker::start(upstream, "storm", &env)?;
    let token = setup::account(&kb.base(), std::slice::from_ref(&kb.dir), EMAIL, PASSWORD).await?;
    at_rate(&kb.base(), &token, rate, 2).await?;
    let waits_start = scrape::scrape(&kb.base(), OVERHEAD).await?;
    let unloaded = at_rate(&kb.base(), &token, rate, secs).await?;
    let waits_unloaded = scrape::scrape(&kb.base(), OVERHEAD).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let concurrency = env_u64("STORM_CONCURRENCY", 32);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (stop, logins, failures) = (stop.clone(), logins.clone(), failures.clone());
        let url = format!("{}/api/v1/auth/login", kb.base());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let password = if i % 2 == 0 {
                PASSWORD.to_owned()
            } else {
                format!("wrong password {i}")
            };
            while !stop.load(Ordering::Relaxed) {
                match client
                    .post(&url)
                    .json(&json!({"email": EMAIL, "password": password}))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 || r.status() == 401 => {
                        logins.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = logins.load(Ordering::Relaxed);
    let waits_before = scrape::scrape(&kb.base(), OVERHEAD).await?;
    let loaded = at_rate(&kb.base(), &token, rate, secs).await?;
    let waits_after = scrape::scrape(&kb.base(), OVERHEAD).await?;
    let during = logins.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let label = match hashers {
        Some(h) => {
            format!("login storm ({concurrency} concurrent, KEYBROKER_PASSWORD_HASHERS={h})")
        }
        None => format!("login storm ({concurrency} concurrent, default pool)"),
    };
    Ok(summary(
        &label,
        &unloaded,
        &loaded,
        json!({"logins_per_s": during as f64 / secs as f64, "login_failures": failures.load(Ordering::Relaxed),
            "proxy_overhead_unloaded": scrape::quantiles(&waits_start, &waits_unloaded),
            "proxy_overhead_storm": scrape::quantiles(&waits_before, &waits_after)}),
    ))
}

async fn soak(upstream: u16, rate: u64) -> Result<Value> {
    let minutes = env_u64("SOAK_MINUTES", 10);
    let kb = Keybroker::start(upstream, "soak", &[])?;
    let token = setup::account(&kb.base(), std::slice::from_ref(&kb.dir), EMAIL, PASSWORD).await?;
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    // 10-second slices at a steady rate; a sample of RSS and descriptors after each.
    for _ in 0..minutes * 6 {
        let m = at_rate(&kb.base(), &token, rate, 10).await?;
        errors += m.errors;
        hist.add(&m.hist)?;
        let (rss, fds) = kb.resources()?;
        samples.push((started.elapsed().as_secs(), rss, fds));
        eprintln!(
            "soak t={}s rss={rss} KiB fds={fds} errors={errors}",
            started.elapsed().as_secs()
        );
    }
    // Growth is judged after the first minute (caches, pools and the allocator warm up).
    let warm = samples.iter().skip(5).copied().collect::<Vec<_>>();
    let (first_rss, first_fds) = warm.first().map(|s| (s.1, s.2)).unwrap_or_default();
    let max_rss = warm.iter().map(|s| s.1).max().unwrap_or_default();
    let max_fds = warm.iter().map(|s| s.2).max().unwrap_or_default();
    let (last_rss, last_fds) = warm.last().map(|s| (s.1, s.2)).unwrap_or_default();
    // RSS: the peak against the start (memory that came and stayed would show). Descriptors: the
    // end against the start; a passing peak is connections opened while latency spiked.
    let rss_growth = max_rss.saturating_sub(first_rss);
    let fd_growth = last_fds.saturating_sub(first_fds);
    let met = errors == 0 && rss_growth <= 32 * 1024 && fd_growth <= 16;
    println!(
        "| soak {minutes} min at {rate}/s | {} calls, {errors} errors | p50 {:.2} ms, p99 {:.2} ms | RSS {first_rss} → {last_rss} KiB (max {max_rss}, growth {rss_growth}) | fds {first_fds} → {last_fds} (max {max_fds}) | {} |",
        hist.len(),
        ms(&hist, 0.5),
        ms(&hist, 0.99),
        if met { "met" } else { "missed" }
    );
    Ok(
        json!({"drill": "soak", "minutes": minutes, "rate": rate, "calls": hist.len(), "errors": errors,
        "p50_ms": ms(&hist, 0.5), "p99_ms": ms(&hist, 0.99), "rss_growth_kib": rss_growth, "fd_growth": fd_growth,
        "samples": samples.iter().map(|s| json!({"t": s.0, "rss_kib": s.1, "fds": s.2})).collect::<Vec<_>>(), "met": met}),
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "short".into());
    let rate = env_u64("RATE", 50);
    let secs = env_u64("DRILL_SECONDS", 10);
    let upstream = start_upstream()?;
    let mut results = Vec::new();
    if which != "soak" {
        println!("| drill | unloaded p50 / p99 ms | under load p50 / p99 ms | p99 ratio | errors | ≤ 2× |");
        println!("|---|---|---|---|---|---|");
    }
    if which == "short" || which == "slowloris" {
        results.push(slowloris(upstream, rate, secs).await?);
    }
    if which == "short" || which == "login-storm" {
        results.push(login_storm(upstream, rate, secs, None).await?);
        results.push(login_storm(upstream, rate, secs, Some("512")).await?);
    }
    if which == "soak" {
        println!("| drill | calls | latency | RSS (KiB) | descriptors | bounds |");
        println!("|---|---|---|---|---|---|");
        results.push(soak(upstream, rate).await?);
    }
    std::fs::create_dir_all("target/bench")?;
    let path = format!("target/bench/drills-{which}.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json!(results))?)?;
    eprintln!("figures in {path}");
    Ok(())
}
