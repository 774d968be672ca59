//! The processes under test: starting them (pinned with `taskset` where the machine allows),
//! stopping them, and reading what the kernel says they used (`/proc/PID/stat`, `/proc/PID/status`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Which cores the load (load generator, upstream, this process) and the proxy under test get.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// `None` when `taskset` is missing or the machine has one core: nothing is pinned.
    pub load: Option<String>,
    pub proxy: Option<String>,
    /// Every core, for the arm that runs unpinned.
    pub all: Option<String>,
    /// How many cores the load has: threads for oha and for this process.
    pub load_threads: usize,
    /// The machine's cores (counted before this process pins itself).
    pub cores: usize,
}

impl Pinning {
    /// Core 0 for the load, the last core for the proxy (core 1 on a 2-core machine).
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if cores < 2 || !taskset {
            return Self {
                load: None,
                proxy: None,
                all: None,
                load_threads: cores,
                cores,
            };
        }
        let last = cores - 1;
        Self {
            load: Some(if last > 1 {
                format!("0-{}", last - 1)
            } else {
                "0".into()
            }),
            proxy: Some(last.to_string()),
            all: Some(format!("0-{last}")),
            load_threads: last,
            cores,
        }
    }

    /// Moves this process (every thread it has) onto the load cores.
    pub fn pin_self(&self) -> Result<()> {
        if let Some(cores) = &self.load {
            let status = Command::new("taskset")
                .args(["-a", "-p", "-c", cores])
                .arg(std::process::id().to_string())
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("taskset could not pin the benchmark to cores {cores}");
            }
        }
        Ok(())
    }
}

/// `program args…`, under `taskset -c cores` when `cores` is given.
pub fn command(cores: Option<&str>, program: &Path) -> Command {
    match cores {
        Some(cores) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cores]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A child process killed (and its scratch directory removed) when dropped.
pub struct Running {
    pub child: Child,
    pub dir: Option<PathBuf>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Owns `child` (so it is stopped if it never comes up), waits for the line of `log` that
    /// says `marker` and returns the port that line names.
    fn listening(child: Child, dir: PathBuf, log: &Path, marker: &str) -> Result<(Self, u16)> {
        let mut running = Self {
            child,
            dir: Some(dir),
        };
        let line = wait_for_line(log, marker, &mut running.child)?;
        let port = port_in(&line)?;
        Ok((running, port))
    }
}

impl Drop for Running {
    /// SIGTERM first, so nginx's master takes its worker down with it (a SIGKILLed master leaves
    /// the worker running); SIGKILL if it has not exited within 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh scratch directory under the system's temp dir.
pub fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kb-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits until `file` holds a line containing `marker` and returns that line.
pub fn wait_for_line(file: &Path, marker: &str, child: &mut Child) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                return Ok(line.to_owned());
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "process exited ({status}) before saying {marker:?}; see {}",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no {marker:?} in {} after 60 s", file.display())
}

/// The `port=N` value in a log line.
pub fn port_in(line: &str) -> Result<u16> {
    line.split("port=")
        .nth(1)
        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {line:?}"))
}

/// `pid` and every process whose parent it is (nginx's master and its worker).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if stat_fields(child).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(pid)
            {
                pids.push(child);
            }
        }
    }
    pids
}

/// The fields of `/proc/PID/stat` after the command name: index 0 is the state (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second, the unit of `utime` and `stime`.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system, every thread) the processes have used so far.
pub fn cpu_seconds(pids: &[u32], ticks: f64) -> f64 {
    pids.iter()
        .filter_map(|&pid| {
            let f = stat_fields(pid)?;
            // utime and stime are fields 14 and 15.
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`), summed over the processes, in MB
/// (10^6 bytes; the kernel's kB are KiB).
pub fn status_mb(pids: &[u32], field: &str) -> f64 {
    pids.iter()
        .filter_map(|&pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = text.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .sum::<f64>()
        * 1024.0
        / 1e6
}

/// Starts the upstream (`proxy-bench upstream`) on the load cores and returns it with its port.
pub fn start_upstream(pin: &Pinning) -> Result<(Running, u16)> {
    let exe = std::env::current_exe()?;
    let dir = scratch_dir("upstream")?;
    let out = dir.join("stdout");
    let child = command(pin.load.as_deref(), &exe)
        .arg("upstream")
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the upstream")?;
    Running::listening(child, dir, &out, "listening")
}

/// nginx as a plain reverse proxy in front of `upstream_ports` (round robin when there are
/// several: the PostgreSQL arm's balancer): one worker, upstream keep-alive, `proxy_buffering
/// off`, an access log to a file; started in the foreground (not as a system service) with a
/// generated config in a scratch directory `name`, on loopback, on `cores`.
pub fn start_nginx(
    nginx: &Path,
    name: &str,
    upstream_ports: &[u16],
    cores: Option<&str>,
) -> Result<(Running, u16)> {
    let dir = scratch_dir(name)?;
    let port = free_port()?;
    let d = dir.display();
    let servers: String = upstream_ports
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p};\n"))
        .collect();
    let config = format!(
        r#"worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream bench_upstream {{
{servers}        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let log = dir.join("stderr");
    let child = command(cores, nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", nginx.display()))?;
    let mut running = Running {
        child,
        dir: Some(dir),
    };
    wait_for_port(port, &mut running.child, &log)?;
    Ok((running, port))
}

/// keybroker `serve` on loopback with its data (and logs) in a scratch directory; its stderr
/// also goes to a file. `workers` is `--workers`, `None` for its default (one per core); `env`
/// is added to its environment (the PostgreSQL arms' database URL and shared secrets).
pub fn start_keybroker(
    bin: &Path,
    name: &str,
    upstream_port: u16,
    workers: Option<usize>,
    cores: Option<&str>,
    env: &[(&str, String)],
) -> Result<(Running, u16)> {
    let dir = scratch_dir(name)?;
    let log = dir.join("stderr.log");
    let mut cmd = command(cores, bin);
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"));
    if let Some(w) = workers {
        cmd.arg("--workers").arg(w.to_string());
    }
    let child = cmd
        .env(
            "KEYBROKER_UPSTREAM_OPENAI",
            format!("http://127.0.0.1:{upstream_port}"),
        )
        .env("KEYBROKER_LOG", "info")
        .env("KEYBROKER_PROXY_RATE_PER_MINUTE", "1000000000")
        .env("KEYBROKER_PROXY_MAX_IN_FLIGHT", "1000000")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release`)",
                bin.display()
            )
        })?;
    Running::listening(child, dir, &log, "keybroker listening")
}

/// A port that was free a moment ago (for nginx, which cannot report a port 0 choice).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "nginx exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nginx did not listen on port {port} within 30 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_and_memory_of_a_live_process() {
        let me = std::process::id();
        // Burn a little CPU so there is something to count.
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(&[me], clock_ticks()) > 0.0);
        assert!(status_mb(&[me], "VmRSS:") > 0.1);
        assert!(status_mb(&[me], "VmHWM:") >= status_mb(&[me], "VmRSS:") * 0.5);
        assert_eq!(cpu_seconds(&[u32::MAX], 100.0), 0.0);
    }

    #[test]
    fn finds_the_port_in_a_log_line() {
        let line = "2026-11-23T19:04:00Z INFO keybroker listening addr=127.0.0.1 port=41234";
        assert_eq!(port_in(line).unwrap(), 41234);
        assert!(port_in("listening").is_err());
    }
}
