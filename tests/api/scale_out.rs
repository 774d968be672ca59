//! Several `keybroker serve` processes on one PostgreSQL database: one active, the others hot
//! standbys that take over when it dies; and the one-line refusals of a bad database URL.

use std::time::{Duration, Instant};

use crate::cli::{keybroker, serve, stop};
use crate::helpers::random_b64;
use crate::pg_cluster::PgCluster;

/// The same secrets for every instance (with a database URL none is ever generated).
fn shared_secrets() -> Vec<(&'static str, String)> {
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

#[test]
fn a_second_instance_waits_as_a_standby_and_takes_over_when_the_active_one_is_killed() {
    let url = PgCluster::shared().create_database();
    let secrets = shared_secrets();
    let env = env(&secrets, &url);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let mut a = serve(&a_dir.path().join("data"), &env).expect("the first instance starts");
    let (status, body) = get(a.port, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""backend":"postgres""#), "{body}");

    // The second instance connects, migrates nothing new, and waits: it does not listen yet.
    let b_data = b_dir.path().join("data");
    let b_env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let standby = std::thread::spawn(move || {
        let env: Vec<(&str, &str)> = b_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        serve(&b_data, &env)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !standby.is_finished(),
        "the standby must not serve while another instance is active"
    );

    // SIGKILL: no goodbye. The standby is serving within a few seconds.
    a.child.kill().expect("kill");
    let killed = Instant::now();
    let b = standby.join().unwrap().expect("the standby takes over");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(get(b.port, "/readyz").0, 200);

    // Every check passes on the database the two shared.
    let out = keybroker()
        .args(["check", "--database-url", &url])
        .envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("schema version 1"), "{stdout}");
    let out = keybroker()
        .args(["audit", "verify", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stop(b).success());
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
#[ignore = "passes alone, hangs when run inside the full suite: under investigation (issue 21 note)"]
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
    assert_eq!(calls, served, "every call the upstream served is recorded");
    assert!(
        spent > 0 && spent == usage_spend,
        "spend {spent} vs usage {usage_spend}"
    );
}
