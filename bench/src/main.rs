//! `proxy-bench`: keybroker side by side with nginx and with no proxy at all, on one machine,
//! under one load generator. `bench/run.sh` installs what is missing, builds and runs it.
//!
//! Arms, all in front of the same local upstream (`upstream.rs`, its own process):
//! 1. `direct`: the upstream itself;
//! 2. `nginx`: a plain reverse proxy (one worker, upstream keep-alive, `proxy_buffering off`),
//!    the floor any proxy pays;
//! 3. `keybroker, 1 worker`: keybroker's full path (token lookup, decrypt, ceiling reservation,
//!    forward, metering, settle, redacted logging to a file), `--workers 1`;
//! 4. `keybroker, default workers`: the same, with its default workers and no pinning;
//! 5. with `--postgres`: `keybroker on PostgreSQL, 1 worker`, the first keybroker arm with
//!    its whole store on the harness's own PostgreSQL cluster (`pg.rs`) and a ceiling set, so a
//!    call is admitted against the instance's lease;
//! 6. and `2 × keybroker on PostgreSQL`: two such instances on one database behind nginx as a
//!    round-robin balancer, sharing the ceiling through their leases.
//!
//! The PostgreSQL arms also count the statements keybroker sends per proxied call
//! (`pg_stat_statements`, the arm's database only) and the server's CPU per call.
//!
//! The load (oha, this process's SSE client) and the upstream run on core 0, the proxy under
//! test on core 1 (`taskset`; nothing is pinned on a 1-core machine or without taskset).
//! Figures go to `<out>/results.md` (also stdout) and `<out>/results.json`.
//!
//! Usage: `proxy-bench [--quick] [--postgres] [--arms NAME,…] --oha PATH --nginx PATH
//! --keybroker PATH [--out DIR]` (`--arms` keeps only the arms named, plus `direct`);
//! `proxy-bench upstream` runs the upstream alone.

mod oha;
mod pg;
mod procs;
mod prom;
mod report;
mod setup;
mod sse;
mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::oha::{Load, Outcome, Target};
use crate::procs::{Pinning, Running};

/// How long and how much each phase runs; `--quick` is a smoke run of a minute or two, the full
/// plan takes about eleven minutes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub concurrency_1: Duration,
    pub rate_phase: Duration,
    pub rates: Vec<u64>,
    /// Upstream delays (ms) the fixed-rate phases run with.
    pub delays: Vec<u64>,
    pub probe: Duration,
    pub max_probes: usize,
    /// A rate not held is probed this many more times before it counts as not held, so one
    /// burst of other work on the machine does not end the search.
    pub probe_retries: usize,
    /// The search stops when the gap between held and not held is at most this fraction.
    pub search_tolerance: f64,
    pub sse_concurrency: usize,
    pub sse_rounds: usize,
    pub open_streams: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let s = Duration::from_secs;
        Self {
            quick,
            concurrency_1: if quick { s(3) } else { s(10) },
            rate_phase: if quick { s(3) } else { s(8) },
            rates: vec![500, 1_000, 2_000],
            delays: if quick { vec![0] } else { vec![0, 20, 60] },
            probe: if quick { s(2) } else { s(5) },
            max_probes: if quick { 5 } else { 10 },
            probe_retries: if quick { 0 } else { 1 },
            search_tolerance: if quick { 0.25 } else { 0.05 },
            sse_concurrency: 16,
            sse_rounds: if quick { 1 } else { 5 },
            open_streams: 512,
        }
    }
}

/// The p99 a rate must stay under, with no error, to count as held.
pub const HELD_P99_MS: f64 = 10.0;

struct Options {
    plan: Plan,
    oha: PathBuf,
    nginx: PathBuf,
    keybroker: PathBuf,
    out: PathBuf,
    /// PostgreSQL's server binaries; the PostgreSQL arms run only when given.
    postgres: Option<PathBuf>,
    /// Only these arms (and `direct`); all when `None`.
    only: Option<Vec<String>>,
}

