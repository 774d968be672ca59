//! Issue 26, "clear answers": what a newcomer meets when a request is not quite right.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::TestApp;

async fn error(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json::<Value>().await.unwrap()["error"].clone())
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_named_with_what_it_must_be_on_every_json_route() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .send(Method::PUT, "/api/v1/ceilings/openai", Some(&s))
        .json(&json!({"limit_usd": 5}))
        .send()
        .await
        .unwrap();
    let (status, e) = error(res).await;
    assert_eq!(status, 400);
    assert_eq!(e["field"], "limit_usd");
    assert_eq!(
        e["message"],
        "limit_usd must be a decimal string like \"5.00\""
    );

    let res = app
        .post_json(
            "/api/v1/tokens",
            Some(&s),
            &json!({"name": "t", "providers": ["openai", 7]}),
        )
        .send()
        .await
        .unwrap();
    let (status, e) = error(res).await;
    assert_eq!(status, 400);
    assert_eq!(e["field"], "providers[1]");
    assert_eq!(e["message"], "providers[1] must be a string");

    let secret = "sk-proj-NOT-TO-BE-ECHOED-0123456789";
    let res = app
        .post_json(
            "/api/v1/keys",
            Some(&s),
            &json!({"provider": "openai", "key": [secret]}),
        )
        .send()
        .await
        .unwrap();
    let (status, e) = error(res).await;
    assert_eq!(status, 400);
    assert_eq!(e["field"], "key");
    assert!(!e.to_string().contains(secret));
}

#[tokio::test]
async fn a_provider_key_sent_where_the_token_belongs_is_told_a_kb_token_is_expected() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789")
        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    let (status, e) = error(res).await;
    assert_eq!(status, 401);
    assert_eq!(e["type"], "authentication_failed");
    assert!(e["message"].as_str().unwrap().contains("kb_"), "{e}");
    assert!(!e.to_string().contains("abcdefghijklmnop"));
}

#[tokio::test]
async fn a_token_for_a_provider_without_a_key_says_so_when_it_is_made() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    let res = app
        .post_json(
            "/api/v1/tokens",
            Some(&s),
            &json!({"name": "t", "providers": ["anthropic"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    let warnings = v["warnings"].as_array().expect("a warning");
    assert!(
        warnings[0].as_str().unwrap().contains("no anthropic key"),
        "{v}"
    );
}

#[tokio::test]
async fn changing_a_ceiling_records_its_old_and_new_figures_in_the_audit_log() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    for (limit, period) in [("5.00", "monthly"), ("2.50", "monthly")] {
        let res = app
            .send(Method::PUT, "/api/v1/ceilings/openai", Some(&s))
            .json(&json!({"limit_usd": limit, "period": period}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let page: Value = app
        .get("/api/v1/audit?action=ceiling.set", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let details: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        details,
        [
            "limit 5.00 -> 2.50",
            "limit none -> 5.00; period none -> monthly"
        ]
    );
    let report = app.state.db.read(keybroker::audit::verify).await.unwrap();
    assert!(report.first_broken.is_none(), "{report:?}");
}
