//! The PostgreSQL arms' database: a throwaway cluster of Debian's server binaries in a temp
//! directory on a free loopback port, with `pg_stat_statements` loaded so the statements
//! keybroker sends per proxied call can be counted. The same recipe as the tests'
//! `tests/api/pg_cluster.rs`: PostgreSQL refuses to run as root, so when the harness is root every
//! server binary runs as the `postgres` OS user through `runuser`.
//!
//! The harness's own queries (psql on the Unix socket) run in the `postgres` database and every
//! count is filtered to the arm's database, so they are never counted as keybroker's.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// Debian's server binaries: `/usr/lib/postgresql/<version>/bin`, the highest version wins.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
const TOOLS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "psql"];

/// Loopback connections as the superuser without a password: the cluster lives for one run,
/// on 127.0.0.1, in a directory only the postgres user may enter.
const PG_HBA: &str = "\
# Written by bench/src/pg.rs for one benchmark run.
local all all trust
host all all 127.0.0.1/32 trust
";

/// The server's settings beyond the defaults (durability stays as shipped: fsync and
/// synchronous commits on, as an operator would run it).
const SETTINGS: &[&str] = &[
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track=top",
    "pg_stat_statements.track_utility=on",
    "max_connections=200",
    "listen_addresses=127.0.0.1",
];

pub struct Cluster {
    bin: PathBuf,
    /// `data/` (the cluster), `log` (the server's) and the Unix socket.
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The directory holding initdb, pg_ctl, postgres and psql, if PostgreSQL is installed.
pub fn find_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            TOOLS
                .iter()
                .all(|t| bin.join(t).is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

impl Cluster {
    /// initdb, then start the server on `cores` (its backends inherit the pinning) and load
    /// `pg_stat_statements`. Stopped and removed on drop.
    pub fn start(bin: &Path, cores: Option<&str>) -> Result<Self> {
        // /tmp, not TMPDIR: the postgres user must reach it, and the socket path is short.
        let dir = PathBuf::from(format!("/tmp/kb-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let as_postgres = dir.metadata()?.uid() == 0;
        let cluster = Self {
            bin: bin.to_owned(),
            dir,
            port: free_port()?,
            as_postgres,
        };
        if as_postgres {
            run(
                Command::new("chown").arg("postgres").arg(&cluster.dir),
                "chown the cluster's directory to postgres",
            )?;
        }
        let data = cluster.dir.join("data");
        run(
            cluster
                .tool("initdb", None)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]),
            "initdb",
        )?;
        // Overwriting keeps initdb's file, so its owner stays postgres.
        std::fs::write(data.join("pg_hba.conf"), PG_HBA)?;
        let mut options = format!("-p {} -k {}", cluster.port, cluster.dir.display());
        for s in SETTINGS {
            options.push_str(" -c ");
            options.push_str(s);
        }
        let log = cluster.dir.join("log");
        run(
            cluster
                .tool("pg_ctl", cores)
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(options)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        cluster.psql("postgres", &[], "CREATE EXTENSION pg_stat_statements")?;
        Ok(cluster)
    }

    /// `SELECT version()`, for the report.
    pub fn version(&self) -> String {
        self.psql("postgres", &[], "SHOW server_version")
            .map(|v| format!("PostgreSQL {}", v.trim()))
            .unwrap_or_else(|_| "PostgreSQL (version unknown)".into())
    }

    /// A fresh, empty database `name` and the URL keybroker connects with.
    pub fn create_database(&self, name: &str) -> Result<String> {
        self.psql("postgres", &[("db", name)], r#"CREATE DATABASE :"db""#)?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// Forgets every statement counted so far in database `db`.
    pub fn reset_statements(&self, db: &str) -> Result<()> {
        self.psql(
            "postgres",
            &[("db", db)],
            "SELECT pg_stat_statements_reset(0, oid, 0) FROM pg_database WHERE datname = :'db'",
        )
        .map(drop)
    }

    /// Statements executed in database `db` since its last reset (`BEGIN` and `COMMIT` count).
    pub fn statements(&self, db: &str) -> Result<u64> {
        let out = self.psql(
            "postgres",
            &[("db", db)],
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = :'db'",
        )?;
        out.trim()
            .parse()
            .map_err(|_| anyhow!("pg_stat_statements answered {out:?}"))
    }

    /// The `n` statements run most often in `db` since its last reset: (calls, query text cut
    /// to 90 characters, whitespace folded).
    pub fn top_statements(&self, db: &str, n: usize) -> Result<Vec<(u64, String)>> {
        let out = self.psql(
            "postgres",
            &[("db", db), ("n", &n.to_string())],
            "SELECT s.calls, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 90) \
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname = :'db' ORDER BY s.calls DESC LIMIT :n",
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (calls, query) = l.split_once('|')?;
                Some((calls.parse().ok()?, query.to_owned()))
            })
            .collect())
    }

    /// The postmaster and every backend, for their CPU time.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok())
            .map_or_else(Vec::new, crate::procs::with_children)
    }

    /// psql on the Unix socket as the superuser, `sql` on stdin so `vars` are quoted by psql
    /// (`:'v'` a literal, `:"v"` an identifier); stdout unaligned, without headers.
    fn psql(&self, db: &str, vars: &[(&str, &str)], sql: &str) -> Result<String> {
        let mut cmd = self.tool("psql", None);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db]);
        for (k, v) in vars {
            cmd.arg("-v").arg(format!("{k}={v}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "psql failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A server binary, as the postgres OS user when we are root, under `taskset` for `cores`.
    fn tool(&self, name: &str, cores: Option<&str>) -> Command {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(c) = cores {
            argv.extend(["taskset".into(), "-c".into(), c.into()]);
        }
        if self.as_postgres {
            argv.extend([
                "runuser".into(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
            ]);
        }
        argv.push(self.bin.join(name).into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        // Somewhere the postgres user may enter: initdb and pg_ctl complain otherwise.
        cmd.current_dir(&self.dir);
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl", None)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "fast", "-w", "-t", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}
