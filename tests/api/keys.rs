//! Provider keys through the API: add, list, rotate, delete, reveal, export; bad input; keys in
//! URLs; isolation between accounts; and what reaches logs and exports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keybroker::keys::store;
use keybroker::tokens::{self, KeyAccess};
use reqwest::Method;
use serde_json::{json, Value};

use crate::fake_upstream::OPENAI_USAGE;
use crate::helpers::{Session, TestApp};
use crate::key_helpers::{
    account_id, add_key, anthropic_key, blob_encodings, blob_of, create_token, error_type,
    grant_reauth, list_keys, openai_key,
};
use crate::proxy::{
    self, app_with_upstream, chat, expected_micros, micros, set_ceiling, OPENAI_KEY,
};

async fn reveal(app: &TestApp, s: &Session, id: &str) -> reqwest::Response {
    app.send(Method::POST, &format!("/api/v1/keys/{id}/reveal"), Some(s))
        .send()
        .await
        .unwrap()
}

async fn rotate(app: &TestApp, s: &Session, id: &str, body: Value) -> reqwest::Response {
    app.send(Method::PUT, &format!("/api/v1/keys/{id}"), Some(s))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn delete(app: &TestApp, s: &Session, id: &str) -> reqwest::Response {
    app.send(Method::DELETE, &format!("/api/v1/keys/{id}"), Some(s))
        .send()
        .await
        .unwrap()
}

async fn export(app: &TestApp, s: &Session, format: &str) -> reqwest::Response {
    app.get(&format!("/api/v1/keys/export?format={format}"), Some(s))
        .send()
        .await
        .unwrap()
}

/// The key the store would hand the proxy for `provider`, if any.
async fn stored_key(app: &TestApp, account: i64, provider: &'static str) -> Option<String> {
    let vault = app.state.vault.clone();
    app.state
        .db
        .read(move |conn| store::open(conn, &vault, account, provider))
        .await
        .unwrap()
        .map(|(_, p)| p.expose_str().unwrap().to_owned())
}

#[tokio::test]
async fn adding_a_key_returns_its_mask_and_fingerprint_never_the_key() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let key = openai_key();
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(&s),
            &json!({"provider": "openai", "key": key, "label": "prod"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let text = res.text().await.unwrap();
    assert!(!text.contains(&key));
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut fields: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "created_at",
            "fingerprint",
            "id",
            "label",
            "last_used_at",
            "masked",
            "provider",
            "rotated_at"
        ]
    );
    assert!(body["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(body["provider"], "openai");
    assert_eq!(body["label"], "prod");
    assert_eq!(
        body["masked"],
        format!("sk-proj-…{}", &key[key.len() - 4..])
    );
    let fp = body["fingerprint"].as_str().unwrap();
    assert!(fp.starts_with("fp_") && fp.len() == 19);
    assert!(fp[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(body["rotated_at"], Value::Null);
    assert_eq!(body["last_used_at"], Value::Null);
    assert_eq!(
        stored_key(&app, account_id(&app, &s).await, "openai")
            .await
            .as_deref(),
        Some(key.as_str())
    );
    app.assert_not_logged(&key);
}

#[tokio::test]
async fn a_second_key_for_the_same_provider_is_409_key_exists_pointing_to_rotation() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let first = add_key(&app, &s, "openai", &openai_key()).await;
    let second = openai_key();
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(&s),
            &json!({"provider": "openai", "key": second}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "key_exists");
    assert_eq!(body["error"]["key_id"], first["id"]);
    assert!(body["error"]["message"].as_str().unwrap().contains("PUT"));
    assert_eq!(list_keys(&app, &s).await.len(), 1);
    app.assert_not_logged(&second);
}

#[tokio::test]
async fn the_list_shows_masks_only() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let (k1, k2) = (openai_key(), anthropic_key());
    add_key(&app, &s, "openai", &k1).await;
    add_key(&app, &s, "anthropic", &k2).await;
    let res = app.get("/api/v1/keys", Some(&s)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(!text.contains(&k1) && !text.contains(&k2));
    let body: Value = serde_json::from_str(&text).unwrap();
    let masks: Vec<&str> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["masked"].as_str().unwrap())
        .collect();
    assert_eq!(
        masks,
        [
            format!("sk-proj-…{}", &k1[k1.len() - 4..]),
            format!("sk-ant-api03-…{}", &k2[k2.len() - 4..])
        ]
    );
}

#[tokio::test]
async fn a_key_of_the_wrong_format_is_400_invalid_key_format_without_echoing_it() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    // An OpenAI key pasted as an Anthropic one.
    let key = openai_key();
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(&s),
            &json!({"provider": "anthropic", "key": key}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    assert!(!text.contains(&key), "the refusal echoes the key");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["type"], "invalid_key_format");
    assert!(list_keys(&app, &s).await.is_empty());
    app.assert_not_logged(&key);
}

#[tokio::test]
async fn every_supported_provider_accepts_a_key_of_its_format() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let hex32 = || uuid::Uuid::new_v4().simple().to_string();
    let keys = [
        ("openai", openai_key()),
        ("anthropic", anthropic_key()),
        (
            "google",
            format!("AIza{}", &format!("{}{}", hex32(), hex32())[..35]),
        ),
        ("elevenlabs", format!("sk_{}{}", hex32(), &hex32()[..16])),
        ("stripe", format!("sk_test_{}", hex32())),
        ("twilio", format!("AC{}:{}", hex32(), hex32())),
        ("resend", format!("re_{}", hex32())),
        ("vultr", hex32().to_uppercase()),
        ("railway", uuid::Uuid::new_v4().to_string()),
    ];
    for (provider, key) in &keys {
        let body = add_key(&app, &s, provider, key).await;
        assert_eq!(body["provider"], *provider);
        assert!(body["masked"].as_str().unwrap().contains('…'));
    }
    assert_eq!(list_keys(&app, &s).await.len(), keys.len());
}

