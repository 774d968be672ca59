//! Attribution (issue 22): proxied calls may name their agent in `X-Keybroker-Agent`; the label
//! is checked, never forwarded, recorded with the call, and usage is answered per token or per
//! agent label (`GET /api/v1/usage?group_by=token|agent`).

use serde_json::{json, Value};

use crate::fake_upstream::{FakeUpstream, OPENAI_USAGE};
use crate::helpers::{Session, TestApp};
use crate::key_helpers::{create_token, error_type};
use crate::proxy::{add_key, app_with_upstream, micros, set_ceiling, OPENAI_KEY};

async fn chat(app: &TestApp, token: &str, agent: Option<&str>) -> reqwest::Response {
    let mut rb = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(agent) = agent {
        rb = rb.header("X-Keybroker-Agent", agent);
    }
    rb.send().await.unwrap()
}

async fn usage(app: &TestApp, s: &Session, query: &str) -> Value {
    let res = app
        .get(&format!("/api/v1/usage{query}"), Some(s))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{query}");
    res.json().await.unwrap()
}

struct Setup {
    app: TestApp,
    upstream: FakeUpstream,
    s: Session,
    alpha: (String, String),
    beta: (String, String),
}

/// Two tokens, two labels and no label, five calls served and one refused by the ceiling:
/// alpha: planner ×2, no label ×1; beta: planner ×1, coder ×1, then coder refused.
async fn calls_by_two_tokens_and_two_agents() -> Setup {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let mut tokens = Vec::new();
    for name in ["alpha", "beta"] {
        let t = create_token(&app, &s, json!({"name": name})).await;
        tokens.push((
            t["id"].as_str().unwrap().to_owned(),
            t["token"].as_str().unwrap().to_owned(),
        ));
    }
    let (alpha, beta) = (tokens[0].clone(), tokens[1].clone());
    for (token, agent) in [
        (&alpha, Some("planner")),
        (&alpha, Some("  planner ")),
        (&alpha, None),
        (&beta, Some("planner")),
        (&beta, Some("coder")),
    ] {
        let res = chat(&app, &token.1, agent).await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    // Spent is over this limit: the next call is refused, and still attributed.
    set_ceiling(&app, &s, "openai", "0.000001").await;
    let res = chat(&app, &beta.1, Some("coder")).await;
    assert_eq!(error_type(res, 402).await, "spend_ceiling_reached");
    assert_eq!(upstream.recorder.count(), 5);
    Setup {
        app,
        upstream,
        s,
        alpha,
        beta,
    }
}

/// A group's figures: (calls, refused, failed, input tokens, output tokens, spend in micros).
fn figures(g: &Value) -> (i64, i64, i64, i64, i64, i64) {
    (
        g["calls"].as_i64().unwrap(),
        g["refused"].as_i64().unwrap(),
        g["failed"].as_i64().unwrap(),
        g["input_tokens"].as_i64().unwrap(),
        g["output_tokens"].as_i64().unwrap(),
        micros(&g["spend_usd"]),
    )
}

#[tokio::test]
async fn usage_is_answered_per_token_and_per_agent_label_with_exact_figures() {
    let Setup {
        app,
        s,
        alpha,
        beta,
        ..
    } = calls_by_two_tokens_and_two_agents().await;
    let (i, o) = (OPENAI_USAGE.0 as i64, OPENAI_USAGE.1 as i64);
    // The default answer is unchanged: per provider.
    let by_provider = usage(&app, &s, "").await;
    assert!(by_provider.get("groups").is_none());
    let total = &by_provider["providers"][0];
    assert_eq!(total["provider"], "openai");
    let (_, _, _, _, _, spent) = figures(total);
    assert_eq!(spent % 5, 0, "five identical calls");
    let per_call = spent / 5;
    assert!(per_call > 0);
    assert_eq!(figures(total), (6, 1, 0, 5 * i, 5 * o, 5 * per_call));
    assert_eq!(
        usage(&app, &s, "?group_by=provider").await["providers"],
        by_provider["providers"]
    );

    let by_token = usage(&app, &s, "?group_by=token").await;
    assert!(by_token.get("providers").is_none());
    let groups = by_token["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let of = |id: &str| groups.iter().find(|g| g["token_id"] == id).unwrap().clone();
    let a = of(&alpha.0);
    assert_eq!(a["token_name"], "alpha");
    assert_eq!(a["provider"], "openai");
    assert!(a.get("agent").is_none());
    assert_eq!(figures(&a), (3, 0, 0, 3 * i, 3 * o, 3 * per_call));
    let b = of(&beta.0);
    assert_eq!(b["token_name"], "beta");
    assert_eq!(figures(&b), (3, 1, 0, 2 * i, 2 * o, 2 * per_call));

    let by_agent = usage(&app, &s, "?group_by=agent").await;
    let groups = by_agent["groups"].as_array().unwrap();
    let labels: Vec<&Value> = groups.iter().map(|g| &g["agent"]).collect();
    assert_eq!(labels, [&Value::Null, &json!("coder"), &json!("planner")]);
    assert!(groups[0].get("token_id").is_none());
    assert_eq!(figures(&groups[0]), (1, 0, 0, i, o, per_call));
    assert_eq!(figures(&groups[1]), (2, 1, 0, i, o, per_call));
    assert_eq!(figures(&groups[2]), (3, 0, 0, 3 * i, 3 * o, 3 * per_call));

    // A window that ends before the calls has none.
    let empty = usage(&app, &s, "?group_by=agent&until=1000&since=0").await;
    assert_eq!(empty["groups"], json!([]));
}

#[tokio::test]
async fn an_unknown_group_by_is_refused() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    for bad in ["model", "Token", ""] {
        let res = app
            .get(&format!("/api/v1/usage?group_by={bad}"), Some(&s))
            .send()
            .await
            .unwrap();
        assert_eq!(error_type(res, 400).await, "invalid_group_by", "{bad:?}");
    }
}

#[tokio::test]
async fn the_agent_label_never_reaches_the_provider_and_is_shown_with_recent_calls() {
    let Setup {
        app, upstream, s, ..
    } = calls_by_two_tokens_and_two_agents().await;
    for call in upstream.recorder.calls() {
        assert!(
            !call
                .headers
                .iter()
                .any(|(name, value)| name.starts_with("x-keybroker") || value.contains("planner")),
            "{:?}",
            call.headers
        );
    }
    let page = app
        .get("/dashboard/spend", Some(&s))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("(planner)"),
        "the recent calls show the label"
    );
    assert!(page.contains("(coder)"));
}

