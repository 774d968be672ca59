//! The machine a run was made on, and the results as Markdown and JSON, with the targets of the
//! side-by-side benchmark evaluated as ratios from the same run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Map, Value};

use crate::oha::Outcome;
use crate::procs::Pinning;
use crate::sse;
use crate::upstream::{SSE_CHUNKS, SSE_GAP};
use crate::{ArmResult, Plan, HELD_P99_MS};

/// What the figures were measured on.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub rustc: String,
    pub nginx: String,
    pub oha: String,
    pub pinning: String,
    pub started_utc: String,
    pub load_at_start: String,
    pub load_at_end: String,
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            // nginx -v answers on stderr.
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    pub fn describe(nginx: &Path, oha: &Path, pin: &Pinning) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let pinning = match (&pin.load, &pin.proxy) {
            (Some(load), Some(proxy)) => format!(
                "load generator, upstream and harness on core(s) {load}; nginx and keybroker (1 worker) on core {proxy}; keybroker with default workers unpinned"
            ),
            _ => "nothing pinned (one core, or no taskset)".into(),
        };
        Self {
            cpu,
            cores: pin.cores,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned()),
            rustc: command_output("rustc", &["-V"]),
            nginx: command_output(&nginx.to_string_lossy(), &["-v"]),
            oha: crate::oha::version(oha),
            pinning,
            started_utc: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            load_at_start: load_average(),
            load_at_end: String::new(),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} × {}, kernel {}, {}, {}, {}; load average {}",
            self.cores, self.cpu, self.kernel, self.rustc, self.nginx, self.oha, self.load_at_start
        )
    }

    pub fn finish(mut self) -> Self {
        self.load_at_end = load_average();
        self
    }

    fn json(&self) -> Value {
        json!({"cpu": self.cpu, "cores": self.cores, "kernel": self.kernel, "rustc": self.rustc,
            "nginx": self.nginx, "oha": self.oha, "pinning": self.pinning, "started": self.started_utc,
            "load_average_at_start": self.load_at_start, "load_average_at_end": self.load_at_end})
    }
}

pub struct Report {
    pub machine: Machine,
    /// The PostgreSQL arms' server version, when they ran.
    pub postgres: Option<String>,
    pub plan: Plan,
    /// (name, label) per arm, in the order of `results`; the first is `direct`.
    pub arms: Vec<(&'static str, String)>,
    pub results: Vec<ArmResult>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Met,
    Missed,
    /// The run gave no figure to judge by (e.g. nginx added nothing measurable).
    Undecided,
}

impl Status {
    fn text(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "**missed**",
            Status::Undecided => "undecided",
        }
    }
}

struct Verdict {
    target: &'static str,
    figure: String,
    /// The figure over its limit (or, for the rate target, keybroker's over nginx's).
    ratio: Option<f64>,
    limit: &'static str,
    status: Status,
}

fn judge(ratio: Option<f64>, ok: impl Fn(f64) -> bool) -> Status {
    match ratio {
        Some(r) if r.is_finite() => {
            if ok(r) {
                Status::Met
            } else {
                Status::Missed
            }
        }
        _ => Status::Undecided,
    }
}

fn f3(x: f64) -> String {
    format!("{x:.3}")
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// An added figure with its sign (noise can make one negative).
fn signed(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:+.3}"))
}

const OVERHEAD: &str = "keybroker_proxy_overhead_seconds";
const FAIR_KB: &str = "keybroker_1w";
/// The PostgreSQL arms, compared with `FAIR_KB` (the SQLite arm with the same one worker).
const PG_ARMS: [&str; 2] = ["keybroker_pg_1", "keybroker_pg_2"];
/// The steady-state phase the PostgreSQL targets are judged in.
const STEADY: &str = "rate_1000_delay_0";

impl Report {
    fn get(&self, name: &str) -> Option<&ArmResult> {
        self.arms
            .iter()
            .position(|(n, _)| *n == name)
            .and_then(|i| self.results.get(i))
    }

