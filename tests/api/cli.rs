//! The real `keybroker` binary: first start with embedded defaults, refusals on bad
//! configuration, and master-key rotation with `rewrap` and `master-key retire`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keybroker::keys::store;
use keybroker::vault::{Keyring, MasterKeyId, Vault};
use rusqlite::Connection;
use sha2::Digest;
use zeroize::Zeroizing;

use crate::helpers::{random_b64, TestApp};

/// The binary with no KEYBROKER_* variables inherited from the developer's shell.
pub fn keybroker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keybroker"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYBROKER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("KEYBROKER_LOG", "info");
    cmd
}

pub struct Running {
    pub child: Child,
    pub port: u16,
    /// The `--metrics-bind` listener's port, from the same line.
    pub metrics_port: Option<u16>,
}

/// A test that fails half-way must not leave its server running: the process is killed (and
/// reaped) when the `Running` goes, whatever happened before.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` on port 0 and waits for the line that reports the port. On early exit,
/// returns everything it wrote to stderr.
pub fn serve(data_dir: &Path, env: &[(&str, &str)]) -> Result<Running, String> {
    serve_on("127.0.0.1:0", data_dir, env)
}

/// [`serve`] on a given address (a restart on the port the last run had).
pub fn serve_on(bind: &str, data_dir: &Path, env: &[(&str, &str)]) -> Result<Running, String> {
    let mut child = keybroker()
        .args(["serve", "--bind", bind, "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keybroker");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                if let Some(port) = line
                    .split("port=")
                    .nth(1)
                    .and_then(|p| p.split_whitespace().next())
                {
                    if line.contains("keybroker listening") {
                        let metrics_port = line
                            .split("metrics_port=Some(")
                            .nth(1)
                            .and_then(|p| p.split(')').next())
                            .and_then(|p| p.parse().ok());
                        return Ok(Running {
                            child,
                            port: port.parse().expect("port"),
                            metrics_port,
                        });
                    }
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                return Err(seen);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Up but never said so (or hung): don't leave it running.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no 'keybroker listening' line within 30 s; stderr so far:\n{seen}"
                ));
            }
        }
    }
}

