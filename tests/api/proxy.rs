//! The proxy end to end: official SDKs, metering, ceilings under concurrency, hostile upstreams.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::fake_upstream::{FakeUpstream, ANTHROPIC_USAGE, GOOGLE_USAGE, OPENAI_USAGE};
use crate::helpers::{Session, TestApp};

pub const OPENAI_KEY: &str = "sk-proj-TESTabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
pub const ANTHROPIC_KEY: &str = "sk-ant-api03-TESTabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx-AAAAAAAA";
pub const GOOGLE_KEY: &str = "AIzaSyTESTabcdefghijklmnopqrstuvwxyz012";

/// An app whose providers all point at one fake upstream.
pub async fn app_with_upstream() -> (TestApp, FakeUpstream) {
    let upstream = FakeUpstream::start().await;
    let url = upstream.url.clone();
    let app = TestApp::spawn_with(move |s| {
        for p in [
            "openai",
            "anthropic",
            "google",
            "elevenlabs",
            "stripe",
            "twilio",
            "resend",
            "vultr",
            "railway",
            "mistral",
            "groq",
            "together",
            "deepseek",
            "xai",
            "openrouter",
            "fireworks",
            "cerebras",
            "perplexity",
            "azure-openai",
        ] {
            s.proxy.upstreams.insert(p.to_owned(), url.clone());
        }
    })
    .await;
    (app, upstream)
}

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