    fn direct(&self) -> Option<&ArmResult> {
        self.get("direct")
    }

    fn added_c1(&self, r: &ArmResult) -> Option<(f64, f64, f64)> {
        let d = &self.direct()?.concurrency_1;
        let a = &r.concurrency_1;
        Some((a.p50 - d.p50, a.p99 - d.p99, a.p999 - d.p999))
    }

    fn rate_of(r: &ArmResult, delay: u64, rate: u64) -> Option<&crate::RateResult> {
        r.rates
            .iter()
            .find(|x| x.delay_ms == delay && x.rate == rate)
    }

    fn sse_added(&self, r: &ArmResult) -> Option<[f64; 4]> {
        let (d, a) = (self.direct()?.sse.as_ref()?, r.sse.as_ref()?);
        Some([
            sse::ms(&a.first_chunk, 0.5) - sse::ms(&d.first_chunk, 0.5),
            sse::ms(&a.first_chunk, 0.99) - sse::ms(&d.first_chunk, 0.99),
            sse::ms(&a.gap, 0.5) - sse::ms(&d.gap, 0.5),
            sse::ms(&a.gap, 0.99) - sse::ms(&d.gap, 0.99),
        ])
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let (kb, nginx) = (self.get(FAIR_KB), self.get("nginx"));
        let mut out = Vec::new();

        let (kb_max, ng_max) = (kb.and_then(|r| r.max_rate), nginx.and_then(|r| r.max_rate));
        let ratio = match (kb_max, ng_max) {
            (Some(k), Some(n)) if n > 0 => Some(k as f64 / n as f64),
            (None, Some(_)) => Some(0.0),
            _ => None,
        };
        let direct_max = self.direct().and_then(|r| r.max_rate);
        out.push(Verdict {
            target: "highest rate held at p99 < 10 ms, keybroker ≥ 0.7 × nginx (1 worker each)",
            figure: format!(
                "keybroker {} vs nginx {} req/s (direct: {})",
                kb_max.map_or("none".into(), |v| v.to_string()),
                ng_max.map_or("none".into(), |v| v.to_string()),
                direct_max.map_or("none".into(), |v| v.to_string()),
            ),
            ratio,
            limit: "≥ 0.7",
            status: judge(ratio, |r| r >= 0.7),
        });

        let kb_add = kb.and_then(|r| self.added_c1(r)).map(|a| a.1);
        let ng_add = nginx.and_then(|r| self.added_c1(r)).map(|a| a.1);
        let ratio = match (kb_add, ng_add) {
            (Some(k), Some(n)) if n > 0.0 => Some(k / n),
            _ => None,
        };
        out.push(Verdict {
            target: "added p99 at concurrency 1, keybroker ≤ 2 × nginx",
            figure: format!(
                "keybroker {} ms vs nginx {} ms",
                signed(kb_add),
                signed(ng_add)
            ),
            ratio,
            limit: "≤ 2",
            status: judge(ratio, |r| r <= 2.0),
        });

        let p99 = kb
            .and_then(|r| r.histograms.get("rate_1000_delay_0"))
            .and_then(|h| h.get(OVERHEAD))
            .and_then(|d| d.p99);
        let ratio = p99.map(|q| q.value.map_or(f64::INFINITY, |v| v / 100.0));
        out.push(Verdict {
            target: "in-process overhead p99 ≤ 100 µs (keybroker 1 worker, 1,000 req/s)",
            figure: p99.map_or_else(|| "not on /metrics".into(), |q| q.text()),
            ratio,
            limit: "≤ 1",
            status: match ratio {
                Some(r) if r.is_infinite() => Status::Missed,
                r => judge(r, |r| r <= 1.0),
            },
        });

        let gap = kb.and_then(|r| self.sse_added(r)).map(|a| a[3]);
        out.push(Verdict {
            target: "SSE gap between chunks added ≤ 1 ms (p99, keybroker 1 worker)",
            figure: format!("{} ms", signed(gap)),
            ratio: gap,
            limit: "≤ 1",
            status: judge(gap, |r| r <= 1.0),
        });

        let rss = ["keybroker_1w", "keybroker_default"]
            .iter()
            .filter_map(|n| self.get(n).and_then(|r| r.open_streams))
            .map(|o| o.peak_rss_mb)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let ratio = rss.map(|mb| mb / 50.0);
        out.push(Verdict {
            target: "keybroker RSS ≤ 50 MB with 512 streams open (larger of its two arms)",
            figure: format!("{} MB", opt(rss, 1)),
            ratio,
            limit: "≤ 1",
            status: judge(ratio, |r| r <= 1.0),
        });
        out.extend(self.pg_verdicts());
        out
    }