impl Options {
    fn wants(&self, arm: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == arm))
    }
}

fn options(args: &[String]) -> Result<Options> {
    let mut quick = false;
    let (mut oha, mut nginx, mut keybroker) = (None, None, None);
    let mut out = PathBuf::from("target/bench");
    let (mut postgres, mut only) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--quick" => quick = true,
            "--oha" => oha = Some(value()?),
            "--nginx" => nginx = Some(value()?),
            "--keybroker" => keybroker = Some(value()?),
            "--out" => out = value()?,
            "--postgres" => {
                postgres = Some(pg::find_bin_dir().ok_or_else(|| {
                    anyhow!("--postgres: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (bench/run.sh installs Debian's postgresql)")
                })?)
            }
            "--arms" => {
                only = Some(
                    value()?
                        .to_string_lossy()
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            other => bail!("unknown argument {other:?} (see bench/run.sh)"),
        }
    }
    Ok(Options {
        plan: Plan::new(quick),
        oha: oha.ok_or_else(|| anyhow!("--oha PATH is required"))?,
        nginx: nginx.ok_or_else(|| anyhow!("--nginx PATH is required"))?,
        keybroker: keybroker.unwrap_or_else(|| "target/release/keybroker".into()),
        out,
        postgres,
        only,
    })
}

/// One thing measured: where its requests go and which processes are charged for them.
pub struct Arm {
    pub name: &'static str,
    pub label: String,
    pub target: Target,
    /// keybroker's base URLs (one per instance), for `/metrics`.
    pub metrics: Vec<String>,
    /// The proxy's processes, charged for CPU and memory; none for the direct arm.
    processes: Vec<Running>,
    /// The PostgreSQL arms' balancer, in front of `processes` and not charged to them.
    _balancer: Option<Running>,
    /// The PostgreSQL arms' database, whose statements are counted.
    pub pg_db: Option<&'static str>,
}

impl Arm {
    /// The proxy's processes (nginx: master and worker); none for the direct arm.
    fn pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .flat_map(|p| procs::with_children(p.pid()))
            .collect()
    }
}

/// What PostgreSQL did during one phase of a PostgreSQL arm.
#[derive(Debug, Clone, Default)]
pub struct PgPhase {
    /// Statements keybroker ran in the arm's database (`pg_stat_statements` calls).
    pub statements: u64,
    /// Proxied calls sent in the phase.
    pub calls: u64,
    /// From the statement counts' reset to their reading (the phase and a few ms around it).
    pub seconds: f64,
    /// Lease round trips (`keybroker_ceiling_lease_requests_total`, all instances).
    pub lease_requests: f64,
    /// CPU seconds of the server's processes (postmaster and backends).
    pub server_cpu_s: f64,
    /// The statements run most often: (calls, query).
    pub top: Vec<(u64, String)>,
}

impl PgPhase {
    pub fn per_call(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.statements as f64 / self.calls as f64)
    }
}

/// Everything measured for one arm.
#[derive(Default)]
pub struct ArmResult {
    pub concurrency_1: Outcome,
    pub rates: Vec<RateResult>,
    pub max_rate: Option<u64>,
    pub probes: Vec<Probe>,
    pub sse: Option<sse::Streams>,
    /// Time to the first chunk of the one stream sent after the highest-rate probes and a pause.
    pub first_chunk_after_idle_ms: Option<f64>,
    /// The streams-open-at-once phase; none for the direct arm.
    pub open_streams: Option<OpenStreams>,
    pub peak_rss_mb: Option<f64>,
    /// keybroker's own histograms over named phases.
    pub histograms: BTreeMap<&'static str, BTreeMap<String, prom::Delta>>,
    /// The PostgreSQL arms: statements and server CPU per named phase (`concurrency_1`,
    /// `rate_<rate>_delay_<ms>`).
    pub pg: BTreeMap<String, PgPhase>,
}

/// One probe of the highest-rate search: the rate and what it gave.
pub type Probe = (u64, Outcome);

