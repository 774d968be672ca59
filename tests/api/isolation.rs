//! Keys and tokens seen through the proxy: one account never reaches another's keys or tokens,
//! rotation, deletion and revocation take effect on the next call, and keys in proxied URLs are
//! refused without being logged.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybroker::tokens::{self, TokenCache};
use reqwest::Method;
use serde_json::{json, Value};

use crate::fake_upstream::Recorded;
use crate::helpers::{Session, TestApp};
use crate::key_helpers::{account_id, create_token, error_type, grant_reauth, openai_key};
use crate::proxy::{add_key, app_with_upstream, GOOGLE_KEY, OPENAI_KEY};

const MODELS: &str = "/proxy/openai/v1/models";

/// A proxied `GET /v1/models` with tool token `token`.
async fn call(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(MODELS))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// What the fake upstream saw as OpenAI's credential for `key`.
fn bearer(key: &str) -> String {
    format!("authorization: Bearer {key}")
}

fn credentials(calls: &[Recorded]) -> Vec<Vec<String>> {
    calls.iter().map(|c| c.credentials.clone()).collect()
}

/// A new tool token for `s`: `(id, token)`.
async fn new_token(app: &TestApp, s: &Session) -> (String, String) {
    let body = create_token(app, s, json!({"name": "agent"})).await;
    (
        body["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

async fn revoke_token(app: &TestApp, s: &Session, id: &str) -> reqwest::Response {
    app.send(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(s))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_token_without_its_own_key_gets_no_key_and_never_anothers() {
    let (app, upstream) = app_with_upstream().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    add_key(&app, &a, "openai", OPENAI_KEY).await;
    let (_, a_token) = new_token(&app, &a).await;
    let (_, b_token) = new_token(&app, &b).await;

    let res = call(&app, &b_token).await;
    assert_eq!(error_type(res, 424).await, "no_key");
    assert_eq!(
        upstream.recorder.count(),
        0,
        "B's call reached the upstream"
    );

    let b_key = openai_key();
    add_key(&app, &b, "openai", &b_key).await;
    assert_eq!(call(&app, &b_token).await.status(), 200);
    assert_eq!(call(&app, &a_token).await.status(), 200);
    assert_eq!(call(&app, &b_token).await.status(), 200);
    assert_eq!(
        credentials(&upstream.recorder.calls()),
        [
            vec![bearer(&b_key)],
            vec![bearer(OPENAI_KEY)],
            vec![bearer(&b_key)]
        ]
    );
}

#[tokio::test]
async fn another_accounts_key_ids_are_404_for_every_key_route_and_leave_the_key_untouched() {
    let (app, upstream) = app_with_upstream().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    let a_id = add_key(&app, &a, "openai", OPENAI_KEY).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    add_key(&app, &b, "openai", &openai_key()).await;
    // With a fresh re-auth, so a 404 cannot be a disguised 403.
    grant_reauth(&app, &b).await;
    let path = format!("/api/v1/keys/{a_id}");
    let attempts = [
        app.send(Method::POST, &format!("{path}/reveal"), Some(&b)),
        app.send(Method::PUT, &path, Some(&b))
            .json(&json!({"key": openai_key()})),
        app.send(Method::DELETE, &path, Some(&b)),
    ];
    for attempt in attempts {
        let res = attempt.send().await.unwrap();
        assert_eq!(error_type(res, 404).await, "not_found");
    }
    let listed = app
        .get("/api/v1/keys", Some(&b))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&a_id), "B's list names A's key");
    for format in ["json", "csv"] {
        let res = app
            .get(&format!("/api/v1/keys/export?format={format}"), Some(&b))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(!res.text().await.unwrap().contains(&a_id), "{format}");
    }

    // A's key is still there, unchanged, and still the one A's calls carry.
    let (_, a_token) = new_token(&app, &a).await;
    assert_eq!(call(&app, &a_token).await.status(), 200);
    assert_eq!(
        credentials(&upstream.recorder.calls()),
        [vec![bearer(OPENAI_KEY)]]
    );
}

#[tokio::test]
async fn a_token_can_be_revoked_only_by_its_own_account() {
    let (app, _upstream) = app_with_upstream().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    add_key(&app, &a, "openai", OPENAI_KEY).await;
    add_key(&app, &b, "openai", &openai_key()).await;
    let (a_token_id, a_token) = new_token(&app, &a).await;
    let (b_token_id, b_token) = new_token(&app, &b).await;

    let res = revoke_token(&app, &a, &b_token_id).await;
    assert_eq!(error_type(res, 404).await, "not_found");
    let res = revoke_token(&app, &b, &a_token_id).await;
    assert_eq!(error_type(res, 404).await, "not_found");
    let listed = app
        .get("/api/v1/tokens", Some(&b))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&a_token_id), "B's list names A's token");

    assert_eq!(call(&app, &a_token).await.status(), 200);
    assert_eq!(call(&app, &b_token).await.status(), 200);
}

/// When a proxied call started, relative to the rotation.
const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;
const PHASE_HEADER: &str = "x-test-phase";

