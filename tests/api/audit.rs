//! The audit log: every key and token event recorded without secrets, listed per account with
//! filters and cursor pagination, and verified (and tamper-detected) by `keybroker audit verify`.

use std::process::Command;

use keybroker::audit::{self, Actor, Outcome};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Session, TestApp};
use crate::key_helpers::{account_id, add_key, create_token, error_type, grant_reauth, openai_key};

async fn audit_page(app: &TestApp, s: &Session, query: &str) -> Value {
    let res = app
        .get(&format!("/api/v1/audit{query}"), Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{query}");
    res.json().await.unwrap()
}

fn actions(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

fn verify_cli(app: &TestApp) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["audit", "verify", "--data-dir"])
        .arg(app.db_path().parent().unwrap())
        .args(app.database_args())
        .env_remove("KEYBROKER_DATA_DIR")
        .output()
        .unwrap()
}

/// Adds, rotates, reveals and deletes a key, and creates and revokes a token, with a known
/// request id on each call. Returns the key and the token.
async fn lifecycle(app: &TestApp, s: &Session) -> (String, String) {
    let key = openai_key();
    let added = add_key(app, s, "openai", &key).await;
    let id = added["id"].as_str().unwrap();
    let rotated = openai_key();
    let res = app
        .send(Method::PUT, &format!("/api/v1/keys/{id}"), Some(s))
        .header("x-request-id", "req-rotate-1")
        .json(&json!({"key": rotated}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .send(Method::POST, &format!("/api/v1/keys/{id}/reveal"), Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    grant_reauth(app, s).await;
    let res = app
        .send(Method::POST, &format!("/api/v1/keys/{id}/reveal"), Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .get("/api/v1/keys/export?format=csv", Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .send(Method::DELETE, &format!("/api/v1/keys/{id}"), Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let token = create_token(app, s, json!({"name": "t"})).await;
    let res = app
        .send(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", token["id"].as_str().unwrap()),
            Some(s),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    (rotated, token["token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn key_and_token_events_are_recorded_with_context_and_no_secret() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let (key, token) = lifecycle(&app, &s).await;
    let res = app.get("/api/v1/audit", Some(&s)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(!text.contains(&key) && !text.contains(&token));
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        actions(&page),
        [
            "token.revoke",
            "token.create",
            "key.delete",
            "keys.export",
            "key.reveal",
            "reauth",
            "key.reveal",
            "key.rotate",
            "key.add",
            "signup"
        ]
    );
    let entries = page["entries"].as_array().unwrap();
    let rotate = &entries[7];
    assert_eq!(rotate["actor"], "user");
    assert_eq!(rotate["request_id"], "req-rotate-1");
    assert_eq!(rotate["client_addr"], "127.0.0.1");
    assert_eq!(rotate["outcome"], "success");
    assert!(rotate["resource"].as_str().unwrap().starts_with("key_"));
    assert!(rotate["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(entries[6]["outcome"], "denied");
    assert_eq!(entries[5]["action"], "reauth");
    assert_eq!(entries[5]["outcome"], "success");
    assert_eq!(entries[4]["outcome"], "success");
    assert_eq!(entries[3]["resource"], "csv");
    assert!(entries[0]["resource"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn the_audit_list_pages_with_a_cursor_and_filters() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let account = account_id(&app, &s).await;
    // 230 entries straight into the chain, spread one minute apart.
    let base = app.state.clock.unix();
    app.state
        .db
        .write(move |conn| {
            for i in 0..230i64 {
                audit::append(
                    conn,
                    &audit::Event {
                        account_id: Some(account),
                        actor: Actor::User,
                        action: if i % 2 == 0 { "test.even" } else { "test.odd" },
                        resource: "r",
                        request_id: "req",
                        client_addr: "127.0.0.1",
                        outcome: Outcome::Success,
                        at: base + 60 * (i + 1),
                    },
                )?;
            }
            Ok::<_, keybroker::db::DbError>(())
        })
        .await
        .unwrap();

    let first = audit_page(&app, &s, "").await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 50);
    let capped = audit_page(&app, &s, "?limit=1000").await;
    assert_eq!(capped["entries"].as_array().unwrap().len(), 200);

    // Walk everything 70 at a time: no entry twice, none missed, newest first.
    let mut seen: Vec<i64> = Vec::new();
    let mut query = "?limit=70".to_owned();
    loop {
        let page = audit_page(&app, &s, &query).await;
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=70&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 231); // plus the signup
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    let odd = audit_page(&app, &s, "?action=test.odd&limit=200").await;
    assert_eq!(odd["entries"].as_array().unwrap().len(), 115);
    assert!(actions(&odd).iter().all(|a| a == "test.odd"));

    let fmt = |unix: i64| {
        time::OffsetDateTime::from_unix_timestamp(unix)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    // Entries i = 9..=18 (at base + 600 ..= base + 1140), since inclusive, until exclusive.
    let query = format!("?since={}&until={}", fmt(base + 600), fmt(base + 1200));
    let window = audit_page(&app, &s, &query).await;
    assert_eq!(window["entries"].as_array().unwrap().len(), 10);

    for (query, kind) in [
        ("?format=xml", "invalid_format"),
        ("?since=yesterday", "invalid_query"),
        ("?cursor=abc", "invalid_cursor"),
        ("?limit=many", "invalid_query"),
    ] {
        let res = app
            .get(&format!("/api/v1/audit{query}"), Some(&s))
            .send()
            .await
            .unwrap();
        assert_eq!(error_type(res, 400).await, kind, "{query}");
    }
}

#[tokio::test]
async fn the_audit_list_as_csv_is_an_attachment_with_a_header_row() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", &openai_key()).await;
    let res = app
        .get("/api/v1/audit?format=csv&limit=1", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    assert!(res.headers().get("x-next-cursor").is_some());
    let text = res.text().await.unwrap();
    let mut lines = text.split("\r\n");
    assert_eq!(
        lines.next(),
        Some("id,seq,at,actor,action,resource,request_id,client_addr,outcome,detail")
    );
    assert!(lines.next().unwrap().contains(",key.add,"));
}

#[tokio::test]
async fn an_account_sees_only_its_own_audit_entries() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    add_key(&app, &a, "openai", &openai_key()).await;
    let page = audit_page(&app, &b, "").await;
    assert_eq!(actions(&page), ["signup"]);
}

#[tokio::test]
async fn there_is_no_api_to_change_or_delete_audit_entries() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        for path in ["/api/v1/audit", "/api/v1/audit/1"] {
            let res = app
                .send(method.clone(), path, Some(&s))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert!(
                res.status() == 404 || res.status() == 405,
                "{method} {path}: {}",
                res.status()
            );
        }
    }
}

#[tokio::test]
async fn audit_verify_passes_on_an_intact_log_and_reports_a_manually_edited_row() {
    let app = TestApp::spawn().await;
    let a = app.signed_up().await;
    let b = app.signed_up().await;
    lifecycle(&app, &a).await;
    add_key(&app, &b, "openai", &openai_key()).await;

    let out = verify_cli(&app);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok: every chain verifies"), "{stdout}");
    // Each account's, and chain 0 with the two sign-up requests (no account is known to them).
    assert!(stdout.contains("3 chain(s)"), "{stdout}");

    // Someone with the database file rewrites history: the revealed key was "only rotated".
    let account = account_id(&app, &a).await;
    let seq: i64 = app
        .sql(move |conn| {
            let seq = conn.query_row(
                "SELECT seq FROM audit_log WHERE chain = ?1 AND action = 'key.reveal' AND outcome = 'success'",
                [account],
                |r| r.get(0),
            )?;
            // The append-only trigger is named and dropped differently on each backend.
            conn.execute_batch(match conn.kind() {
                keybroker::db::Kind::Sqlite => "DROP TRIGGER audit_log_no_update;",
                keybroker::db::Kind::Postgres => "DROP TRIGGER audit_log_no_change ON audit_log;",
            })?;
            conn.execute(
                "UPDATE audit_log SET action = 'key.rotate' WHERE chain = ?1 AND seq = ?2",
                [account, seq],
            )?;
            Ok(seq)
        })
        .await;

    let out = verify_cli(&app);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "BROKEN: chain {account} (account {account}), entry seq {seq} "
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("entry contents do not match its hash"),
        "{stdout}"
    );
}

#[tokio::test]
async fn audit_verify_refuses_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keybroker"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
}
