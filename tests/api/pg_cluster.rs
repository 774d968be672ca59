//! A throwaway PostgreSQL cluster for the tests: Debian's server binaries, a temp directory, a free
//! loopback port. `PgCluster::shared()` is one cluster per test process (each test takes its own
//! database from `create_database()`); `PgCluster::start()` is a private one, for tests that kill
//! and restart the server. `PgCluster::start_tls(..)` is a private one that accepts TLS
//! connections only (`hostssl`), with the certificate the test gives.
//!
//! PostgreSQL refuses to run as root, so when the tests do (CI), every server binary runs as the
//! `postgres` OS user through `runuser`, and the temp directory is chowned to it. Authentication:
//! trust for the `postgres` superuser (and on the Unix socket), scram-sha-256 for every other role
//! over TCP, so a wrong password is refused as in production.
//!
//! A watchdog shell per cluster, holding the read end of a pipe the test process holds the write
//! end of, stops the server and removes the directory when the test process ends however it ends
//! (the shared cluster is a static, so it is never dropped).
//!
//! The admin helpers connect on the Unix socket (so they work whatever TCP demands) and run the
//! blocking `postgres` client on a thread of their own, so they may be
//! called from `#[tokio::test]`s (that client panics if it blocks on a runtime's thread).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Debian's server binaries: the highest version wins.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// What the harness runs, all taken from one directory so client and server versions match.
const TOOLS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "psql", "pg_dump"];

const PG_HBA: &str = "\
# Written by tests/api/pg_cluster.rs: trust for the superuser, passwords for everyone else.
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
";

/// [`PG_HBA`] with TCP connections refused unless they are encrypted.
const PG_HBA_TLS_ONLY: &str = "\
# Written by tests/api/pg_cluster.rs: TLS-only TCP, trust for the superuser, passwords for others.
local all all trust
hostssl all postgres 127.0.0.1/32 trust
hostssl all all 127.0.0.1/32 scram-sha-256
";

/// A server certificate and its key (PEM), for [`PgCluster::start_tls`].
pub struct ServerTls<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct PgCluster {
    /// The directory holding initdb, pg_ctl, postgres, psql and pg_dump.
    bin: PathBuf,
    /// `data/` (the cluster), `log` (the server's) and the Unix socket.
    dir: TempDir,
    port: u16,
    /// The test process is root, so the binaries run as the `postgres` OS user.
    as_postgres: bool,
    /// `ssl = on` (and only `hostssl` lines in pg_hba.conf).
    tls: bool,
    /// Stops the server and removes `dir` once its stdin (the pipe we hold) closes.
    watchdog: Mutex<Option<Child>>,
}