pub async fn token(app: &TestApp, s: &Session, providers: Option<&[&str]>) -> String {
    let mut body = json!({"name": "test tool"});
    if let Some(p) = providers {
        body["providers"] = json!(p);
    }
    let res = app
        .post_json("/api/v1/tokens", Some(s), &body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "create token");
    res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub async fn set_ceiling(app: &TestApp, s: &Session, provider: &str, limit: &str) -> Value {
    let res = app
        .send(
            Method::PUT,
            &format!("/api/v1/ceilings/{provider}"),
            Some(s),
        )
        .json(&json!({"limit_usd": limit, "period": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "set ceiling");
    res.json().await.unwrap()
}

pub async fn ceiling(app: &TestApp, s: &Session, provider: &str) -> Value {
    let all: Value = app
        .get("/api/v1/ceilings", Some(s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all["ceilings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["provider"] == provider)
        .cloned()
        .unwrap_or(Value::Null)
}

/// One non-streamed chat completion through the proxy with token `t`.
async fn openai_chat(app: &TestApp, t: &str) -> reqwest::Response {
    app.client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(t)
        .json(&chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap()
}

pub fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50})
}

// ---- the official SDKs ----

/// A Python with the pinned official SDKs, made once per test run under `target/`.
fn sdk_python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("KEYBROKER_SDK_PYTHON") {
            return p;
        }
        let root = env!("CARGO_MANIFEST_DIR");
        let venv = format!("{root}/target/sdk-venv");
        let py = format!("{venv}/bin/python");
        let ready = Command::new(&py)
            .args(["-c", "import openai, anthropic, google.genai"])
            .status()
            .is_ok_and(|s| s.success());
        if !ready {
            assert!(
                Command::new("python3")
                    .args(["-m", "venv", &venv])
                    .status()
                    .unwrap()
                    .success(),
                "python3 -m venv"
            );
            let ok = Command::new(format!("{venv}/bin/pip"))
                .args([
                    "install",
                    "-q",
                    "-r",
                    &format!("{root}/tests/sdk/requirements.txt"),
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "pip install the SDKs");
        }
        py
    })
}

pub async fn drive_sdk(app: &TestApp, which: &str, token: &str, mode: Option<&str>) -> Value {
    let py = sdk_python().to_owned();
    let script = format!("{}/tests/sdk/drive.py", env!("CARGO_MANIFEST_DIR"));
    let (base, token, which, mode) = (
        app.address.clone(),
        token.to_owned(),
        which.to_owned(),
        mode.map(str::to_owned),
    );
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(py);
        cmd.arg(script)
            .arg(which)
            .env("KB_BASE", base)
            .env("KB_TOKEN", token);
        if let Some(m) = mode {
            cmd.env("KB_FAKE_MODE", m);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "SDK output: {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Spend in micro-dollars, from the API's decimal string.
pub fn micros(usd: &Value) -> i64 {
    let s = usd.as_str().unwrap();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<6}");
    whole.parse::<i64>().unwrap() * 1_000_000 + frac[..6].parse::<i64>().unwrap()
}

/// ceil(Σ tokens × USD-per-million) in micro-dollars: the price table's rule, computed by hand.
pub fn expected_micros(parts: &[(u64, f64)]) -> i64 {
    // Prices have at most 4 decimals per million; work in 1e-4 micro-dollar units to stay exact.
    let units: u64 = parts
        .iter()
        .map(|(t, p)| t * (p * 10_000.0).round() as u64)
        .sum();
    units.div_ceil(10_000) as i64
}

async fn spent(app: &TestApp, s: &Session, provider: &str) -> i64 {
    app.state.proxy.writer.flush().await;
    micros(&ceiling(app, s, provider).await["spent_usd"])
}

#[tokio::test]
async fn the_openai_sdk_works_through_keybroker_with_only_a_base_url_and_is_metered_exactly() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    set_ceiling(&app, &s, "openai", "10.00").await;
    let t = token(&app, &s, None).await;
    let out = drive_sdk(&app, "openai", &t, None).await;
    assert_eq!(out["text"], "Hello from the fake.", "{out}");
    assert_eq!(out["usage"], json!([OPENAI_USAGE.0, OPENAI_USAGE.1]));
    assert_eq!(out["stream_text"], "Hello from the fake.");
    // keybroker asked for usage on the stream; the client did not, so it never saw that chunk.
    assert_eq!(out["stream_usage_chunks_seen"], 0);

    let calls = upstream.recorder.calls();
    assert_eq!(calls.len(), 2);
    for c in &calls {
        assert_eq!(
            c.credentials,
            [format!("authorization: Bearer {OPENAI_KEY}")]
        );
    }
    let streamed: Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert_eq!(streamed["stream_options"]["include_usage"], true);

    // gpt-4o-mini: $0.15 in, $0.60 out per million; each call rounded up on its own.
    let per_call = expected_micros(&[(OPENAI_USAGE.0, 0.15), (OPENAI_USAGE.1, 0.60)]);
    assert_eq!(spent(&app, &s, "openai").await, 2 * per_call);
    app.assert_not_logged(OPENAI_KEY);
    app.assert_not_logged(&t);

    // Both the key and the token now say when they were last used.
    let keys: Value = app
        .get("/api/v1/keys", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(keys["keys"][0]["last_used_at"].is_string(), "{keys}");
    let tokens: Value = app
        .get("/api/v1/tokens", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(tokens["tokens"][0]["last_used_at"].is_string(), "{tokens}");
}

#[tokio::test]
async fn the_anthropic_sdk_works_and_cumulative_stream_usage_is_not_counted_twice() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "anthropic", ANTHROPIC_KEY).await;
    set_ceiling(&app, &s, "anthropic", "10.00").await;
    let t = token(&app, &s, Some(&["anthropic"])).await;
    let out = drive_sdk(&app, "anthropic", &t, None).await;
    assert_eq!(out["text"], "Hello from the fake.", "{out}");
    assert_eq!(out["stream_text"], "Hello from the fake.");
    assert_eq!(
        out["stream_usage"],
        json!([ANTHROPIC_USAGE.0, ANTHROPIC_USAGE.1])
    );
    for c in upstream.recorder.calls() {
        assert_eq!(c.credentials, [format!("x-api-key: {ANTHROPIC_KEY}")]);
    }
    // claude-sonnet-4: $3 in, $15 out per million.
    let per_call = expected_micros(&[(ANTHROPIC_USAGE.0, 3.0), (ANTHROPIC_USAGE.1, 15.0)]);
    assert_eq!(spent(&app, &s, "anthropic").await, 2 * per_call);
}

#[tokio::test]
async fn the_google_genai_sdk_works_and_is_metered_from_usage_metadata() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "google", GOOGLE_KEY).await;
    set_ceiling(&app, &s, "google", "10.00").await;
    let t = token(&app, &s, Some(&["google"])).await;
    let out = drive_sdk(&app, "google", &t, None).await;
    assert_eq!(out["text"], "Hello from the fake.", "{out}");
    assert_eq!(out["stream_text"], "Hello from the fake.");
    for c in upstream.recorder.calls() {
        assert_eq!(c.credentials, [format!("x-goog-api-key: {GOOGLE_KEY}")]);
    }
    // gemini-2.5-flash: $0.30 in, $2.50 out per million.
    let per_call = expected_micros(&[(GOOGLE_USAGE.0, 0.30), (GOOGLE_USAGE.1, 2.50)]);
    assert_eq!(spent(&app, &s, "google").await, 2 * per_call);
}

