//! Behind a reverse proxy: `X-Forwarded-For` / `X-Forwarded-Proto` count only from a trusted
//! peer, and then the one resolved client address is what the audit log, the sessions list, the
//! throttles and the access log all use.

use std::time::Duration;

use keybroker::accounts::throttle::{Limit, LimitPair};
use serde_json::{json, Value};

use crate::helpers::{take_signup_token, unique_email, Session, TestApp, PASSWORD};

fn per_client(attempts: u32) -> LimitPair {
    let window = Duration::from_secs(60);
    LimitPair {
        per_account: Limit {
            attempts: 1000,
            window,
        },
        per_client: Limit { attempts, window },
    }
}

/// Signs up and confirms, both requests through a proxy that says the client is `xff`.
async fn signup_from(app: &TestApp, xff: &str) -> Session {
    let email = unique_email();
    let res = app
        .post_json(
            "/api/v1/auth/signup",
            None,
            &json!({"email": email, "password": PASSWORD}),
        )
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let token = take_signup_token(&app.data_dir.path().join("data"), &email).await;
    let res = app
        .post_json(
            "/api/v1/auth/signup/confirm",
            None,
            &json!({"token": token, "password": PASSWORD}),
        )
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    TestApp::session_from(res).await
}

async fn login_from(app: &TestApp, email: &str, password: &str, xff: &str) -> u16 {
    app.post_json(
        "/api/v1/auth/login",
        None,
        &json!({"email": email, "password": password}),
    )
    .header("x-forwarded-for", xff)
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

/// `(action, client_addr)` of every audit entry, newest first.
async fn audit_addrs(app: &TestApp, s: &Session) -> Vec<(String, String)> {
    let page: Value = app
        .get("/api/v1/audit", Some(s))
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
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["client_addr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The sessions list as sent (it shows each session's client address).
async fn sessions_text(app: &TestApp, s: &Session) -> String {
    let res = app
        .get("/api/v1/auth/sessions", Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let app = TestApp::spawn_with(|s| s.throttle.login = per_client(3)).await;
    let s = signup_from(&app, "198.51.100.1").await;
    // Rotating the header does not get around the per-client throttle: it keys on the peer.
    for i in 0..3 {
        let status = login_from(
            &app,
            &s.email,
            "a wrong password!",
            &format!("198.18.0.{i}"),
        )
        .await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        login_from(&app, &s.email, PASSWORD, "198.18.0.99").await,
        429
    );
    let entries = audit_addrs(&app, &s).await;
    assert_eq!(entries.len(), 4, "{entries:?}");
    for (action, addr) in &entries {
        assert_eq!(addr, "127.0.0.1", "{action}");
    }
    assert!(!sessions_text(&app, &s).await.contains("198.51.100.1"));
    // (The captured log is shared by every test in the process; 198.18.0.0/15 is this test's.)
    assert!(!app.logs().contains(r#""client":"198.18."#));
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_for_is_the_client_for_audit_throttle_and_access_log() {
    let app = TestApp::spawn_with(|s| {
        s.throttle.login = per_client(2);
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    // The right-most address that is not a trusted proxy is the client.
    let s = signup_from(&app, "192.0.2.50, 203.0.113.7, 127.0.0.1").await;
    let entries = audit_addrs(&app, &s).await;
    assert_eq!(entries, [("signup".to_owned(), "203.0.113.7".to_owned())]);
    let sessions = sessions_text(&app, &s).await;
    assert!(sessions.contains("203.0.113.7"), "{sessions}");
    assert!(app.logs().contains(r#""client":"203.0.113.7""#));

    // The throttle keys on that address: one client is stopped, another is not.
    for _ in 0..2 {
        assert_eq!(
            login_from(&app, &s.email, "wrong!", "198.51.100.10").await,
            401
        );
    }
    assert_eq!(
        login_from(&app, &s.email, PASSWORD, "198.51.100.10").await,
        429
    );
    assert_eq!(
        login_from(&app, &s.email, PASSWORD, "198.51.100.11").await,
        200
    );

    // A malformed header from the trusted proxy means the proxy itself, not an error.
    assert_eq!(
        login_from(&app, &s.email, "wrong!", "not an address").await,
        401
    );
    let entries = audit_addrs(&app, &s).await;
    assert_eq!(entries[0], ("login".to_owned(), "127.0.0.1".to_owned()));
}

#[tokio::test]
async fn forwarded_proto_https_counts_only_from_a_trusted_proxy() {
    for trusted in [false, true] {
        let app = TestApp::spawn_with(|s| {
            if trusted {
                s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            }
        })
        .await;
        let res = app
            .get("/healthz", None)
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers().get("strict-transport-security").is_some(),
            trusted
        );
        // Without a public URL the allowed Origin is the request's own, and its scheme is the
        // resolved one.
        let s = app.signed_up().await;
        let origin = format!("https://127.0.0.1:{}", app.port);
        let res = app
            .send(reqwest::Method::POST, "/api/v1/auth/logout", Some(&s))
            .header("origin", &origin)
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        let expected = if trusted { 204 } else { 403 };
        assert_eq!(res.status().as_u16(), expected, "trusted: {trusted}");
    }
}
