//! `keybroker copy-db`: a SQLite data directory populated through the real server, moved into an
//! empty PostgreSQL database, and served from there with the same secrets.
//!
//! These need PostgreSQL whatever backend the suite runs on (the shared test cluster), and they
//! test the move from SQLite, so they run in the suite's SQLite pass only: in the PostgreSQL pass
//! (`KEYBROKER_TEST_BACKEND=postgres`) they would do exactly the same again.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use reqwest::Method;
use serde_json::{json, Value};

use crate::backup::{kb, Out};
use crate::cli::{serve, stop};
use crate::fake_upstream::FakeUpstream;
use crate::helpers::on_postgres;
use crate::key_helpers::{anthropic_key, openai_key};
use crate::pg_cluster::PgCluster;
use crate::remote::{proxy_chat, Remote, ServerEnv};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `copy-db` from `data` into the URL held in `url_file`.
fn copy_db(data: &Path, url_file: &Path, env: &ServerEnv) -> Out {
    kb(
        &["copy-db", "--data-dir", s(data), "--to-file", s(url_file)],
        env,
    )
}

/// The URL in a file of its own (mode 0600), as an operator would keep it.
fn url_file(dir: &Path, name: &str, url: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{url}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Waits until `table` in the SQLite file at `db` has a row (mail-bound tokens are written off
/// the request's path).
async fn wait_for_a_row(db: &Path, table: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        // The name is one of this file's constants; it cannot be bound.
        let rows: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        if rows > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no row in {table}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn ceilings(me: &Remote) -> Value {
    me.call(Method::GET, "/api/v1/ceilings", None)
        .await
        .json()
        .await
        .unwrap()
}

/// Rows in the tables a second copy must not change.
fn counts(cluster: &PgCluster, url: &str) -> String {
    cluster.psql(
        url,
        "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM provider_keys), \
         (SELECT COUNT(*) FROM audit_log), (SELECT COUNT(*) FROM tool_tokens), \
         (SELECT MAX(id) FROM audit_log)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populated_sqlite_directory_moves_to_postgres_with_every_key_login_and_token_working() {
    if on_postgres() {
        return;
    }
    let cluster = PgCluster::shared();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = ServerEnv::random()
        .with("KEYBROKER_UPSTREAM_OPENAI", &upstream.url)
        .with("KEYBROKER_UPSTREAM_ANTHROPIC", &upstream.url)
        .with("KEYBROKER_PUBLIC_URL", "https://keybroker.example")
        .with("KEYBROKER_OAUTH_GITHUB_CLIENT_ID", "copy-db-test")
        .with(
            "KEYBROKER_OAUTH_GITHUB_CLIENT_SECRET",
            &crate::helpers::random_b64(16),
        );

    // Two accounts, three keys, a token each, a ceiling, a proxied call: every kind of row.
    let running = serve(&data, &env.pairs()).unwrap();
    let base = format!("http://127.0.0.1:{}", running.port);
    let (alice, bob) = (
        Remote::signup(&base, &data).await,
        Remote::signup(&base, &data).await,
    );
    let (alice_openai, alice_anthropic, bob_openai) = (openai_key(), anthropic_key(), openai_key());
    let alice_keys = [
        (alice.add_key("openai", &alice_openai).await, &alice_openai),
        (
            alice.add_key("anthropic", &alice_anthropic).await,
            &alice_anthropic,
        ),
    ];
    let bob_key = bob.add_key("openai", &bob_openai).await;
    let res = alice
        .call(
            Method::PUT,
            "/api/v1/ceilings/openai",
            Some(json!({"limit_usd": "5.00", "period": "monthly"})),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let (alice_token, bob_token) = (alice.token().await, bob.token().await);
    let client = reqwest::Client::new();
    for token in [&alice_token, &bob_token] {
        let res = proxy_chat(&client, &base, token).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let ceilings_before = ceilings(&alice).await;
    // A token scoped to one provider, a password reset asked for, a sign-up not yet confirmed.
    let res = bob
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "anthropic only", "providers": ["anthropic"]})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let scoped = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = client
        .post(format!("{base}/api/v1/auth/password-reset"))
        .json(&json!({"email": bob.email}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(
            &json!({"email": crate::helpers::unique_email(), "password": crate::helpers::PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // An OAuth sign-in started and not finished.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_redirects
        .get(format!("{base}/auth/oauth/github/start"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_redirection(), "{}", res.status());
    let db = data.join("keybroker.db");
    for table in ["password_reset_tokens", "signup_tokens"] {
        wait_for_a_row(&db, table).await;
    }

    // The target's owner must give a password: it goes in a file, never on the command line.
    let password = "copy-db-pw-1e6c";
    cluster.create_user("kb_copy_owner", password);
    let target = cluster.create_database_owned_by("kb_copy_owner", password);
    let target_file = url_file(dir.path(), "target-url", &target);

    // While the server runs, the copy is refused and the target left as it was.
    let out = copy_db(&data, &target_file, &env);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("stop it first"), "{}", out.stderr);
    assert_eq!(
        cluster
            .psql(
                &target,
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            .trim(),
        "0"
    );
    assert!(stop(running).success());
    // A mail still queued (its SMTP server was down, say): it moves sealed, and PostgreSQL sends it.
    let vault = keybroker::vault::Vault::new(
        keybroker::vault::Keyring::from_config(Some(env.get("KEYBROKER_MASTER_KEY")), None, None)
            .unwrap()
            .unwrap(),
    );
    let conn = keybroker::db::Conn::from_sqlite(rusqlite::Connection::open(&db).unwrap());
    let queued = keybroker::mail::Mail {
        kind: "test",
        to: "queued-before-the-copy@example.com".to_owned(),
        subject: "Queued before the copy",
        body: "sent from PostgreSQL".to_owned(),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    keybroker::mail::insert(&conn, &vault, &queued, now).unwrap();
    drop(conn);
    let invite = kb(
        &[
            "accounts",
            "invite",
            &crate::helpers::unique_email(),
            "--data-dir",
            s(&data),
        ],
        &env,
    );
    assert!(invite.ok, "{}{}", invite.stdout, invite.stderr);

    // A database that holds something else is refused, untouched.
    let foreign = cluster.create_database();
    cluster.psql(&foreign, "CREATE TABLE theirs (v text)");
    let out = copy_db(&data, &url_file(dir.path(), "foreign-url", &foreign), &env);
    assert!(!out.ok);
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    assert_eq!(
        cluster
            .psql(&foreign, "SELECT to_regclass('keybroker_schema') IS NULL")
            .trim(),
        "t"
    );

    // An unreachable server: one line, without the password.
    let unreachable = url_file(
        dir.path(),
        "unreachable-url",
        "postgres://kb:s3cret-pw@127.0.0.1:1/kb",
    );
    let out = copy_db(&data, &unreachable, &env);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("cannot connect to PostgreSQL at postgres://kb:***@127.0.0.1:1/kb"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret-pw"));

    let out = copy_db(&data, &target_file, &env);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    for line in [
        "copied 3 row(s) of accounts",
        "copied 3 row(s) of provider_keys",
        "copied 3 row(s) of tool_tokens",
        "copied 1 row(s) of tool_token_providers",
        "copied 1 row(s) of password_reset_tokens",
        "copied 1 row(s) of signup_tokens",
        "copied 1 row(s) of signup_invites",
        "copied 1 row(s) of oauth_states",
        "copied 1 row(s) of vault_canary",
        "copied 1 row(s) of mail_queue",
        "ok   stored values",
        "ok   canary",
        "ok   email pepper",
        "ok   audit chain",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    for printed in [&out.stdout, &out.stderr] {
        assert!(!printed.contains(password), "the password was printed");
    }

    // Served from PostgreSQL, with the same secrets and a data directory of its own.
    let pg_env = env.clone().with("KEYBROKER_DATABASE_URL", &target);
    let served = serve(&dir.path().join("pg-data"), &pg_env.pairs()).unwrap();
    let base = format!("http://127.0.0.1:{}", served.port);
    let sent = crate::mail_support::wait_for_outbox(&dir.path().join("pg-data"), 1).await;
    assert!(
        sent.iter()
            .map(|m| crate::mail_support::decode(m))
            .any(|m| m.contains("queued-before-the-copy@example.com")
                && m.contains("sent from PostgreSQL")),
        "{sent:?}"
    );
    let alice = Remote::login(&base, &alice.email).await;
    assert_eq!(
        ceilings(&alice).await,
        ceilings_before,
        "the ceiling and its spend"
    );
    for (id, key) in &alice_keys {
        assert_eq!(&alice.reveal(id).await, *key);
    }
    let bob = Remote::login(&base, &bob.email).await;
    assert_eq!(bob.reveal(&bob_key).await, bob_openai);
    for (token, key) in [(&alice_token, &alice_openai), (&bob_token, &bob_openai)] {
        let res = proxy_chat(&client, &base, token).await.unwrap();
        assert_eq!(res.status(), 200, "a token from before the copy works");
        let call = upstream.recorder.calls().pop().unwrap();
        assert!(
            call.credentials.iter().any(|c| c.contains(key.as_str())),
            "the token's account's key was injected: {:?}",
            call.credentials.len()
        );
    }
    let res = proxy_chat(&client, &base, &scoped).await.unwrap();
    assert_eq!(res.status(), 403, "the token's scope came along");
    // New rows get ids past the copied ones (the identity sequences were moved on).
    bob.add_key("anthropic", &anthropic_key()).await;
    bob.token().await;
    Remote::signup(&base, &dir.path().join("pg-data")).await;
    assert!(stop(served).success());

    let check = kb(&["check", "--database-url", &target], &env);
    assert!(check.ok, "{}{}", check.stdout, check.stderr);
    let verify = kb(&["audit", "verify", "--database-url", &target], &env);
    assert!(verify.ok, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("ok: every chain verifies"),
        "{}",
        verify.stdout
    );

    // A second copy into the database, now in use, is refused and changes nothing.
    let before = counts(cluster, &target);
    let out = copy_db(&data, &target_file, &env);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("already holds data"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains(password));
    assert_eq!(counts(cluster, &target), before);
}

#[test]
fn a_malformed_or_unreachable_target_is_one_clear_line_and_a_failure() {
    if on_postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = ServerEnv::random();
    let cases = [
        (
            "mysql://kb:s3cret-pw@db/kb",
            "--to must start with postgres://",
        ),
        (
            "postgres://kb:s3cret-pw@db:notaport/kb",
            "--to is not a valid PostgreSQL URL",
        ),
    ];
    for (url, expected) in cases {
        let out = kb(&["copy-db", "--data-dir", s(&data), "--to", url], &env);
        assert!(!out.ok);
        assert!(out.stderr.contains(expected), "{url}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(!out.stderr.contains("s3cret-pw"), "{}", out.stderr);
    }
    let out = kb(&["copy-db", "--data-dir", s(&data)], &env);
    assert!(!out.ok);
    assert!(out.stderr.contains("--to-file PATH"), "{}", out.stderr);
    // No data directory yet: nothing to copy, said as such.
    let out = kb(
        &[
            "copy-db",
            "--data-dir",
            s(&data),
            "--to",
            "postgres://kb:s3cret-pw@127.0.0.1:1/kb",
        ],
        &env,
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("no SQLite database at"),
        "{}",
        out.stderr
    );
    assert!(!data.exists(), "copy-db created the data directory");
}

/// A server killed mid-call leaves its hold to be charged at the next start: the copy is refused
/// until a start and stop of `serve` has charged it. So is a file with a table this binary does
/// not know, and one that the configured master key does not open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_holds_unknown_tables_and_a_wrong_master_key_are_refused_untouched() {
    if on_postgres() {
        return;
    }
    let cluster = PgCluster::shared();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = ServerEnv::random()
        .with("KEYBROKER_UPSTREAM_OPENAI", &upstream.url)
        .with("KEYBROKER_PROXY_FORWARD_HEADERS", "x-fake-mode");
    let running = serve(&data, &env.pairs()).unwrap();
    let base = format!("http://127.0.0.1:{}", running.port);
    let me = Remote::signup(&base, &data).await;
    me.add_key("openai", &openai_key()).await;
    let res = me
        .call(
            Method::PUT,
            "/api/v1/ceilings/openai",
            Some(json!({"limit_usd": "5.00", "period": "monthly"})),
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let token = me.token().await;

    // A call the upstream never answers, in flight when the server is SIGKILLed.
    let hanging = {
        let (base, token) = (base.clone(), token.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/proxy/openai/v1/chat/completions"))
                .bearer_auth(token)
                .header("x-fake-mode", "hang")
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}))
                .send()
                .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while upstream.recorder.count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the call never went upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut running = running;
    running.child.kill().unwrap();
    running.child.wait().unwrap();
    assert!(hanging.await.unwrap().is_err());

    let target = cluster.create_database();
    let target_file = url_file(dir.path(), "target-url", &target);
    let out = copy_db(&data, &target_file, &env);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("1 spend hold(s) left by a server that did not stop cleanly"),
        "{}",
        out.stderr
    );
    let no_tables = || {
        cluster
            .psql(
                &target,
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'",
            )
            .trim()
            .to_owned()
    };
    assert_eq!(no_tables(), "0");

    // `serve` charges the hold at its start (fail closed); then the copy goes ahead.
    let again = serve(&data, &env.pairs()).unwrap();
    let me = Remote {
        base: format!("http://127.0.0.1:{}", again.port),
        ..me
    };
    let spent = crate::proxy::micros(&ceilings(&me).await["ceilings"][0]["spent_usd"]);
    assert!(spent > 0, "the hold was charged");
    assert!(stop(again).success());

    let db = data.join("keybroker.db");
    let settled: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT spent_micros FROM spend WHERE provider = 'openai'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(settled, spent);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE added_by_hand (v TEXT)")
        .unwrap();
    let out = copy_db(&data, &target_file, &env);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("table(s) this binary does not copy (added_by_hand)"),
        "{}",
        out.stderr
    );
    assert_eq!(no_tables(), "0");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE added_by_hand")
        .unwrap();

    // Another master key than the one the file was sealed with: nothing is copied.
    let wrong_key = env
        .clone()
        .with("KEYBROKER_MASTER_KEY", &crate::helpers::random_b64(32));
    let out = copy_db(&data, &target_file, &wrong_key);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("does not pass `keybroker check` with the configured secrets"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert_eq!(no_tables(), "0");

    let out = copy_db(&data, &target_file, &env);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let copied = cluster.psql(
        &target,
        "SELECT spent_micros FROM spend WHERE provider = 'openai'",
    );
    assert_eq!(
        copied.trim(),
        spent.to_string(),
        "the charged hold was copied"
    );
}