#[derive(Clone, Copy)]
pub struct OpenStreams {
    pub completed: u64,
    pub failed: u64,
    /// RSS (MB) just before the streams were opened, and the largest sampled while they ran.
    pub rss_before_mb: f64,
    pub peak_rss_mb: f64,
}

pub struct RateResult {
    pub delay_ms: u64,
    pub rate: u64,
    pub outcome: Outcome,
    pub cpu_s_per_1000: Option<f64>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("upstream") {
        return upstream::serve();
    }
    let opts = options(&args)?;
    let pin = Pinning::detect();
    pin.pin_self()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(pin.load_threads)
        .enable_all()
        .build()?
        .block_on(run(opts, pin))
}

async fn run(opts: Options, pin: Pinning) -> Result<()> {
    let plan = opts.plan.clone();
    let machine = report::Machine::describe(&opts.nginx, &opts.oha, &pin);
    eprintln!("proxy-bench: {}", machine.summary());

    // Declared before the arms, so it is stopped after them (a clean stop hands leases back).
    let cluster = match &opts.postgres {
        Some(bin) => {
            eprintln!("starting PostgreSQL from {}", bin.display());
            Some(pg::Cluster::start(bin, pin.load.as_deref())?)
        }
        None => None,
    };
    let (upstream, up_port) = procs::start_upstream(&pin)?;
    let chat = "/v1/chat/completions";
    let mut arms = vec![Arm {
        name: "direct",
        label: "upstream directly".into(),
        target: Target {
            url: format!("http://127.0.0.1:{up_port}{chat}"),
            token: None,
        },
        metrics: Vec::new(),
        processes: Vec::new(),
        _balancer: None,
        pg_db: None,
    }];
    if opts.wants("nginx") {
        let (nginx, port) =
            procs::start_nginx(&opts.nginx, "nginx", &[up_port], pin.proxy.as_deref())?;
        arms.push(Arm {
            name: "nginx",
            label: "nginx, 1 worker".into(),
            target: Target {
                url: format!("http://127.0.0.1:{port}{chat}"),
                token: None,
            },
            metrics: Vec::new(),
            processes: vec![nginx],
            _balancer: None,
            pg_db: None,
        });
    }
    for (name, label, workers, cores) in [
        (
            "keybroker_1w",
            "keybroker, 1 worker",
            Some(1),
            pin.proxy.as_deref(),
        ),
        (
            "keybroker_default",
            "keybroker, default workers, unpinned",
            None,
            pin.all.as_deref(),
        ),
    ] {
        if !opts.wants(name) {
            continue;
        }
        let (kb, port) =
            procs::start_keybroker(&opts.keybroker, name, up_port, workers, cores, &[])?;
        let base = format!("http://127.0.0.1:{port}");
        let token = setup::account(&base, &[data_dir(&kb)?], EMAIL, PASSWORD).await?;
        arms.push(Arm {
            name,
            label: label.into(),
            target: Target {
                url: format!("{base}/proxy/openai{chat}"),
                token: Some(token),
            },
            metrics: vec![base],
            processes: vec![kb],
            _balancer: None,
            pg_db: None,
        });
    }
    if let Some(cluster) = &cluster {
        let secrets = shared_secrets()?;
        for (name, label, db, instances) in [
            (
                "keybroker_pg_1",
                "keybroker on PostgreSQL, 1 worker",
                "kb_pg_1",
                1,
            ),
            (
                "keybroker_pg_2",
                "2 × keybroker on PostgreSQL (1 worker each) behind nginx",
                "kb_pg_2",
                2,
            ),
        ] {
            if opts.wants(name) {
                let url = cluster.create_database(db)?;
                let mut env = secrets.clone();
                env.push(("KEYBROKER_DATABASE_URL", url));
                arms.push(pg_arm(&opts, &pin, (name, label, db), instances, up_port, &env).await?);
            }
        }
    }

    let ticks = procs::clock_ticks();
    let pg_version = cluster.as_ref().map(pg::Cluster::version);
    let mut results: Vec<ArmResult> = arms.iter().map(|_| ArmResult::default()).collect();

    eprintln!("warming up");
    for arm in &arms {
        let warm = Load {
            connections: 8,
            rate: None,
            duration: Duration::from_secs(1),
            delay_ms: 0,
        };
        oha::run(&opts.oha, &pin, &arm.target, warm).await?;
        sse::measure(&arm.target, 4, 1).await?;
    }
    let run_start = scrape_all(&arms).await?;

    eprintln!("concurrency 1");
    for (arm, res) in arms.iter().zip(&mut results) {
        let load = Load {
            connections: 1,
            rate: None,
            duration: plan.concurrency_1,
            delay_ms: 0,
        };
        let before = scrape(arm).await?;
        let pg_start = pg_begin(cluster.as_ref(), arm, ticks).await?;
        res.concurrency_1 = oha::run(&opts.oha, &pin, &arm.target, load).await?;
        let calls = res.concurrency_1.requests;
        pg_end(
            cluster.as_ref(),
            arm,
            res,
            "concurrency_1".into(),
            (pg_start, calls),
            ticks,
        )
        .await?;
        record_histograms(arm, res, "concurrency_1", before).await?;
    }

    for &delay_ms in &plan.delays {
        for &rate in &plan.rates {
            eprintln!("{rate} req/s open loop, upstream delay {delay_ms} ms");
            // Interleaved, so a change in the machine's background load hits every arm alike.
            for (arm, res) in arms.iter().zip(&mut results) {
                let load = Load {
                    connections: connections_for(rate, delay_ms),
                    rate: Some(rate),
                    duration: plan.rate_phase,
                    delay_ms,
                };
                let pids = arm.pids();
                let cpu = procs::cpu_seconds(&pids, ticks);
                let before = scrape(arm).await?;
                let pg_start = pg_begin(cluster.as_ref(), arm, ticks).await?;
                let outcome = oha::run(&opts.oha, &pin, &arm.target, load).await?;
                let used = procs::cpu_seconds(&pids, ticks) - cpu;
                pg_end(
                    cluster.as_ref(),
                    arm,
                    res,
                    format!("rate_{rate}_delay_{delay_ms}"),
                    (pg_start, outcome.requests),
                    ticks,
                )
                .await?;
                if delay_ms == 0 && rate == 1_000 {
                    record_histograms(arm, res, "rate_1000_delay_0", before).await?;
                }
                res.rates.push(RateResult {
                    delay_ms,
                    rate,
                    cpu_s_per_1000: (!pids.is_empty() && outcome.requests > 0)
                        .then(|| used * 1000.0 / outcome.requests as f64),
                    outcome,
                });
            }
        }
    }

    for (arm, res) in arms.iter().zip(&mut results) {
        eprintln!("highest rate held by {}", arm.label);
        (res.max_rate, res.probes) = max_rate(&opts.oha, &pin, &plan, &arm.target).await?;
    }

    eprintln!(
        "SSE: {} streams at a time, {} round(s)",
        plan.sse_concurrency, plan.sse_rounds
    );
    for (arm, res) in arms.iter().zip(&mut results) {
        // One stream first: after the probes each proxy's pool holds hundreds of upstream
        // connections the upstream has since closed (it drops idle ones after 5 s), and the first
        // call after such a pause pays to close them (keybroker: about 10 µs each, once). That is
        // reported on its own (`first_chunk_after_idle_ms`); the phase itself measures streaming.
        let first = sse::measure(&arm.target, 1, 1).await?;
        res.first_chunk_after_idle_ms =
            (first.completed > 0).then(|| sse::ms(&first.first_chunk, 1.0));
        res.sse = Some(sse::measure(&arm.target, plan.sse_concurrency, plan.sse_rounds).await?);
    }

    eprintln!("{} streams open at once", plan.open_streams);
    for (arm, res) in arms.iter().zip(&mut results) {
        let pids = arm.pids();
        if pids.is_empty() {
            continue;
        }
        let rss_before_mb = procs::status_mb(&pids, "VmRSS:");
        let (completed, failed, peak_rss_mb) =
            sse::hold_open(&arm.target, plan.open_streams, || {
                procs::status_mb(&pids, "VmRSS:")
            })
            .await?;
        res.open_streams = Some(OpenStreams {
            completed,
            failed,
            rss_before_mb,
            peak_rss_mb,
        });
    }

    let run_end = scrape_all(&arms).await?;
    for ((arm, res), (start, end)) in arms
        .iter()
        .zip(&mut results)
        .zip(run_start.iter().zip(&run_end))
    {
        let pids = arm.pids();
        if !pids.is_empty() {
            res.peak_rss_mb = Some(procs::status_mb(&pids, "VmHWM:"));
        }
        if let (Some(start), Some(end)) = (start, end) {
            res.histograms.insert("whole_run", prom::delta(start, end));
        }
    }
    drop(upstream);

    let report = report::Report {
        machine: machine.finish(),
        postgres: pg_version,
        plan,
        arms: arms.iter().map(|a| (a.name, a.label.clone())).collect(),
        results,
    };
    let (md, json) = report.render();
    std::fs::create_dir_all(&opts.out)?;
    std::fs::write(opts.out.join("results.md"), &md)?;
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{md}");
    eprintln!(
        "figures written to {} and {}",
        opts.out.join("results.md").display(),
        opts.out.join("results.json").display()
    );
    Ok(())
}

