//! SIGKILL during load, then restart: nothing committed is lost, spend is never under what the
//! clients were served, and the database is intact.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{serve, stop};
use crate::fake_upstream::{FakeUpstream, OPENAI_USAGE};
use crate::helpers::PASSWORD;
use crate::proxy::OPENAI_KEY;
use crate::remote::Remote;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_key_and_no_settled_spend() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("KEYBROKER_UPSTREAM_OPENAI", upstream.url.as_str())];
    let running = serve(&data, &env).unwrap();
    let base = format!("http://127.0.0.1:{}", running.port);

    let me = Remote::signup(&base, &data).await;
    assert_eq!(
        me.call(
            reqwest::Method::POST,
            "/api/v1/keys",
            Some(json!({"provider": "openai", "key": OPENAI_KEY}))
        )
        .await
        .status(),
        201
    );
    let ceiling = 2_000_000i64; // $2.00: far more than the load can spend
    assert_eq!(
        me.call(
            reqwest::Method::PUT,
            "/api/v1/ceilings/openai",
            Some(json!({"limit_usd": "2.00"}))
        )
        .await
        .status(),
        200
    );
    let res = me
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "load"})),
        )
        .await;
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Load from 8 clients; count the calls whose whole answer arrived.
    let stop_flag = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, token) = (
            reqwest::Client::new(),
            format!("{base}/proxy/openai/v1/chat/completions"),
            token.clone(),
        );
        let (stop_flag, completed) = (stop_flag.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop_flag.load(Ordering::Relaxed) {
                let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50});
                let Ok(res) = client.post(&url).bearer_auth(&token).json(&body).send().await else { break };
                if res.status() == 200 && res.bytes().await.is_ok() {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = running.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    stop_flag.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let mut running = running;
    let _ = running.child.wait();
    let served = completed.load(Ordering::Relaxed);
    assert!(served > 20, "the load ran ({served} calls)");

    // Restart on the same data directory.
    let again = serve(&data, &env).unwrap();
    let me = Remote {
        base: format!("http://127.0.0.1:{}", again.port),
        ..me
    };

    // The key is there and still decrypts.
    assert_eq!(
        me.call(
            reqwest::Method::POST,
            "/api/v1/auth/reauth",
            Some(json!({"password": PASSWORD}))
        )
        .await
        .status(),
        200
    );
    let keys: Value = me
        .call(reqwest::Method::GET, "/api/v1/keys", None)
        .await
        .json()
        .await
        .unwrap();
    let id = keys["keys"][0]["id"].as_str().unwrap().to_owned();
    let revealed: Value = me
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/keys/{id}/reveal"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(revealed["key"], OPENAI_KEY);

    // Every call a client received in full was charged: settled, or charged its hold at start.
    let ceilings: Value = me
        .call(reqwest::Method::GET, "/api/v1/ceilings", None)
        .await
        .json()
        .await
        .unwrap();
    let c = &ceilings["ceilings"][0];
    let spent = crate::proxy::micros(&c["spent_usd"]);
    let per_call = (OPENAI_USAGE.0 as i64 * 25 + OPENAI_USAGE.1 as i64 * 100 + 9) / 10; // gpt-4o: $2.50 / $10 per M
    assert!(
        spent >= served as i64 * per_call,
        "spent {spent} µ$ < {served} calls × {per_call} µ$"
    );
    assert!(spent <= ceiling, "spent {spent} over the ceiling");
    assert_eq!(c["reserved_usd"], "0.00");
    stop(again);

    let conn = rusqlite::Connection::open(data.join("keybroker.db")).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let holds: i64 = conn
        .query_row("SELECT COUNT(*) FROM spend_holds", [], |r| r.get(0))
        .unwrap();
    assert_eq!(holds, 0, "holds were charged at start and cleared");
}

/// The proxy answers without waiting for the spend writer: `reserve` journals each hold before
/// the call goes upstream (`spend::journal`). Here another connection holds SQLite's write lock,
/// so nothing the spend writer does can commit; the calls are still answered at once, and after a
/// SIGKILL the next start charges every one of them from the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answered_while_the_database_is_locked_are_charged_after_a_crash() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("KEYBROKER_UPSTREAM_OPENAI", upstream.url.as_str())];
    let running = serve(&data, &env).unwrap();
    let base = format!("http://127.0.0.1:{}", running.port);
    let me = Remote::signup(&base, &data).await;
    let added = me
        .call(
            reqwest::Method::POST,
            "/api/v1/keys",
            Some(json!({"provider": "openai", "key": OPENAI_KEY})),
        )
        .await;
    assert_eq!(added.status(), 201);
    let set = me
        .call(
            reqwest::Method::PUT,
            "/api/v1/ceilings/openai",
            Some(json!({"limit_usd": "2.00"})),
        )
        .await;
    assert_eq!(set.status(), 200);
    let token = me
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "locked"})),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let url = format!("{base}/proxy/openai/v1/chat/completions");
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50});
    let call = || client.post(&url).bearer_auth(&token).json(&body).send();
    // Warm the token and key caches, and let the writer commit this call.
    assert_eq!(call().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let blocker = rusqlite::Connection::open(data.join("keybroker.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut told_remaining = i64::MAX;
    let calls = 5;
    for _ in 0..calls {
        let started = std::time::Instant::now();
        let res = call().await.unwrap();
        assert_eq!(res.status(), 200);
        let remaining = res.headers()["x-keybroker-spend-remaining"]
            .to_str()
            .unwrap()
            .to_owned();
        res.bytes().await.unwrap();
        // The spend writer is stuck behind the lock (its busy timeout is 5 s): an answer that
        // waited for it would take that long.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the call waited for the spend writer"
        );
        told_remaining = told_remaining.min(crate::proxy::micros(&Value::String(remaining)));
    }
    let pid = running.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let mut running = running;
    let _ = running.child.wait();
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    let again = serve(&data, &env).unwrap();
    let me = Remote {
        base: format!("http://127.0.0.1:{}", again.port),
        ..me
    };
    let ceilings: Value = me
        .call(reqwest::Method::GET, "/api/v1/ceilings", None)
        .await
        .json()
        .await
        .unwrap();
    let c = &ceilings["ceilings"][0];
    let spent = crate::proxy::micros(&c["spent_usd"]);
    let per_call = (OPENAI_USAGE.0 as i64 * 25 + OPENAI_USAGE.1 as i64 * 100 + 9) / 10;
    assert!(
        spent >= (calls + 1) * per_call,
        "spent {spent} µ$ < {} calls × {per_call} µ$",
        calls + 1
    );
    // What the clients were told was left is never more than what is left after the crash.
    assert!(
        2_000_000 - spent <= told_remaining,
        "spent {spent} µ$, but a client was told {told_remaining} µ$ remained"
    );
    assert_eq!(c["reserved_usd"], "0.00");
    stop(again);
}