// ---- ceilings ----

#[tokio::test]
async fn a_hold_that_does_not_fit_is_refused_with_what_it_needed_and_what_is_left() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    set_ceiling(&app, &s, "openai", "0.01").await;
    // gpt-4o with 100,000 output tokens allowed holds about $1: nothing is spent yet.
    let mut body = chat("gpt-4o");
    body["max_tokens"] = json!(100_000);
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 402);
    let header = res.headers()["x-keybroker-spend-remaining"]
        .to_str()
        .unwrap()
        .to_owned();
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "spend_ceiling_reached");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_tokens"), "{message}");
    assert!(!message.contains("is reached"), "{message}");
    assert!(micros(&err["error"]["hold_usd"]) > 10_000);
    let c = ceiling(&app, &s, "openai").await;
    assert_eq!(c["state"], "ok");
    assert_eq!(err["error"]["remaining_usd"], c["remaining_usd"]);
    assert_eq!(header, c["remaining_usd"].as_str().unwrap());
    assert_eq!(upstream.recorder.count(), 0);
}

#[tokio::test]
async fn a_hundred_concurrent_calls_never_push_settled_spend_past_the_ceiling() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    // Each call reserves its worst case (~1.1k input tokens at most + 50 output); 3 cents fits
    // roughly a hundred of those... so use a ceiling that fits only a fraction of them.
    set_ceiling(&app, &s, "openai", "0.004").await;
    let mut calls = Vec::new();
    for _ in 0..100 {
        let client = app.client.clone();
        let url = app.url("/proxy/openai/v1/chat/completions");
        let t = t.clone();
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
                assert_eq!(body["error"]["type"], "spend_ceiling_reached");
                assert_eq!(body["error"]["provider"], "openai");
                assert_eq!(body["error"]["limit_usd"], "0.004");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok + refused, 100);
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_eq!(
        upstream.recorder.count(),
        ok,
        "the upstream saw exactly the admitted calls"
    );
    let settled = spent(&app, &s, "openai").await;
    assert!(
        settled <= 4_000,
        "settled {settled} µ$ over a 4000 µ$ ceiling"
    );
    let per_call = expected_micros(&[(OPENAI_USAGE.0, 2.50), (OPENAI_USAGE.1, 10.0)]);
    assert_eq!(settled, per_call * ok as i64);
    let c = ceiling(&app, &s, "openai").await;
    assert_eq!(c["reserved_usd"], "0.00");
}

#[tokio::test]
async fn a_refused_call_never_reaches_the_upstream_and_reset_lets_calls_flow_again() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    set_ceiling(&app, &s, "openai", "0.00").await;
    let res = openai_chat(&app, &t).await;
    assert_eq!(res.status(), 402);
    assert_eq!(upstream.recorder.count(), 0);
    // Raising the ceiling and forgiving spend both need the password again.
    crate::key_helpers::grant_reauth(&app, &s).await;
    set_ceiling(&app, &s, "openai", "1.00").await;
    let res = openai_chat(&app, &t).await;
    assert_eq!(res.status(), 200);
    let remaining = res.headers()["x-keybroker-spend-remaining"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(remaining.starts_with("0.99"), "{remaining}");
    res.bytes().await.unwrap();
    let reset = app
        .send(Method::POST, "/api/v1/ceilings/openai/reset", Some(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(reset.json::<Value>().await.unwrap()["spent_usd"], "0.00");
}

#[tokio::test]
async fn an_answer_keeps_the_providers_content_length_and_a_stream_stays_chunked() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    let res = openai_chat(&app, &t).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("transfer-encoding").is_none());
    let declared: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = res.bytes().await.unwrap();
    assert_eq!(declared, body.len());
    serde_json::from_slice::<Value>(&body).unwrap();

    let mut streamed = chat("gpt-4o-mini");
    streamed["stream"] = json!(true);
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-length").is_none());
    assert_eq!(res.headers()["transfer-encoding"], "chunked");
    assert!(String::from_utf8_lossy(&res.bytes().await.unwrap()).contains("[DONE]"));
}