/// Enough connections that the load generator never runs out at `rate` (a connection carries
/// one request at a time), without opening far more than needed.
fn connections_for(rate: u64, delay_ms: u64) -> usize {
    let in_flight = rate * (delay_ms + 10) / 1000;
    usize::try_from(in_flight * 2)
        .unwrap_or(usize::MAX)
        .clamp(16, 1024)
}

/// keybroker's histograms, summed over the arm's instances; `None` for arms without them.
async fn scrape(arm: &Arm) -> Result<Option<prom::Snapshot>> {
    if arm.metrics.is_empty() {
        return Ok(None);
    }
    let mut sum = prom::Snapshot::new();
    for base in &arm.metrics {
        for (name, buckets) in prom::scrape(base).await? {
            let into = sum.entry(name).or_default();
            for (bound, count) in buckets {
                match into.iter_mut().find(|b| b.0 == bound) {
                    Some(b) => b.1 += count,
                    None => into.push((bound, count)),
                }
            }
        }
    }
    Ok(Some(sum))
}

/// Where a PostgreSQL arm's phase started from.
struct PgStart {
    cpu: f64,
    leases: f64,
    at: std::time::Instant,
}

/// Lease round trips the arm's instances have made so far (every result).
async fn lease_requests(arm: &Arm) -> Result<f64> {
    let mut n = 0.0;
    for base in &arm.metrics {
        n += prom::counter(base, "keybroker_ceiling_lease_requests_total").await?;
    }
    Ok(n)
}

