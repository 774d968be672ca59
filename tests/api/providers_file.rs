//! The operator's providers file: change how a built-in provider is reached, add a new one.

use serde_json::{json, Value};

use crate::fake_upstream::FakeUpstream;
use crate::helpers::TestApp;
use crate::proxy::{add_key, chat, token, ANTHROPIC_KEY};

#[tokio::test]
async fn a_providers_file_adds_a_provider_and_changes_how_a_built_in_one_is_called() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("providers.toml");
    std::fs::write(
        &file,
        format!(
            "[providers.anthropic]\nbase_url = \"{url}\"\nauth = \"header:api-key\"\n\n\
             [providers.acme-llm]\ndisplay_name = \"Acme LLM\"\nbase_url = \"{url}\"\nauth = \"bearer\"\nmetering = \"openai\"\n",
            url = upstream.url
        ),
    )
    .unwrap();
    let app = TestApp::spawn_with(|s| s.providers_file = Some(file.clone())).await;
    let s = app.signed_up().await;
    let acme_key = "acme-free-form-key-0123456789ab";
    add_key(&app, &s, "acme-llm", acme_key).await;
    add_key(&app, &s, "anthropic", ANTHROPIC_KEY).await;
    let t = token(&app, &s, Some(&["acme-llm", "anthropic"])).await;

    let res = app
        .client
        .post(app.url("/proxy/acme-llm/v1/chat/completions"))
        .bearer_auth(&t)
        .json(&chat("acme-large"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let res = app
        .client
        .post(app.url("/proxy/anthropic/v1/messages"))
        .header("x-api-key", &t)
        .json(&json!({"model": "claude-sonnet-4", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();

    let calls = upstream.recorder.calls();
    assert_eq!(
        calls[0].credentials,
        [format!("authorization: Bearer {acme_key}")]
    );
    assert_eq!(calls[1].credentials, [format!("api-key: {ANTHROPIC_KEY}")]);

    // The new provider is metered as configured (OpenAI usage), at the flagged fallback price.
    app.state.proxy.writer.flush().await;
    let usage: Value = app
        .get("/api/v1/usage", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acme = usage["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == "acme-llm")
        .unwrap()
        .clone();
    assert_eq!(acme["input_tokens"], 12);
    assert_eq!(acme["fallback_priced_calls"], 1);
}

#[tokio::test]
async fn a_bad_providers_file_stops_the_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("providers.toml");
    std::fs::write(&file, "[providers.openai]\nauth = \"magic\"\n").unwrap();
    let clock = keybroker::clock::ManualClock::default();
    let mut settings = crate::helpers::test_settings(
        dir.path().join("data"),
        &crate::helpers::random_b64(32),
        &clock,
    );
    settings.providers_file = Some(file);
    let err = keybroker::startup::Application::build(settings)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("auth is bearer, basic or header:<name>"),
        "{err}"
    );
}
