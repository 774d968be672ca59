//! `/metrics`: counters move with the right labels after real calls, nothing in the scrape names
//! an account, an email, a key or a token, and `metrics_bind` moves the endpoint to its own
//! listener.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::TestApp;
use crate::proxy::{add_key, app_with_upstream, chat, set_ceiling, token, OPENAI_KEY};

async fn scrape(app: &TestApp) -> String {
    let res = app.get("/metrics", None).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    res.text().await.unwrap()
}

/// The value of the series whose line starts with `series` (name and labels, exactly).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` reads `want` (settlement and stream ends finish just after the body).
async fn eventually(app: &TestApp, series: &str, want: f64) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(app).await;
        if value(&text, series) == Some(want) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{series} never reached {want}:\n{text}");
}

async fn chat_call(app: &TestApp, bearer: &str, mode: Option<&str>) -> reqwest::Response {
    let mut rb = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(bearer)
        .json(&chat("gpt-4o-mini"));
    if let Some(m) = mode {
        rb = rb.header("x-fake-mode", m);
    }
    rb.send().await.unwrap()
}

#[tokio::test]
async fn scrape_counts_requests_calls_refusals_and_spend_without_naming_anyone() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;

    for _ in 0..2 {
        let res = chat_call(&app, &t, None).await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    let res = chat_call(&app, &t, Some("429")).await;
    assert_eq!(res.status(), 429);
    let bad_token = "kb_not_a_real_token_0123456789abcdefghijklmnop";
    assert_eq!(chat_call(&app, bad_token, None).await.status(), 401);
    let res = app
        .client
        .post(app.url("/proxy/no-such-provider/v1/x"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Spent is above a micro-dollar ceiling now: the next call is refused before upstream.
    set_ceiling(&app, &s, "openai", "0.000001").await;
    assert_eq!(chat_call(&app, &t, None).await.status(), 402);

    let text = eventually(&app, "keybroker_spend_reservations_open", 0.0).await;
    let calls = |provider: &str, outcome: &str| {
        value(
            &text,
            &format!(
                "keybroker_proxy_requests_total{{provider=\"{provider}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(calls("openai", "ok"), Some(2.0), "{text}");
    assert_eq!(calls("openai", "upstream_error"), Some(1.0));
    assert_eq!(calls("openai", "auth"), Some(1.0));
    assert_eq!(calls("openai", "ceiling"), Some(1.0));
    assert_eq!(calls("openai", "rate_limit"), Some(0.0));
    assert_eq!(calls("other", "unknown_provider"), Some(1.0));
    assert!(!text.contains("no-such-provider"));

    let requests = |method: &str, route: &str, status: u16| {
        value(
            &text,
            &format!(
                "keybroker_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(
        requests("POST", "/proxy/{provider}/{tail:.*}", 200),
        Some(2.0)
    );
    assert_eq!(
        requests("POST", "/proxy/{provider}/{tail:.*}", 402),
        Some(1.0)
    );
    assert_eq!(requests("POST", "/api/v1/keys", 201), Some(1.0));
    assert_eq!(
        requests("PUT", "/api/v1/ceilings/{provider}", 200),
        Some(1.0)
    );
    // Three calls reached the provider (two answers and the 429).
    assert_eq!(
        value(
            &text,
            "keybroker_upstream_latency_seconds_count{provider=\"openai\"}"
        ),
        Some(3.0)
    );
    let settled = value(
        &text,
        "keybroker_spend_settled_microdollars_total{provider=\"openai\"}",
    )
    .unwrap();
    assert!(settled > 0.0, "{text}");
    assert_eq!(value(&text, "keybroker_proxy_streams_active"), Some(0.0));
    assert_eq!(value(&text, "keybroker_sessions_active"), Some(1.0));
    assert!(value(&text, "keybroker_spend_writer_queue_depth").is_some());
    assert!(value(&text, "keybroker_proxy_overhead_seconds_count").unwrap() >= 2.0);

    // Nothing that identifies anyone.
    for secret in [
        s.email.as_str(),
        OPENAI_KEY,
        &OPENAI_KEY[OPENAI_KEY.len() - 8..],
        t.as_str(),
        bad_token,
        s.cookie.as_str(),
        s.csrf.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret} in the scrape");
    }
    let label_names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('{')?.1.rsplit_once('}'))
        .flat_map(|(labels, _)| labels.split("\",").filter_map(|kv| kv.split_once('=')))
        .map(|(k, _)| k)
        .collect();
    for name in &label_names {
        assert!(
            ["method", "route", "status", "provider", "outcome", "le", "result"].contains(name),
            "unexpected label {name}"
        );
    }
}

#[tokio::test]
async fn active_streams_gauge_counts_a_stream_until_it_ends() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    let mut body = chat("gpt-4o-mini");
    body["stream"] = json!(true);
    let mut res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .header("x-fake-mode", "slow-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.chunk().await.unwrap().unwrap().is_empty());
    let during = scrape(&app).await;
    assert_eq!(value(&during, "keybroker_proxy_streams_active"), Some(1.0));
    assert_eq!(
        value(&during, "keybroker_spend_reservations_open"),
        Some(1.0)
    );
    while res.chunk().await.unwrap().is_some() {}
    eventually(&app, "keybroker_proxy_streams_active", 0.0).await;
}

#[tokio::test]
async fn metrics_bind_serves_metrics_on_its_own_listener_only() {
    let app = TestApp::spawn_with(|s| {
        s.metrics_bind = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let port = app.metrics_port.expect("a metrics listener");
    assert_ne!(port, app.port);

    let main = app.get("/metrics", None).send().await.unwrap();
    assert_eq!(main.status(), 404);
    assert_eq!(
        main.json::<Value>().await.unwrap()["error"]["type"],
        "not_found"
    );

    let res = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    // The main listener's refused scrape was counted, by its pattern.
    assert!(
        text.contains(
            "keybroker_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"404\"} 1"
        ),
        "{text}"
    );

    let other = app
        .client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"]["type"],
        "not_found"
    );
}

#[tokio::test]
async fn every_metric_is_described_in_the_readme() {
    let app = TestApp::spawn().await;
    let text = scrape(&app).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not in the README"
        );
    }
}