#[tokio::test]
async fn bad_input_is_400_with_a_clear_type_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let json_cases = [
        (
            json!({"provider": "nosuch", "key": openai_key()}),
            "unknown_provider",
        ),
        (json!({"provider": "openai", "key": ""}), "invalid_key"),
        (json!({"provider": "openai", "key": "   "}), "invalid_key"),
        (
            json!({"provider": "openai", "key": format!("sk-{}", "a".repeat(5000))}),
            "invalid_key",
        ),
        (json!({"provider": "openai", "key": 12345}), "invalid_json"),
        (json!({"provider": ["openai"], "key": "x"}), "invalid_json"),
        (json!({"provider": "openai"}), "invalid_json"),
        (
            json!({"provider": "openai", "key": openai_key(), "label": 7}),
            "invalid_json",
        ),
        (
            json!({"provider": "openai", "key": openai_key(), "label": "a\u{0007}b"}),
            "invalid_label",
        ),
    ];
    for (body, kind) in json_cases {
        let res = app
            .post_json("/api/v1/keys", Some(&s), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_type(res, 400).await, kind, "{body}");
    }
    // Not UTF-8.
    let mut raw = br#"{"provider": "openai", "key": "sk-"#.to_vec();
    raw.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    raw.extend_from_slice(br#""}"#);
    let res = app
        .send(Method::POST, "/api/v1/keys", Some(&s))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "invalid_json");
    // A 1 MB key gets its own clear 400, without the key echoed.
    let huge = format!("sk-{}", "a".repeat(1024 * 1024));
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(&s),
            &json!({"provider": "openai", "key": huge}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("\"invalid_key\"") && body.len() < 1000,
        "{}",
        &body[..body.len().min(300)]
    );
    // A body past the key routes' 2 MiB limit is refused before it is parsed.
    let huger = format!("sk-{}", "a".repeat(3 * 1024 * 1024));
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(&s),
            &json!({"provider": "openai", "key": huger}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 413).await, "payload_too_large");
    assert!(list_keys(&app, &s).await.is_empty());
    let rows: i64 = app
        .sql(|conn| conn.query_row("SELECT COUNT(*) FROM provider_keys", (), |r| r.get(0)))
        .await;
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_masked_value_sent_back_is_never_stored_as_a_key() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let key = openai_key();
    let added = add_key(&app, &s, "openai", &key).await;
    let id = added["id"].as_str().unwrap();
    let masked = added["masked"].as_str().unwrap();
    let res = rotate(&app, &s, id, json!({"key": masked})).await;
    assert_eq!(error_type(res, 400).await, "masked_value");
    let res = rotate(&app, &s, id, json!({"key": "sk-proj-...abcd"})).await;
    assert_eq!(error_type(res, 400).await, "masked_value");
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(&s),
            &json!({"provider": "anthropic", "key": "sk-ant-api03-…AbCd"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "masked_value");
    let account = account_id(&app, &s).await;
    assert_eq!(
        stored_key(&app, account, "openai").await.as_deref(),
        Some(key.as_str())
    );
    assert_eq!(stored_key(&app, account, "anthropic").await, None);
}