/// Before a phase of a PostgreSQL arm: its database's statement counts reset, and the server's
/// CPU time so far. `None` for the other arms.
async fn pg_begin(cluster: Option<&pg::Cluster>, arm: &Arm, ticks: f64) -> Result<Option<PgStart>> {
    match (cluster, arm.pg_db) {
        (Some(c), Some(db)) => {
            c.reset_statements(db)?;
            Ok(Some(PgStart {
                cpu: procs::cpu_seconds(&c.pids(), ticks),
                leases: lease_requests(arm).await?,
                at: std::time::Instant::now(),
            }))
        }
        _ => Ok(None),
    }
}

/// After that phase: what PostgreSQL did in it, recorded under `phase`, with `calls` the
/// proxied calls the load generator made in it.
async fn pg_end(
    cluster: Option<&pg::Cluster>,
    arm: &Arm,
    res: &mut ArmResult,
    phase: String,
    (start, calls): (Option<PgStart>, u64),
    ticks: f64,
) -> Result<()> {
    let (Some(c), Some(db), Some(start)) = (cluster, arm.pg_db, start) else {
        return Ok(());
    };
    let statements = c.statements(db)?;
    let seconds = start.at.elapsed().as_secs_f64();
    let lease_requests = lease_requests(arm).await? - start.leases;
    let server_cpu_s = procs::cpu_seconds(&c.pids(), ticks) - start.cpu;
    res.pg.insert(
        phase,
        PgPhase {
            statements,
            calls,
            seconds,
            lease_requests,
            server_cpu_s,
            top: c.top_statements(db, 6)?,
        },
    );
    Ok(())
}

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "a long bench password";

