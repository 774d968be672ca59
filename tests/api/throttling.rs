//! Login (and reset-request) throttling per account and per client address: 429 with
//! `Retry-After`, on the injected clock.

use std::time::Duration as StdDuration;

use keybroker::accounts::throttle::{Limit, LimitPair};
use serde_json::{json, Value};
use time::Duration;

use crate::helpers::{unique_email, TestApp, PASSWORD};

fn limits(per_account: u32, per_client: u32) -> LimitPair {
    let window = StdDuration::from_secs(60);
    LimitPair {
        per_account: Limit {
            attempts: per_account,
            window,
        },
        per_client: Limit {
            attempts: per_client,
            window,
        },
    }
}

async fn assert_throttled(res: reqwest::Response) -> u64 {
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "too_many_attempts");
    retry_after
}

#[tokio::test]
async fn login_attempts_are_throttled_per_account_even_with_the_right_password() {
    let app = TestApp::spawn_with(|s| s.throttle.login = limits(3, 100)).await;
    let s = app.signed_up().await;
    for _ in 0..3 {
        assert_eq!(app.login(&s.email, "a wrong password!").await.status(), 401);
    }
    let retry_after = assert_throttled(app.login(&s.email, PASSWORD).await).await;
    // Another account from the same address is unaffected.
    let other = app.signed_up().await;
    assert_eq!(app.login(&other.email, PASSWORD).await.status(), 200);
    // Once the clock has moved on, the right password works again.
    app.clock.advance(Duration::seconds(retry_after as i64));
    assert_eq!(app.login(&s.email, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn an_unknown_email_is_throttled_exactly_like_a_known_one() {
    let app = TestApp::spawn_with(|s| s.throttle.login = limits(2, 100)).await;
    let nobody = unique_email();
    for _ in 0..2 {
        assert_eq!(app.login(&nobody, PASSWORD).await.status(), 401);
    }
    assert_throttled(app.login(&nobody, PASSWORD).await).await;
}

#[tokio::test]
async fn login_attempts_are_throttled_per_client_address_across_accounts() {
    let app = TestApp::spawn_with(|s| s.throttle.login = limits(100, 3)).await;
    for _ in 0..3 {
        assert_eq!(app.login(&unique_email(), PASSWORD).await.status(), 401);
    }
    assert_throttled(app.login(&unique_email(), PASSWORD).await).await;
}

#[tokio::test]
async fn reauth_shares_the_login_throttle() {
    let app = TestApp::spawn_with(|s| s.throttle.login = limits(2, 100)).await;
    let s = app.signed_up().await;
    for _ in 0..2 {
        let res = app
            .post_json(
                "/api/v1/auth/reauth",
                Some(&s),
                &json!({"password": "a wrong password!"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    let res = app
        .post_json(
            "/api/v1/auth/reauth",
            Some(&s),
            &json!({"password": PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_throttled(res).await;
}

#[tokio::test]
async fn reset_requests_are_throttled_per_email() {
    let app = TestApp::spawn_with(|s| s.throttle.reset = limits(2, 100)).await;
    let email = unique_email();
    let request = || {
        app.post_json(
            "/api/v1/auth/password-reset",
            None,
            &json!({ "email": email }),
        )
        .send()
    };
    for _ in 0..2 {
        assert_eq!(request().await.unwrap().status(), 202);
    }
    assert_throttled(request().await.unwrap()).await;
}