#[tokio::test]
async fn rotation_replaces_the_key_and_sets_rotated_at() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let (old, new) = (openai_key(), openai_key());
    let added = add_key(&app, &s, "openai", &old).await;
    let id = added["id"].as_str().unwrap();
    app.clock.advance(time::Duration::minutes(5));
    let res = rotate(&app, &s, id, json!({"key": new, "label": "rotated"})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["label"], "rotated");
    assert_eq!(body["created_at"], added["created_at"]);
    assert!(body["rotated_at"].is_string());
    assert_eq!(
        body["masked"],
        format!("sk-proj-…{}", &new[new.len() - 4..])
    );
    assert_ne!(body["fingerprint"], added["fingerprint"]);
    assert_eq!(
        stored_key(&app, account_id(&app, &s).await, "openai")
            .await
            .as_deref(),
        Some(new.as_str())
    );
    let key_id = id.to_owned();
    let generation: i64 = app
        .sql(move |conn| {
            conn.query_row(
                "SELECT generation FROM provider_keys WHERE id = ?1",
                [key_id],
                |r| r.get(0),
            )
        })
        .await;
    assert_eq!(generation, 2);
    // A key of the wrong format is refused and the current one kept.
    let res = rotate(&app, &s, id, json!({"key": anthropic_key()})).await;
    assert_eq!(error_type(res, 400).await, "invalid_key_format");
    app.assert_not_logged(&old);
    app.assert_not_logged(&new);
}

#[tokio::test]
async fn the_same_key_gets_the_same_fingerprint() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let key = openai_key();
    let first = add_key(&app, &s, "openai", &key).await;
    let id = first["id"].as_str().unwrap();
    let res = rotate(&app, &s, id, json!({"key": key})).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["fingerprint"], first["fingerprint"]);
}

/// At the store level: a reader decrypting while the key is rotated again and again sees the old
/// key or the new one, never an error and never anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_seen_by_a_concurrent_reader_is_old_or_new_never_broken() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let account = account_id(&app, &s).await;
    let keys: Vec<String> = (0..40).map(|_| openai_key()).collect();
    let added = add_key(&app, &s, "openai", &keys[0]).await;
    let id = added["id"].as_str().unwrap().to_owned();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (db, vault, keys, done) = (
            app.state.db.clone(),
            app.state.vault.clone(),
            keys.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                let got = db
                    .read_blocking(|conn| store::open(conn, &vault, account, "openai"))
                    .expect("a read during rotation never fails")
                    .expect("the key never disappears during rotation");
                let plain = got.1.expose_str().unwrap().to_owned();
                assert!(keys.contains(&plain), "a read saw a key that was never set");
                reads += 1;
            }
            reads
        })
    };
    for key in &keys[1..] {
        let (db, vault, id, key) = (
            app.state.db.clone(),
            app.state.vault.clone(),
            id.clone(),
            key.clone(),
        );
        tokio::task::spawn_blocking(move || {
            db.write_blocking(|conn| {
                let row = store::get(conn, account, &id)?.unwrap();
                let rotation = store::Rotation {
                    masked: "x",
                    fingerprint: "fp",
                    now: 0,
                };
                store::rotate(conn, &vault, account, &row, &rotation, key.as_bytes())
                    .map(|_| ())
                    .map_err(|e| keybroker::db::DbError::Config(e.to_string()))
            })
        })
        .await
        .unwrap()
        .unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(
        stored_key(&app, account, "openai").await.as_deref(),
        Some(keys.last().unwrap().as_str())
    );
}

