//! Tool tokens: issued once with a `kb_` prefix and 256 bits, stored as SHA-256 only, scoped to
//! providers, revoked at once, and never usable across accounts.

use std::time::Duration;

use keybroker::tokens::{self, KeyAccess};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{contains, on_postgres, read_or_empty, TestApp};
use crate::key_helpers::{add_key, anthropic_key, create_token, error_type, openai_key};

async fn list_tokens(app: &TestApp, s: &crate::helpers::Session) -> Vec<Value> {
    let res = app.get("/api/v1/tokens", Some(s)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["tokens"].as_array().unwrap().clone()
}

async fn revoke(app: &TestApp, s: &crate::helpers::Session, id: &str) -> reqwest::Response {
    app.send(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(s))
        .send()
        .await
        .unwrap()
}

async fn authenticate(app: &TestApp, token: &str) -> Option<tokens::ToolToken> {
    app.state
        .tokens
        .authenticate(&app.state.db, token, app.state.clock.unix())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_token_is_shown_once_prefixed_256_bit_and_stored_as_its_sha256_only() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .post_json(
            "/api/v1/tokens",
            Some(&s),
            &json!({"name": "ci agent", "providers": ["openai"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("kb_"));
    assert_eq!(token.len(), 46);
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&token[3..])
        .unwrap();
    assert_eq!(raw.len(), 32);
    assert!(body["id"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(body["name"], "ci agent");
    assert_eq!(body["providers"], json!(["openai"]));

    let listed = list_tokens(&app, &s).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], body["id"]);
    assert!(listed[0].get("token").is_none());
    let listing = serde_json::to_string(&listed).unwrap();
    assert!(!listing.contains(&token));

    let stored: Vec<u8> = app
        .sql(|conn| conn.query_row("SELECT token_hash FROM tool_tokens", (), |r| r.get(0)))
        .await;
    assert_eq!(stored, Sha256::digest(token.as_bytes()).to_vec());
    let files = if on_postgres() {
        // Everything the database holds, as text; bytes columns are dumped as hex.
        let dump = app.pg_dump().into_bytes();
        assert!(!contains(&dump, hex::encode(token.as_bytes()).as_bytes()));
        assert!(!contains(
            &dump,
            hex::encode(&token.as_bytes()[3..]).as_bytes()
        ));
        dump
    } else {
        let db = app.db_path();
        let mut files = read_or_empty(&db);
        files.extend(read_or_empty(&db.with_file_name("keybroker.db-wal")));
        files
    };
    assert!(!contains(&files, token.as_bytes()));
    assert!(!contains(&files, &token.as_bytes()[3..]));
    app.assert_not_logged(&token);
    app.assert_not_logged(&token[3..]);
}

#[tokio::test]
async fn tokens_are_distinct() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let a = create_token(&app, &s, json!({"name": "a"})).await;
    let b = create_token(&app, &s, json!({"name": "b"})).await;
    assert_ne!(a["token"], b["token"]);
    assert_ne!(a["id"], b["id"]);
}

#[tokio::test]
async fn a_token_reaches_only_its_scoped_providers() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let key = openai_key();
    add_key(&app, &s, "openai", &key).await;
    add_key(&app, &s, "anthropic", &anthropic_key()).await;
    let issued = create_token(&app, &s, json!({"name": "oa", "providers": ["openai"]})).await;
    let token = authenticate(&app, issued["token"].as_str().unwrap())
        .await
        .unwrap();
    let vault = app.state.vault.clone();
    let (openai, anthropic, google) = app
        .state
        .db
        .read(move |conn| {
            Ok::<_, keybroker::keys::store::StoreError>((
                tokens::key_for(conn, &vault, &token, "openai")?,
                tokens::key_for(conn, &vault, &token, "anthropic")?,
                tokens::key_for(conn, &vault, &token, "google")?,
            ))
        })
        .await
        .unwrap();
    match openai {
        KeyAccess::Key { plaintext, .. } => assert_eq!(plaintext.expose_str(), Some(&*key)),
        other => panic!("expected the openai key, got {other:?}"),
    }
    assert!(matches!(anthropic, KeyAccess::NotInScope));
    assert!(matches!(google, KeyAccess::NotInScope));
}

#[tokio::test]
async fn revocation_is_immediate_and_a_revoked_token_is_gone() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let issued = create_token(&app, &s, json!({"name": "t"})).await;
    let token = issued["token"].as_str().unwrap();
    let id = issued["id"].as_str().unwrap();
    // Warm the cache, then revoke: the cached entry must not outlive the revocation.
    assert!(authenticate(&app, token).await.is_some());
    assert_eq!(revoke(&app, &s, id).await.status(), 204);
    assert!(authenticate(&app, token).await.is_none());
    assert!(list_tokens(&app, &s).await.is_empty());
    assert_eq!(
        error_type(revoke(&app, &s, id).await, 404).await,
        "not_found"
    );
}