    /// Added p99 at 1,000 req/s (delay 0) over the direct arm in the same phase.
    fn added_p99_1000(&self, r: &ArmResult) -> Option<f64> {
        let d = Self::rate_of(self.direct()?, 0, 1_000)?;
        Some(Self::rate_of(r, 0, 1_000)?.outcome.p99 - d.outcome.p99)
    }

    /// Issue 21's targets for the PostgreSQL arms, and a check that the SQLite arm they are
    /// measured against was not held back by the harness (upstream and load generator).
    fn pg_verdicts(&self) -> Vec<Verdict> {
        let mut out = Vec::new();
        let present: Vec<(&str, &ArmResult)> = PG_ARMS
            .iter()
            .filter_map(|n| Some((*n, self.get(n)?)))
            .collect();
        if present.is_empty() {
            return out;
        }
        let reference = self.get(FAIR_KB);
        let ref_add = reference.and_then(|r| self.added_p99_1000(r));
        for (name, r) in &present {
            let add = self.added_p99_1000(r);
            let ratio = match (add, ref_add) {
                (Some(a), Some(s)) if s > 0.0 => Some(a / s),
                _ => None,
            };
            out.push(Verdict {
                target: if *name == "keybroker_pg_1" {
                    "added p99 at 1,000 req/s, PostgreSQL 1 instance ≤ 1.5 × SQLite (1 worker each)"
                } else {
                    "added p99 at 1,000 req/s, 2 PostgreSQL instances behind nginx ≤ 1.5 × SQLite (includes the balancer's hop)"
                },
                figure: format!(
                    "PostgreSQL {} ms vs SQLite {} ms",
                    signed(add),
                    signed(ref_add)
                ),
                ratio,
                limit: "≤ 1.5",
                status: judge(ratio, |r| r <= 1.5),
            });
        }
        for (name, r) in &present {
            let per_call = r.pg.get(STEADY).and_then(crate::PgPhase::per_call);
            let figure = r.pg.get(STEADY).map_or_else(
                || "not measured".into(),
                |p| format!("{} statements / {} calls", p.statements, p.calls),
            );
            out.push(Verdict {
                target: if *name == "keybroker_pg_1" {
                    "PostgreSQL statements per proxied call at 1,000 req/s ≤ 0.1, ceiling set (1 instance)"
                } else {
                    "PostgreSQL statements per proxied call at 1,000 req/s ≤ 0.1, ceiling set (2 instances)"
                },
                figure,
                ratio: per_call.map(|x| x / 0.1),
                limit: "≤ 1",
                status: judge(per_call, |x| x <= 0.1),
            });
        }
        // The reference is judged by what the harness alone could do in the same run: the
        // upstream called directly must hold more than the reference arm, and its own p99 at
        // 1,000 req/s must be small beside the latency the reference adds.
        let direct = self.direct();
        let (d_max, r_max) = (
            direct.and_then(|d| d.max_rate),
            reference.and_then(|r| r.max_rate),
        );
        let d_p99 = direct
            .and_then(|d| Self::rate_of(d, 0, 1_000))
            .map(|x| x.outcome.p99);
        let ratio = match (d_max, r_max) {
            (Some(d), Some(r)) if r > 0 => Some(d as f64 / r as f64),
            _ => None,
        };
        out.push(Verdict {
            target: "the SQLite reference not limited by the harness: direct arm's highest rate > the reference's",
            figure: format!(
                "direct {} vs SQLite 1 worker {} req/s; direct p99 at 1,000 req/s {} ms",
                d_max.map_or("none".into(), |v| v.to_string()),
                r_max.map_or("none".into(), |v| v.to_string()),
                opt(d_p99, 3)
            ),
            ratio,
            limit: "> 1",
            status: judge(ratio, |r| r > 1.0),
        });
        out
    }

