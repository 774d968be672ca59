//! `keybroker backup`, `restore` and `check` through the real binary, beside a live server.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use rusqlite::Connection;
use serde_json::json;

use crate::cli::{keybroker, serve, stop, Running};
use crate::fake_upstream::FakeUpstream;
use crate::helpers::{contains, random_b64, read_or_empty};
use crate::key_helpers::{anthropic_key, openai_key};
use crate::remote::{proxy_chat, Remote, ServerEnv};

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with exactly `env`'s KEYBROKER_* variables.
pub fn kb(args: &[&str], env: &ServerEnv) -> Out {
    let out = keybroker()
        .args(args)
        .envs(env.pairs())
        .output()
        .expect("run keybroker");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Rows per table.
fn counts(db: &Path) -> BTreeMap<String, i64> {
    let conn = Connection::open(db).unwrap();
    keybroker::backup::table_counts(&conn)
        .unwrap()
        .into_iter()
        .collect()
}

/// The forms a key could leak in: raw, base64 (both alphabets, padded or not) and hex.
fn leak_forms(key: &str) -> Vec<Vec<u8>> {
    let b = key.as_bytes();
    vec![
        b.to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .into_bytes(),
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(b)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(b)
            .into_bytes(),
        hex::encode(b).into_bytes(),
        hex::encode_upper(b).into_bytes(),
    ]
}

/// Tables whose rows this test only ever adds.
const GROWING: &[&str] = &[
    "accounts",
    "provider_keys",
    "audit_log",
    "tool_tokens",
    "sessions",
    "vault_canary",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_is_consistent_holds_no_plaintext_and_restores_every_key() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The per-token rate limit (1,000 a minute by default) would answer part of this load 429,
    // and the sign-up limit (20 an hour per client) part of the writer's sign-ups.
    let env = ServerEnv::random()
        .with("KEYBROKER_UPSTREAM_OPENAI", &upstream.url)
        .with("KEYBROKER_UPSTREAM_ANTHROPIC", &upstream.url)
        .with("KEYBROKER_PROXY_RATE_PER_MINUTE", "1000000")
        .with("KEYBROKER_SIGNUP_REQUESTS_PER_CLIENT", "1000000");
    let running = serve(&data, &env.pairs()).unwrap();
    let base = format!("http://127.0.0.1:{}", running.port);

    let planted = Arc::new(Mutex::new(Vec::new()));
    let mut users = Vec::new();
    for _ in 0..3 {
        let me = Remote::signup(&base, &data).await;
        let key = openai_key();
        planted.lock().unwrap().push(key.clone());
        let id = me.add_key("openai", &key).await;
        let token = me.token().await;
        users.push((me, id, token));
    }
    let db = data.join("keybroker.db");
    let before = counts(&db);

    // Load: two proxy callers per account (each call reserves and settles spend), and a writer
    // that signs up accounts, adds keys and rotates the first account's key, all through the API.
    let stop_flag = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let calls = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let mut tasks = Vec::new();
    for (_, _, token) in users.iter().chain(users.iter()) {
        let (token, base, client) = (token.clone(), base.clone(), reqwest::Client::new());
        let (stop_flag, served, failed, calls) = (
            stop_flag.clone(),
            served.clone(),
            failed.clone(),
            calls.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop_flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match proxy_chat(&client, &base, &token).await {
                    Ok(res) => res.status() == 200 && res.bytes().await.is_ok(),
                    Err(_) => false,
                };
                calls.lock().unwrap().push((t, Instant::now()));
                if ok { &served } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let rounds = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop_flag, planted, base, data, rounds) = (
            stop_flag.clone(),
            planted.clone(),
            base.clone(),
            data.clone(),
            rounds.clone(),
        );
        let (rotated_id, rotator) = (
            users[0].1.clone(),
            Remote::login(&base, &users[0].0.email).await,
        );
        tokio::spawn(async move {
            let mut writes = 0u32;
            while !stop_flag.load(Ordering::Relaxed) {
                let other = Remote::signup(&base, &data).await;
                let (k1, k2, k3) = (openai_key(), anthropic_key(), openai_key());
                planted
                    .lock()
                    .unwrap()
                    .extend([k1.clone(), k2.clone(), k3.clone()]);
                other.add_key("openai", &k1).await;
                other.add_key("anthropic", &k2).await;
                let res = rotator
                    .call(
                        Method::PUT,
                        &format!("/api/v1/keys/{rotated_id}"),
                        Some(json!({"key": k3})),
                    )
                    .await;
                assert_eq!(res.status(), 200, "rotate");
                writes += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            writes
        })
    };

    // The backup starts once a write round has committed (a sign-up hashes at argon2's
    // production cost: on a loaded machine that takes a while), so it must see writes.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rounds.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no write round in a minute");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backup = dir.path().join("backups").join("kb-backup.db");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    let (b, d, e) = (backup.clone(), data.clone(), env.clone());
    let backup_started = Instant::now();
    let out = tokio::task::spawn_blocking(move || kb(&["backup", s(&b), "--data-dir", s(&d)], &e))
        .await
        .unwrap();
    let backup_ended = Instant::now();
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("integrity_check: ok"), "{}", out.stdout);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_flag.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let writes = writer.await.unwrap();
    let after = counts(&db);
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    // The slowest call that overlapped the backup process, against the slowest of the rest.
    let (mut during, mut outside) = (Duration::ZERO, Duration::ZERO);
    for (start, end) in calls.lock().unwrap().iter() {
        let slot = if *start < backup_ended && *end > backup_started {
            &mut during
        } else {
            &mut outside
        };
        *slot = (*slot).max(*end - *start);
    }
    eprintln!(
        "backup under load: {served} proxy calls, {writes} write rounds; slowest call overlapping \
         the backup {during:?}, otherwise {outside:?}; {}",
        out.stdout.lines().last().unwrap_or_default()
    );
    assert_eq!(failed, 0, "no proxy call failed during the backup");
    // A write round is a sign-up (argon2 at its production cost), two keys and a rotation: on a
    // loaded two-core machine one or two fit in the window, which is enough to prove the backup
    // ran beside committed writes.
    assert!(
        served > 50 && writes >= 1,
        "the load ran ({served} calls, {writes} writes)"
    );

    // The file: 0600, alone (no -wal/-shm beside it), no temporary left, not overwritten unasked.
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let beside: Vec<_> = std::fs::read_dir(backup.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(beside, ["kb-backup.db"]);
    let again = kb(&["backup", s(&backup), "--data-dir", s(&data)], &env);
    assert!(
        !again.ok && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );

    // A snapshot from between the start and the end of the load: every table, counts in range.
    let snap = counts(&backup);
    assert_eq!(
        snap.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for table in GROWING {
        let (lo, mid, hi) = (before[*table], snap[*table], after[*table]);
        assert!(lo <= mid && mid <= hi, "{table}: {lo} <= {mid} <= {hi}");
    }
    assert!(
        snap["provider_keys"] > before["provider_keys"],
        "the backup saw writes made under load"
    );
    let conn = Connection::open(&backup).unwrap();
    let fk: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk, 0, "no dangling row");
    drop(conn);

    // No planted key in any form.
    let bytes = read_or_empty(&backup);
    assert!(bytes.len() > 8192);
    let planted = planted.lock().unwrap().clone();
    for key in &planted {
        for form in leak_forms(key) {
            assert!(!contains(&bytes, &form), "a plaintext key is in the backup");
        }
    }

    // Restore into a fresh data directory; a server there opens every key.
    let fresh = dir.path().join("restored");
    let out = kb(&["restore", s(&backup), "--data-dir", s(&fresh)], &env);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    assert!(out.stdout.contains("ok   stored values"), "{}", out.stdout);
    assert_eq!(counts(&fresh.join("keybroker.db")), snap);
    stop(running);

    let restored = serve(&fresh, &env.pairs()).unwrap();
    let base = format!("http://127.0.0.1:{}", restored.port);
    let client = reqwest::Client::new();
    for (user, _, token) in &users {
        let me = Remote::login(&base, &user.email).await;
        for (id, _) in me.keys().await {
            let key = me.reveal(&id).await;
            assert!(planted.contains(&key), "a restored key reveals as planted");
        }
        let res = proxy_chat(&client, &base, token).await.unwrap();
        assert_eq!(res.status(), 200, "a token from before the backup works");
    }
    let check = kb(&["check", "--data-dir", s(&fresh)], &env);
    assert!(check.ok, "{}", check.stdout);
    stop(restored);
}

/// Every file in `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A server on a fresh data directory with one account holding one key.
async fn a_server_with_one_key() -> (tempfile::TempDir, ServerEnv, Running) {
    let dir = tempfile::tempdir().unwrap();
    let env = ServerEnv::random();
    let running = serve(&dir.path().join("data"), &env.pairs()).unwrap();
    let me = Remote::signup(
        &format!("http://127.0.0.1:{}", running.port),
        &dir.path().join("data"),
    )
    .await;
    me.add_key("openai", &openai_key()).await;
    (dir, env, running)
}

#[tokio::test]
async fn restore_is_refused_beside_a_server_and_with_a_wrong_master_key_and_changes_nothing() {
    let (dir, env, running) = a_server_with_one_key().await;
    let data = dir.path().join("data");
    let backup = dir.path().join("kb.backup");
    let out = kb(&["backup", s(&backup), "--data-dir", s(&data)], &env);
    assert!(out.ok, "{}", out.stderr);

    let out = kb(&["restore", s(&backup), "--data-dir", s(&data)], &env);
    assert!(!out.ok);
    assert!(out.stderr.contains("a server is running"), "{}", out.stderr);
    stop(running);

    let before = files(&data);
    let wrong = env.clone().with("KEYBROKER_MASTER_KEY", &random_b64(32));
    let out = kb(&["restore", s(&backup), "--data-dir", s(&data)], &wrong);
    assert!(!out.ok);
    assert!(out.stdout.contains("FAIL canary"), "{}", out.stdout);
    assert!(out.stderr.contains("was not touched"), "{}", out.stderr);
    assert!(!out.stdout.contains(wrong.get("KEYBROKER_MASTER_KEY")));
    assert_eq!(
        files(&data),
        before,
        "the data directory is byte for byte the same"
    );
    assert!(!std::fs::read_dir(&data).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("pre-restore")));

    // With the right key it goes through and keeps the replaced database aside.
    let out = kb(&["restore", s(&backup), "--data-dir", s(&data)], &env);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("kept in"), "{}", out.stdout);
    // The replaced database's hold journal went with it: the restored one starts without.
    assert!(!data.join("spend-journal").exists());
    let aside = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pre-restore")
        })
        .unwrap();
    assert!(aside.join("spend-journal").is_dir());
}

