//! Sign-up says nothing about which addresses have accounts: one answer for every address, the
//! outcome told only by mail to the address; a new account signs in only once confirmed with the
//! mailed token and its password. Spellings of one address land on one account; addresses that
//! imitate another account's are refused. Also: a token's provider list is never empty.

use keybroker::accounts::{self, Email};
use keybroker::error::ApiError;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::helpers::{signup_token_in, take_signup_token, TestApp, PASSWORD};
use crate::key_helpers::error_type;
use crate::mail_support::{decode, outbox_messages, reset_link, token_of, wait_until};

const OTHER_PASSWORD: &str = "another password, equally long";

fn data_dir(app: &TestApp) -> std::path::PathBuf {
    app.data_dir.path().join("data")
}

/// Status, headers (without the two that differ per response by design) and body bytes.
async fn answer(res: reqwest::Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = res.status().as_u16();
    let headers = comparable(res.headers());
    (status, headers, res.bytes().await.unwrap().to_vec())
}

fn comparable(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    out.sort();
    out
}

/// Every outbox message addressed to `to`, decoded.
fn mails_to(app: &TestApp, to: &str) -> Vec<String> {
    outbox_messages(&data_dir(app))
        .iter()
        .map(|m| decode(m))
        .filter(|m| {
            m.to_lowercase()
                .contains(&format!("to: {}", to.to_lowercase()))
        })
        .collect()
}

async fn wait_for_mail_to(app: &TestApp, to: &str, subject: &str) -> String {
    wait_until(|| {
        mails_to(app, to)
            .into_iter()
            .find(|m| m.contains(&format!("Subject: {subject}")))
    })
    .await
}

#[tokio::test]
async fn signing_up_an_existing_address_answers_byte_for_byte_what_a_new_address_gets() {
    let app = TestApp::spawn().await;
    let fresh = answer(app.signup_request("first@example.com", PASSWORD).await).await;
    let token = take_signup_token(&data_dir(&app), "first@example.com").await;
    assert_eq!(app.confirm_signup(&token, PASSWORD).await.status(), 201);

    let existing = answer(
        app.signup_request("first@example.com", OTHER_PASSWORD)
            .await,
    )
    .await;
    let other_new = answer(app.signup_request("second@example.com", PASSWORD).await).await;

    assert_eq!(fresh.0, 202);
    assert_eq!(existing, fresh);
    assert_eq!(other_new, fresh);
    assert!(
        fresh.1.iter().all(|(name, _)| name != "set-cookie"),
        "no cookie: {:?}",
        fresh.1
    );
    let body: Value = serde_json::from_slice(&fresh.2).unwrap();
    assert_eq!(body["status"], "accepted");
}

#[tokio::test]
async fn an_unconfirmed_address_answers_the_same_as_a_confirmed_one() {
    let app = TestApp::spawn().await;
    app.signup("confirmed@example.com", PASSWORD).await;
    assert_eq!(
        app.signup_request("pending@example.com", PASSWORD)
            .await
            .status(),
        202
    );
    let confirmed = answer(app.signup_request("confirmed@example.com", PASSWORD).await).await;
    let pending = answer(app.signup_request("pending@example.com", PASSWORD).await).await;
    assert_eq!(confirmed, pending);
}

#[tokio::test]
async fn the_owner_of_an_existing_address_is_mailed_and_the_account_is_untouched() {
    let app = TestApp::spawn().await;
    let owner = app.signup("owner@example.com", PASSWORD).await;
    assert_eq!(
        app.signup_request("Owner@Example.com", OTHER_PASSWORD)
            .await
            .status(),
        202
    );
    let mail = wait_for_mail_to(
        &app,
        "owner@example.com",
        "Someone tried to sign up with your address",
    )
    .await;
    assert!(mail.contains("sign in instead"), "{mail}");
    assert_eq!(signup_token_in(&mail), None, "no confirmation link");
    assert_eq!(app.login(&owner.email, OTHER_PASSWORD).await.status(), 401);
    assert_eq!(app.login(&owner.email, PASSWORD).await.status(), 200);
    let res = app
        .get("/api/v1/auth/session", Some(&owner))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the owner's session lives on");
}

