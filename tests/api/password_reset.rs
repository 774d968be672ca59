//! Password reset by email: the request answers the same for every address, the link comes from
//! KEYBROKER_PUBLIC_URL, tokens are single use, expire, replace each other, and a reset signs
//! every session out. Both mail paths are exercised: lettre's file transport into the outbox and
//! SMTP to a real listener.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::{json, Value};
use time::Duration;

use crate::helpers::{session_cookie, signup_token_in, unique_email, TestApp, PASSWORD};
use crate::mail_support::{
    decode, outbox_messages, reset_link, token_of, wait_for_outbox, SmtpSink,
};

const PUBLIC_URL: &str = "https://kb.example";
const NEW_PASSWORD: &str = "the password after reset";

async fn spawn() -> TestApp {
    TestApp::spawn_with(|s| s.public_url = Some(PUBLIC_URL.to_owned())).await
}

fn data_dir(app: &TestApp) -> PathBuf {
    app.data_dir.path().join("data")
}

async fn request_reset(app: &TestApp, email: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/password-reset",
        None,
        &json!({ "email": email }),
    )
    .send()
    .await
    .unwrap()
}

async fn confirm(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/password-reset/confirm",
        None,
        &json!({"token": token, "password": password}),
    )
    .send()
    .await
    .unwrap()
}

/// Requests a reset for `email` and returns the token from the `n`th outbox message.
async fn token_from_outbox(app: &TestApp, email: &str, n: usize) -> String {
    assert_eq!(request_reset(app, email).await.status(), 202);
    // The file transport writes a message in place: wait until the nth one is whole.
    let dir = data_dir(app);
    let link = crate::mail_support::wait_until(|| {
        outbox_messages(&dir).get(n - 1).and_then(|m| reset_link(m))
    })
    .await;
    token_of(&link)
}