impl PgCluster {
    /// One cluster for the whole test process, started on first use.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(PgCluster::start)
    }

    /// A new cluster of its own, stopped and removed on drop. Panics when PostgreSQL's server
    /// binaries are missing (CI installs them: `.ci/run`).
    pub fn start() -> PgCluster {
        Self::start_with(None)
    }

    /// [`PgCluster::start`] with `ssl = on`, `tls` as the server's certificate, and TCP
    /// connections refused unless encrypted (the Unix socket stays open to the admin helpers).
    pub fn start_tls(tls: &ServerTls<'_>) -> PgCluster {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&ServerTls<'_>>) -> PgCluster {
        let bin = find_bin_dir();
        // /tmp, not TMPDIR: the postgres user must be able to reach it, and the socket's path
        // (made in it) has a limit of about 100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("kb-pg-")
            .tempdir_in("/tmp")
            .expect("a temp directory for the PostgreSQL cluster");
        // What we create is owned by our effective uid: root needs the postgres user.
        let as_postgres = dir.path().metadata().expect("stat the temp dir").uid() == 0;
        let port = free_port();
        let cluster = PgCluster {
            bin,
            dir,
            port,
            as_postgres,
            tls: tls.is_some(),
            watchdog: Mutex::new(None),
        };
        if as_postgres {
            run(
                Command::new("chown")
                    .arg("postgres")
                    .arg(cluster.dir.path()),
                "chown the cluster's temp dir to postgres",
            );
        }
        let data = cluster.data_dir();
        run(
            cluster
                .tool("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]),
            "initdb",
        );
        // Overwriting keeps initdb's file, so its owner stays postgres.
        let hba = if tls.is_some() {
            PG_HBA_TLS_ONLY
        } else {
            PG_HBA
        };
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if let Some(tls) = tls {
            cluster.write_server_cert(tls);
        }
        cluster.spawn_watchdog();
        cluster.pg_ctl_start();
        cluster
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the server's certificate (a `start_tls` cluster) and reloads the configuration,
    /// so new connections get it.
    pub fn set_server_cert(&self, tls: &ServerTls<'_>) {
        self.write_server_cert(tls);
        self.admin("SELECT pg_reload_conf()");
    }

    /// `server.crt` and `server.key` in the data directory, where `ssl = on` looks for them:
    /// owned by the server's user, the key 0600 (PostgreSQL refuses a key others may read).
    fn write_server_cert(&self, tls: &ServerTls<'_>) {
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.data_dir();
        for (name, pem) in [("server.crt", tls.cert_pem), ("server.key", tls.key_pem)] {
            let path = data.join(name);
            fs::write(&path, pem).unwrap_or_else(|e| panic!("write {name}: {e}"));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("chmod {name}: {e}"));
            if self.as_postgres {
                run(
                    Command::new("chown").arg("postgres").arg(&path),
                    "chown the server's certificate to postgres",
                );
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`: the superuser, no password (trust).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A URL for a role made by `create_user`, which must give its password (scram-sha-256).
    pub fn url_with_password(&self, db: &str, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{db}",
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    /// A fresh, empty database (`kb_<n>_<pid>`), owned by the superuser; its `url`.
    pub fn create_database(&self) -> String {
        let db = self.create_database_named();
        self.url(&db)
    }

    /// [`PgCluster::create_database`], returning the database's name instead of its URL (for a
    /// test that builds its own URL: another host name, TLS parameters).
    pub fn create_database_named(&self) -> String {
        let db = unique_name();
        self.admin(&format!("CREATE DATABASE {}", ident(&db)));
        db
    }

    /// A fresh, empty database owned by `owner` (a role from `create_user`), so the role may
    /// create tables in its `public` schema; its URL with `owner`'s credentials.
    pub fn create_database_owned_by(&self, owner: &str, password: &str) -> String {
        let db = unique_name();
        self.admin(&format!(
            "CREATE DATABASE {} OWNER {}",
            ident(&db),
            ident(owner)
        ));
        self.url_with_password(&db, owner, password)
    }

    /// A login role (not a superuser) that must authenticate with `password` over TCP.
    pub fn create_user(&self, user: &str, password: &str) {
        self.admin(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            ident(user),
            literal(password)
        ));
    }

    /// Runs `sql` with psql as the superuser and returns its stdout, unaligned and without
    /// headers (`-At`: one row a line, columns split by `|`). Panics when psql fails (it stops at
    /// the first error). `db` is a database name or a URL of this cluster.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(
            self.client("psql").args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ]),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The whole plain-text `pg_dump` of `db` (a database name or a URL of this cluster).
    pub fn pg_dump(&self, db: &str) -> String {
        let out = run(self.client("pg_dump").args(["-d", db]), "pg_dump");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server as a crash would (`pg_ctl stop -m immediate`: no checkpoint, crash
    /// recovery at the next start). Connections fail until `restart_same_port`.
    pub fn kill(&self) {
        run(
            self.pg_ctl()
                .args(["stop", "-m", "immediate", "-w", "-t", "60"]),
            "pg_ctl stop -m immediate",
        );
    }

    /// Starts the server again on the same data directory and port (after `kill`), and waits
    /// until it accepts connections.
    pub fn restart_same_port(&self) {
        self.pg_ctl_start();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server binary, run as the postgres OS user when we are root.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        // Somewhere the postgres user may enter: initdb and pg_ctl complain otherwise.
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// psql or pg_dump on the Unix socket as the superuser (URLs given as `-d` override this).
    fn client(&self, name: &str) -> Command {
        let mut cmd = self.tool(name);
        cmd.arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("-D").arg(self.data_dir());
        cmd
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k '{}' -c fsync=off -c max_connections=300 \
             -c shared_buffers=32MB -c password_encryption=scram-sha-256 -c ssl={}",
            self.port,
            self.dir.path().display(),
            if self.tls { "on" } else { "off" }
        );
        let log = self.dir.path().join("log");
        let out = self
            .pg_ctl()
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed ({}):\n{}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.wait_until_accepting();
    }

    /// The superuser on the Unix socket (libpq's key=value form), `db` its database.
    fn socket_conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.path().display(),
            self.port
        )
    }

    fn wait_until_accepting(&self) {
        let url = self.socket_conninfo("postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = off_runtime(|| {
                postgres::Client::connect(&url, postgres::NoTls)
                    .and_then(|mut client| client.simple_query("SELECT 1").map(drop))
            });
            match attempt {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "PostgreSQL on port {} never accepted connections: {}",
                        self.port,
                        describe(&e)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// One statement as the superuser on the `postgres` database.
    fn admin(&self, sql: &str) {
        let url = self.socket_conninfo("postgres");
        off_runtime(|| {
            postgres::Client::connect(&url, postgres::NoTls)
                .and_then(|mut client| client.batch_execute(sql))
        })
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    }

    /// `sh` waits for EOF on stdin, which comes when the test process has exited (the write end
    /// is ours alone: std opens pipes close-on-exec), or when `Drop` closes it; then it stops the
    /// server and removes the directory. Its own process group, so a Ctrl-C of the tests does not
    /// kill it before the server (which pg_ctl puts in a session of its own).
    fn spawn_watchdog(&self) {
        let script =
            r#"while read -r _; do :; done; "$0" -D "$1/data" stop -m immediate -w; rm -rf "$1""#;
        let mut sh = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--", "sh"]);
            cmd
        } else {
            Command::new("sh")
        };
        let child = sh
            .arg("-c")
            .arg(script)
            .arg(self.bin.join("pg_ctl"))
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn the PostgreSQL watchdog");
        *self.watchdog.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Errors ignored: the server may already be down (`kill`, or a failed start).
        let _ = self
            .pg_ctl()
            .args(["stop", "-m", "immediate", "-w", "-t", "60"])
            .output();
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = watchdog.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        // Then TempDir removes whatever the watchdog did not.
    }
}

/// The blocking client starts a runtime of its own, which panics on a thread that is driving one.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn find_bin_dir() -> PathBuf {
    let has_tools = |dir: &Path| TOOLS.iter().all(|t| dir.join(t).is_file());
    let mut debian: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(DEBIAN_ROOT)
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
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return bin;
    }
    // Elsewhere: the directory initdb is really in (Debian's psql on PATH is a wrapper script).
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .filter_map(|dir| fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| has_tools(dir));
    on_path.unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server binaries ({}) are in neither {DEBIAN_ROOT}/*/bin nor a PATH \
             directory: install Debian's `postgresql` package (.ci/run does)",
            TOOLS.join(", ")
        )
    })
}

/// A port free a moment ago (the server binds it soon after; a clash fails the start loudly).
/// A free loopback port below the kernel's ephemeral range (which starts at 32768 by default),
/// so nothing else in the test run binding port 0 can take it while a cluster is stopped for a
/// restart on the same port.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low);
    let seed =
        std::process::id() as u64 * 7919 + NEXT.fetch_add(1, Ordering::Relaxed) as u64 * 104_729;
    for i in 0..u64::from(to - from) {
        let port = from + u16::try_from((seed + i * 7) % u64::from(to - from)).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn unique_name() -> String {
    format!(
        "kb_{}_{}",
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {cmd:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The server's message too: `postgres::Error`'s Display is only "db error" for those.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(url, postgres::NoTls)
}

fn one(client: &mut postgres::Client) -> i32 {
    client.query_one("SELECT 1", &[]).unwrap().get(0)
}

#[test]
fn shared_cluster_gives_each_caller_its_own_database() {
    let cluster = PgCluster::shared();
    assert!(std::ptr::eq(cluster, PgCluster::shared()));
    let (a, b) = (cluster.create_database(), cluster.create_database());
    assert_ne!(a, b);
    let mut a_client = connect(&a).unwrap();
    let mut b_client = connect(&b).unwrap();
    assert_eq!(one(&mut a_client), 1);
    assert_eq!(one(&mut b_client), 1);

    a_client
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('only in a')")
        .unwrap();
    assert!(b_client.query("SELECT v FROM t", &[]).is_err());
    assert_eq!(cluster.psql(&a, "SELECT v FROM t"), "only in a\n");
    assert!(cluster.pg_dump(&a).contains("only in a"));
    assert!(!cluster.pg_dump(&b).contains("only in a"));
}

#[test]
fn a_wrong_password_is_refused() {
    let cluster = PgCluster::shared();
    let user = unique_name();
    let password = "it's a \"p@ss/word\"";
    cluster.create_user(&user, password);
    let url = cluster.create_database_owned_by(&user, password);
    let mut client = connect(&url).unwrap();
    client.batch_execute("CREATE TABLE mine (id int)").unwrap();
    assert_eq!(one(&mut client), 1);

    let db = url.rsplit('/').next().unwrap();
    let err = connect(&cluster.url_with_password(db, &user, "wrong"))
        .err()
        .expect("a wrong password must be refused");
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::INVALID_PASSWORD),
        "{}",
        describe(&err)
    );
    // No password at all: refused too (only the superuser is trusted).
    assert!(connect(&format!(
        "postgres://{user}@127.0.0.1:{}/{db}",
        cluster.port
    ))
    .is_err());
}

#[tokio::test]
async fn helpers_work_from_a_tokio_test() {
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    assert_eq!(cluster.psql(&url, "SELECT 40 + 2"), "42\n");
}

#[test]
fn killed_cluster_restarts_on_the_same_port_with_committed_rows() {
    let cluster = PgCluster::start();
    let url = cluster.create_database();
    let mut client = connect(&url).unwrap();
    client
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('committed')")
        .unwrap();

    cluster.kill();
    assert!(client.simple_query("SELECT 1").is_err());
    assert!(connect(&url).is_err());

    cluster.restart_same_port();
    let mut client = connect(&url).unwrap();
    let v: String = client.query_one("SELECT v FROM t", &[]).unwrap().get(0);
    assert_eq!(v, "committed");

    let dir = cluster.dir.path().to_path_buf();
    drop(client);
    drop(cluster);
    assert!(!dir.exists(), "{} outlived its cluster", dir.display());
    assert!(connect(&url).is_err());
}

#[test]
fn watchdog_stops_the_server_and_removes_the_directory_when_its_pipe_closes() {
    let cluster = PgCluster::start();
    let url = cluster.create_database();
    connect(&url).unwrap();
    let mut child = cluster.watchdog.lock().unwrap().take().unwrap();
    drop(child.stdin.take()); // what the end of the test process does
    assert!(child.wait().unwrap().success());
    assert!(connect(&url).is_err());
    assert!(!cluster.dir.path().exists());
}