#[tokio::test]
async fn a_new_account_signs_in_only_after_confirmation_with_its_password() {
    let app = TestApp::spawn().await;
    let email = "new@example.com";
    assert_eq!(app.signup_request(email, PASSWORD).await.status(), 202);
    assert_eq!(
        app.login(email, PASSWORD).await.status(),
        401,
        "unconfirmed"
    );
    let token = take_signup_token(&data_dir(&app), email).await;
    assert_eq!(
        app.confirm_signup(&token, OTHER_PASSWORD).await.status(),
        401,
        "the token alone does not confirm"
    );
    let res = app.confirm_signup(&token, PASSWORD).await;
    assert_eq!(res.status(), 201);
    let s = TestApp::session_from(res).await;
    assert_eq!(s.email, email);
    assert_eq!(app.login(email, PASSWORD).await.status(), 200);
    assert_eq!(
        error_type(app.confirm_signup(&token, PASSWORD).await, 400).await,
        "invalid_token",
        "single use"
    );
}

#[tokio::test]
async fn a_confirmation_token_expires_after_24_hours() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.signup_request("late@example.com", PASSWORD)
            .await
            .status(),
        202
    );
    let token = take_signup_token(&data_dir(&app), "late@example.com").await;
    app.clock.advance(time::Duration::seconds(24 * 3600 + 1));
    assert_eq!(
        error_type(app.confirm_signup(&token, PASSWORD).await, 400).await,
        "invalid_token"
    );
}