#[tokio::test]
async fn rotating_a_key_under_load_fails_no_call_and_every_later_call_carries_the_new_key() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    let id = add_key(&app, &s, "openai", OPENAI_KEY).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, token) = new_token(&app, &s).await;
    let new_key = openai_key();

    const STREAMS: usize = 4;
    const CALLS_AFTER: usize = 15;
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let started = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (client, url, token) = (app.client.clone(), app.url(MODELS), token.clone());
        let (phase, started) = (Arc::clone(&phase), Arc::clone(&started));
        streams.push(tokio::spawn(async move {
            let (mut failures, mut after) = (Vec::new(), 0);
            while after < CALLS_AFTER {
                // Read before sending: a call tagged AFTER was sent after the PUT returned.
                let p = phase.load(Ordering::SeqCst);
                started.fetch_add(1, Ordering::SeqCst);
                let res = client
                    .get(&url)
                    .bearer_auth(&token)
                    .header(PHASE_HEADER, p.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                let body = res.text().await.unwrap();
                if status != 200 {
                    failures.push(format!("{status}: {body}"));
                }
                if p == AFTER {
                    after += 1;
                }
            }
            failures
        }));
    }
    // Let the streams get going before rotating.
    while started.load(Ordering::SeqCst) < 4 * STREAMS {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    phase.store(DURING, Ordering::SeqCst);
    let res = app
        .send(Method::PUT, &format!("/api/v1/keys/{id}"), Some(&s))
        .json(&json!({"key": new_key}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "rotate");
    phase.store(AFTER, Ordering::SeqCst);
    for stream in streams {
        let failures = stream.await.unwrap();
        assert!(failures.is_empty(), "calls failed: {failures:?}");
    }

    let calls = upstream.recorder.calls();
    let phase_of = |c: &Recorded| {
        c.headers
            .iter()
            .find(|(name, _)| name == PHASE_HEADER)
            .map(|(_, v)| v.parse::<u8>().unwrap())
            .unwrap()
    };
    let (old, new) = (vec![bearer(OPENAI_KEY)], vec![bearer(&new_key)]);
    let mut after = 0;
    for c in &calls {
        match phase_of(c) {
            BEFORE => assert_eq!(c.credentials, old, "a call before the rotation"),
            DURING => assert!(c.credentials == old || c.credentials == new),
            _ => {
                assert_eq!(c.credentials, new, "a call after the rotation");
                after += 1;
            }
        }
    }
    assert_eq!(after, STREAMS * CALLS_AFTER);
    assert_eq!(calls.len(), started.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_deleted_key_is_not_used_by_the_very_next_call() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    let id = add_key(&app, &s, "openai", OPENAI_KEY).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, token) = new_token(&app, &s).await;
    assert_eq!(call(&app, &token).await.status(), 200);

    grant_reauth(&app, &s).await;
    let res = app
        .send(Method::DELETE, &format!("/api/v1/keys/{id}"), Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = call(&app, &token).await;
    assert_eq!(error_type(res, 424).await, "no_key");
    assert_eq!(upstream.recorder.count(), 1);
}

#[tokio::test]
async fn a_token_revoked_through_the_api_is_refused_on_the_very_next_call() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (id, token) = new_token(&app, &s).await;
    // Cached now: the revocation has to evict it.
    assert_eq!(call(&app, &token).await.status(), 200);

    assert_eq!(revoke_token(&app, &s, &id).await.status(), 204);
    let res = call(&app, &token).await;
    assert_eq!(error_type(res, 401).await, "authentication_failed");
    assert_eq!(upstream.recorder.count(), 1);
}

/// Another process (a second server on the same database, an operator's script) revokes the
/// token: this server has it cached and may honour it for at most the cache's TTL.
#[tokio::test]
async fn a_token_revoked_elsewhere_is_refused_within_the_token_cache_ttl() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (id, token) = new_token(&app, &s).await;
    assert_eq!(call(&app, &token).await.status(), 200);

    let (account, now) = (account_id(&app, &s).await, app.state.clock.unix());
    let revoked = app
        .sql(move |conn| tokens::revoke(conn, account, &id, now))
        .await;
    assert!(!revoked.is_empty());
    let revoked_at = Instant::now();
    // Every call sent a TTL or more after the revocation must be refused, so this loop ends.
    loop {
        let since = revoked_at.elapsed();
        let status = call(&app, &token).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            since < TokenCache::TTL,
            "a call sent {since:?} after the revocation was accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it stays refused.
    assert_eq!(call(&app, &token).await.status(), 401);
}

#[tokio::test]
async fn a_key_in_a_proxied_query_string_is_refused_and_not_logged() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "google", GOOGLE_KEY).await;
    let (_, token) = new_token(&app, &s).await;
    // A key of its own, so nothing else in this test process can have logged it.
    let in_url = format!("AIza{}", &uuid::Uuid::new_v4().simple().to_string()[..32]) + "Xy_";
    assert_eq!(in_url.len(), 39);
    let res = app
        .client
        .post(app.url(&format!(
            "/proxy/google/v1beta/models/gemini-2.5-flash:generateContent?key={in_url}"
        )))
        .bearer_auth(&token)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    assert!(!text.contains(&in_url), "the refusal quotes the key");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["type"], "key_in_url");
    assert_eq!(upstream.recorder.count(), 0);
    app.assert_not_logged(&in_url);
}
