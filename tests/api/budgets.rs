//! Token budgets: a token's own spend limit beside the provider ceiling, child tokens carved out
//! of their parent's limit (and what they leave given back), and the estimate endpoint.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::fake_upstream::OPENAI_USAGE;
use crate::helpers::{Session, TestApp};
use crate::key_helpers::grant_reauth;
use crate::proxy::{
    add_key, app_with_upstream, chat, drive_sdk, expected_micros, micros, set_ceiling, OPENAI_KEY,
};

/// A token with its own limit; (id, token).
async fn limited_token(app: &TestApp, s: &Session, limit: &str) -> (String, String) {
    let res = app
        .post_json(
            "/api/v1/tokens",
            Some(s),
            &json!({"name": "agent", "spend_limit_usd": limit}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["spend_limit_usd"], limit);
    (
        body["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

async fn listed(app: &TestApp, s: &Session, id: &str) -> Value {
    let body: Value = app
        .get("/api/v1/tokens", Some(s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn call(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(token)
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap()
}

async fn mint(app: &TestApp, parent: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/tokens/children"))
        .bearer_auth(parent)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn per_call() -> i64 {
    expected_micros(&[(OPENAI_USAGE.0, 2.50), (OPENAI_USAGE.1, 10.0)])
}

/// Waits (real time) until the token's spent figure is `want`, for the carve sweeper.
async fn until_spent(app: &TestApp, s: &Session, id: &str, want: i64) -> Value {
    for _ in 0..100 {
        let t = listed(app, s, id).await;
        if micros(&t["spent_usd"]) == want {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("spent never became {want}: {}", listed(app, s, id).await);
}

#[tokio::test]
async fn a_token_limit_holds_under_a_hundred_concurrent_calls() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (id, token) = limited_token(&app, &s, "0.004").await;
    let mut calls = Vec::new();
    for _ in 0..100 {
        let client = app.client.clone();
        let url = app.url("/proxy/openai/v1/chat/completions");
        let t = token.clone();
        calls.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(t)
                .json(&chat("gpt-4o"))
                .send()
                .await
                .unwrap()
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for c in calls {
        let res = c.await.unwrap();
        match res.status().as_u16() {
            200 => {
                ok += 1;
                res.bytes().await.unwrap();
            }
            402 => {
                refused += 1;
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["error"]["type"], "token_spend_limit_reached");
                assert_eq!(body["error"]["token_id"], id.as_str());
                assert_eq!(body["error"]["limit_usd"], "0.004");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_eq!(upstream.recorder.count(), ok);
    let t = listed(&app, &s, &id).await;
    let spent = micros(&t["spent_usd"]);
    assert!(spent <= 4_000, "spent {spent} over the token's 4000 µ$");
    assert_eq!(spent, per_call() * ok as i64);
    assert_eq!(t["reserved_usd"], "0.00");
}

#[tokio::test]
async fn the_tighter_of_token_limit_and_ceiling_refuses_and_says_which() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (_, tight_token) = limited_token(&app, &s, "0.00").await;
    let res = call(&app, &tight_token).await;
    assert_eq!(res.status(), 402);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "token_spend_limit_reached");

    let (_, loose_token) = limited_token(&app, &s, "5.00").await;
    set_ceiling(&app, &s, "openai", "0.00").await;
    let res = call(&app, &loose_token).await;
    assert_eq!(res.status(), 402);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "spend_ceiling_reached");
    assert_eq!(
        upstream.recorder.count(),
        0,
        "no refused call reached the provider"
    );

    // Both limits set, both loose: the header shows the tighter remaining budget.
    grant_reauth(&app, &s).await;
    set_ceiling(&app, &s, "openai", "3.00").await;
    let res = call(&app, &loose_token).await;
    assert_eq!(res.status(), 200);
    let remaining = res.headers()["x-keybroker-spend-remaining"]
        .to_str()
        .unwrap()
        .to_owned();
    res.bytes().await.unwrap();
    // Read while the call's own hold is still out: the ceiling's 3.00 less that hold, not the
    // token's 5.00.
    let shown = micros(&json!(remaining));
    assert!(shown < 3_000_000 && shown > 2_900_000, "{shown}");
}

#[tokio::test]
async fn a_child_is_carved_from_its_parent_and_gives_back_what_it_did_not_spend() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (parent_id, parent) = limited_token(&app, &s, "1.00").await;
    let res = mint(
        &app,
        &parent,
        json!({"name": "task-1", "spend_limit_usd": "0.60", "ttl_secs": 600}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let child: Value = res.json().await.unwrap();
    assert_eq!(child["parent_id"], parent_id.as_str());
    assert_eq!(child["depth"], 1);
    assert_eq!(child["spend_limit_usd"], "0.60");
    let child_id = child["id"].as_str().unwrap().to_owned();
    let child_token = child["token"].as_str().unwrap().to_owned();

    let p = listed(&app, &s, &parent_id).await;
    assert_eq!(p["remaining_usd"], "0.40");
    assert_eq!(p["children"], json!([child_id]));

    let res = mint(
        &app,
        &parent,
        json!({"name": "task-2", "spend_limit_usd": "0.60", "ttl_secs": 600}),
    )
    .await;
    assert_eq!(res.status(), 402);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "parent_spend_limit_reached");
    assert_eq!(body["error"]["remaining_usd"], "0.40");

    // The child's calls count against its carve (and so against its parent).
    let res = call(&app, &child_token).await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let c = listed(&app, &s, &child_id).await;
    assert_eq!(micros(&c["spent_usd"]), per_call());

    // The parent ends the child; after the grace, the rest of the carve goes back.
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/tokens/children/{child_id}")))
        .bearer_auth(&parent)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(call(&app, &child_token).await.status(), 401);
    app.clock.advance(time::Duration::seconds(6));
    let p = until_spent(&app, &s, &parent_id, per_call()).await;
    assert_eq!(micros(&p["remaining_usd"]), 1_000_000 - per_call());
}

#[tokio::test]
async fn an_expired_child_gives_its_carve_back_and_a_revoked_parent_takes_its_children() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (parent_id, parent) = limited_token(&app, &s, "1.00").await;
    let res = mint(
        &app,
        &parent,
        json!({"name": "short", "spend_limit_usd": "0.25", "ttl_secs": 60}),
    )
    .await;
    assert_eq!(res.status(), 201);
    app.clock.advance(time::Duration::seconds(66));
    until_spent(&app, &s, &parent_id, 0).await;

    let res = mint(
        &app,
        &parent,
        json!({"name": "long", "spend_limit_usd": "0.25", "ttl_secs": 600}),
    )
    .await;
    let child: Value = res.json().await.unwrap();
    let child_token = child["token"].as_str().unwrap().to_owned();
    // A grandchild is allowed, a great-grandchild is not.
    let res = mint(
        &app,
        &child_token,
        json!({"name": "sub", "spend_limit_usd": "0.10", "ttl_secs": 60}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let grandchild: Value = res.json().await.unwrap();
    let grandchild_token = grandchild["token"].as_str().unwrap().to_owned();
    let res = mint(
        &app,
        &grandchild_token,
        json!({"name": "x", "spend_limit_usd": "0.01", "ttl_secs": 30}),
    )
    .await;
    assert_eq!(res.status(), 403);
    // A child may not outlive its parent nor widen its providers.
    let res = mint(
        &app,
        &child_token,
        json!({"name": "x", "spend_limit_usd": "0.01", "ttl_secs": 6000}),
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "child_outlives_parent"
    );

    let res = app
        .send(
            Method::DELETE,
            &format!("/api/v1/tokens/{parent_id}"),
            Some(&s),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(call(&app, &child_token).await.status(), 401);
    assert_eq!(call(&app, &grandchild_token).await.status(), 401);
}

#[tokio::test]
async fn loosening_a_token_limit_needs_a_reauth_and_a_child_limit_is_fixed() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    let (id, parent) = limited_token(&app, &s, "1.00").await;
    let patch = |body: Value| {
        app.send(Method::PATCH, &format!("/api/v1/tokens/{id}"), Some(&s))
            .json(&body)
            .send()
    };
    let res = patch(json!({"spend_limit_usd": "0.50"})).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["spend_limit_usd"],
        "0.50"
    );
    let res = patch(json!({"spend_limit_usd": "2.00"})).await.unwrap();
    assert_eq!(res.status(), 403);
    let res = patch(json!({"spend_limit_usd": null})).await.unwrap();
    assert_eq!(res.status(), 403);
    let res = patch(json!({"spend_limt_usd": "0.10"})).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["field"],
        "spend_limt_usd"
    );
    assert_eq!(listed(&app, &s, &id).await["spend_limit_usd"], "0.50");
    grant_reauth(&app, &s).await;
    let res = patch(json!({"spend_limit_usd": null})).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(listed(&app, &s, &id).await["spend_limit_usd"], Value::Null);

    let res = mint(
        &app,
        &parent,
        json!({"name": "c", "spend_limit_usd": "0.10", "ttl_secs": 60}),
    )
    .await;
    let child_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .send(
            Method::PATCH,
            &format!("/api/v1/tokens/{child_id}"),
            Some(&s),
        )
        .json(&json!({"spend_limit_usd": "5.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "child_budget_fixed"
    );
}

#[tokio::test]
async fn an_estimate_says_what_a_call_would_hold_and_which_limit_refuses_it() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (_, token) = limited_token(&app, &s, "0.01").await;
    let estimate = |body: Value| {
        app.client
            .post(app.url("/api/v1/estimate"))
            .bearer_auth(&token)
            .json(&json!({"provider": "openai", "path": "/v1/chat/completions", "body": body}))
            .send()
    };
    let res = estimate(chat("gpt-4o")).await.unwrap();
    assert_eq!(res.status(), 200);
    let small: Value = res.json().await.unwrap();
    assert_eq!(small["admitted"], true);
    assert_eq!(small["limited_by"], "token_spend_limit");
    assert_eq!(small["remaining_usd"], "0.01");
    let mut big = chat("gpt-4o");
    big["max_tokens"] = json!(100_000);
    let res = estimate(big).await.unwrap();
    let refused: Value = res.json().await.unwrap();
    assert_eq!(refused["admitted"], false, "{refused}");
    assert_eq!(refused["limited_by"], "token_spend_limit");
    assert!(micros(&refused["worst_case_usd"]) > 10_000);
    assert_eq!(
        upstream.recorder.count(),
        0,
        "an estimate calls no provider"
    );
}

#[tokio::test]
async fn a_stream_through_a_limited_token_ends_with_the_budget_left_and_the_openai_sdk_parses_it() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let (id, token) = limited_token(&app, &s, "1.00").await;
    let mut streamed = chat("gpt-4o");
    streamed["stream"] = json!(true);
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let last = text
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let left = 1_000_000 - per_call();
    assert_eq!(
        last,
        format!(": keybroker spend_remaining_usd={}", micros_usd(left)),
        "{text}"
    );
    assert!(text.ends_with("\n\n"));

    let out = drive_sdk(&app, "openai", &token, None).await;
    assert_eq!(out["text"], "Hello from the fake.", "{out}");
    assert_eq!(out["stream_text"], "Hello from the fake.");
    let t = listed(&app, &s, &id).await;
    // The SDK's two calls are to gpt-4o-mini.
    let mini = expected_micros(&[(OPENAI_USAGE.0, 0.15), (OPENAI_USAGE.1, 0.60)]);
    assert_eq!(micros(&t["spent_usd"]), per_call() + 2 * mini);
}

/// Micro-dollars as keybroker writes money: at least two decimals, no trailing zeros beyond.
fn micros_usd(m: i64) -> String {
    let (whole, frac) = (m / 1_000_000, m % 1_000_000);
    let mut frac = format!("{frac:06}");
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{whole}.{frac}")
}