#[tokio::test]
async fn whoever_signs_an_address_up_first_cannot_plant_a_password_on_its_owner() {
    let app = TestApp::spawn_with(|s| s.public_url = Some("https://kb.example".to_owned())).await;
    let email = "victim@example.com";
    // The attacker signs the victim's address up; the link goes to the victim's mailbox.
    assert_eq!(
        app.signup_request(email, OTHER_PASSWORD).await.status(),
        202
    );
    let planted = take_signup_token(&data_dir(&app), email).await;
    // The victim signs up too: no second link, a mail that says what to do.
    assert_eq!(app.signup_request(email, PASSWORD).await.status(), 202);
    let notice = wait_for_mail_to(&app, email, "Someone tried to sign up with your address").await;
    assert!(notice.contains("reset the password"), "{notice}");
    assert_eq!(signup_token_in(&notice), None);
    // Clicking the attacker's link with the victim's own password confirms nothing.
    assert_eq!(app.confirm_signup(&planted, PASSWORD).await.status(), 401);
    // A reset proves the mailbox and confirms the account with the victim's password.
    let res = app
        .post_json(
            "/api/v1/auth/password-reset",
            None,
            &json!({"email": email}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let reset = wait_for_mail_to(&app, email, "Reset your keybroker password").await;
    let token = token_of(&reset_link(&reset).unwrap());
    let res = app
        .post_json(
            "/api/v1/auth/password-reset/confirm",
            None,
            &json!({"token": token, "password": PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.login(email, PASSWORD).await.status(), 200);
    assert_eq!(app.login(email, OTHER_PASSWORD).await.status(), 401);
    assert_eq!(
        error_type(app.confirm_signup(&planted, OTHER_PASSWORD).await, 400).await,
        "invalid_token",
        "the planted link died with the reset"
    );
}

#[tokio::test]
async fn the_confirmation_mail_carries_a_link_when_the_public_url_is_set() {
    let app = TestApp::spawn_with(|s| s.public_url = Some("https://kb.example".to_owned())).await;
    assert_eq!(
        app.signup_request("linked@example.com", PASSWORD)
            .await
            .status(),
        202
    );
    let mail = wait_for_mail_to(&app, "linked@example.com", "Confirm your keybroker account").await;
    let token = signup_token_in(&mail).unwrap();
    assert!(
        mail.contains(&format!("https://kb.example/signup/confirm?token={token}")),
        "{mail}"
    );
    app.assert_not_logged(&token["kbs_".len()..]);
}

#[tokio::test]
async fn the_confirm_page_sends_no_referrer_and_never_renders_the_token() {
    let app = TestApp::spawn().await;
    let token = keybroker::accounts::signup::SignupToken::generate();
    let res = app
        .get(&format!("/signup/confirm?token={}", token.as_str()), None)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = res.text().await.unwrap();
    assert!(body.contains("/api/v1/auth/signup/confirm"));
    assert!(!body.contains(token.as_str()));
}

#[tokio::test]
async fn fullwidth_idn_and_quoted_spellings_of_an_address_are_its_account() {
    let app = TestApp::spawn().await;
    app.signup("alice@exämple.com", PASSWORD).await;
    for spelling in [
        "alice@xn--exmple-cua.com",
        "ALICE@EXÄMPLE.COM",
        "\"alice\"@exämple.com",
        "ａｌｉｃｅ＠ｅｘäｍｐｌｅ．ｃｏｍ",
    ] {
        assert_eq!(
            app.login(spelling, PASSWORD).await.status(),
            200,
            "{spelling}"
        );
    }
    // Signing up again under another spelling is signing up the existing address.
    assert_eq!(
        app.signup_request("\"alice\"@xn--exmple-cua.com", OTHER_PASSWORD)
            .await
            .status(),
        202
    );
    wait_for_mail_to(
        &app,
        "alice@xn--exmple-cua.com",
        "Someone tried to sign up with your address",
    )
    .await;
}

#[tokio::test]
async fn a_quoted_local_part_that_needs_its_quotes_is_refused() {
    let app = TestApp::spawn().await;
    let res = app.signup_request("\"a b\"@example.com", PASSWORD).await;
    assert_eq!(error_type(res, 400).await, "invalid_email");
}

#[tokio::test]
async fn an_address_mixing_cyrillic_into_latin_is_refused_whether_or_not_its_model_exists() {
    let app = TestApp::spawn().await;
    let imitation = "\u{430}lice@example.com"; // Cyrillic а, then Latin "lice"
    let before = answer(app.signup_request(imitation, PASSWORD).await).await;
    app.signup("alice@example.com", PASSWORD).await;
    let after = answer(app.signup_request(imitation, PASSWORD).await).await;
    assert_eq!((before.0, &before.1), (400, &after.1));
    let error = |bytes: &[u8]| {
        let mut body: Value = serde_json::from_slice(bytes).unwrap();
        body["error"]["request_id"] = Value::Null;
        body
    };
    assert_eq!(
        error(&before.2),
        error(&after.2),
        "the refusal depends on the address alone"
    );
    assert_eq!(error(&after.2)["error"]["type"], "email_lookalike");
    // A Cyrillic letter in the domain, sent as punycode, is the same refusal.
    let domain = idna::domain_to_ascii("\u{435}xample.com").unwrap();
    let res = app
        .signup_request(&format!("alice@{domain}"), PASSWORD)
        .await;
    assert_eq!(error_type(res, 400).await, "email_lookalike");
}

#[tokio::test]
async fn a_whole_script_lookalike_of_an_account_is_refused_by_mail_with_the_usual_answer() {
    let app = TestApp::spawn().await;
    let fresh = answer(app.signup_request("someone@example.com", PASSWORD).await).await;
    app.signup("ape@example.com", PASSWORD).await;
    let lookalike = "\u{430}\u{440}\u{435}@example.com"; // Cyrillic "аре"
    let refused = answer(app.signup_request(lookalike, PASSWORD).await).await;
    assert_eq!(refused, fresh, "the answer does not say that ape@ exists");
    let normalised = Email::parse(lookalike).unwrap();
    let mail = wait_for_mail_to(
        &app,
        normalised.as_str(),
        "Your keybroker sign-up could not be completed",
    )
    .await;
    assert!(mail.contains("looks too much like"), "{mail}");
    assert_eq!(signup_token_in(&mail), None);
    let hasher = app.state.emails.clone();
    let found = app
        .state
        .db
        .read(move |conn| {
            accounts::find_by_email(conn, &hasher, &normalised).map_err(ApiError::from)
        })
        .await
        .unwrap();
    assert!(found.is_none(), "no account was created");
}

#[tokio::test]
async fn a_whole_script_non_latin_address_without_a_lookalike_signs_up_normally() {
    let app = TestApp::spawn().await;
    let s = app.signup("иван@пример.рф", PASSWORD).await;
    assert_eq!(s.email, "иван@xn--e1afmkfd.xn--p1ai");
}

#[tokio::test]
async fn accounts_made_before_skeletons_existed_get_theirs_at_start_up() {
    let app = TestApp::spawn().await;
    app.signup("ape@example.com", PASSWORD).await;
    let (db, vault, hasher) = (
        app.state.db.clone(),
        app.state.vault.clone(),
        app.state.emails.clone(),
    );
    let done = db
        .write(move |conn| {
            conn.execute("UPDATE accounts SET email_skeleton_hash = NULL", ())?;
            accounts::backfill(conn, &vault, &hasher).map_err(ApiError::internal)
        })
        .await
        .unwrap();
    assert_eq!(
        done,
        accounts::Backfill {
            filled: 1,
            ..Default::default()
        }
    );
    let hasher = app.state.emails.clone();
    let lookalike = Email::parse("\u{430}\u{440}\u{435}@example.com").unwrap();
    let found = app
        .state
        .db
        .read(move |conn| {
            accounts::lookalike_exists(conn, &hasher, &lookalike).map_err(ApiError::from)
        })
        .await
        .unwrap();
    assert!(found);
}

#[tokio::test]
async fn an_empty_provider_list_is_refused_and_never_means_every_provider() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let create = |body: Value| app.post_json("/api/v1/tokens", Some(&s), &body).send();
    let res = create(json!({"name": "empty", "providers": []}))
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "invalid_providers");
    let res = create(json!({"name": "unknown", "providers": ["openai", "myspace"]}))
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "unknown_provider");
    let listed: Value = app
        .get("/api/v1/tokens", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tokens"], json!([]), "nothing was issued");
    // Leaving the field out is how "every provider" is said.
    let res = create(json!({"name": "all"})).await.unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["providers"], json!([]));
}

#[tokio::test]
async fn sign_ups_of_one_address_are_throttled_whether_or_not_it_has_an_account() {
    let app = TestApp::spawn_with(|s| s.throttle.signup.per_account.attempts = 2).await;
    app.signup("taken@example.com", PASSWORD).await;
    for email in ["taken@example.com", "free@example.com"] {
        let n = if email.starts_with("taken") { 1 } else { 2 };
        for _ in 0..n {
            assert_eq!(app.signup_request(email, PASSWORD).await.status(), 202);
        }
        let res = app.signup_request(email, PASSWORD).await;
        assert_eq!(res.status(), 429, "{email}");
        assert!(res.headers().contains_key("retry-after"));
    }
}

#[tokio::test]
async fn the_owner_sees_the_attempt_in_the_audit_log() {
    let app = TestApp::spawn().await;
    let owner = app.signup("audited@example.com", PASSWORD).await;
    assert_eq!(
        app.signup_request("audited@example.com", OTHER_PASSWORD)
            .await
            .status(),
        202
    );
    let page: Value = app
        .get("/api/v1/audit", Some(&owner))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["signup.existing", "signup"]);
}
