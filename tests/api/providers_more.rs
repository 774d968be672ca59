//! The OpenAI-compatible providers of issue 26 end to end: each one's chat completion reaches the
//! (fake) provider with the stored key in that provider's header, and costs what the price table
//! says its usage costs. Azure OpenAI with its deployment path and `api-key` header, and refused
//! clearly while the operator has not named the resource.

use serde_json::{json, Value};

use crate::fake_upstream::OPENAI_USAGE;
use crate::helpers::TestApp;
use crate::proxy::{
    add_key, app_with_upstream, ceiling, expected_micros, micros, set_ceiling, token,
};

struct Case {
    provider: &'static str,
    key: String,
    /// The proxied path, as the provider's SDK composes it.
    path: &'static str,
    /// `None`: the body names no model (Azure: the deployment does), the answer does.
    model: Option<&'static str>,
    /// The credential header the provider must receive.
    credential: String,
    /// USD per million input and output tokens, from `default_prices.toml`.
    prices: (f64, f64),
}

fn cases() -> Vec<Case> {
    let bearer = |provider, key: String, path, model, prices| Case {
        provider,
        credential: format!("authorization: Bearer {key}"),
        key,
        path,
        model: Some(model),
        prices,
    };
    let azure_key = "5f0c2b9e8a714d63b1e2c3d4e5f60718".to_owned();
    vec![
        bearer(
            "mistral",
            "Zf3D0LXCM3EIMbgJpUNnkRtOfOueHznB".into(),
            "/v1/chat/completions",
            "mistral-large-latest",
            (3.00, 9.00),
        ),
        bearer(
            "groq",
            format!("gsk_{}x", "aB3".repeat(17)),
            "/v1/chat/completions",
            "llama-3.3-70b-versatile",
            (0.59, 0.79),
        ),
        bearer(
            "together",
            "0a".repeat(32),
            "/v1/chat/completions",
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            (0.99, 2.40),
        ),
        bearer(
            "deepseek",
            format!("sk-{}", "3f".repeat(16)),
            "/v1/chat/completions",
            "deepseek-chat",
            (0.27, 1.10),
        ),
        bearer(
            "xai",
            format!("xai-{}zz", "Qw9".repeat(26)),
            "/v1/chat/completions",
            "grok-4.3",
            (1.25, 2.50),
        ),
        bearer(
            "openrouter",
            format!("sk-or-v1-{}", "0a1b".repeat(16)),
            "/v1/chat/completions",
            "openai/gpt-4o-mini",
            (0.15, 0.60),
        ),
        bearer(
            "fireworks",
            format!("fw_{}", "Zf3D0LXCM3EIMbgJ".repeat(2)),
            "/v1/chat/completions",
            "accounts/fireworks/models/gpt-oss-120b",
            (0.15, 0.60),
        ),
        bearer(
            "cerebras",
            format!("csk-{}", "k3x".repeat(16)),
            "/v1/chat/completions",
            "gpt-oss-120b",
            (0.35, 0.75),
        ),
        bearer(
            "perplexity",
            format!("pplx-{}", "Ab1".repeat(16)),
            "/chat/completions",
            "sonar-pro",
            (3.00, 15.00),
        ),
        Case {
            provider: "azure-openai",
            credential: format!("api-key: {azure_key}"),
            key: azure_key,
            path: "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            model: None,
            // The fake answers `gpt-4o-mini` when the body names no model.
            prices: (0.15, 0.60),
        },
    ]
}

fn body(model: Option<&str>) -> Value {
    let mut b = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50});
    if let Some(m) = model {
        b["model"] = json!(m);
    }
    b
}

#[tokio::test]
async fn every_new_provider_gets_its_key_in_its_header_and_costs_its_priced_usage() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    for c in cases() {
        add_key(&app, &s, c.provider, &c.key).await;
        set_ceiling(&app, &s, c.provider, "10.00").await;
    }
    let t = token(&app, &s, None).await;
    for (i, c) in cases().iter().enumerate() {
        let mut rb = app
            .client
            .post(app.url(&format!("/proxy/{}{}", c.provider, c.path)))
            .json(&body(c.model));
        // Each SDK's own header: Azure's sends `api-key`, the others `Authorization: Bearer`.
        rb = if c.provider == "azure-openai" {
            rb.header("api-key", &t)
        } else {
            rb.bearer_auth(&t)
        };
        let res = rb.send().await.unwrap();
        assert_eq!(res.status(), 200, "{}", c.provider);
        let answer: Value = res.json().await.unwrap();
        assert_eq!(
            answer["usage"]["prompt_tokens"], OPENAI_USAGE.0,
            "{}",
            c.provider
        );

        let call = &upstream.recorder.calls()[i];
        // The path (Azure's query included) goes to the provider as the SDK sent it.
        assert_eq!(call.path_and_query, c.path, "{}", c.provider);
        assert_eq!(
            call.credentials,
            std::slice::from_ref(&c.credential),
            "{}",
            c.provider
        );

        app.state.proxy.writer.flush().await;
        let spent = micros(&ceiling(&app, &s, c.provider).await["spent_usd"]);
        let priced = expected_micros(&[(OPENAI_USAGE.0, c.prices.0), (OPENAI_USAGE.1, c.prices.1)]);
        assert_eq!(spent, priced, "{} spend", c.provider);
        app.assert_not_logged(&c.key);
    }
}

/// Where the provider needs `stream_options.include_usage` keybroker adds it; where usage comes
/// anyway (Mistral) the client's body goes as it was.
#[tokio::test]
async fn streamed_usage_is_asked_for_only_from_providers_that_need_asking() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    let all = cases();
    for c in all
        .iter()
        .filter(|c| ["groq", "mistral"].contains(&c.provider))
    {
        add_key(&app, &s, c.provider, &c.key).await;
    }
    let t = token(&app, &s, None).await;
    for provider in ["groq", "mistral"] {
        let mut b = body(Some("some-model"));
        b["stream"] = json!(true);
        let res = app
            .client
            .post(app.url(&format!("/proxy/{provider}/v1/chat/completions")))
            .bearer_auth(&t)
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{provider}");
        res.bytes().await.unwrap();
    }
    let calls = upstream.recorder.calls();
    let groq: Value = serde_json::from_slice(&calls[0].body).unwrap();
    let mistral: Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert_eq!(groq["stream_options"]["include_usage"], true);
    assert!(mistral.get("stream_options").is_none(), "{mistral}");
}

/// Azure OpenAI's resource URL is the customer's: until the operator sets it, a call is refused
/// with a message naming the setting (not a 502 from a placeholder host).
#[tokio::test]
async fn azure_openai_without_a_resource_url_is_refused_before_any_upstream_contact() {
    let app = TestApp::spawn().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "azure-openai", "5f0c2b9e8a714d63b1e2c3d4e5f60718").await;
    let t = token(&app, &s, None).await;
    let res = app
        .client
        .post(app.url(
            "/proxy/azure-openai/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
        ))
        .header("api-key", &t)
        .json(&body(None))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "provider_not_configured");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("KEYBROKER_UPSTREAM_AZURE_OPENAI"),
        "{message}"
    );
}
