//! Several `keybroker serve` processes on one PostgreSQL database, all serving at once and
//! sharing sessions, keys, tokens and ceilings; and the one-line refusals of a bad database URL.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::{keybroker, serve, stop, Running};
use crate::fake_upstream::FakeUpstream;
use crate::helpers::{random_b64, unique_email, Session, TestApp, PASSWORD};
use crate::pg_cluster::PgCluster;
use crate::proxy::{chat, OPENAI_KEY};

/// The same secrets for every instance (with a database URL none is ever generated).
pub fn shared_secrets() -> Vec<(&'static str, String)> {
    vec![
        ("KEYBROKER_MASTER_KEY", random_b64(32)),
        ("KEYBROKER_EMAIL_PEPPER", random_b64(32)),
        ("KEYBROKER_SESSION_SECRET", random_b64(32)),
        ("KEYBROKER_FINGERPRINT_SECRET", random_b64(32)),
    ]
}

fn env<'a>(secrets: &'a [(&'static str, String)], url: &'a str) -> Vec<(&'static str, &'a str)> {
    let mut env: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("KEYBROKER_DATABASE_URL", url));
    // The fake upstream's modes (slow, hang) are chosen by this header.
    env.push(("KEYBROKER_PROXY_FORWARD_HEADERS", "x-fake-mode"));
    env
}

/// One plain GET; `(0, "")` when nothing listens.
fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// A plain HTTP client for instances started as processes.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn base(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A session signed in through instance `port`.
async fn login(http: &reqwest::Client, port: u16, email: &str) -> Session {
    let res = http
        .post(format!("{}/api/v1/auth/login", base(port)))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "login through {port}");
    TestApp::session_from(res).await
}

fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    port: u16,
    path: &str,
    s: &Session,
) -> reqwest::RequestBuilder {
    http.request(method, format!("{}{path}", base(port)))
        .header(reqwest::header::COOKIE, &s.cookie)
        .header("X-CSRF-Token", &s.csrf)
}

async fn call(http: &reqwest::Client, port: u16, token: &str, mode: &str) -> u16 {
    let Ok(res) = http
        .post(format!("{}/proxy/openai/v1/chat/completions", base(port)))
        .bearer_auth(token)
        .header("x-fake-mode", mode)
        .json(&chat("gpt-4o-mini"))
        .send()
        .await
    else {
        return 0;
    };
    let status = res.status().as_u16();
    // The whole answer, so a call counts as served only once its body arrived.
    let body = res.text().await.unwrap_or_default();
    if status >= 500 || (status == 402 && std::env::var_os("KB_DEBUG_402").is_some()) {
        eprintln!("{port}: {status} {body}");
    }
    status
}