// ---- errors and hostile upstreams ----

#[tokio::test]
async fn an_upstream_that_echoes_the_key_never_gets_it_to_the_client_or_the_logs() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    // A key with no recognisable shape: only exact-value redaction can catch it.
    let odd_key = "zz9-plural-z-alpha-unshaped-key-5551234";
    add_key(&app, &s, "vultr", odd_key).await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    for (provider, path, mode, status) in [
        ("vultr", "/v2/account", "echo-key-401", 401),
        ("vultr", "/v2/account", "echo-key-500", 500),
        ("openai", "/v1/chat/completions", "echo-key-401", 401),
        ("openai", "/v1/chat/completions", "echo-key-500", 500),
    ] {
        let res = app
            .client
            .post(app.url(&format!("/proxy/{provider}{path}")))
            .bearer_auth(&t)
            .header("x-fake-mode", mode)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "my secret prompt text here"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        let body = res.text().await.unwrap();
        for secret in [odd_key, OPENAI_KEY, &t, "my secret prompt text here"] {
            assert!(
                !body.contains(secret),
                "{provider} {mode}: leaked into {body}"
            );
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["provider"], provider);
    }
    for secret in [odd_key, OPENAI_KEY, &t] {
        app.assert_not_logged(secret);
    }
}

/// Copies of `head` immediately followed by `tail` in this process's readable memory that no
/// file backs (heap, thread arenas, stacks), read through `/proc/self/mem`. The two halves are
/// passed apart so that the search itself never puts the whole value in memory.
#[cfg(target_os = "linux")]
fn copies_in_memory(head: &[u8], tail: &[u8]) -> usize {
    use std::io::{Read, Seek, SeekFrom};
    let whole = head.len() + tail.len();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut found = 0;
    let mut chunk = vec![0u8; 1 << 20];
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, perms) = (fields[0], fields[1]);
        let path = fields.get(5).copied().unwrap_or("");
        if !perms.starts_with('r') || path.starts_with('/') || path.starts_with("[v") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        // Chunks overlap by `whole - 1` bytes; a match is counted in the chunk where it ends
        // past the overlap, so none is missed or counted twice.
        let mut at = start;
        while at < end {
            let len = usize::try_from((end - at).min(chunk.len() as u64)).unwrap();
            if mem.seek(SeekFrom::Start(at)).is_err() || mem.read_exact(&mut chunk[..len]).is_err()
            {
                break;
            }
            let seen = &chunk[..len];
            let overlap = if at == start { 0 } else { whole - 1 };
            found += memchr::memmem::find_iter(seen, head)
                .filter(|&i| i + whole > overlap && seen[i + head.len()..].starts_with(tail))
                .count();
            if at + len as u64 >= end {
                break;
            }
            at += (len - (whole - 1)) as u64;
        }
    }
    found
}