    /// The PostgreSQL arms beside the SQLite one: latency, rate, CPU and statements per call.
    fn render_pg(&self, md: &mut String) {
        let rows: Vec<(&str, &ArmResult)> = std::iter::once(FAIR_KB)
            .chain(PG_ARMS)
            .filter_map(|n| {
                let i = self.arms.iter().position(|(a, _)| *a == n)?;
                Some((self.arms.get(i)?.1.as_str(), self.results.get(i)?))
            })
            .collect();
        if !rows.iter().any(|(_, r)| !r.pg.is_empty()) {
            return;
        }
        let _ = writeln!(
            md,
            "\n## PostgreSQL arms against the SQLite arm ({})\n\n\
             keybroker's own CPU (all instances; not the balancer's nor the database's); the \
             server's CPU (postmaster and backends) on its own; statements are \
             `pg_stat_statements` calls in the arm's database during the phase (`BEGIN`/`COMMIT` \
             count; the harness's queries run in another database), over the calls sent in it.\n",
            self.postgres.as_deref().unwrap_or("PostgreSQL")
        );
        md.push_str("| arm | added p50 / p99, concurrency 1 | added p50 / p99, 1,000 req/s | added p99 at 1,000 req/s ÷ SQLite's | highest rate held | keybroker CPU s / 1,000 req at 1,000 req/s | PostgreSQL CPU s / 1,000 req at 1,000 req/s | statements / call, concurrency 1 | statements / call, 1,000 req/s |\n|---|---|---|---|---|---|---|---|---|\n");
        let ref_add = self.get(FAIR_KB).and_then(|r| self.added_p99_1000(r));
        for (label, r) in &rows {
            let c1 = self.added_c1(r);
            let at = Self::rate_of(r, 0, 1_000);
            let d = self.direct().and_then(|d| Self::rate_of(d, 0, 1_000));
            let add = |f: fn(&Outcome) -> f64| Some(f(&at?.outcome) - f(&d?.outcome));
            let ratio = match (self.added_p99_1000(r), ref_add) {
                (Some(a), Some(s)) if s > 0.0 => Some(a / s),
                _ => None,
            };
            let steady = r.pg.get(STEADY);
            let _ = writeln!(
                md,
                "| {label} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                signed(c1.map(|a| a.0)),
                signed(c1.map(|a| a.1)),
                signed(add(|o| o.p50)),
                signed(add(|o| o.p99)),
                opt(ratio, 2),
                r.max_rate.map_or("none".into(), |v| v.to_string()),
                opt(at.and_then(|x| x.cpu_s_per_1000), 3),
                opt(
                    steady.and_then(
                        |p| (p.calls > 0).then(|| p.server_cpu_s * 1000.0 / p.calls as f64)
                    ),
                    3
                ),
                opt(
                    r.pg.get("concurrency_1").and_then(crate::PgPhase::per_call),
                    4
                ),
                opt(steady.and_then(crate::PgPhase::per_call), 4),
            );
        }
        md.push_str("\n### Statements per proxied call, every phase\n\n| arm | phase | calls | statements | per call | statements / s | lease round trips | PostgreSQL CPU s |\n|---|---|---|---|---|---|---|---|\n");
        for (label, r) in &rows {
            for (phase, p) in &r.pg {
                let _ = writeln!(
                    md,
                    "| {label} | {phase} | {} | {} | {} | {} | {} | {:.2} |",
                    p.calls,
                    p.statements,
                    opt(p.per_call(), 4),
                    opt(
                        (p.seconds > 0.0).then(|| p.statements as f64 / p.seconds),
                        0
                    ),
                    p.lease_requests,
                    p.server_cpu_s
                );
            }
        }
        md.push_str("\n### The statements run most often at 1,000 req/s (delay 0)\n\n| arm | calls | statement |\n|---|---|---|\n");
        for (label, r) in &rows {
            for (calls, query) in r.pg.get(STEADY).map_or(&[][..], |p| &p.top[..]) {
                let _ = writeln!(
                    md,
                    "| {label} | {calls} | `{}` |",
                    query.replace('|', "\\|")
                );
            }
        }
    }