#[tokio::test]
async fn check_passes_beside_a_live_server_and_fails_on_a_wrong_master_key_or_a_tampered_audit_row()
{
    let (dir, env, running) = a_server_with_one_key().await;
    let data = dir.path().join("data");

    let out = kb(&["check", "--data-dir", s(&data)], &env);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let names: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ok   integrity",
            "ok   schema",
            "ok   canary",
            "ok   master key ids",
            "ok   stored values",
            "ok   email pepper",
            "ok   audit chain"
        ],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3 value(s) open"), "{}", out.stdout);

    let wrong = env.clone().with("KEYBROKER_MASTER_KEY", &random_b64(32));
    let out = kb(&["check", "--data-dir", s(&data)], &wrong);
    assert!(!out.ok);
    assert!(out.stdout.contains("FAIL canary"), "{}", out.stdout);
    assert!(out.stdout.contains("FAIL stored values"), "{}", out.stdout);
    let wrong_pepper = env.clone().with("KEYBROKER_EMAIL_PEPPER", &random_b64(32));
    let out = kb(&["check", "--data-dir", s(&data)], &wrong_pepper);
    assert!(
        !out.ok && out.stdout.contains("FAIL email pepper"),
        "{}",
        out.stdout
    );
    stop(running);

    let conn = Connection::open(data.join("keybroker.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_log_no_update;
         UPDATE audit_log SET outcome = 'denied' WHERE id = (SELECT MIN(id) FROM audit_log);",
    )
    .unwrap();
    drop(conn);
    let out = kb(&["check", "--data-dir", s(&data)], &env);
    assert!(!out.ok);
    assert!(
        out.stdout.contains("FAIL audit chain: BROKEN"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("1 check(s) failed"), "{}", out.stderr);
}

#[test]
fn backup_refuses_a_data_dir_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = kb(
        &[
            "backup",
            s(&dir.path().join("b.db")),
            "--data-dir",
            s(dir.path()),
        ],
        &ServerEnv::random(),
    );
    assert!(
        !out.ok && out.stderr.contains("no database at"),
        "{}",
        out.stderr
    );
}