#[tokio::test]
async fn deleting_needs_recent_reauth_and_takes_effect_on_the_next_call() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let account = account_id(&app, &s).await;
    let added = add_key(&app, &s, "openai", &openai_key()).await;
    let id = added["id"].as_str().unwrap();
    let token = create_token(&app, &s, json!({"name": "agent"})).await;
    let token = app
        .state
        .tokens
        .authenticate(
            &app.state.db,
            token["token"].as_str().unwrap(),
            app.state.clock.unix(),
        )
        .await
        .unwrap()
        .unwrap();

    let res = delete(&app, &s, id).await;
    assert_eq!(error_type(res, 403).await, "reauth_required");
    assert_eq!(list_keys(&app, &s).await.len(), 1);

    grant_reauth(&app, &s).await;
    let res = delete(&app, &s, id).await;
    assert_eq!(res.status(), 204);
    assert!(list_keys(&app, &s).await.is_empty());
    assert_eq!(stored_key(&app, account, "openai").await, None);
    // What the proxy will ask on its next call.
    let vault = app.state.vault.clone();
    let access = app
        .state
        .db
        .read(move |conn| tokens::key_for(conn, &vault, &token, "openai"))
        .await
        .unwrap();
    assert!(matches!(access, KeyAccess::NoKey));
    let res = delete(&app, &s, id).await;
    assert_eq!(error_type(res, 404).await, "not_found");
}

#[tokio::test]
async fn reveal_works_only_inside_the_reauth_window_and_is_not_cached() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let key = anthropic_key();
    let added = add_key(&app, &s, "anthropic", &key).await;
    let id = added["id"].as_str().unwrap();

    let res = reveal(&app, &s, id).await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(error_type(res, 403).await, "reauth_required");

    grant_reauth(&app, &s).await;
    let res = reveal(&app, &s, id).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"key": key}));

    app.clock.advance(time::Duration::minutes(11));
    let res = reveal(&app, &s, id).await;
    assert_eq!(error_type(res, 403).await, "reauth_required");
    app.assert_not_logged(&key);
}

#[tokio::test]
async fn reveal_needs_the_csrf_token() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let added = add_key(&app, &s, "openai", &openai_key()).await;
    grant_reauth(&app, &s).await;
    let res = app
        .client
        .post(app.url(&format!(
            "/api/v1/keys/{}/reveal",
            added["id"].as_str().unwrap()
        )))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 403).await, "csrf");
}

#[tokio::test]
async fn another_account_can_neither_see_nor_touch_a_key_and_gets_404() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    let a_key = openai_key();
    let added = add_key(&app, &a, "openai", &a_key).await;
    let a_id = added["id"].as_str().unwrap();
    let b_key = openai_key();
    add_key(&app, &b, "openai", &b_key).await;
    grant_reauth(&app, &b).await;

    let b_list = list_keys(&app, &b).await;
    assert_eq!(b_list.len(), 1);
    assert_ne!(b_list[0]["id"], added["id"]);
    assert_eq!(
        error_type(reveal(&app, &b, a_id).await, 404).await,
        "not_found"
    );
    let res = rotate(&app, &b, a_id, json!({"key": openai_key()})).await;
    assert_eq!(error_type(res, 404).await, "not_found");
    // Even with a malformed key: the id is checked first, so the answer says nothing.
    let res = rotate(&app, &b, a_id, json!({"key": "nonsense"})).await;
    assert_eq!(error_type(res, 404).await, "not_found");
    assert_eq!(
        error_type(delete(&app, &b, a_id).await, 404).await,
        "not_found"
    );
    for format in ["json", "csv"] {
        let text = export(&app, &b, format).await.text().await.unwrap();
        assert!(!text.contains(a_id), "B's {format} export names A's key");
    }
    // A tool token of B reaches B's key only.
    let token = create_token(&app, &b, json!({"name": "b-agent"})).await;
    let (presented, now) = (
        token["token"].as_str().unwrap().to_owned(),
        app.state.clock.unix(),
    );
    let token = app
        .sql(move |conn| tokens::authenticate(conn, &presented, now))
        .await
        .unwrap();
    let vault = app.state.vault.clone();
    let got = app
        .state
        .db
        .read(move |conn| tokens::key_for(conn, &vault, &token, "openai"))
        .await
        .unwrap();
    match got {
        KeyAccess::Key { plaintext, .. } => assert_eq!(plaintext.expose_str(), Some(&*b_key)),
        other => panic!("expected B's key, got {other:?}"),
    }
    // A's key is untouched.
    assert_eq!(
        stored_key(&app, account_id(&app, &a).await, "openai")
            .await
            .as_deref(),
        Some(a_key.as_str())
    );
}