/// A keybroker's data directory (in its scratch directory).
fn data_dir(kb: &Running) -> Result<PathBuf> {
    kb.dir
        .as_ref()
        .map(|d| d.join("data"))
        .ok_or_else(|| anyhow!("keybroker has no data directory"))
}

/// The four secrets every instance on one database must share (with a database URL keybroker
/// generates none), fresh for each run: base64 of 32 random bytes each.
fn shared_secrets() -> Result<Vec<(&'static str, String)>> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut random = std::fs::File::open("/dev/urandom")?;
    let mut secrets = Vec::new();
    for name in [
        "KEYBROKER_MASTER_KEY",
        "KEYBROKER_EMAIL_PEPPER",
        "KEYBROKER_SESSION_SECRET",
        "KEYBROKER_FINGERPRINT_SECRET",
    ] {
        let mut bytes = [0u8; 32];
        random.read_exact(&mut bytes)?;
        secrets.push((
            name,
            base64::engine::general_purpose::STANDARD.encode(bytes),
        ));
    }
    Ok(secrets)
}

/// A PostgreSQL arm: `instances` keybroker processes (1 worker each, on the proxy core) on the
/// database `env` names, behind an nginx balancer (also on the proxy core, not charged to
/// keybroker) when there are several. The account is made through the first instance.
async fn pg_arm(
    opts: &Options,
    pin: &Pinning,
    (name, label, db): (&'static str, &str, &'static str),
    instances: usize,
    up_port: u16,
    env: &[(&str, String)],
) -> Result<Arm> {
    let (mut processes, mut ports, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..instances {
        let (kb, port) = procs::start_keybroker(
            &opts.keybroker,
            &format!("{name}_{i}"),
            up_port,
            Some(1),
            pin.proxy.as_deref(),
            env,
        )?;
        dirs.push(data_dir(&kb)?);
        ports.push(port);
        processes.push(kb);
    }
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let first = bases
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("{name}: no instance"))?;
    let token = setup::account(&first, &dirs, EMAIL, PASSWORD).await?;
    let (front, balancer) = if instances > 1 {
        let (nginx, port) = procs::start_nginx(
            &opts.nginx,
            &format!("{name}_balancer"),
            &ports,
            pin.proxy.as_deref(),
        )?;
        (format!("http://127.0.0.1:{port}"), Some(nginx))
    } else {
        (first, None)
    };
    Ok(Arm {
        name,
        label: label.into(),
        target: Target {
            url: format!("{front}/proxy/openai/v1/chat/completions"),
            token: Some(token),
        },
        metrics: bases,
        processes,
        _balancer: balancer,
        pg_db: Some(db),
    })
}

async fn scrape_all(arms: &[Arm]) -> Result<Vec<Option<prom::Snapshot>>> {
    let mut out = Vec::new();
    for arm in arms {
        out.push(scrape(arm).await?);
    }
    Ok(out)
}

async fn record_histograms(
    arm: &Arm,
    res: &mut ArmResult,
    phase: &'static str,
    before: Option<prom::Snapshot>,
) -> Result<()> {
    if let (Some(before), Some(after)) = (before, scrape(arm).await?) {
        res.histograms.insert(phase, prom::delta(&before, &after));
    }
    Ok(())
}

