//! Webhooks end to end: a real local receiver checks each delivery's signature over the exact
//! timestamp and body; failed deliveries are retried after their backoff (the injected clock);
//! where a webhook may point is checked when it is set and again at delivery; spend alerts send
//! one mail, one webhook event and one audit entry per threshold crossed. Runs on either backend
//! (`KEYBROKER_TEST_BACKEND=postgres`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::{Hmac, Mac};
use keybroker::clock::Clock as _;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::fake_upstream::FakeUpstream;
use crate::helpers::{Session, TestApp};
use crate::key_helpers::{account_id, error_type};
use crate::mail_support::{decode, outbox_messages};

const SECRET: &str = "whk-test-secret-0123456789abcdef";
const RESEND_KEY: &str = "re_WEBHOOKabcdefghijklmnopqrstuvwxyz";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    timestamp: String,
    event_id: String,
    event_type: String,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// What a receiver does: HMAC-SHA256(secret, "<timestamp>.<body>") against the header.
    fn signed_with(&self, secret: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{}.{}", self.timestamp, self.body).as_bytes());
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        expected == self.signature
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    /// Status codes to answer with, in turn; 200 once they run out.
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

/// A local HTTP server standing in for the account's webhook receiver.
struct Receiver {
    port: u16,
    state: ReceiverState,
    handle: actix_web::dev::ServerHandle,
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ReceiverState>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    state.received.lock().unwrap().push(Received {
        signature: header("x-keybroker-signature"),
        timestamp: header("x-keybroker-timestamp"),
        event_id: header("x-keybroker-event-id"),
        event_type: header("x-keybroker-event"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let status = state.statuses.lock().unwrap().pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .body("receiver says: sk-proj-should-never-be-stored")
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Receiver {
        let state = ReceiverState::default();
        state.statuses.lock().unwrap().extend(statuses);
        let s = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(s.clone()))
                .default_service(web::to(receive))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            port,
            state,
            handle,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/keybroker", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until the receiver got at least `n` requests.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..500 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the receiver got {} requests, not {n}",
            self.received().len()
        );
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// A server whose webhooks may reach loopback (the receiver runs on 127.0.0.1).
async fn app_allowing_private() -> TestApp {
    TestApp::spawn_with(|s| s.webhook.danger_allow_private_addresses = true).await
}

async fn put_webhook(app: &TestApp, s: &Session, url: &str, secret: &str) -> reqwest::Response {
    app.send(Method::PUT, "/api/v1/webhook", Some(s))
        .json(&json!({"url": url, "secret": secret}))
        .send()
        .await
        .unwrap()
}

async fn webhook_status(app: &TestApp, s: &Session) -> Value {
    let res = app.get("/api/v1/webhook", Some(s)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn send_test_event(app: &TestApp, s: &Session) -> String {
    let res = app
        .send(Method::POST, "/api/v1/webhook/test", Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits (up to 10 s) until the newest delivery satisfies `done`; returns it.
async fn wait_for_delivery(app: &TestApp, s: &Session, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let status = webhook_status(app, s).await;
        if let Some(d) = status["deliveries"].get(0) {
            if done(d) {
                return d.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the delivery never got there: {}",
        webhook_status(app, s).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_signed_over_its_timestamp_and_exact_body() {
    let app = app_allowing_private().await;
    let s = app.signed_up().await;
    let receiver = Receiver::start(&[]).await;
    let res = put_webhook(&app, &s, &receiver.url(), SECRET).await;
    assert_eq!(res.status(), 200);
    let set: Value = res.json().await.unwrap();
    assert_eq!(set["url"], receiver.url());
    assert_eq!(set["secret_set"], true);
    assert!(
        !set.to_string().contains(SECRET),
        "the secret was shown back"
    );

    let id = send_test_event(&app, &s).await;
    let got = receiver.wait_for(1).await;
    let hit = &got[0];
    assert!(
        hit.signed_with(SECRET),
        "signature does not verify: {hit:?}"
    );
    assert!(!hit.signed_with("another secret entirely"));
    assert_eq!(hit.timestamp, app.clock.unix().to_string());
    assert_eq!(
        (hit.event_id.as_str(), hit.event_type.as_str()),
        (id.as_str(), "webhook.test")
    );
    let body = hit.json();
    assert_eq!(
        (body["id"].as_str(), body["type"].as_str()),
        (Some(id.as_str()), Some("webhook.test"))
    );

    let delivered = wait_for_delivery(&app, &s, |d| d["status"] == "delivered").await;
    assert_eq!(delivered["id"], id.as_str());
    assert_eq!(delivered["attempts"], 1);
    assert_eq!(delivered["last_status_code"], 200);
    assert_eq!(delivered["last_error"], Value::Null);
    let listed = webhook_status(&app, &s).await;
    assert_eq!(listed["webhook"]["secret_set"], true);
    assert!(!listed.to_string().contains(SECRET));
    // The receiver's answer is never kept.
    assert!(!listed.to_string().contains("receiver says"));
    app.assert_not_logged(SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_after_its_backoff_and_then_delivered() {
    let app = app_allowing_private().await;
    let s = app.signed_up().await;
    let receiver = Receiver::start(&[500]).await;
    assert_eq!(
        put_webhook(&app, &s, &receiver.url(), SECRET)
            .await
            .status(),
        200
    );
    let id = send_test_event(&app, &s).await;

    let failed = wait_for_delivery(&app, &s, |d| {
        d["attempts"] == 1 && d["last_error"] == "http_status"
    })
    .await;
    assert_eq!(failed["status"], "pending");
    assert_eq!(failed["last_status_code"], 500);
    let due = app.clock.unix() + 10;
    assert_eq!(failed["next_attempt_at"], keybroker::timefmt::rfc3339(due));

    // Not before its backoff: nothing more arrives while the clock stands still.
    app.state.webhooks.wake();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);

    app.clock.advance(time::Duration::seconds(10));
    app.state.webhooks.wake();
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2);
    // The same event (same id, same body) again, signed again with the new timestamp.
    assert_eq!(got[1].event_id, id);
    assert_eq!(got[1].body, got[0].body);
    assert_eq!(got[1].timestamp, app.clock.unix().to_string());
    assert!(got[1].signed_with(SECRET));
    let delivered = wait_for_delivery(&app, &s, |d| d["status"] == "delivered").await;
    assert_eq!(
        (
            delivered["attempts"].as_i64(),
            delivered["last_status_code"].as_i64()
        ),
        (Some(2), Some(200))
    );
}

#[tokio::test]
async fn private_and_loopback_urls_are_refused_without_the_operator_switch() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.1/",
        "http://192.168.1.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[fd00:ec2::254]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
    ] {
        let res = put_webhook(&app, &s, url, SECRET).await;
        assert_eq!(error_type(res, 400).await, "webhook_url_forbidden", "{url}");
    }
    for url in [
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "not a url",
    ] {
        let res = put_webhook(&app, &s, url, SECRET).await;
        assert_eq!(error_type(res, 400).await, "webhook_url_invalid", "{url}");
    }
    let res = put_webhook(&app, &s, "https://example.com/", "short").await;
    assert_eq!(error_type(res, 400).await, "invalid_webhook_secret");
    assert_eq!(webhook_status(&app, &s).await["webhook"], Value::Null);

    // The operator's switch lets a receiver on loopback through.
    let allowed = app_allowing_private().await;
    let s = allowed.signed_up().await;
    assert_eq!(
        put_webhook(&allowed, &s, "http://127.0.0.1:9/hook", SECRET)
            .await
            .status(),
        200
    );
    assert_eq!(
        put_webhook(&allowed, &s, "http://localhost:9/hook", SECRET)
            .await
            .status(),
        200
    );
    let res = put_webhook(&allowed, &s, "http://127.0.0.1:9/hook", "short").await;
    assert_eq!(error_type(res, 400).await, "invalid_webhook_secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_resolves_to_a_private_address_at_delivery_is_refused_then() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let receiver = Receiver::start(&[]).await;
    // As if the name had resolved publicly when it was set and points at loopback now (DNS
    // rebinding): the row is written as the API would have written it.
    let account = account_id(&app, &s).await;
    let vault = app.state.vault.clone();
    let url =
        keybroker::webhooks::WebhookUrl::parse(&format!("http://localhost:{}/hook", receiver.port))
            .unwrap();
    let now = app.clock.unix();
    app.sql(move |c| {
        keybroker::webhooks::save(c, &vault, account, &url, SECRET, now)
            .map_err(|_| keybroker::db::DbError::RolledBack("save"))
    })
    .await;
    send_test_event(&app, &s).await;
    let refused = wait_for_delivery(&app, &s, |d| !d["last_error"].is_null()).await;
    assert_eq!(refused["attempts"], 1);
    assert_eq!(refused["last_error"], "forbidden_address", "{refused}");
    assert_eq!(refused["last_status_code"], Value::Null);
    assert_eq!(refused["status"], "pending");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.received().is_empty(),
        "a private address was reached"
    );
}

#[tokio::test]
async fn unknown_fields_are_refused() {
    let app = app_allowing_private().await;
    let s = app.signed_up().await;
    let res = app
        .send(Method::PUT, "/api/v1/webhook", Some(&s))
        .json(&json!({"url": "http://127.0.0.1:9/", "secret": SECRET, "events": ["all"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "invalid_json");
    let res = app
        .send(Method::PUT, "/api/v1/ceilings/openai", Some(&s))
        .json(&json!({"limit_usd": "5.00", "alert_at": [50]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "invalid_json");
    for bad in [
        json!([0]),
        json!([101]),
        json!([50.5]),
        json!((1..=11).collect::<Vec<_>>()),
    ] {
        let res = app
            .send(Method::PUT, "/api/v1/ceilings/openai", Some(&s))
            .json(&json!({"limit_usd": "5.00", "alert_at_percent": bad}))
            .send()
            .await
            .unwrap();
        let kind = error_type(res, 400).await;
        assert!(
            kind == "invalid_alert_percent" || kind == "invalid_json",
            "{bad}: {kind}"
        );
    }
}

#[tokio::test]
async fn webhook_changes_are_audited_and_removal_stops_pending_deliveries() {
    let app = app_allowing_private().await;
    let s = app.signed_up().await;
    assert_eq!(
        put_webhook(&app, &s, "http://127.0.0.1:9/a", SECRET)
            .await
            .status(),
        200
    );
    assert_eq!(
        put_webhook(&app, &s, "http://127.0.0.1:9/b", SECRET)
            .await
            .status(),
        200
    );
    let res = app
        .send(Method::DELETE, "/api/v1/webhook", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .send(Method::DELETE, "/api/v1/webhook", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 404).await, "not_found");
    let res = app
        .send(Method::POST, "/api/v1/webhook/test", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 404).await, "not_found");
    let actions = audit_actions(&app, &s).await;
    for action in ["webhook.set", "webhook.update", "webhook.delete"] {
        assert_eq!(
            actions.iter().filter(|a| *a == action).count(),
            1,
            "{action}: {actions:?}"
        );
    }
}

async fn audit_actions(app: &TestApp, s: &Session) -> Vec<String> {
    let page: Value = app
        .get("/api/v1/audit?limit=200", Some(s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

/// One $0.0009 Resend call through the proxy (priced per request: reserved and settled alike).
async fn resend_call(app: &TestApp, token: &str) {
    let res = app
        .client
        .post(app.url("/proxy/resend/emails"))
        .bearer_auth(token)
        .json(
            &json!({"from": "a@example.com", "to": "b@example.com", "subject": "hi", "text": "hi"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    app.state.proxy.writer.flush().await;
}

/// The alert mails in the outbox.
fn alert_mails(app: &TestApp) -> Vec<String> {
    outbox_messages(&app.data_dir.path().join("data"))
        .into_iter()
        .map(|m| decode(&m))
        .filter(|m| m.contains("spend alert"))
        .collect()
}

async fn settle_a_moment() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_50_and_100_percent_sends_one_mail_one_webhook_and_one_audit_entry_each() {
    let upstream = FakeUpstream::start().await;
    let url = upstream.url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.webhook.danger_allow_private_addresses = true;
        s.proxy.upstreams.insert("resend".into(), url);
    })
    .await;
    let s = app.signed_up().await;
    let receiver = Receiver::start(&[]).await;
    assert_eq!(
        put_webhook(&app, &s, &receiver.url(), SECRET)
            .await
            .status(),
        200
    );
    crate::proxy::add_key(&app, &s, "resend", RESEND_KEY).await;
    let token = crate::proxy::token(&app, &s, None).await;
    let res = app
        .send(Method::PUT, "/api/v1/ceilings/resend", Some(&s))
        .json(
            &json!({"limit_usd": "0.0036", "period": "monthly", "alert_at_percent": [100, 50, 50]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let set: Value = res.json().await.unwrap();
    assert_eq!(set["alert_at_percent"], json!([50, 100]));
    assert_eq!(
        crate::proxy::ceiling(&app, &s, "resend").await["alert_at_percent"],
        json!([50, 100])
    );

    // 25 %: nothing.
    resend_call(&app, &token).await;
    settle_a_moment().await;
    assert!(receiver.received().is_empty());
    // 50 %: one alert; 75 %: nothing more.
    resend_call(&app, &token).await;
    let got = receiver.wait_for(1).await;
    resend_call(&app, &token).await;
    settle_a_moment().await;
    assert_eq!(receiver.received().len(), 1, "{got:?}");
    // 100 %: the second alert; the ceiling is reached, so the next call is refused.
    resend_call(&app, &token).await;
    let got = receiver.wait_for(2).await;
    settle_a_moment().await;
    let got_now = receiver.received();
    assert_eq!(got_now.len(), 2, "{got:?}");

    let events: Vec<Value> = got_now.iter().map(Received::json).collect();
    for (event, threshold, spent) in [(&events[0], 50, "0.0018"), (&events[1], 100, "0.0036")] {
        assert_eq!(event["type"], "spend.threshold_crossed");
        let data = &event["data"];
        assert_eq!(data["provider"], "resend");
        assert_eq!(data["threshold_percent"], threshold);
        assert_eq!(data["percent"], threshold);
        assert_eq!(data["limit_usd"], "0.0036");
        assert_eq!(data["spent_usd"], spent);
    }
    assert!(got_now.iter().all(|r| r.signed_with(SECRET)));

    let mails = crate::mail_support::wait_until(|| {
        let m = alert_mails(&app);
        (m.len() >= 2).then_some(m)
    })
    .await;
    settle_a_moment().await;
    let mails_now = alert_mails(&app);
    assert_eq!(mails_now.len(), 2, "{mails:?}");
    assert!(
        mails_now.iter().any(|m| m.contains("50%")) && mails_now.iter().any(|m| m.contains("100%"))
    );
    assert!(mails_now
        .iter()
        .all(|m| m.to_lowercase().contains(&format!("to: {}", s.email))));

    let alerts = audit_actions(&app, &s)
        .await
        .into_iter()
        .filter(|a| a == "spend.alert")
        .count();
    assert_eq!(alerts, 2);

    // No key anywhere a webhook carries or lists.
    let listed = webhook_status(&app, &s).await.to_string();
    for plain in [RESEND_KEY, &RESEND_KEY[3..20], SECRET] {
        assert!(!listed.contains(plain));
        for r in &got_now {
            assert!(!r.body.contains(plain), "{plain} in a webhook body");
        }
    }
    for r in &got_now {
        assert!(!r.body.contains(&s.email), "the email in a webhook body");
    }
    app.assert_not_logged(RESEND_KEY);
    app.assert_not_logged(SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_arms_the_thresholds_again() {
    let upstream = FakeUpstream::start().await;
    let url = upstream.url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.webhook.danger_allow_private_addresses = true;
        s.proxy.upstreams.insert("resend".into(), url);
    })
    .await;
    let s = app.signed_up().await;
    let receiver = Receiver::start(&[]).await;
    assert_eq!(
        put_webhook(&app, &s, &receiver.url(), SECRET)
            .await
            .status(),
        200
    );
    crate::proxy::add_key(&app, &s, "resend", RESEND_KEY).await;
    let token = crate::proxy::token(&app, &s, None).await;
    let res = app
        .send(Method::PUT, "/api/v1/ceilings/resend", Some(&s))
        .json(&json!({"limit_usd": "0.0018", "alert_at_percent": [50]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    resend_call(&app, &token).await;
    receiver.wait_for(1).await;
    crate::key_helpers::grant_reauth(&app, &s).await;
    let res = app
        .send(Method::POST, "/api/v1/ceilings/resend/reset", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    resend_call(&app, &token).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2);
}
