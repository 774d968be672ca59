//! Shared by the keys, tokens and audit tests: unique planted keys, adding keys and tokens
//! through the API, and granting a session a re-auth window.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{Session, TestApp, PASSWORD};

/// A fresh, unique, well-formed OpenAI project key.
pub fn openai_key() -> String {
    format!(
        "sk-proj-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A fresh, unique, well-formed Anthropic key.
pub fn anthropic_key() -> String {
    format!(
        "sk-ant-api03-{}{}AA",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The SHA-256 the database keys the session by, from the cookie `name=id.tag`.
fn session_hash(s: &Session) -> Vec<u8> {
    let value = s.cookie.split_once('=').unwrap().1;
    let id = B64.decode(value.split_once('.').unwrap().0).unwrap();
    Sha256::digest(id).to_vec()
}

/// Opens the re-auth window of `s` the way a browser does: `POST /api/v1/auth/reauth` with the
/// session's CSRF token and the password every `signed_up` account has.
pub async fn grant_reauth(app: &TestApp, s: &Session) {
    let res = app
        .post_json(
            "/api/v1/auth/reauth",
            Some(s),
            &json!({"password": PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "reauth");
}

pub async fn account_id(app: &TestApp, s: &Session) -> i64 {
    let hash = session_hash(s);
    app.sql(move |conn| {
        conn.query_row(
            "SELECT account_id FROM sessions WHERE id_hash = ?1",
            [hash],
            |r| r.get(0),
        )
    })
    .await
}

/// Adds a key through the API and returns the 201 body.
pub async fn add_key(app: &TestApp, s: &Session, provider: &str, key: &str) -> Value {
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(s),
            &json!({"provider": provider, "key": key}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "add key");
    res.json().await.unwrap()
}

/// Creates a tool token through the API and returns the 201 body (with `token`).
pub async fn create_token(app: &TestApp, s: &Session, body: Value) -> Value {
    let res = app
        .post_json("/api/v1/tokens", Some(s), &body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "create token");
    res.json().await.unwrap()
}

/// The `type` of an error response, after checking its status.
pub async fn error_type(res: reqwest::Response, status: u16) -> String {
    assert_eq!(res.status(), status);
    let body: Value = res.json().await.unwrap();
    body["error"]["type"].as_str().unwrap().to_owned()
}

/// The listed keys of `s`.
pub async fn list_keys(app: &TestApp, s: &Session) -> Vec<Value> {
    let res = app.get("/api/v1/keys", Some(s)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["keys"].as_array().unwrap().clone()
}

/// The stored ciphertext of key `id`, straight from the database.
pub async fn blob_of(app: &TestApp, id: &str) -> Vec<u8> {
    let id = id.to_owned();
    app.sql(move |conn| {
        conn.query_row("SELECT blob FROM provider_keys WHERE id = ?1", [id], |r| {
            r.get(0)
        })
    })
    .await
}

/// Every text form a blob might leak in: the whole blob in base64 (both alphabets) and hex (both
/// cases), and the ciphertext part alone (after the 21-byte header and nonce, which are not
/// secret and would match any blob) in base64 and hex.
pub fn blob_encodings(blob: &[u8]) -> Vec<String> {
    let sealed = &blob[21..];
    let std = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    vec![
        std.encode(blob),
        url.encode(blob),
        hex::encode(blob),
        hex::encode_upper(blob),
        std.encode(sealed),
        url.encode(sealed),
        hex::encode(sealed),
        hex::encode_upper(sealed),
    ]
}