/// Invariant 1 after the call: the redactor computes a key's base64 forms to catch them in logs,
/// and nothing else in this process ever does, so any copy found is one that was freed unwiped.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn no_encoding_of_a_key_is_left_in_memory_once_its_calls_end() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    let key = crate::key_helpers::openai_key();
    add_key(&app, &s, "openai", &key).await;
    let t = token(&app, &s, None).await;
    for _ in 0..40 {
        let res = openai_chat(&app, &t).await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    // Halves of the middle of each encoding (the start of a freed buffer is overwritten by the
    // allocator's own bookkeeping, the middle is not), computed in a buffer that is wiped.
    let halves: Vec<(Vec<u8>, Vec<u8>)> = [&STANDARD, &URL_SAFE_NO_PAD]
        .into_iter()
        .map(|engine| {
            let mut form = zeroize::Zeroizing::new(vec![0u8; 4 * key.len().div_ceil(3)]);
            engine.encode_slice(&key, form.as_mut_slice()).unwrap();
            (form[24..44].to_vec(), form[44..64].to_vec())
        })
        .collect();
    // The last call's registration drops just after its body is sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<usize> = halves
            .iter()
            .map(|(head, tail)| copies_in_memory(head, tail))
            .collect();
        if left.iter().all(|n| *n == 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copies of the key's base64 forms left in memory: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_tokens_scopes_and_missing_keys_get_their_own_errors() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    let only_google = token(&app, &s, Some(&["google"])).await;
    let all = token(&app, &s, None).await;
    let url = app.url("/proxy/openai/v1/chat/completions");
    let cases: Vec<(Option<&str>, u16, &str)> = vec![
        (None, 401, "authentication_failed"),
        (
            Some("kb_not-a-real-token-at-all-0000000000000000000"),
            401,
            "authentication_failed",
        ),
        (
            Some("sk-proj-someone-pasted-a-real-key"),
            401,
            "authentication_failed",
        ),
        (Some(&only_google), 403, "provider_not_allowed"),
        (Some(&all), 424, "no_key"),
    ];
    for (tok, status, kind) in cases {
        let mut rb = app.client.post(&url).json(&chat("gpt-4o-mini"));
        if let Some(t) = tok {
            rb = rb.bearer_auth(t);
        }
        let res = rb.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{kind}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["type"], kind);
    }
    assert_eq!(upstream.recorder.count(), 0);
    let res = app
        .client
        .post(app.url("/proxy/nope/v1/x"))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// A GET with `path` exactly as given, over a fresh connection; returns status and body.
async fn raw_get(port: u16, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: keep the JSON object only.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_owned(),
        _ => body,
    };
    (status, body)
}

#[tokio::test]
async fn path_traversal_and_header_injection_are_refused_before_any_upstream_contact() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    // Sent byte for byte over TCP: an HTTP client library would normalise these before sending.
    for path in [
        "/proxy/openai/v1/%2e%2e/%2e%2e/admin",
        "/proxy/openai/v1/../../admin",
        "/proxy/openai/v1/..%2fadmin",
        "/proxy/openai//evil.example/v1",
        "/proxy/openai/v1/x%0d%0aHost:%20evil.example",
        "/proxy/openai/@evil.example/v1",
        "/proxy/openai/v1/x%5c..%5cy",
        "/proxy/openai/http://evil.example/v1",
    ] {
        let (status, body) = raw_get(app.port, path, &t).await;
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_path", "{path}");
    }
    assert_eq!(upstream.recorder.count(), 0);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_leaves_no_reservation_behind() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    set_ceiling(&app, &s, "openai", "5.00").await;
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
    let first = res.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(res);
    // The proxy notices on its next write; give the stream a few of its 20 ms gaps.
    let mut c = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c = ceiling(&app, &s, "openai").await;
        if c["reserved_usd"] == "0.00" {
            break;
        }
    }
    assert_eq!(c["reserved_usd"], "0.00", "{c}");
    // Fail closed: the call is charged (its reservation), not forgotten.
    assert_ne!(c["spent_usd"], "0.00", "{c}");
}

#[tokio::test]
async fn usage_reports_calls_tokens_spend_and_refusals_per_provider() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    for _ in 0..3 {
        let res = openai_chat(&app, &t).await;
        res.bytes().await.unwrap();
    }
    set_ceiling(&app, &s, "openai", "0.00").await;
    let res = openai_chat(&app, &t).await;
    assert_eq!(res.status(), 402);
    app.state.proxy.writer.flush().await;
    let usage: Value = app
        .get("/api/v1/usage", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &usage["providers"][0];
    assert_eq!(row["provider"], "openai");
    assert_eq!(row["calls"], 4);
    assert_eq!(row["refused"], 1);
    assert_eq!(row["input_tokens"], 3 * OPENAI_USAGE.0);
    assert_eq!(row["output_tokens"], 3 * OPENAI_USAGE.1);
    let per_call = expected_micros(&[(OPENAI_USAGE.0, 0.15), (OPENAI_USAGE.1, 0.60)]);
    assert_eq!(micros(&row["spend_usd"]), 3 * per_call);
}

#[tokio::test]
async fn the_price_table_is_listed_in_usd_per_million_tokens() {
    let app = TestApp::spawn().await;
    let prices: Value = app
        .get("/api/v1/prices", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = prices["prices"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["provider"] == "openai" && r["model"] == "gpt-4o-mini"),
        "{prices}"
    );
}