/// Spend recorded in the database for the account's openai pair, and what is leased of it.
fn stored_spend(cluster: &PgCluster, db: &str) -> (i64, i64) {
    let out = cluster.psql(
        db,
        "SELECT COALESCE((SELECT SUM(spent_micros) FROM spend WHERE provider = 'openai'), 0),
                COALESCE((SELECT SUM(amount_micros) FROM spend_leases WHERE provider = 'openai'), 0)",
    );
    let mut parts = out
        .trim()
        .split('|')
        .map(|p| p.trim().parse::<i64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// The same spend read twice, half a second apart (every writer has committed what it had).
fn settled_spend(cluster: &PgCluster, db: &str) -> (i64, i64) {
    let mut last = stored_spend(cluster, db);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(500));
        let now = stored_spend(cluster, db);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("spend never settled: {last:?}");
}

/// A confirmed account signed up through instance `port` (confirmed with `accounts confirm`, as
/// an operator without mail would); returns its email.
async fn sign_up(http: &reqwest::Client, port: u16, env: &[(&str, &str)]) -> String {
    let email = unique_email();
    let res = http
        .post(format!("{}/api/v1/auth/signup", base(port)))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let out = keybroker()
        .args(["accounts", "confirm", &email])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    email
}

/// `n` instances on `env`'s database, each with a data directory of its own.
fn instances(n: usize, env: &[(&str, &str)]) -> (Vec<tempfile::TempDir>, Vec<Running>, Vec<u16>) {
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let running: Vec<Running> = dirs
        .iter()
        .map(|d| serve(&d.path().join("data"), env).expect("an instance starts"))
        .collect();
    let ports = running.iter().map(|r| r.port).collect();
    (dirs, running, ports)
}

/// The OpenAI key added through instance `port`.
async fn add_openai_key(http: &reqwest::Client, port: u16, s: &Session) {
    let res = send(http, reqwest::Method::POST, port, "/api/v1/keys", s)
        .json(&json!({"provider": "openai", "key": OPENAI_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

/// A tool token made through instance `port`: (token, id).
async fn make_token(http: &reqwest::Client, port: u16, s: &Session) -> (String, String) {
    let res = send(http, reqwest::Method::POST, port, "/api/v1/tokens", s)
        .json(&json!({"name": "agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    (
        body["token"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().to_owned(),
    )
}

/// The per-token rate limit and the per-account in-flight limit are counted by each instance:
/// across two instances they admit at most twice the configured figure (the README's stated
/// bound), never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_instance_limits_admit_at_most_their_figure_times_the_instances() {
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    let upstream = FakeUpstream::start().await;
    let secrets = shared_secrets();
    let mut env = env(&secrets, &url);
    env.push(("KEYBROKER_UPSTREAM_OPENAI", &upstream.url));
    env.push(("KEYBROKER_PROXY_RATE_PER_MINUTE", "6"));
    env.push(("KEYBROKER_PROXY_MAX_IN_FLIGHT", "2"));
    let (_dirs, running, ports) = instances(2, &env);
    let http = client();
    let email = sign_up(&http, ports[0], &env).await;
    let s = login(&http, ports[1], &email).await;
    add_openai_key(&http, ports[0], &s).await;

    // Twenty quick calls with a fresh token: at most 2 × 6 a minute.
    let (quick, _) = make_token(&http, ports[1], &s).await;
    let mut ok = 0;
    for i in 0..20 {
        if call(&http, ports[i % 2], &quick, "ok").await == 200 {
            ok += 1;
        }
    }
    assert!((6..=12).contains(&ok), "{ok} admitted in a minute");

    // Ten calls that hang upstream, over both: at most 2 × 2 are let through (they stay in
    // flight until the client gives up), the others are refused at once.
    let (slow, _) = make_token(&http, ports[0], &s).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let (http, token, port) = (impatient.clone(), slow.clone(), ports[i % 2]);
            tokio::spawn(async move { call(&http, port, &token, "hang").await })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            // Let through: it hung until the client's timeout.
            0 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!((2..=4).contains(&ok), "{ok} let through at once");
    // Killed, not stopped: a stop would wait for the hung calls to drain.
    drop(running);
}

/// The warnings and errors the instances logged, for a failure's message.
fn instance_logs(dirs: &[std::path::PathBuf]) -> String {
    let mut out = String::new();
    for (i, dir) in dirs.iter().enumerate() {
        for f in std::fs::read_dir(dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            for line in text
                .lines()
                .filter(|l| {
                    (l.contains("ERROR") || l.contains("WARN")) && !l.contains("PUBLIC_URL")
                })
                .take(20)
            {
                out.push_str(&format!("\ninstance {i}: {line}"));
            }
        }
    }
    out
}

/// Three instances on one PostgreSQL database, all serving at once: a session, a key and a token
/// made through one work through the others; a revocation through one is refused by another
/// within a second; and a ceiling holds across all three under 180 concurrent calls while one
/// instance is SIGKILLed in the middle of them, its leases charged (fail closed) and its
/// restart charging what its last run left at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_sessions_keys_tokens_and_one_ceiling_through_a_kill() {
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let upstream = FakeUpstream::start().await;
    let secrets = shared_secrets();
    let mut env = env(&secrets, &url);
    env.push(("KEYBROKER_UPSTREAM_OPENAI", &upstream.url));
    // The callers retry refused calls: the per-token rate limit is not what this measures.
    env.push(("KEYBROKER_PROXY_RATE_PER_MINUTE", "1000000"));
    env.push(("KEYBROKER_PROXY_MAX_IN_FLIGHT", "1000"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let data = |i: usize| dirs[i].path().join("data");
    let mut running: Vec<Running> = (0..3)
        .map(|i| serve(&data(i), &env).expect("an instance starts"))
        .collect();
    let ports: Vec<u16> = running.iter().map(|r| r.port).collect();
    for &port in &ports {
        let (status, body) = get(port, "/readyz");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""backend":"postgres""#), "{body}");
    }
    let http = client();

    // Sign up through the first, confirm with the command line, sign in through the second.
    let email = sign_up(&http, ports[0], &env).await;
    let s = login(&http, ports[1], &email).await;

    // The session works on the third; a key added through the second is used through the first;
    // a token made through the third works through all.
    let keys = send(&http, reqwest::Method::GET, ports[2], "/api/v1/keys", &s)
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), 200);
    let res = send(&http, reqwest::Method::POST, ports[1], "/api/v1/keys", &s)
        .json(&json!({"provider": "openai", "key": OPENAI_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let made = |port: u16| make_token(&http, port, &s);
    let (token, _) = made(ports[2]).await;
    for &port in &ports {
        assert_eq!(call(&http, port, &token, "ok").await, 200, "through {port}");
    }
    assert!(upstream
        .recorder
        .calls()
        .iter()
        .all(|c| c.credentials == [format!("authorization: Bearer {OPENAI_KEY}")]));

    // Revoked through the first, refused by the second (which just used it) within a second.
    let (doomed, doomed_id) = made(ports[0]).await;
    assert_eq!(call(&http, ports[1], &doomed, "ok").await, 200);
    let res = send(
        &http,
        reqwest::Method::DELETE,
        ports[0],
        &format!("/api/v1/tokens/{doomed_id}"),
        &s,
    )
    .send()
    .await
    .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let revoked = Instant::now();
    loop {
        let status = call(&http, ports[1], &doomed, "ok").await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "still served after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after = revoked.elapsed();

    // What one call costs, then a ceiling of a hundred more of them, set through the first.
    let (spent, _) = settled_spend(cluster, &db);
    let per_call = spent / i64::try_from(upstream.recorder.count()).unwrap();
    assert!(per_call > 0);
    let limit = spent + 100 * per_call;
    let res = send(&http, reqwest::Method::PUT, ports[0], "/api/v1/ceilings/openai", &s)
        .json(&json!({"limit_usd": format!("{}.{:06}", limit / 1_000_000, limit % 1_000_000), "period": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let before = upstream.recorder.count();
    // The others hear of the new ceiling over NOTIFY (milliseconds); a call they admitted before
    // that is like a call already in flight when a ceiling is set on one instance (README).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 240 slow calls from 12 concurrent callers, spread over the three like a load balancer
    // would (a caller whose instance is gone tries the next); the second instance is SIGKILLed
    // while its calls are in flight, once spend has eaten into the ceiling.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let callers: Vec<_> = (0..12)
        .map(|_| {
            let (http, token, ports, next) =
                (http.clone(), token.clone(), ports.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= 240 {
                        return seen;
                    }
                    // Like an agent: past a dead instance to the next, and after a refusal
                    // (the ceiling is full of other calls' holds) a short pause and again, a
                    // few times, before giving up on this call.
                    let mut status = 0;
                    for attempt in 0..30 {
                        status = call(&http, ports[(i + attempt) % 3], &token, "slow").await;
                        match status {
                            0 => continue,
                            402 => tokio::time::sleep(Duration::from_millis(50)).await,
                            _ => break,
                        }
                    }
                    seen.push(status);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_id = std::fs::read_to_string(data(1).join("instance-id")).unwrap();
    // Formatted into psql's SQL below (psql -c has no bind parameters): only a bare id may pass.
    let killed_id = killed_id.trim();
    assert!(
        !killed_id.is_empty()
            && killed_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "instance-id is not a bare id: {killed_id:?}"
    );
    running[1].child.kill().unwrap();
    let _ = running[1].child.wait();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for c in callers {
        for status in c.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
        }
    }
    let served = upstream.recorder.count();
    let logs = || instance_logs(&(0..3).map(data).collect::<Vec<_>>());
    let served_cost = i64::try_from(served).unwrap() * per_call;
    assert!(
        served_cost <= limit,
        "served {served} calls ({served_cost} micros) past a ceiling of {limit}: {statuses:?}{}",
        logs()
    );
    assert!(statuses.get(&402).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(
        served - before >= 20,
        "too few served to judge: {statuses:?}"
    );

    // The killed instance comes back on the same data directory: what its last run leased is
    // charged at once; then what was recorded covers everything served, and stays within
    // what the ceiling allows.
    running[1] = serve(&data(1), &env).expect("the killed instance starts again");
    let left = cluster.psql(
        &db,
        &format!(
            "SELECT (SELECT count(*) FROM spend_leases WHERE instance_id = '{killed_id}')
                  + (SELECT count(*) FROM spend_holds WHERE instance_id = '{killed_id}')
                  + (SELECT count(*) FROM keybroker_instances WHERE id = '{killed_id}')"
        ),
    );
    assert_eq!(
        left.trim(),
        "0",
        "the restart charged and forgot its last run"
    );
    let (recorded, leased) = settled_spend(cluster, &db);
    assert!(
        recorded >= served_cost,
        "recorded {recorded} < served {served_cost}: {statuses:?}{}",
        logs()
    );
    assert!(
        recorded + leased <= limit,
        "{recorded} + {leased} vs {limit}"
    );
    // Admitting goes on through the restarted one until the ceiling (nothing was forgotten).
    let after = call(&http, running[1].port, &token, "ok").await;
    assert!(after == 200 || after == 402, "{after}");

    // Every check passes on the database the three shared; nothing secret is in a dump.
    let out = keybroker()
        .args(["check"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keybroker()
        .args(["audit", "verify"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = cluster.pg_dump(&db);
    for secret in [OPENAI_KEY, email.as_str(), token.as_str(), doomed.as_str()] {
        assert!(!dump.contains(secret), "a plaintext secret is in pg_dump");
    }
    for r in running {
        assert!(stop(r).success());
    }
    eprintln!(
        "three instances: revocation refused after {refused_after:?}; {} calls served of 240 under a ceiling of {limit} micros ({per_call} per call), recorded {recorded}: {statuses:?}",
        served - before
    );
}

/// A bad URL, a wrong password, an unreachable server, a newer schema: one clear line, a
/// non-zero exit, and the password never printed.
#[test]
fn a_bad_database_url_is_one_clear_line_and_nothing_is_touched() {
    let cluster = PgCluster::shared();
    let secrets = shared_secrets();
    let dir = tempfile::tempdir().unwrap();
    cluster.create_user("kb_wrongpw", "right-password-123");
    let wrong = cluster.url_with_password("postgres", "kb_wrongpw", "not-the-password-456");
    let cases = [
        ("mysql://kb@db/kb".to_owned(), "must start with postgres://"),
        (
            "postgres://kb@db:notaport/kb".to_owned(),
            "not a valid PostgreSQL URL",
        ),
        (wrong, "password authentication failed"),
        (
            "postgres://kb:s3cret-pw@127.0.0.1:1/kb".to_owned(),
            "cannot connect to PostgreSQL",
        ),
    ];
    for (url, expected) in cases {
        let out = keybroker()
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("KEYBROKER_DATABASE_URL", &url)
            .envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {stderr}");
        assert!(stderr.contains(expected), "{url}: {stderr}");
        for secret in ["not-the-password-456", "s3cret-pw"] {
            assert!(
                !stderr.contains(secret),
                "the password was printed: {stderr}"
            );
        }
    }

    // A database migrated by a newer keybroker: refused, and left as it was.
    let url = cluster.create_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    cluster.psql(
        &db,
        "CREATE TABLE keybroker_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
         INSERT INTO keybroker_schema VALUES (99, 0);",
    );
    let out = keybroker()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KEYBROKER_DATABASE_URL", &url)
        .envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("newer than this binary"), "{stderr}");
    let tables = cluster.psql(
        &db,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(
        tables.trim(),
        "1",
        "only the schema table the newer version made"
    );
}

/// Without every secret given, an instance on a shared database refuses to start instead of
/// generating its own (which no other instance would have).
#[test]
fn a_shared_database_needs_every_secret_given() {
    let url = PgCluster::shared().create_database();
    let dir = tempfile::tempdir().unwrap();
    let out = keybroker()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KEYBROKER_DATABASE_URL", &url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("KEYBROKER_MASTER_KEY"), "{stderr}");
    assert!(!dir.path().join("data").join("master.key").exists());
}

/// PostgreSQL killed under a running instance: calls get our clear 503 while it is down, the
/// instance recovers by itself when it is back, and every settled call's spend reaches the
/// database (the spend writer keeps the batch it could not commit and writes it again).
#[tokio::test]
async fn while_postgres_is_down_calls_get_store_unavailable_and_nothing_settled_is_lost() {
    use crate::proxy::{add_key, chat, token, OPENAI_KEY};

    let cluster = PgCluster::start();
    let url = cluster.create_database();
    let upstream = crate::fake_upstream::FakeUpstream::start().await;
    let up = upstream.url.clone();
    let pg = keybroker::db::PgSettings::parse(secrecy::SecretString::from(url)).unwrap();
    let app = crate::helpers::TestApp::spawn_with(move |s| {
        s.database = Some(pg);
        s.proxy.upstreams.insert("openai".to_owned(), up);
    })
    .await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    let call = || async {
        app.client
            .post(app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&t)
            .json(&chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(call().await.status(), 200);
    }
    app.state.proxy.writer.flush().await;
    let per_call: i64 = app
        .sql(|c| {
            c.query_row(
                "SELECT CAST(SUM(spent_micros) AS BIGINT) FROM spend",
                (),
                |r| r.get::<_, i64>(0usize),
            )
        })
        .await
        / 3;
    assert!(per_call > 0);

    cluster.kill();
    // Past the token and key caches' second: the call needs the database.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let down = call().await;
    assert_eq!(down.status(), 503);
    assert_eq!(
        down.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["error"]["type"], "store_unavailable", "{body}");
    let api = app.get("/api/v1/keys", Some(&s)).send().await.unwrap();
    assert_eq!(api.status(), 503);

    cluster.restart_same_port();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = call().await.status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: still {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.state.proxy.writer.flush().await;
    let served = i64::try_from(upstream.recorder.count()).unwrap();
    let (calls, usage_spend, spent): (i64, i64, i64) = app
        .sql(|c| {
            c.query_row(
                "SELECT CAST(SUM(u.calls) AS BIGINT), CAST(SUM(u.spend_micros) AS BIGINT),
                        (SELECT CAST(SUM(spent_micros) AS BIGINT) FROM spend)
                 FROM usage_hourly u WHERE u.provider = 'openai' AND u.refused = 0",
                (),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
        .await;
    // A call that failed on the database after its token was read (while it came back) is
    // recorded too, at no cost: every served one is.
    assert!(
        calls >= served,
        "every call the upstream served is recorded"
    );
    assert!(
        spent >= served * per_call && spent == usage_spend,
        "spend {spent} for {served} calls at {per_call}; usage {usage_spend}"
    );
}

/// A ceiling changed through one instance binds the others at once: lowered under what was
/// spent through one, the other refuses its next call (it hands back what it had leased when the
/// change is announced), and the list through either shows the spend of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ceiling_lowered_through_one_instance_binds_the_other_at_once() {
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    let upstream = FakeUpstream::start().await;
    let secrets = shared_secrets();
    let mut env = env(&secrets, &url);
    env.push(("KEYBROKER_UPSTREAM_OPENAI", &upstream.url));
    let (_dirs, running, ports) = instances(2, &env);
    let http = client();
    let email = sign_up(&http, ports[0], &env).await;
    let s = login(&http, ports[0], &email).await;
    add_openai_key(&http, ports[0], &s).await;
    let (token, _) = make_token(&http, ports[0], &s).await;
    let first = ports[0];
    let put = |limit: &'static str| {
        let (http, s) = (http.clone(), s.clone());
        async move {
            send(
                &http,
                reqwest::Method::PUT,
                first,
                "/api/v1/ceilings/openai",
                &s,
            )
            .json(&json!({"limit_usd": limit, "period": "none"}))
            .send()
            .await
            .unwrap()
            .status()
        }
    };
    assert_eq!(put("50.00").await, 200);
    // Both instances spend (and the second leases a slice of the $50).
    for i in 0..6 {
        assert_eq!(call(&http, ports[i % 2], &token, "ok").await, 200);
    }
    // Lowered through the first to a hundredth of a cent: less than one call's estimate.
    assert_eq!(put("0.0001").await, 200);
    let lowered = Instant::now();
    loop {
        let status = call(&http, ports[1], &token, "ok").await;
        if status == 402 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            lowered.elapsed() < Duration::from_secs(1),
            "the second instance still admits a second after the ceiling was lowered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The list through the second shows the spend made through both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list: Value = send(
        &http,
        reqwest::Method::GET,
        ports[1],
        "/api/v1/ceilings",
        &s,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let served = i64::try_from(upstream.recorder.count()).unwrap();
    let spent = list["ceilings"][0]["spent_usd"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let spent_micros: i64 = {
        let (whole, frac) = spent.split_once('.').unwrap_or((&spent, "0"));
        let frac = format!("{frac:0<6}");
        whole.parse::<i64>().unwrap() * 1_000_000 + frac[..6].parse::<i64>().unwrap()
    };
    assert!(spent_micros >= served * 20, "{list} after {served} calls");
    for r in running {
        assert!(stop(r).success());
    }
}
