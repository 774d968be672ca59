//! Master-key rotation end to end through the real binary, the README's procedure step by step,
//! with clients calling the proxy the whole time: add a key id and make it active (graceful
//! restart), `rewrap` beside the live server, `master-key retire`, restart without the old key.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::json;

use crate::backup::kb;
use crate::cli::{serve, serve_on, stop, Running};
use crate::fake_upstream::FakeUpstream;
use crate::helpers::random_b64;
use crate::key_helpers::{anthropic_key, openai_key};
use crate::remote::{proxy_chat, Remote, ServerEnv};

/// What the client loop saw: calls answered 200; connections refused or reset with no answer
/// while a restart was under way (retried, as the providers' SDKs do); and every other outcome,
/// which is a failure.
#[derive(Default)]
struct Tally {
    served: AtomicU64,
    /// When each answered call started and ended.
    spans: Mutex<Vec<(Instant, Instant)>>,
    retried: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Set from just before SIGTERM until the new server listens.
    restarting: AtomicBool,
}

fn key_ids(db: &Path) -> BTreeSet<String> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT master_key_id FROM vault_canary UNION SELECT master_key_id FROM accounts
             UNION SELECT master_key_id FROM provider_keys",
        )
        .unwrap();
    let ids = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    ids
}

/// SIGTERM (the server stops accepting, finishes what is in flight, exits), then start again on
/// the same address with `env`. Returns the new server, how long the old one took to exit and
/// how long until the new one listened.
fn graceful_restart(
    running: Running,
    data: &Path,
    env: &ServerEnv,
    tally: &Tally,
) -> (Running, Duration, Duration) {
    let port = running.port;
    tally.restarting.store(true, Ordering::SeqCst);
    let t = Instant::now();
    assert!(stop(running).success(), "graceful exit");
    let stopped = t.elapsed();
    let again = serve_on(&format!("127.0.0.1:{port}"), data, &env.pairs()).unwrap();
    tally.restarting.store(false, Ordering::SeqCst);
    (again, stopped, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_master_key_rotates_under_traffic_and_every_key_opens_without_the_old_one() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("keybroker.db");
    let (old, new) = (random_b64(32), random_b64(32));
    let env_old = ServerEnv::random()
        .with("KEYBROKER_MASTER_KEY", &old)
        .with("KEYBROKER_UPSTREAM_OPENAI", &upstream.url);
    let running = serve(&data, &env_old.pairs()).unwrap();
    let base = format!("http://127.0.0.1:{}", running.port);

    // Accounts, each with two keys and a token, all sealed under the old key ("default").
    let mut planted = BTreeSet::new();
    let mut users = Vec::new();
    for _ in 0..12 {
        let me = Remote::signup(&base, &data).await;
        let (o, a) = (openai_key(), anthropic_key());
        me.add_key("openai", &o).await;
        me.add_key("anthropic", &a).await;
        planted.extend([o, a]);
        let token = me.token().await;
        users.push((me.email.clone(), token));
    }
    assert_eq!(key_ids(&db), BTreeSet::from(["default".to_owned()]));

    // Clients call the proxy from here to the end, each call on a new connection (so a restart
    // never finds an idle pooled connection the old server is closing).
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..2 {
        let tokens: Vec<String> = users.iter().map(|(_, t)| t.clone()).collect();
        let (tally, done, base) = (tally.clone(), done.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let mut n = i;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                let token = &tokens[n % tokens.len()];
                let started = Instant::now();
                let outcome = loop {
                    match proxy_chat(&client, &base, token).await {
                        Ok(res) => {
                            let status = res.status();
                            break match res.bytes().await {
                                Ok(_) if status == 200 => Ok(()),
                                Ok(_) => Err(format!("status {status}")),
                                Err(e) => Err(format!("body: {e:?}")),
                            };
                        }
                        Err(e)
                            if (e.is_connect() || e.is_request())
                                && tally.restarting.load(Ordering::SeqCst) =>
                        {
                            tally.retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => break Err(format!("{e:?}")),
                    }
                };
                match outcome {
                    Ok(()) => {
                        tally.spans.lock().unwrap().push((started, Instant::now()));
                        tally.served.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(what) => {
                        tally.failures.lock().unwrap().push(what);
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Add k2 to the keyring, make it active, restart gracefully. A streamed call in flight
    //    when SIGTERM arrives is finished by the old process.
    let env_both = env_old
        .clone()
        .without("KEYBROKER_MASTER_KEY")
        .with("KEYBROKER_MASTER_KEYS", &format!("default:{old},k2:{new}"))
        .with("KEYBROKER_ACTIVE_MASTER_KEY", "k2");
    let in_flight = {
        let (base, token) = (base.clone(), users[0].1.clone());
        tokio::spawn(async move {
            let res = reqwest::Client::new()
                .post(format!("{base}/proxy/openai/v1/chat/completions"))
                .bearer_auth(&token)
                .header("x-fake-mode", "slow-stream")
                .json(
                    &json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 50,
                    "messages": [{"role": "user", "content": "hi"}]}),
                )
                .send()
                .await
                .unwrap();
            (res.status(), res.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (running, exit1, gap1) = tokio::task::spawn_blocking({
        let (data, env, tally) = (data.clone(), env_both.clone(), tally.clone());
        move || graceful_restart(running, &data, &env, &tally)
    })
    .await
    .unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("[DONE]"),
        "the in-flight stream finished: {body}"
    );

    // New data is sealed under k2 at once.
    let newcomer = Remote::signup(&base, &data).await;
    let k = openai_key();
    newcomer.add_key("openai", &k).await;
    planted.insert(k);
    assert_eq!(
        key_ids(&db),
        BTreeSet::from(["default".to_owned(), "k2".to_owned()])
    );

    // 2. rewrap beside the live server, one row per transaction so it overlaps many calls.
    let data_s = data.to_str().unwrap().to_owned();
    let rewrap = tokio::task::spawn_blocking({
        let (env, data_s) = (env_both.clone(), data_s.clone());
        move || {
            let t = Instant::now();
            let out = kb(
                &["rewrap", "--data-dir", &data_s, "--batch-size", "1"],
                &env,
            );
            (out, t, Instant::now())
        }
    });
    let (out, rewrap_start, rewrap_end) = rewrap.await.unwrap();
    let rewrap_took = rewrap_end - rewrap_start;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(" 0 failed"), "{}", out.stdout);
    assert_eq!(key_ids(&db), BTreeSet::from(["k2".to_owned()]));

    // 3. Retire the old id, then restart without it.
    let out = kb(
        &["master-key", "retire", "default", "--data-dir", &data_s],
        &env_both,
    );
    assert!(out.ok, "{}", out.stderr);
    let env_new = env_both
        .clone()
        .with("KEYBROKER_MASTER_KEYS", &format!("k2:{new}"));
    let (running, exit2, gap2) = tokio::task::spawn_blocking({
        let (data, env, tally) = (data.clone(), env_new.clone(), tally.clone());
        move || graceful_restart(running, &data, &env, &tally)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    // Answered calls that were in flight while rewrap ran (the clients never pause, so some are).
    let served_during = tally
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|(start, end)| *start < rewrap_end && *end > rewrap_start)
        .count();
    assert!(served_during > 0, "calls were served while rewrap ran");
    let (served, retried, failed) = (
        tally.served.load(Ordering::Relaxed),
        tally.retried.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "rotation: {served} calls served ({served_during} while rewrap ran for {rewrap_took:?}); \
         {retried} connects refused or reset while restarting, retried (old server exited after \
         {exit1:?} / {exit2:?}, new one listening after {gap1:?} / {gap2:?}); {failed} failed"
    );
    assert_eq!(
        failed,
        0,
        "every call was answered 200: {:?}",
        tally.failures.lock().unwrap()
    );
    assert!(served > 100, "the clients ran ({served} calls)");
    // A connection reset during a restart was dropped before keybroker read its request: the
    // upstream saw exactly the answered calls (plus the streamed one), none twice.
    assert_eq!(upstream.recorder.count() as u64, served + 1);

    // Every key still opens with k2 alone: reveal, and a proxied call carries the right key.
    let mut accounts: Vec<String> = users.iter().map(|(e, _)| e.clone()).collect();
    accounts.push(newcomer.email.clone());
    for email in &accounts {
        let me = Remote::login(&base, email).await;
        for (id, _) in me.keys().await {
            assert!(planted.contains(&me.reveal(&id).await), "reveals as stored");
        }
    }
    let client = reqwest::Client::new();
    for (_, token) in &users {
        assert_eq!(
            proxy_chat(&client, &base, token).await.unwrap().status(),
            200
        );
    }
    for call in upstream.recorder.calls() {
        let sent = call.credentials.join("");
        assert!(
            planted
                .iter()
                .any(|k| sent == format!("authorization: Bearer {k}")),
            "every upstream call carried a stored key"
        );
    }
    let out = kb(&["check", "--data-dir", &data_s], &env_new);
    assert!(out.ok, "{}", out.stdout);
    // And the old key alone no longer opens anything.
    let out = kb(&["check", "--data-dir", &data_s], &env_old);
    assert!(
        !out.ok && out.stdout.contains("FAIL canary"),
        "{}",
        out.stdout
    );
    stop(running);
}