#[tokio::test]
async fn listing_models_and_counting_tokens_cost_nothing() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    add_key(&app, &s, "anthropic", ANTHROPIC_KEY).await;
    set_ceiling(&app, &s, "openai", "1.00").await;
    set_ceiling(&app, &s, "anthropic", "1.00").await;
    let t = token(&app, &s, None).await;
    let res = app
        .client
        .get(app.url("/proxy/openai/v1/models"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let res = app
        .client
        .post(app.url("/proxy/anthropic/v1/messages/count_tokens"))
        .header("x-api-key", &t)
        .json(&json!({"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    assert_eq!(upstream.recorder.count(), 2);
    assert_eq!(spent(&app, &s, "openai").await, 0);
    assert_eq!(spent(&app, &s, "anthropic").await, 0);
}

#[tokio::test]
async fn an_unknown_endpoint_of_a_token_provider_is_charged_the_flagged_worst_case_not_zero() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    // Held at OpenAI's worst case (o1 at its 100,000 output tokens, about 6 USD).
    set_ceiling(&app, &s, "openai", "10.00").await;
    let t = token(&app, &s, None).await;
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/images/generations"))
        .bearer_auth(&t)
        .json(&json!({"prompt": "a cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    // The answer reports no usage: settled at the reservation.
    assert!(spent(&app, &s, "openai").await > 6_000_000);
    app.state.proxy.writer.flush().await;
    let usage: Value = app
        .get("/api/v1/usage", Some(&s))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["providers"][0]["fallback_priced_calls"], 1);
}

async fn app_with_limits(
    f: impl FnOnce(&mut keybroker::proxy::ProxySettings) + Send + 'static,
) -> (TestApp, FakeUpstream) {
    let upstream = FakeUpstream::start().await;
    let url = upstream.url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.proxy.upstreams.insert("openai".into(), url);
        f(&mut s.proxy);
    })
    .await;
    (app, upstream)
}

#[tokio::test]
async fn the_per_token_rate_limit_answers_429_with_retry_after() {
    let (app, upstream) = app_with_limits(|p| p.requests_per_minute_per_token = 3).await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = openai_chat(&app, &t).await;
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(
                res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            assert_eq!(
                res.json::<Value>().await.unwrap()["error"]["type"],
                "rate_limited"
            );
        } else {
            res.bytes().await.unwrap();
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(upstream.recorder.count(), 3);
}

#[tokio::test]
async fn the_in_flight_limit_refuses_a_second_call_while_one_hangs() {
    let (app, _upstream) = app_with_limits(|p| {
        p.max_in_flight_per_account = 1;
        p.read_timeout = Duration::from_secs(2);
    })
    .await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    let hanging = {
        let (client, url, t) = (
            app.client.clone(),
            app.url("/proxy/openai/v1/chat/completions"),
            t.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(t)
                .header("x-fake-mode", "hang")
                .json(&chat("gpt-4o-mini"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = openai_chat(&app, &t).await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["type"],
        "too_many_in_flight"
    );
    // The hanging call ends with our own timeout answer, and frees the slot.
    assert_eq!(hanging.await.unwrap(), 504);
    let res = openai_chat(&app, &t).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_hanging_upstream_gets_our_504_within_the_timeout_and_releases_the_hold() {
    let (app, _upstream) = app_with_limits(|p| p.read_timeout = Duration::from_secs(1)).await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    set_ceiling(&app, &s, "openai", "1.00").await;
    let t = token(&app, &s, None).await;
    let started = std::time::Instant::now();
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .header("x-fake-mode", "hang")
        .json(&chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_timeout");
    let c = ceiling(&app, &s, "openai").await;
    assert_eq!(
        (c["reserved_usd"].as_str(), c["spent_usd"].as_str()),
        (Some("0.00"), Some("0.00"))
    );
}

#[tokio::test]
async fn a_garbage_body_is_passed_through_and_charged_its_reservation() {
    let (app, _upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    set_ceiling(&app, &s, "openai", "1.00").await;
    let t = token(&app, &s, None).await;
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .header("x-fake-mode", "garbage")
        .json(&chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "{\"choices\": [tru");
    // No usage to go by: the call is charged what was reserved (fail closed), not nothing.
    let per_call = expected_micros(&[(OPENAI_USAGE.0, 0.15), (OPENAI_USAGE.1, 0.60)]);
    assert!(spent(&app, &s, "openai").await > per_call);
}