#[tokio::test]
async fn a_key_in_the_url_is_refused_with_key_in_url_and_not_logged() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let key = openai_key();
    let free_form = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let token = format!("kb_{}", "Zq9".repeat(14) + "x");
    let urls = [
        format!("/api/v1/keys?key={key}"),
        format!("/api/v1/keys?provider=openai&q=Bearer%20{key}"),
        format!("/api/v1/keys/{key}/reveal"),
        format!("/api/v1/audit?api_key={free_form}"),
        format!("/anything?t={token}"),
    ];
    for url in &urls {
        let res = app.get(url, Some(&s)).send().await.unwrap();
        let text = res.text().await.unwrap();
        assert!(!text.contains(&key) && !text.contains(&free_form) && !text.contains(&token));
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["type"], "key_in_url", "{url}");
    }
    // Refused before anything else: no session needed, and a POST with the key in the body
    // *and* the URL is refused too.
    let res = app
        .post_json(
            &format!("/api/v1/keys?key={key}"),
            Some(&s),
            &json!({"provider": "openai", "key": key}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "key_in_url");
    let res = app
        .get(&format!("/healthz?key={key}"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(error_type(res, 400).await, "key_in_url");
    assert!(list_keys(&app, &s).await.is_empty());
    app.assert_not_logged(&key);
    app.assert_not_logged(&free_form);
    app.assert_not_logged(&token);
    // The access log still recorded the requests, by pattern only.
    assert!(app.logs().contains("<unmatched>"));
}

#[tokio::test]
async fn ordinary_query_strings_pass_the_guard_and_are_not_logged_either() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let marker = format!("marker{}", uuid::Uuid::new_v4().simple());
    let res = app
        .get(
            &format!(
                "/api/v1/audit?format=json&action={marker}&since=2020-01-01T00:00:00Z&limit=10"
            ),
            Some(&s),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The access log names the route pattern, not the path or the query.
    assert!(app.logs().contains("/api/v1/audit"));
    app.assert_not_logged(&marker);
}

#[tokio::test]
async fn the_export_carries_every_column_and_no_key_material() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let keys = [openai_key(), anthropic_key()];
    let a = add_key(&app, &s, "openai", &keys[0]).await;
    let b = add_key(&app, &s, "anthropic", &keys[1]).await;
    let mut leaks: Vec<String> = keys.to_vec();
    for added in [&a, &b] {
        leaks.extend(blob_encodings(
            &blob_of(&app, added["id"].as_str().unwrap()).await,
        ));
    }

    let res = export(&app, &s, "json").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    assert_eq!(res.headers()["cache-control"], "no-store");
    let text = res.text().await.unwrap();
    for leak in &leaks {
        assert!(
            !text.contains(leak.as_str()),
            "the JSON export leaks key material"
        );
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    let rows = body["keys"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let row = &rows[0];
    for field in [
        "id",
        "provider",
        "label",
        "masked",
        "fingerprint",
        "created_at",
        "rotated_at",
        "last_used_at",
        "ceiling_usd",
        "spent_usd",
    ] {
        assert!(row.get(field).is_some(), "{field} missing");
    }
    assert_eq!(row["id"], a["id"]);
    assert_eq!(row["fingerprint"], a["fingerprint"]);
    assert_eq!(row["spent_usd"], "0.00");
    assert_eq!(row["ceiling_usd"], Value::Null);

    let res = export(&app, &s, "csv").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let text = res.text().await.unwrap();
    for leak in &leaks {
        assert!(
            !text.contains(leak.as_str()),
            "the CSV export leaks key material"
        );
    }
    assert!(text.starts_with(
        "id,provider,label,masked,fingerprint,created_at,rotated_at,last_used_at,ceiling_usd,spent_usd\r\n"
    ));
    assert_eq!(text.lines().count(), 3);

    let res = export(&app, &s, "xml").await;
    assert_eq!(error_type(res, 400).await, "invalid_format");
    for leak in &leaks {
        app.assert_not_logged(leak);
    }
}

#[tokio::test]
async fn csv_cells_that_would_be_formulas_are_neutralised() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let labels = [
        ("openai", openai_key(), "=HYPERLINK(\"http://evil\",\"x\")"),
        ("anthropic", anthropic_key(), "+1+1"),
        ("stripe", format!("sk_test_{}", "a".repeat(24)), "-2+3"),
        // Two character classes: a body of one (`re_bbbb…`) is a placeholder, not a key.
        ("resend", format!("re_{}", "b2".repeat(12)), "@SUM(A1:A2)"),
        ("vultr", "Q".repeat(36), "plain, with \"quotes\""),
    ];
    for (provider, key, label) in &labels {
        let res = app
            .post_json(
                "/api/v1/keys",
                Some(&s),
                &json!({"provider": provider, "key": key, "label": label}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let text = export(&app, &s, "csv").await.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let got: Vec<String> = reader
        .records()
        .map(|r| r.unwrap().get(2).unwrap().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            "'=HYPERLINK(\"http://evil\",\"x\")",
            "'+1+1",
            "'-2+3",
            "'@SUM(A1:A2)",
            "plain, with \"quotes\""
        ]
    );
    // The JSON export keeps labels as they are: JSON is not a spreadsheet.
    let body: Value = export(&app, &s, "json").await.json().await.unwrap();
    assert_eq!(body["keys"][1]["label"], "+1+1");
}

#[tokio::test]
async fn key_routes_need_a_session() {
    let app = TestApp::spawn().await;
    for (method, path) in [
        (Method::GET, "/api/v1/keys"),
        (Method::POST, "/api/v1/keys"),
        (Method::PUT, "/api/v1/keys/key_x"),
        (Method::DELETE, "/api/v1/keys/key_x"),
        (Method::POST, "/api/v1/keys/key_x/reveal"),
        (Method::GET, "/api/v1/keys/export"),
    ] {
        let res = app
            .send(method.clone(), path, None)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{method} {path}");
    }
}

#[tokio::test]
async fn the_export_shows_the_ceiling_and_the_spend_of_proxied_calls() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    let added = proxy::add_key(&app, &s, "openai", OPENAI_KEY).await;
    set_ceiling(&app, &s, "openai", "2.50").await;
    let t = proxy::token(&app, &s, None).await;
    for _ in 0..3 {
        let res = app
            .client
            .post(app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&t)
            .json(&chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    // Settlement follows the last body byte: wait until nothing is held any more.
    for _ in 0..100 {
        if proxy::ceiling(&app, &s, "openai").await["reserved_usd"] == "0.00" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // gpt-4o-mini: $0.15 in, $0.60 out per million; each call rounded up on its own.
    let per_call = expected_micros(&[(OPENAI_USAGE.0, 0.15), (OPENAI_USAGE.1, 0.60)]);
    let spent = proxy::ceiling(&app, &s, "openai").await["spent_usd"].clone();
    assert_eq!(micros(&spent), 3 * per_call);

    let body: Value = export(&app, &s, "json").await.json().await.unwrap();
    let row = &body["keys"][0];
    assert_eq!(row["id"], added["id"]);
    assert_eq!(row["ceiling_usd"], "2.50");
    assert_eq!(row["spent_usd"], spent);

    let text = export(&app, &s, "csv").await.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    let cell = |name: &str| {
        let i = headers.iter().position(|h| h == name).unwrap();
        rows[0][i].to_owned()
    };
    assert_eq!(cell("id"), added["id"].as_str().unwrap());
    assert_eq!(cell("ceiling_usd"), "2.50");
    assert_eq!(cell("spent_usd"), spent.as_str().unwrap());
}
