//! Session timeouts on a moved clock, listing and revoking sessions, reauth and password change.

use reqwest::Method;
use serde_json::{json, Value};
use time::Duration;

use crate::helpers::{Session, TestApp, PASSWORD};
use crate::mail_support::{decode, wait_for_outbox};

const NEW_PASSWORD: &str = "a brand new passphrase 42";

async fn status_of_session(app: &TestApp, s: &Session) -> u16 {
    app.get("/api/v1/auth/session", Some(s))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn login_session(app: &TestApp, email: &str, user_agent: &str) -> Session {
    let res = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"email": email, "password": PASSWORD}),
        )
        .header("User-Agent", user_agent)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    TestApp::session_from(res).await
}

async fn reauth(app: &TestApp, s: &Session, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/reauth",
        Some(s),
        &json!({"password": password}),
    )
    .send()
    .await
    .unwrap()
}

async fn change_password(app: &TestApp, s: &Session, current: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/password",
        Some(s),
        &json!({"current_password": current, "new_password": NEW_PASSWORD}),
    )
    .send()
    .await
    .unwrap()
}

async fn list_sessions(app: &TestApp, s: &Session) -> Vec<Value> {
    let res = app
        .get("/api/v1/auth/sessions", Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["sessions"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn an_idle_session_ends_after_30_minutes_and_activity_keeps_it_alive() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    app.clock.advance(Duration::minutes(29));
    assert_eq!(status_of_session(&app, &s).await, 200);
    app.clock.advance(Duration::minutes(29));
    assert_eq!(
        status_of_session(&app, &s).await,
        200,
        "activity reset the idle timer"
    );
    app.clock.advance(Duration::minutes(30));
    assert_eq!(status_of_session(&app, &s).await, 401);
}

#[tokio::test]
async fn a_session_ends_12_hours_after_sign_in_however_busy() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    // 28 × 25 min = 11 h 40 min of steady use.
    for _ in 0..28 {
        app.clock.advance(Duration::minutes(25));
        assert_eq!(status_of_session(&app, &s).await, 200);
    }
    app.clock.advance(Duration::minutes(20));
    assert_eq!(status_of_session(&app, &s).await, 401);
}

#[tokio::test]
async fn sessions_are_listed_with_the_callers_own_marked_current() {
    let app = TestApp::spawn().await;
    let first = app.signed_up().await;
    let second = login_session(&app, &first.email, "laptop-browser/1.0").await;
    let sessions = list_sessions(&app, &second).await;
    assert_eq!(sessions.len(), 2);
    let current: Vec<_> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["user_agent"], "laptop-browser/1.0");
    assert_eq!(current[0]["client_addr"], "127.0.0.1");
    for s in &sessions {
        assert!(s["id"].as_str().unwrap().starts_with("ses_"));
        assert!(s["created_at"].as_str().unwrap().contains('T'));
        assert!(s["last_seen_at"].as_str().unwrap().contains('T'));
    }
    // The list never shows cookie values.
    let raw = serde_json::to_string(&sessions).unwrap();
    assert!(!raw.contains(first.cookie.split_once('=').unwrap().1));
}

#[tokio::test]
async fn an_owner_can_revoke_another_of_their_sessions() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = login_session(&app, &a.email, "phone").await;
    let other = list_sessions(&app, &a)
        .await
        .into_iter()
        .find(|s| s["current"] == false)
        .unwrap();
    let res = app
        .send(
            Method::DELETE,
            &format!("/api/v1/auth/sessions/{}", other["id"].as_str().unwrap()),
            Some(&a),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(status_of_session(&app, &b).await, 401);
    assert_eq!(status_of_session(&app, &a).await, 200);
    assert_eq!(list_sessions(&app, &a).await.len(), 1);
}

#[tokio::test]
async fn revoking_another_accounts_session_answers_404_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let victim = app.signed_up().await;
    let attacker = app.signed_up().await;
    let victim_id = list_sessions(&app, &victim).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .send(
            Method::DELETE,
            &format!("/api/v1/auth/sessions/{victim_id}"),
            Some(&attacker),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "not_found"
    );
    assert_eq!(status_of_session(&app, &victim).await, 200);
}

#[tokio::test]
async fn sensitive_actions_need_a_reauth_within_the_last_ten_minutes() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = change_password(&app, &s, PASSWORD).await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "reauth_required"
    );

    let wrong = reauth(&app, &s, "not my password at all").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(status_of_session(&app, &s).await, 200, "still signed in");

    let ok = reauth(&app, &s, PASSWORD).await;
    assert_eq!(ok.status(), 200);
    let until = ok.json::<Value>().await.unwrap()["reauth_until"].clone();
    assert!(until.as_str().unwrap().contains('T'));
    let session: Value = app
        .get("/api/v1/auth/session", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["reauth_until"], until);

    app.clock
        .advance(Duration::minutes(10) + Duration::seconds(1));
    let res = change_password(&app, &s, PASSWORD).await;
    assert_eq!(res.status(), 403, "the window closed");
}

#[tokio::test]
async fn reauth_only_marks_the_session_that_asked() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = login_session(&app, &a.email, "other").await;
    assert_eq!(reauth(&app, &a, PASSWORD).await.status(), 200);
    assert_eq!(change_password(&app, &b, PASSWORD).await.status(), 403);
}

#[tokio::test]
async fn changing_the_password_signs_out_other_sessions_and_mails_a_notice() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = login_session(&app, &a.email, "other").await;
    assert_eq!(reauth(&app, &a, PASSWORD).await.status(), 200);
    assert_eq!(change_password(&app, &a, PASSWORD).await.status(), 204);
    assert_eq!(status_of_session(&app, &a).await, 200, "this session stays");
    assert_eq!(status_of_session(&app, &b).await, 401, "others are revoked");
    assert_eq!(app.login(&a.email, PASSWORD).await.status(), 401);
    assert_eq!(app.login(&a.email, NEW_PASSWORD).await.status(), 200);

    let mails = wait_for_outbox(&app.data_dir.path().join("data"), 1).await;
    let text = decode(&mails[0]);
    assert!(text.contains(&format!("To: {}", a.email)), "{text}");
    assert!(text.contains("password was changed"), "{text}");
    app.assert_not_logged(NEW_PASSWORD);
}

#[tokio::test]
async fn changing_the_password_needs_the_current_one() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    assert_eq!(reauth(&app, &s, PASSWORD).await.status(), 200);
    let res = change_password(&app, &s, "a wrong current password").await;
    assert_eq!(res.status(), 401);
    assert_eq!(app.login(&s.email, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn a_new_password_outside_12_to_128_characters_is_refused_before_hashing() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    assert_eq!(reauth(&app, &s, PASSWORD).await.status(), 200);
    for (new, kind) in [
        ("short".to_owned(), "password_too_short"),
        ("x".repeat(129), "password_too_long"),
    ] {
        let res = app
            .post_json(
                "/api/v1/auth/password",
                Some(&s),
                &json!({"current_password": PASSWORD, "new_password": new}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["type"], kind);
    }
}

#[tokio::test]
async fn reauth_and_password_change_without_csrf_token_are_refused() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let no_csrf = Session {
        csrf: String::new(),
        ..s.clone()
    };
    assert_eq!(reauth(&app, &no_csrf, PASSWORD).await.status(), 403);
}