/// What must survive a refused start: schema version, schema, and the canary (by hash).
fn snapshot(db: &Path) -> (i64, Vec<String>, String) {
    let conn = Connection::open(db).unwrap();
    let version = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let schema = conn
        .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        .unwrap()
        .query_map((), |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let canary: Vec<u8> = conn
        .query_row("SELECT blob FROM vault_canary", [], |r| r.get(0))
        .unwrap();
    (version, schema, hex::encode(sha2::Sha256::digest(canary)))
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

pub fn stop(mut r: Running) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .expect("kill");
    r.child.wait().expect("wait")
}

#[test]
fn serve_on_an_empty_data_dir_comes_up_in_wal_mode_and_answers_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let running = serve(&data, &[]).expect("serve starts");
    let (status, body) = http_get(running.port, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(http_get(running.port, "/readyz").0, 200);

    let conn = Connection::open(data.join("keybroker.db")).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for file in [
        "master.key",
        "email_pepper.key",
        "session_secret.key",
        "fingerprint_secret.key",
    ] {
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    assert!(stop(running).success(), "graceful exit on SIGTERM");

    // A second start reuses the generated key: the canary still decrypts.
    let again = serve(&data, &[]).expect("restarts with the generated key");
    assert_eq!(http_get(again.port, "/readyz").0, 200);
    stop(again);
}

/// The served binary allocates with jemalloc, built with the settings in `.cargo/config.toml`:
/// its background thread, which hands freed memory back to the kernel, is running (ARCHITECTURE.md,
/// "Memory"). A build without those settings would have no such thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn serve_runs_jemallocs_background_purging_thread() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve(&dir.path().join("data"), &[]).expect("serve starts");
    assert_eq!(http_get(running.port, "/healthz").0, 200);
    let pid = running.child.id();
    let names = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !names().iter().any(|n| n == "jemalloc_bg_thd") {
        assert!(
            std::time::Instant::now() < deadline,
            "no jemalloc background thread among {:?}",
            names()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(running);
}

#[test]
fn serve_refuses_to_start_with_the_wrong_master_key_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (right, wrong) = (random_b64(32), random_b64(32));
    stop(serve(&data, &[("KEYBROKER_MASTER_KEY", &right)]).expect("first start"));
    let before = snapshot(&data.join("keybroker.db"));

    let err = serve(&data, &[("KEYBROKER_MASTER_KEY", &wrong)])
        .err()
        .expect("refused");
    assert!(err.contains("canary"), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(&right));
    assert_eq!(snapshot(&data.join("keybroker.db")), before);
    stop(serve(&data, &[("KEYBROKER_MASTER_KEY", &right)]).expect("right key still works"));
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = keybroker()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_length_master_key_is_a_one_line_error_that_does_not_echo_it() {
    let dir = tempfile::tempdir().unwrap();
    let short = random_b64(31);
    let (ok, _, err) = run(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[("KEYBROKER_MASTER_KEY", &short)],
    );
    assert!(!ok);
    assert!(err.contains("exactly 32 bytes"), "{err}");
    assert!(!err.contains(&short));
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn an_unusable_data_dir_is_a_clear_error() {
    let (ok, _, err) = run(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "/proc/keybroker-cannot-exist",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.starts_with("error: data directory /proc/keybroker-cannot-exist"),
        "{err}"
    );
}

#[test]
fn master_key_generate_prints_32_random_bytes_in_base64() {
    let (ok, out, _) = run(&["master-key", "generate"], &[]);
    assert!(ok);
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, out.trim()).unwrap();
    assert_eq!(bytes.len(), 32);
    assert_ne!(run(&["master-key", "generate"], &[]).1, out);
}

#[test]
fn every_subcommand_has_help_and_the_binary_a_version() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["rewrap", "--help"],
        &["master-key", "--help"],
        &["master-key", "retire", "--help"],
    ] {
        let (ok, out, _) = run(args, &[]);
        assert!(ok && out.contains("Usage"), "{args:?}");
    }
    let (ok, out, _) = run(&["--version"], &[]);
    assert!(ok && out.starts_with("keybroker "));
}

fn ring(keys: &[(&str, &str)], active: &str) -> Vault {
    let keys = keys
        .iter()
        .map(|(id, b64)| {
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
            (MasterKeyId::parse(id).unwrap(), Zeroizing::new(bytes))
        })
        .collect();
    Vault::new(Keyring::new(keys, Some(MasterKeyId::parse(active).unwrap())).unwrap())
}

#[tokio::test]
async fn rows_under_an_old_master_key_decrypt_after_rotation_and_rewrap_moves_them_all() {
    let (k1, k2) = (random_b64(32), random_b64(32));
    let list1 = format!("k1:{k1}");
    let app = TestApp::spawn_with(|s| {
        s.secrets.master_key = None;
        s.secrets.master_keys = Some(list1.clone().into());
    })
    .await;
    let session = app.signed_up().await;
    let account_id: i64 = app
        .sql(|conn| conn.query_row("SELECT MAX(id) FROM accounts", (), |r| r.get(0)))
        .await;
    let plaintext = "sk-proj-rotation-test-0123456789abcdefghij";
    let vault = app.state.vault.clone();
    app.state
        .db
        .write(move |conn| {
            let id = store::new_key_id();
            store::insert(
                conn,
                &vault,
                &store::NewKey {
                    id: &id,
                    account_id,
                    provider: "openai",
                    label: "",
                    masked: "sk-…ghij",
                    fingerprint: "fp",
                    now: 0,
                },
                plaintext.as_bytes(),
            )
        })
        .await
        .unwrap();
    // A queued mail (due in an hour, so it is still queued when the commands run): its
    // recipient and body are two more values under key 1.
    let (vault, due) = (app.state.vault.clone(), app.state.clock.unix() + 3600);
    app.sql(move |conn| {
        let mail = keybroker::mail::Mail {
            kind: "test",
            to: "queued@example.com".to_owned(),
            subject: "queued",
            body: "a reset link".to_owned(),
        };
        keybroker::mail::insert(conn, &vault, &mail, due).unwrap();
        Ok(())
    })
    .await;
    // The sign-up's own mail is sent and deleted by now, or soon: only this one is left.
    for _ in 0..500 {
        let queued: i64 = app
            .sql(|conn| conn.query_row("SELECT COUNT(*) FROM mail_queue", (), |r| r.get(0)))
            .await;
        if queued == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Key 2 becomes active: rows sealed under key 1 still open.
    let both = ring(&[("k1", &k1), ("k2", &k2)], "k2");
    let (_, key) = app
        .sql(move |conn| Ok(store::open(conn, &both, account_id, "openai")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.expose(), plaintext.as_bytes());

    let data_dir = app.db_path().parent().unwrap().to_str().unwrap().to_owned();
    let database = app.database_args();
    let database: Vec<&str> = database.iter().map(String::as_str).collect();
    let with_database = |args: &[&'static str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", data_dir.as_str()]);
        all.extend(&database);
        all
    };
    let env = [
        ("KEYBROKER_MASTER_KEYS", format!("k1:{k1},k2:{k2}")),
        ("KEYBROKER_ACTIVE_MASTER_KEY", "k2".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, _, err) = run(&with_database(&["master-key", "retire", "k1"]), &env);
    assert!(
        !ok && err.contains("still use master key id \"k1\""),
        "{err}"
    );

    let (ok, out, err) = run(&with_database(&["rewrap", "--batch-size", "1"]), &env);
    assert!(ok, "{err}");
    assert!(out.contains("total: 5 rewrapped, 0 failed"), "{out}");
    for table in ["mail_queue (recipient)", "mail_queue (body)"] {
        assert!(
            out.contains(&format!("rewrapped 1 value(s) in {table}")),
            "{out}"
        );
    }
    let ids: Vec<String> = app
        .sql(|conn| {
            conn.prepare("SELECT master_key_id FROM vault_canary UNION ALL SELECT master_key_id FROM accounts UNION ALL SELECT master_key_id FROM provider_keys UNION ALL SELECT to_master_key_id FROM mail_queue UNION ALL SELECT body_master_key_id FROM mail_queue")?
                .query_map((), |r| r.get(0))?
                .collect()
        })
        .await;
    assert!(ids.iter().all(|id| id == "k2"), "{ids:?}");

    // Running it again is a no-op; retiring k1 is now allowed and k2 alone opens everything.
    let (ok, out, _) = run(&with_database(&["rewrap"]), &env);
    assert!(ok && out.contains("total: 0 rewrapped"), "{out}");
    let (ok, _, err) = run(&with_database(&["master-key", "retire", "k1"]), &env);
    assert!(ok, "{err}");
    let only_k2 = ring(&[("k2", &k2)], "k2");
    let (key, email, opened) = app
        .sql(move |conn| {
            Ok((
                store::open(conn, &only_k2, account_id, "openai"),
                keybroker::accounts::email_of(conn, &only_k2, account_id),
                keybroker::vault_store::open_all(conn, &only_k2),
            ))
        })
        .await;
    let opened = opened.unwrap();
    assert!(
        opened
            .iter()
            .all(|t| t.failed == 0 && (t.opened == 1 || !t.table.starts_with("mail_queue"))),
        "{opened:?}"
    );
    let (_, key) = key.unwrap().unwrap();
    assert_eq!(key.expose(), plaintext.as_bytes());
    let email = email.unwrap().unwrap();
    assert_eq!(email, session.email);
}

#[test]
fn a_database_newer_than_the_binary_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = random_b64(32);
    stop(serve(&data, &[("KEYBROKER_MASTER_KEY", &key)]).expect("first start"));
    Connection::open(data.join("keybroker.db"))
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let before = snapshot(&data.join("keybroker.db"));
    let err = serve(&data, &[("KEYBROKER_MASTER_KEY", &key)])
        .err()
        .expect("refused");
    assert!(err.contains("newer than this binary"), "{err}");
    assert_eq!(snapshot(&data.join("keybroker.db")), before);
    assert_eq!(before.0, 999);
}