/// The next rate to probe, from the highest held and the lowest not held so far: double until
/// one fails, halve until one holds (down to 250 req/s), then bisect until the two are within
/// `tolerance` of each other. `None` when the search is over.
fn next_rate(good: Option<u64>, bad: Option<u64>, tolerance: f64) -> Option<u64> {
    match (good, bad) {
        (Some(g), None) => Some(g * 2),
        (None, Some(b)) if b <= 250 => None,
        (None, Some(b)) => Some(b / 2),
        (Some(g), Some(b)) if (b.saturating_sub(g)) as f64 <= tolerance * g as f64 => None,
        (Some(g), Some(b)) => Some((g + b) / 2),
        (None, None) => None,
    }
}

/// Did this run hold its rate: no error, p99 under the bar, and the rate actually sent?
pub fn held(rate: u64, o: &Outcome) -> bool {
    o.errors == 0 && o.p99 < HELD_P99_MS && o.rps >= 0.95 * rate as f64
}

/// The highest open-loop rate held (upstream delay 0): doubling from 2,000 req/s until a rate
/// is not held, then bisecting. Returns the rate (`None` if even the lowest probe failed) and
/// every probe.
async fn max_rate(
    oha_bin: &std::path::Path,
    pin: &Pinning,
    plan: &Plan,
    target: &Target,
) -> Result<(Option<u64>, Vec<Probe>)> {
    let (mut good, mut bad): (Option<u64>, Option<u64>) = (None, None);
    let mut rate = 2_000;
    let mut probes = Vec::new();
    for _ in 0..plan.max_probes {
        let load = Load {
            connections: connections_for(rate, 0),
            rate: Some(rate),
            duration: plan.probe,
            delay_ms: 0,
        };
        let mut outcome = oha::run(oha_bin, pin, target, load).await?;
        for _ in 0..plan.probe_retries {
            if held(rate, &outcome) {
                break;
            }
            outcome = oha::run(oha_bin, pin, target, load).await?;
        }
        let ok = held(rate, &outcome);
        eprintln!(
            "  {rate} req/s: p99 {:.2} ms, {} errors, {:.0} req/s sent: {}",
            outcome.p99,
            outcome.errors,
            outcome.rps,
            if ok { "held" } else { "not held" }
        );
        probes.push((rate, outcome));
        if ok {
            good = Some(rate);
        } else {
            bad = Some(rate);
        }
        match next_rate(good, bad, plan.search_tolerance) {
            Some(next) => rate = next,
            None => break,
        }
    }
    Ok((good, probes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_doubles_then_bisects_until_within_tolerance() {
        assert_eq!(next_rate(Some(2_000), None, 0.05), Some(4_000));
        assert_eq!(next_rate(Some(4_000), Some(8_000), 0.05), Some(6_000));
        assert_eq!(next_rate(Some(6_000), Some(6_250), 0.05), None);
    }

    #[test]
    fn search_halves_when_nothing_held_and_gives_up_at_250() {
        assert_eq!(next_rate(None, Some(2_000), 0.05), Some(1_000));
        assert_eq!(next_rate(None, Some(250), 0.05), None);
    }

    #[test]
    fn a_rate_is_held_only_without_errors_under_the_p99_bar_and_actually_sent() {
        let ok = Outcome {
            requests: 10_000,
            errors: 0,
            rps: 1_990.0,
            p50: 0.2,
            p99: 9.9,
            p999: 20.0,
        };
        assert!(held(2_000, &ok));
        assert!(!held(
            2_000,
            &Outcome {
                errors: 1,
                ..ok.clone()
            }
        ));
        assert!(!held(
            2_000,
            &Outcome {
                p99: 10.0,
                ..ok.clone()
            }
        ));
        assert!(!held(2_000, &Outcome { rps: 1_800.0, ..ok }));
    }

    #[test]
    fn connections_cover_the_requests_in_flight() {
        // 2,000 req/s at 60 ms (+10 ms margin) is 140 in flight.
        assert_eq!(connections_for(2_000, 60), 280);
        assert_eq!(connections_for(500, 0), 16);
        assert_eq!(connections_for(1_000_000, 60), 1024);
    }
}
