//! Sign-up, sign-in, sign-out, sessions and CSRF.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{session_cookie, take_signup_token, unique_email, Session, TestApp, PASSWORD};

#[tokio::test]
async fn a_confirmed_signup_returns_201_with_a_host_prefixed_strict_http_only_secure_cookie() {
    let app = TestApp::spawn().await;
    let email = unique_email();
    assert_eq!(app.signup_request(&email, PASSWORD).await.status(), 202);
    let token = take_signup_token(&app.data_dir.path().join("data"), &email).await;
    let res = app.confirm_signup(&token, PASSWORD).await;
    assert_eq!(res.status(), 201);
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in [
        "__Host-kb_session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(
            set_cookie.contains(attr),
            "{attr} missing from {set_cookie}"
        );
    }
    assert!(!set_cookie.to_lowercase().contains("domain="));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["email"], email);
    assert!(body["csrf_token"].as_str().unwrap().len() >= 40);
}

#[tokio::test]
async fn the_session_endpoint_names_the_signed_in_user() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .get("/api/v1/auth/session", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["email"], s.email);
    assert_eq!(body["csrf_token"], s.csrf);
    assert_eq!(body["reauth_until"], Value::Null);
    assert_eq!(
        app.get("/api/v1/auth/session", None)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn logout_kills_the_session_on_the_server_so_a_replayed_cookie_fails() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .send(Method::POST, "/api/v1/auth/logout", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let replay = app
        .get("/api/v1/auth/session", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
}

#[tokio::test]
async fn login_issues_a_new_session_id_every_time() {
    let app = TestApp::spawn().await;
    let first = app.signed_up().await;
    let res = app.login(&first.email, PASSWORD).await;
    assert_eq!(res.status(), 200);
    let second = TestApp::session_from(res).await;
    assert_ne!(first.cookie, second.cookie);
    assert_ne!(first.csrf, second.csrf);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401_body() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let wrong = app.login(&s.email, "not the right password").await;
    let unknown = app.login(&unique_email(), PASSWORD).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let strip = |mut v: Value| {
        v["error"].as_object_mut().unwrap().remove("request_id");
        v
    };
    let (a, b) = (
        strip(wrong.json().await.unwrap()),
        strip(unknown.json().await.unwrap()),
    );
    assert_eq!(a, b);
    assert_eq!(a["error"]["type"], "authentication_failed");
}

#[tokio::test]
async fn a_state_change_without_the_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let no_token = Session {
        csrf: String::new(),
        ..s.clone()
    };
    let res = app
        .send(Method::POST, "/api/v1/auth/logout", Some(&no_token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["type"], "csrf");
    // The session is still alive.
    assert_eq!(
        app.get("/api/v1/auth/session", Some(&s))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_cross_origin_state_change_is_refused_even_with_the_token() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .send(Method::POST, "/api/v1/auth/logout", Some(&s))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn a_tampered_or_foreign_cookie_is_rejected() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let (name, value) = s.cookie.split_once('=').unwrap();
    let mut chars: Vec<char> = value.chars().collect();
    chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
    let tampered = Session {
        cookie: format!("{name}={}", chars.into_iter().collect::<String>()),
        ..s.clone()
    };
    assert_eq!(
        app.get("/api/v1/auth/session", Some(&tampered))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // A cookie signed by another installation's secret.
    let other = TestApp::spawn().await;
    let foreign = other.signed_up().await;
    assert_eq!(
        app.get("/api/v1/auth/session", Some(&foreign))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn bad_input_gets_400_or_413_with_a_stable_type_and_never_500() {
    let app = TestApp::spawn().await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "invalid_json",
        ),
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .json(&json!({"email": "a@b.com"})),
            400,
            "invalid_json",
        ),
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .json(&json!({"email": 5, "password": PASSWORD})),
            400,
            "invalid_json",
        ),
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .json(&json!({"email": "nope", "password": PASSWORD})),
            400,
            "invalid_email",
        ),
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .json(&json!({"email": unique_email(), "password": "short"})),
            400,
            "password_too_short",
        ),
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .json(&json!({"email": unique_email(), "password": "x".repeat(129)})),
            400,
            "password_too_long",
        ),
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .body("email=a"),
            415,
            "unsupported_media_type",
        ),
        (
            app.client
                .post(app.url("/api/v1/auth/signup"))
                .json(&json!({"email": unique_email(), "password": "x".repeat(200_000)})),
            413,
            "payload_too_large",
        ),
    ];
    for (i, (rb, status, kind)) in cases.into_iter().enumerate() {
        let res = rb.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "case {i}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["type"], kind, "case {i}");
    }
}

#[tokio::test]
async fn passwords_and_session_ids_never_reach_the_logs() {
    let app = TestApp::spawn().await;
    let password = format!("planted-password-{}", uuid::Uuid::new_v4().simple());
    let email = unique_email();
    let s = app.signup(&email, &password).await;
    app.login(&email, &password).await;
    app.login(&email, "wrong password, also secret").await;
    let res = app.login(&email, &password).await;
    let cookie = session_cookie(res.headers()).unwrap();
    app.assert_not_logged(&password);
    app.assert_not_logged("wrong password, also secret");
    app.assert_not_logged(s.cookie.split_once('=').unwrap().1);
    app.assert_not_logged(cookie.split_once('=').unwrap().1);
    app.assert_not_logged(&s.csrf);
}