async fn error_type(res: reqwest::Response) -> String {
    res.json::<Value>().await.unwrap()["error"]["type"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_reset_request_answers_202_with_one_body_whether_or_not_the_account_exists() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let known = request_reset(&app, &s.email).await;
    let unknown = request_reset(&app, &unique_email()).await;
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    let (a, b): (Value, Value) = (known.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(a, b);
    let mails = wait_for_outbox(&data_dir(&app), 1).await;
    // Give a wrongly queued second mail the chance to show up before counting.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(outbox_messages(&data_dir(&app)).len(), 1);
    assert!(decode(&mails[0]).contains(&format!("To: {}", s.email)));
}

#[tokio::test]
async fn the_file_transport_mails_a_link_that_resets_the_password() {
    let app = spawn().await;
    let s = app.signed_up().await;
    assert_eq!(request_reset(&app, &s.email).await.status(), 202);
    let mails = wait_for_outbox(&data_dir(&app), 1).await;
    let link = reset_link(&mails[0]).unwrap();
    assert!(
        link.starts_with("https://kb.example/reset/confirm?token=kbr_"),
        "{link}"
    );
    let res = confirm(&app, &token_of(&link), NEW_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(
        session_cookie(res.headers()).is_none(),
        "no automatic login"
    );
    assert_eq!(app.login(&s.email, PASSWORD).await.status(), 401);
    assert_eq!(app.login(&s.email, NEW_PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn the_smtp_transport_delivers_the_link_and_the_notification_to_a_real_listener() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(|s| {
        s.public_url = Some(PUBLIC_URL.to_owned());
        s.mail.smtp_url = Some(url.into());
    })
    .await;
    // The sign-up's confirmation comes over SMTP too (message 1).
    let email = unique_email();
    assert_eq!(app.signup_request(&email, PASSWORD).await.status(), 202);
    let confirmation = sink.wait_for(1).await;
    let token = signup_token_in(&confirmation[0]).unwrap();
    assert_eq!(app.confirm_signup(&token, PASSWORD).await.status(), 201);

    assert_eq!(request_reset(&app, &email).await.status(), 202);
    let mails = sink.wait_for(2).await;
    assert!(mails[1].contains(&format!("To: {email}")));
    assert!(mails[1].contains("Subject: Reset your keybroker password"));
    let link = reset_link(&mails[1]).unwrap();
    assert!(link.starts_with("https://kb.example/reset/confirm?token="));

    assert_eq!(
        confirm(&app, &token_of(&link), NEW_PASSWORD).await.status(),
        204
    );
    let all = sink.wait_for(3).await;
    let notice = decode(&all[2]);
    assert!(
        notice.contains("Subject: Your keybroker password was reset"),
        "{notice}"
    );
    assert!(reset_link(&all[2]).is_none());
    assert!(
        outbox_messages(&data_dir(&app)).is_empty(),
        "SMTP, not files"
    );
}

#[tokio::test]
async fn two_concurrent_redemptions_of_one_token_let_exactly_one_succeed() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let token = token_from_outbox(&app, &s.email, 1).await;
    let (a, b) = tokio::join!(
        confirm(&app, &token, "first racing password"),
        confirm(&app, &token, "second racing password"),
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 400]);
    let winners = [
        app.login(&s.email, "first racing password").await.status(),
        app.login(&s.email, "second racing password").await.status(),
    ];
    assert_eq!(winners.iter().filter(|s| s.as_u16() == 200).count(), 1);
}

#[tokio::test]
async fn a_token_works_only_once() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let token = token_from_outbox(&app, &s.email, 1).await;
    assert_eq!(confirm(&app, &token, NEW_PASSWORD).await.status(), 204);
    let again = confirm(&app, &token, "yet another password").await;
    assert_eq!(again.status(), 400);
    assert_eq!(error_type(again).await, "invalid_token");
}

#[tokio::test]
async fn a_token_expires_after_24_hours() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let token = token_from_outbox(&app, &s.email, 1).await;
    app.clock.advance(Duration::hours(24));
    let res = confirm(&app, &token, NEW_PASSWORD).await;
    assert_eq!(res.status(), 400);
    assert_eq!(error_type(res).await, "invalid_token");
    assert_eq!(app.login(&s.email, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn a_token_just_inside_24_hours_still_works() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let token = token_from_outbox(&app, &s.email, 1).await;
    app.clock
        .advance(Duration::hours(24) - Duration::seconds(2));
    assert_eq!(confirm(&app, &token, NEW_PASSWORD).await.status(), 204);
}

#[tokio::test]
async fn issuing_a_new_token_voids_the_older_one() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let old = token_from_outbox(&app, &s.email, 1).await;
    let new = token_from_outbox(&app, &s.email, 2).await;
    assert_ne!(old, new);
    assert_eq!(confirm(&app, &old, NEW_PASSWORD).await.status(), 400);
    assert_eq!(confirm(&app, &new, NEW_PASSWORD).await.status(), 204);
}

#[tokio::test]
async fn a_reset_revokes_every_session_of_the_account() {
    let app = spawn().await;
    let first = app.signed_up().await;
    let second = TestApp::session_from(app.login(&first.email, PASSWORD).await).await;
    let token = token_from_outbox(&app, &first.email, 1).await;
    assert_eq!(confirm(&app, &token, NEW_PASSWORD).await.status(), 204);
    for s in [&first, &second] {
        let res = app
            .get("/api/v1/auth/session", Some(s))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
}

#[tokio::test]
async fn a_forged_host_header_does_not_change_the_link() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let res = app
        .post_json(
            "/api/v1/auth/password-reset",
            None,
            &json!({ "email": s.email }),
        )
        .header("Host", "evil.example")
        .header("X-Forwarded-Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mails = wait_for_outbox(&data_dir(&app), 1).await;
    let link = reset_link(&mails[0]).unwrap();
    assert!(
        link.starts_with("https://kb.example/reset/confirm?token="),
        "{link}"
    );
    assert!(!decode(&mails[0]).contains("evil.example"));
}

#[tokio::test]
async fn without_a_public_url_a_request_still_answers_202_and_mails_nothing() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    assert_eq!(request_reset(&app, &s.email).await.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(outbox_messages(&data_dir(&app)).is_empty());
    assert!(app.logs().contains("KEYBROKER_PUBLIC_URL is not set"));
}

#[tokio::test]
async fn malformed_tokens_and_bad_bodies_get_400_with_a_clear_type() {
    let app = spawn().await;
    let cases = [
        (
            json!({"token": "kbr_nope", "password": NEW_PASSWORD}),
            "invalid_token",
        ),
        (
            json!({"token": "", "password": NEW_PASSWORD}),
            "invalid_token",
        ),
        (json!({"password": NEW_PASSWORD}), "invalid_json"),
        (
            json!({"token": format!("kbr_{}", "A".repeat(43)), "password": NEW_PASSWORD}),
            "invalid_token",
        ),
    ];
    for (i, (body, kind)) in cases.into_iter().enumerate() {
        let res = app
            .post_json("/api/v1/auth/password-reset/confirm", None, &body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "case {i}");
        assert_eq!(error_type(res).await, kind, "case {i}");
    }
    let bad_email = request_reset(&app, "not an email").await;
    assert_eq!(bad_email.status(), 400);
    assert_eq!(error_type(bad_email).await, "invalid_email");
    let missing = app
        .post_json("/api/v1/auth/password-reset", None, &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(error_type(missing).await, "invalid_json");
}

#[tokio::test]
async fn a_short_new_password_is_refused_and_leaves_the_token_usable() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let token = token_from_outbox(&app, &s.email, 1).await;
    let res = confirm(&app, &token, "short").await;
    assert_eq!(res.status(), 400);
    assert_eq!(error_type(res).await, "password_too_short");
    assert_eq!(confirm(&app, &token, NEW_PASSWORD).await.status(), 204);
}

#[tokio::test]
async fn reset_tokens_links_and_passwords_never_reach_the_logs() {
    let app = spawn().await;
    let s = app.signed_up().await;
    let old = token_from_outbox(&app, &s.email, 1).await;
    let token = token_from_outbox(&app, &s.email, 2).await;
    let planted = format!("planted-reset-password-{}", uuid::Uuid::new_v4().simple());
    confirm(&app, &old, &planted).await;
    assert_eq!(confirm(&app, &token, &planted).await.status(), 204);
    // The notification, so every mail path has run.
    wait_for_outbox(&data_dir(&app), 3).await;
    app.assert_not_logged(&token);
    app.assert_not_logged(&old);
    app.assert_not_logged(&token["kbr_".len()..]);
    // The page's route pattern is in access-log lines (the dashboard serves it); the link is not.
    app.assert_not_logged("/reset/confirm?");
    app.assert_not_logged(&planted);
}
