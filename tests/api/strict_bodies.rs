//! Every JSON body the API reads is strict (issue 22): a field no handler knows is refused with
//! 400 `invalid_json` naming it, and nothing is stored. The operations come from `/openapi.json`
//! (which a discovery test holds equal to the route table), so a route added later with a body is
//! checked without anyone listing it here.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{on_postgres, Session, TestApp};
use crate::key_helpers::grant_reauth;

/// Operations with a request body that is not ours to judge, each with its reason.
const EXCEPTIONS: &[(&str, &str)] = &[
    // The proxy forwards the provider's own body as is; the provider decides what it accepts.
    ("post", "/proxy/{provider}/{tail}"),
    ("put", "/proxy/{provider}/{tail}"),
    ("patch", "/proxy/{provider}/{tail}"),
    ("delete", "/proxy/{provider}/{tail}"),
    ("get", "/proxy/{provider}/{tail}"),
];

/// A concrete URL for a documented path template.
fn concrete(path: &str) -> String {
    path.replace("{provider}", "openai")
        .replace("{id}", "no-such-id")
}

/// Every documented operation that takes a JSON body: (method, path, needs a session).
fn operations_with_a_body(doc: &Value) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(content) = op["requestBody"]["content"].as_object() else {
                continue;
            };
            if !content.contains_key("application/json") {
                continue;
            }
            if EXCEPTIONS.contains(&(method.as_str(), path.as_str())) {
                continue;
            }
            let session = op["security"]
                .as_array()
                .is_some_and(|alts| alts.iter().any(|a| a.get("session").is_some()));
            out.push((method.clone(), path.clone(), session));
        }
    }
    out
}

/// Rows per table of this server's database, to show a refused body stored nothing. Table names
/// come from the database's own catalog, never from input.
async fn row_counts(app: &TestApp) -> Vec<(String, i64)> {
    let postgres = on_postgres();
    app.sql(move |conn| {
        let tables: Vec<String> = if postgres {
            conn.query_all(
                "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
                (),
                |r| r.get(0),
            )?
        } else {
            conn.query_all(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
                (),
                |r| r.get(0),
            )?
        };
        let mut out = Vec::new();
        for t in tables {
            let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), (), |r| r.get(0))?;
            out.push((t, n));
        }
        Ok(out)
    })
    .await
}

async fn send(app: &TestApp, method: &str, path: &str, s: Option<&Session>) -> reqwest::Response {
    let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
    app.send(m, &concrete(path), s)
        .json(&json!({"zz_not_a_field": 1}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_json_body_refuses_a_field_no_handler_knows_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    // A fresh re-auth, so no route refuses for want of one before reading the body.
    grant_reauth(&app, &s).await;
    let doc: Value = app
        .get("/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations = operations_with_a_body(&doc);
    assert!(
        operations.len() >= 12,
        "too few operations found: {operations:?}"
    );
    for (method, path) in EXCEPTIONS {
        assert!(
            doc["paths"][path][method].is_object(),
            "exception {method} {path} is not an operation any more: drop it"
        );
    }
    let before = row_counts(&app).await;
    for (method, path, session) in &operations {
        let res = send(&app, method, path, session.then_some(&s)).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["type"], "invalid_json",
            "{method} {path}: {body}"
        );
        assert_eq!(
            body["error"]["field"], "zz_not_a_field",
            "{method} {path}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("zz_not_a_field"),
            "{method} {path}: {message}"
        );
    }
    assert_eq!(
        row_counts(&app).await,
        before,
        "a refused body stored something"
    );
}

#[tokio::test]
async fn a_misspelt_optional_field_is_refused_not_silently_dropped() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .post_json(
            "/api/v1/tokens",
            Some(&s),
            &json!({"name": "ci", "expires": "2030-01-01T00:00:00Z"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_json");
    assert_eq!(body["error"]["field"], "expires");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("expires is not a field keybroker knows"),
        "{body}"
    );
    // The typo of a required field names the typo, not the missing field.
    let res = app
        .post_json("/api/v1/tokens", Some(&s), &json!({"nmae": "ci"}))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["field"], "nmae");
}