    pub fn render(&self) -> (String, Value) {
        let mut md = String::new();
        let m = &self.machine;
        let p = &self.plan;
        let mode = if p.quick { "quick" } else { "full" };
        let _ = writeln!(md, "# keybroker side by side: direct, nginx, keybroker\n");
        let _ = writeln!(
            md,
            "Run {} (`bench/run.sh{}`, {mode} mode). Machine: {} × {}, kernel {}; {}; {}; {}.",
            m.started_utc,
            if p.quick { " --quick" } else { "" },
            m.cores,
            m.cpu,
            m.kernel,
            m.rustc,
            m.nginx,
            m.oha
        );
        let _ = writeln!(
            md,
            "Load average at start {}, at end {} (other work on the machine makes every figure noisy). Pinning: {}.\n",
            m.load_at_start, m.load_at_end, m.pinning
        );
        if let Some(version) = &self.postgres {
            let _ = writeln!(
                md,
                "PostgreSQL arms: {version}, the harness's own cluster (fsync and synchronous commits on, `pg_stat_statements` loaded) on the load core(s); its keybroker instances (1 worker each) and the two-instance arm's nginx balancer on the proxy core; a ceiling is set on the bench account's provider, so calls are admitted against the instance's lease.\n"
            );
        }
        let _ = writeln!(
            md,
            "Upstream: a fixed OpenAI chat completion with `usage`, delayed 0, 20 or 60 ms; SSE: {SSE_CHUNKS} chunks {} ms apart, `usage` in the last. Latencies in ms; \"added\" is the arm minus the direct arm in the same phase.\n",
            SSE_GAP.as_millis()
        );

        let verdicts = self.verdicts();
        md += "## Targets\n\n| target | figure | ratio | limit | |\n|---|---|---|---|---|\n";
        for v in &verdicts {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                v.target,
                v.figure,
                opt(v.ratio, 2),
                v.limit,
                v.status.text()
            );
        }