#[tokio::test]
async fn a_malformed_or_secret_shaped_label_is_refused_and_never_stored_or_logged() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = create_token(&app, &s, json!({"name": "t"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let long = "a".repeat(65);
    for bad in ["", "   ", long.as_str(), "caf\u{e9}"] {
        let res = app
            .client
            .post(app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&t)
            .header(
                "X-Keybroker-Agent",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .json(&json!({"model": "gpt-4o-mini", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_type(res, 400).await, "invalid_agent_label", "{bad:?}");
    }
    // An AWS access key id: a secret shape short enough to be a label.
    let secret: String = "AKIA"
        .chars()
        .chain(
            uuid::Uuid::new_v4()
                .as_bytes()
                .iter()
                .map(|b| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[usize::from(*b % 32)])),
        )
        .collect();
    let res = chat(&app, &t, Some(&secret)).await;
    assert_eq!(res.status(), 400);
    let text = res.text().await.unwrap();
    assert!(!text.contains(&secret[4..]), "the answer quotes the label");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["type"], "invalid_agent_label");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("secret"));
    assert_eq!(
        upstream.recorder.count(),
        0,
        "a refused call reached the provider"
    );
    for query in ["?group_by=agent", "?group_by=token", ""] {
        let shown = usage(&app, &s, query).await.to_string();
        assert!(!shown.contains(&secret[4..]), "{query}");
    }
    let page = app
        .get("/dashboard/spend", Some(&s))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains(&secret[4..]));
    app.assert_not_logged(&secret[4..]);
}