#[tokio::test]
async fn a_revocation_made_outside_this_process_is_seen_within_a_second() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let issued = create_token(&app, &s, json!({"name": "t"})).await;
    let token = issued["token"].as_str().unwrap();
    assert!(authenticate(&app, token).await.is_some());
    let id = issued["id"].as_str().unwrap().to_owned();
    app.sql(move |conn| conn.execute("UPDATE tool_tokens SET revoked_at = 1 WHERE id = ?1", [id]))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(authenticate(&app, token).await.is_none());
}

#[tokio::test]
async fn an_expiring_token_stops_working_when_it_expires() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let expires = app.state.clock.now() + time::Duration::minutes(20);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let issued = create_token(&app, &s, json!({"name": "t", "expires_at": expires})).await;
    let token = issued["token"].as_str().unwrap();
    assert!(authenticate(&app, token).await.is_some());
    // (Under the 30-minute session idle timeout, so the listing below still works.)
    app.clock.advance(time::Duration::minutes(21));
    assert!(authenticate(&app, token).await.is_none());
    let listed = list_tokens(&app, &s).await;
    assert_eq!(listed[0]["expired"], true);
}

#[tokio::test]
async fn bad_token_requests_are_400_with_a_clear_type() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    for (body, kind) in [
        (json!({"name": ""}), "invalid_name"),
        (json!({"name": "x".repeat(101)}), "invalid_name"),
        (
            json!({"name": "t", "providers": ["nosuch"]}),
            "unknown_provider",
        ),
        (json!({"name": "t", "providers": "openai"}), "invalid_json"),
        (
            json!({"name": "t", "expires_at": "2001-01-01T00:00:00Z"}),
            "invalid_expires_at",
        ),
        (
            json!({"name": "t", "expires_at": "tomorrow"}),
            "invalid_expires_at",
        ),
        (json!({"providers": []}), "invalid_json"),
    ] {
        let res = app
            .post_json("/api/v1/tokens", Some(&s), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_type(res, 400).await, kind, "{body}");
    }
    assert!(list_tokens(&app, &s).await.is_empty());
}

#[tokio::test]
async fn another_account_can_neither_list_nor_revoke_a_token_and_gets_404() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    let issued = create_token(&app, &a, json!({"name": "a's"})).await;
    let id = issued["id"].as_str().unwrap();
    assert!(list_tokens(&app, &b).await.is_empty());
    assert_eq!(
        error_type(revoke(&app, &b, id).await, 404).await,
        "not_found"
    );
    assert!(authenticate(&app, issued["token"].as_str().unwrap())
        .await
        .is_some());
    assert_eq!(list_tokens(&app, &a).await.len(), 1);
}

#[tokio::test]
async fn a_token_of_one_account_never_reaches_another_accounts_key() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    add_key(&app, &a, "openai", &openai_key()).await;
    let issued = create_token(&app, &b, json!({"name": "b's"})).await;
    let token = authenticate(&app, issued["token"].as_str().unwrap())
        .await
        .unwrap();
    let vault = app.state.vault.clone();
    let access = app
        .state
        .db
        .read(move |conn| tokens::key_for(conn, &vault, &token, "openai"))
        .await
        .unwrap();
    assert!(matches!(access, KeyAccess::NoKey));
}