        md += &format!(
            "\n## Concurrency 1 (closed loop, {} s per arm, upstream delay 0)\n\n",
            p.concurrency_1.as_secs()
        );
        md += "| arm | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | requests | errors |\n|---|---|---|---|---|---|---|---|---|\n";
        for ((_, label), r) in self.arms.iter().zip(&self.results) {
            let c = &r.concurrency_1;
            let a = self.added_c1(r).unwrap_or_default();
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f3(c.p50),
                f3(c.p99),
                f3(c.p999),
                f3(a.0),
                f3(a.1),
                f3(a.2),
                c.requests,
                c.errors
            );
        }

        md += &format!(
            "\n## Open loop at fixed rates (oha `-q --latency-correction`: latency from each request's due time; {} s per arm)\n\n",
            p.rate_phase.as_secs()
        );
        md += "| delay | rate | arm | sent req/s | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | errors | proxy CPU s / 1,000 req |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for &delay in &p.delays {
            for &rate in &p.rates {
                let d = self.direct().and_then(|r| Self::rate_of(r, delay, rate));
                for ((_, label), r) in self.arms.iter().zip(&self.results) {
                    let Some(x) = Self::rate_of(r, delay, rate) else {
                        continue;
                    };
                    let o = &x.outcome;
                    let add = |f: fn(&Outcome) -> f64| d.map(|d| f(o) - f(&d.outcome));
                    let _ = writeln!(
                        md,
                        "| {delay} ms | {rate} | {label} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        o.rps,
                        f3(o.p50),
                        f3(o.p99),
                        f3(o.p999),
                        opt(add(|o| o.p50), 3),
                        opt(add(|o| o.p99), 3),
                        opt(add(|o| o.p999), 3),
                        o.errors,
                        opt(x.cpu_s_per_1000, 3)
                    );
                }
            }
        }

        md += &format!(
            "\n## Highest rate held (p99 < {HELD_P99_MS} ms, no error, ≥ 95 % of the rate sent; upstream delay 0; {} s probes, doubling from 2,000 then bisecting; a rate not held is tried {} more time(s))\n\n",
            p.probe.as_secs(),
            p.probe_retries
        );
        md +=
            "| arm | highest rate held (req/s) | probes (req/s: p99 ms, errors) |\n|---|---|---|\n";
        for ((_, label), r) in self.arms.iter().zip(&self.results) {
            let probes: Vec<String> = r
                .probes
                .iter()
                .map(|(rate, o)| format!("{rate}: {:.2}, {}", o.p99, o.errors))
                .collect();
            let _ = writeln!(
                md,
                "| {label} | {} | {} |",
                r.max_rate.map_or("none".into(), |v| v.to_string()),
                probes.join("; ")
            );
        }

        md += &format!(
            "\n## Resources (MB = 10^6 bytes; nginx counts master + worker)\n\n| arm | CPU s / 1,000 req at 1,000 req/s, delay 0 | peak RSS over the run (VmHWM) | RSS before / peak with {} streams open (VmRSS) | those streams completed / failed |\n|---|---|---|---|---|\n",
            p.open_streams
        );
        for ((name, label), r) in self.arms.iter().zip(&self.results) {
            if *name == "direct" {
                continue;
            }
            let o = r.open_streams;
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} / {} | {} / {} |",
                opt(Self::rate_of(r, 0, 1_000).and_then(|x| x.cpu_s_per_1000), 3),
                opt(r.peak_rss_mb, 1),
                opt(o.map(|o| o.rss_before_mb), 1),
                opt(o.map(|o| o.peak_rss_mb), 1),
                o.map_or(0, |o| o.completed),
                o.map_or(0, |o| o.failed),
            );
        }

        md += &format!(
            "\n## SSE ({} streams at a time, {} round(s); measured by the harness's own client)\n\n\
             Each arm first gets one stream on its own, after the highest-rate probes and a pause \
             longer than the upstream's 5 s idle timeout: its time to first chunk (\"after idle\") \
             includes closing the pooled connections the upstream dropped meanwhile.\n\n",
            p.sse_concurrency, p.sse_rounds
        );
        md += "| arm | after idle | first chunk p50 | p99 | added p50 | added p99 | gap p50 | gap p99 | gap max | added gap p50 | added gap p99 | streams / failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for ((_, label), r) in self.arms.iter().zip(&self.results) {
            let Some(s) = &r.sse else { continue };
            let a = self.sse_added(r).unwrap_or_default();
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                r.first_chunk_after_idle_ms.map_or("–".into(), f3),
                f3(sse::ms(&s.first_chunk, 0.5)),
                f3(sse::ms(&s.first_chunk, 0.99)),
                f3(a[0]),
                f3(a[1]),
                f3(sse::ms(&s.gap, 0.5)),
                f3(sse::ms(&s.gap, 0.99)),
                f3(sse::ms(&s.gap, 1.0)),
                f3(a[2]),
                f3(a[3]),
                s.completed,
                s.errors
            );
        }

        self.render_pg(&mut md);

        md += "\n## keybroker's own histograms (`/metrics`, interpolated linearly inside the bucket named)\n\n";
        md += "| arm | phase | histogram | count | p50 | p99 |\n|---|---|---|---|---|---|\n";
        for ((_, label), r) in self.arms.iter().zip(&self.results) {
            for (phase, hists) in &r.histograms {
                for (name, d) in hists {
                    let q = |q: Option<crate::prom::Quantile>| q.map_or("–".into(), |q| q.text());
                    let _ = writeln!(
                        md,
                        "| {label} | {phase} | `{name}` | {} | {} | {} |",
                        d.count,
                        q(d.p50),
                        q(d.p99)
                    );
                }
            }
        }

        (md, self.json(&verdicts))
    }

    fn json(&self, verdicts: &[Verdict]) -> Value {
        let p = &self.plan;
        let mut arms = Map::new();
        for ((name, label), r) in self.arms.iter().zip(&self.results) {
            let c1 = self.added_c1(r);
            let rates: Vec<Value> = r
                .rates
                .iter()
                .map(|x| {
                    json!({"delay_ms": x.delay_ms, "rate": x.rate, "outcome": x.outcome.json(),
                        "cpu_s_per_1000_requests": x.cpu_s_per_1000})
                })
                .collect();
            let hist: Map<String, Value> = r
                .histograms
                .iter()
                .map(|(phase, h)| {
                    (
                        (*phase).to_owned(),
                        Value::Object(h.iter().map(|(n, d)| (n.clone(), d.json())).collect()),
                    )
                })
                .collect();
            arms.insert(
                (*name).to_owned(),
                json!({
                    "label": label,
                    "concurrency_1": r.concurrency_1.json(),
                    "concurrency_1_added_ms": c1.map(|a| json!({"p50": a.0, "p99": a.1, "p999": a.2})),
                    "fixed_rates": rates,
                    "max_rate_held": r.max_rate,
                    "max_rate_probes": r.probes.iter().map(|(rate, o)| json!({"rate": rate, "outcome": o.json()})).collect::<Vec<_>>(),
                    "sse": r.sse.as_ref().map(sse::Streams::json),
                    "sse_first_chunk_after_idle_ms": r.first_chunk_after_idle_ms,
                    "sse_added_ms": self.sse_added(r).map(|a| json!({"first_chunk_p50": a[0], "first_chunk_p99": a[1], "gap_p50": a[2], "gap_p99": a[3]})),
                    "open_streams": r.open_streams.map(|o| json!({"count": p.open_streams, "completed": o.completed, "failed": o.failed, "rss_before_mb": o.rss_before_mb, "peak_rss_mb": o.peak_rss_mb})),
                    "peak_rss_mb": r.peak_rss_mb,
                    "histograms_us": hist,
                    "postgres": r.pg.iter().map(|(phase, p)| (phase.clone(), json!({
                        "calls": p.calls, "statements": p.statements, "seconds": p.seconds, "lease_requests": p.lease_requests,
                        "statements_per_call": p.per_call(), "server_cpu_s": p.server_cpu_s,
                        "top_statements": p.top.iter().map(|(c, q)| json!({"calls": c, "query": q})).collect::<Vec<_>>(),
                    }))).collect::<Map<String, Value>>(),
                }),
            );
        }
        let targets: Vec<Value> = verdicts
            .iter()
            .map(|v| {
                json!({"target": v.target, "figure": v.figure, "ratio": v.ratio.filter(|r| r.is_finite()),
                    "limit": v.limit, "status": match v.status { Status::Met => "met", Status::Missed => "missed", Status::Undecided => "undecided" }})
            })
            .collect();
        json!({
            "machine": self.machine.json(),
            "postgres": self.postgres,
            "command": if p.quick { "bench/run.sh --quick" } else { "bench/run.sh" },
            "plan": {"mode": if p.quick { "quick" } else { "full" }, "concurrency_1_s": p.concurrency_1.as_secs(),
                "rate_phase_s": p.rate_phase.as_secs(), "rates": p.rates, "delays_ms": p.delays,
                "probe_s": p.probe.as_secs(), "probe_retries": p.probe_retries, "held_p99_ms": HELD_P99_MS, "sse_concurrency": p.sse_concurrency,
                "sse_rounds": p.sse_rounds, "open_streams": p.open_streams,
                "sse_chunks": SSE_CHUNKS, "sse_gap_ms": SSE_GAP.as_millis() as u64},
            "arms": arms,
            "targets": targets,
        })
    }
}
