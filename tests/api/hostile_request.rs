//! Issue 20, the request side: no request shape slips past a ceiling, and the kb_ token never
//! reaches the upstream. Each test sends the shapes an attacker tried (spellings of a path,
//! spellings of a number, unknown endpoints, bodies where none belongs, compressed bodies,
//! duplicate keys, the token or a cookie in other headers, nonsense usage in the answer) and
//! checks what the upstream served and what was charged.

use actix_web::{web, App, HttpResponse, HttpServer};
use keybroker::metering::estimate::{estimate_tokens, worst_case};
use keybroker::metering::{Dialect, EstimateConfig, PriceTable};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_upstream::Recorded;
use crate::helpers::{Session, TestApp};
use crate::proxy::{
    add_key, app_with_upstream, ceiling, micros, set_ceiling, token, ANTHROPIC_KEY, GOOGLE_KEY,
    OPENAI_KEY,
};

async fn spent(app: &TestApp, s: &Session, provider: &str) -> i64 {
    app.state.proxy.writer.flush().await;
    micros(&ceiling(app, s, provider).await["spent_usd"])
}

/// What keybroker reserves for a token-priced body: the worst case the provider may bill.
fn reservation(provider: &str, dialect: Dialect, body: &[u8], model: Option<&str>) -> i64 {
    let table = PriceTable::builtin().unwrap();
    estimate_tokens(
        &table,
        &EstimateConfig::default(),
        provider,
        dialect,
        body,
        model,
    )
    .unwrap()
    .cost
    .micros
    .micros()
}

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// One request written byte for byte, so no client library normalises its path or head.
pub async fn raw(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

// ---- paths ----

#[tokio::test]
async fn spellings_of_an_expensive_endpoint_never_serve_more_than_the_ceiling() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    set_ceiling(&app, &s, "openai", "5.00").await;
    let t = token(&app, &s, None).await;
    // About 0.33 USD held per call: gpt-4o, two choices of up to 16,384 tokens.
    let body = json!({"model": "gpt-4o", "n": 2, "max_completion_tokens": 16384,
        "messages": [{"role": "user", "content": "write a long story"}]});
    let bytes = serde_json::to_vec(&body).unwrap();
    let worst = reservation("openai", Dialect::OpenAi, &bytes, None);
    for path in [
        "/v1/chat/complet%69ons",
        "/v1/Chat/Completions",
        "/v1/CHAT/COMPLETIONS",
        "/v1/chat/completions;x=1",
        "/v1;a/chat;b/completions",
        "/v1/%63hat/%43ompletions",
    ] {
        for _ in 0..20 {
            let res = app
                .client
                .post(app.url(&format!("/proxy/openai{path}")))
                .bearer_auth(&t)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            res.bytes().await.unwrap();
            assert!(status == 200 || status == 402, "{path}: {status}");
        }
    }
    // The fake bills its fixed usage where it recognises the path as sent (lower case); where it
    // does not, it stands for a provider that routes case-insensitively and bills the full worst
    // case. Either way, what the upstream served fits the ceiling.
    let calls = upstream.recorder.calls();
    let fake_usage = crate::proxy::expected_micros(&[(12, 2.50), (34, 10.00)]);
    let served: i64 = calls
        .iter()
        .map(|c| {
            if c.path_and_query == "/v1/chat/completions" {
                fake_usage
            } else {
                worst
            }
        })
        .sum();
    assert!(served <= 5_000_000, "served {served} micro-USD");
    assert!(spent(&app, &s, "openai").await <= 5_000_000);
    // Every call went out in its normalised form.
    for c in &calls {
        assert!(
            c.path_and_query
                .eq_ignore_ascii_case("/v1/chat/completions"),
            "{}",
            c.path_and_query
        );
    }
    assert!(calls
        .iter()
        .any(|c| c.path_and_query == "/v1/chat/completions"));
}

#[tokio::test]
async fn double_encoded_overlong_and_param_dot_segments_are_refused_before_the_upstream() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    for path in [
        "/proxy/openai/v1/%252e%252e/admin",
        "/proxy/openai/v1/a%252fb",
        "/proxy/openai/v1/..;/admin",
        "/proxy/openai/v1/..;x=1/admin",
        "/proxy/openai/v1/%2e%2e;x/admin",
        "/proxy/openai/v1/%c0%ae%c0%ae/admin",
        "/proxy/openai/v1/%e0%80%ae/admin",
        "/proxy/openai/v1/a%c0%afb",
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let (status, text) = raw(app.port, &head, b"{}").await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("\"invalid_path\""), "{path}: {text}");
    }
    assert_eq!(upstream.recorder.count(), 0);
}

// ---- numbers and bodies ----

#[tokio::test]
async fn a_choice_count_in_any_spelling_is_reserved_as_that_many_choices() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    // One choice (about 0.16 USD held) fits; five do not.
    set_ceiling(&app, &s, "openai", "0.50").await;
    let t = token(&app, &s, None).await;
    let body = |n: Value| {
        json!({"model": "gpt-4o", "n": n, "max_completion_tokens": 16384,
            "messages": [{"role": "user", "content": "hi"}]})
    };
    for n in [json!(5), json!(5.0), json!("5")] {
        let res = app
            .client
            .post(app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&t)
            .json(&body(n.clone()))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(res).await;
        assert_eq!(status, 402, "n = {n}: {error}");
    }
    for n in [
        json!(-1),
        json!(0),
        json!(2.5),
        json!("5.0"),
        json!(true),
        json!(1e12),
    ] {
        let res = app
            .client
            .post(app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&t)
            .json(&body(n.clone()))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(res).await;
        assert_eq!(status, 400, "n = {n}: {error}");
        assert_eq!(
            error,
            json!({"error": {"type": "invalid_request_body",
                "message": "n must be a positive integer", "field": "n",
                "request_id": error["error"]["request_id"]}}),
            "n = {n}"
        );
    }
    assert_eq!(upstream.recorder.count(), 0);
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .json(&body(json!("1")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    assert_eq!(upstream.recorder.count(), 1);
}

#[tokio::test]
async fn google_is_reserved_for_the_path_model_and_every_spelling_of_its_config() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "google", GOOGLE_KEY).await;
    set_ceiling(&app, &s, "google", "1.00").await;
    let t = token(&app, &s, None).await;
    // gemini-2.5-pro, eight candidates of up to 65,536 tokens: about 5.2 USD; the cheap model in
    // the body and the snake_case spellings must not hide it.
    for config in [
        json!({"generation_config": {"candidate_count": 8}}),
        json!({"generationConfig": {"candidate_count": "8"}}),
        json!({"generationConfig": {"candidateCount": 1}, "generation_config": {"candidate_count": 8.0}}),
    ] {
        let mut body =
            json!({"model": "gemini-2.0-flash", "contents": [{"parts": [{"text": "hi"}]}]});
        for (k, v) in config.as_object().unwrap() {
            body[k] = v.clone();
        }
        // Google decodes `%3A` to the `:` it routes on.
        for path in [
            "/proxy/google/v1beta/models/gemini-2.5-pro:generateContent",
            "/proxy/google/v1beta/models/gemini-2.5-pro%3AgenerateContent",
            "/proxy/google/v1beta/models/Gemini-2.5-Pro%3agenerateCONTENT",
        ] {
            let res = app
                .client
                .post(app.url(path))
                .header("x-goog-api-key", &t)
                .json(&body)
                .send()
                .await
                .unwrap();
            let (status, error) = error_of(res).await;
            assert_eq!(status, 402, "{path} {body}: {error}");
        }
    }
    assert_eq!(upstream.recorder.count(), 0);
}

#[tokio::test]
async fn a_body_with_a_repeated_key_or_that_is_not_a_json_object_is_refused() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    add_key(&app, &s, "anthropic", ANTHROPIC_KEY).await;
    let t = token(&app, &s, None).await;
    for (path, body) in [
        (
            "/proxy/openai/v1/chat/completions",
            r#"{"model": "gpt-4o", "n": 1, "n": 8, "messages": []}"#,
        ),
        (
            "/proxy/anthropic/v1/messages",
            r#"{"model": "claude-opus-4-1", "max_tokens": 10, "messages": [{"role": "user", "content": "a", "content": "b"}]}"#,
        ),
        ("/proxy/openai/v1/chat/completions", "not json"),
        ("/proxy/openai/v1/chat/completions", "[1, 2]"),
        ("/proxy/openai/v1/chat/completions", ""),
        // Duplicate keys are refused wherever the body goes: any reader may take either.
        ("/proxy/openai/v1/batches", r#"{"a": 1, "a": 2}"#),
    ] {
        let res = app
            .client
            .post(app.url(path))
            .bearer_auth(&t)
            .header("x-api-key", &t)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(res).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_body", "{body}");
    }
    assert_eq!(upstream.recorder.count(), 0);
}

// ---- unknown endpoints ----

#[tokio::test]
async fn an_unknown_state_changing_call_is_held_at_the_providers_worst_case() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    add_key(&app, &s, "anthropic", ANTHROPIC_KEY).await;
    // OpenAI's worst case (o1 at 100,000 output tokens) is above 5 USD.
    set_ceiling(&app, &s, "openai", "5.00").await;
    let t = token(&app, &s, None).await;
    for (method, path) in [
        (Method::POST, "/v1/batches"),
        (Method::POST, "/v1/threads/runs"),
        (Method::POST, "/v1/chat/completions/extra"),
        (Method::PUT, "/v1/chat/completions"),
        (Method::PATCH, "/v1/fine_tuning/jobs"),
        (Method::from_bytes(b"post").unwrap(), "/v1/chat/completions"),
        (Method::DELETE, "/v1/files/file-1"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(&format!("/proxy/openai{path}")))
            .bearer_auth(&t)
            .json(&json!({"input_file_id": "file-1"}))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(res).await;
        assert_eq!(status, 402, "{method} {path}: {error}");
    }
    assert_eq!(upstream.recorder.count(), 0);
    // Without a ceiling in the way it is served and, with no usage in the answer, charged the
    // full hold.
    set_ceiling(&app, &s, "anthropic", "100.00").await;
    let res = app
        .client
        .post(app.url("/proxy/anthropic/v1/messages/batches"))
        .header("x-api-key", &t)
        .json(&json!({"requests": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let table = PriceTable::builtin().unwrap();
    let body_len = json!({"requests": []}).to_string().len();
    let held = worst_case(
        &table,
        &EstimateConfig::default(),
        "anthropic",
        Dialect::Anthropic,
        body_len,
        Some(&json!({"requests": []})),
    )
    .unwrap();
    assert_eq!(
        spent(&app, &s, "anthropic").await,
        held.cost.micros.micros()
    );
    // What the table prices explicitly is not held at the worst case: uploads are free.
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/Files"))
        .bearer_auth(&t)
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--x--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    // Reads and bodiless deletes stay free.
    for method in [Method::GET, Method::DELETE] {
        let res = app
            .client
            .request(method, app.url("/proxy/openai/v1/files/file-1"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    assert_eq!(spent(&app, &s, "openai").await, 0);
}

// ---- methods and encodings ----

#[tokio::test]
async fn a_get_or_head_with_a_body_is_refused_before_the_upstream() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    let body = json!({"model": "o1", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    for method in [Method::GET, Method::HEAD] {
        let res = app
            .client
            .request(method.clone(), app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{method}");
        if method == Method::GET {
            let (_, error) = error_of(res).await;
            assert_eq!(error["error"]["type"], "body_not_allowed");
        }
    }
    // A chunked body with no Content-Length is refused too, once read.
    let head = format!(
        "GET /proxy/openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let (status, text) = raw(app.port, &head, chunked.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("body_not_allowed"), "{text}");
    assert_eq!(upstream.recorder.count(), 0);
}

#[tokio::test]
async fn method_override_headers_are_never_forwarded() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    let res = app
        .client
        .get(app.url("/proxy/openai/v1/models"))
        .bearer_auth(&t)
        .header("X-HTTP-Method-Override", "POST")
        .header("x-http-method", "POST")
        .header("X-Method-Override", "POST")
        .header("x-goog-method-override", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let calls = upstream.recorder.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "GET");
    for (name, _) in &calls[0].headers {
        assert!(!name.contains("method"), "{name} was forwarded");
    }
}

#[tokio::test]
async fn a_compressed_body_is_refused_and_content_encoding_is_never_forwarded() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    let t = token(&app, &s, None).await;
    for encoding in ["gzip", "br", "deflate", "identity, gzip", "x-custom"] {
        let res = app
            .client
            .post(app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(vec![0x1f, 0x8b, 0x08, 0x00])
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(res).await;
        assert_eq!(status, 415, "{encoding}: {error}");
        assert_eq!(error["error"]["type"], "unsupported_content_encoding");
    }
    assert_eq!(upstream.recorder.count(), 0);
    let res = app
        .client
        .post(app.url("/proxy/openai/v1/chat/completions"))
        .bearer_auth(&t)
        .header("content-encoding", "identity")
        .json(&crate::proxy::chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let calls = upstream.recorder.calls();
    assert!(calls[0]
        .headers
        .iter()
        .all(|(name, _)| name != "content-encoding"));
}

// ---- headers ----

fn carries(call: &Recorded, needle: &str) -> Vec<String> {
    call.headers
        .iter()
        .filter(|(name, value)| value.contains(needle) || name.contains(needle))
        .map(|(name, _)| name.clone())
        .collect()
}

#[tokio::test]
async fn the_token_cookies_and_csrf_headers_never_reach_the_upstream() {
    let (app, upstream) = app_with_upstream().await;
    let s = app.signed_up().await;
    add_key(&app, &s, "openai", OPENAI_KEY).await;
    add_key(&app, &s, "anthropic", ANTHROPIC_KEY).await;
    add_key(&app, &s, "google", GOOGLE_KEY).await;
    let t = token(&app, &s, None).await;
    let other = token(&app, &s, None).await;
    let copies = [
        ("x-auth-token", t.clone()),
        ("openai-organization", t.clone()),
        ("openai-project", format!("proj {t}")),
        ("anthropic-beta", other.clone()),
        ("x-stainless-custom", format!("Bearer {t}")),
        ("x-goog-user-project", t.to_uppercase()),
        ("user-agent", format!("tool/1.0 ({t})")),
        ("x-api-token", t.clone()),
        ("x-stainless-raw", t["kb_".len()..].to_owned()),
        ("cookie", format!("kb={t}")),
        ("cookie2", "$Version=1".to_owned()),
        ("x-csrf-token", "csrf-abc".to_owned()),
        ("x-xsrf-token", "xsrf-abc".to_owned()),
        ("x-session-id", "sess-1".to_owned()),
        ("openai-session", "sess-2".to_owned()),
    ];
    for (path, auth) in [
        ("/proxy/openai/v1/chat/completions", "authorization"),
        ("/proxy/anthropic/v1/messages", "x-api-key"),
        (
            "/proxy/google/v1beta/models/gemini-2.5-flash:generateContent",
            "x-goog-api-key",
        ),
    ] {
        let mut rb = app
            .client
            .post(app.url(path))
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "claude-sonnet-4", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "contents": [{"parts": [{"text": "hi"}]}]}));
        rb = if auth == "authorization" {
            rb.bearer_auth(&t)
        } else {
            rb.header(auth, &t)
        };
        for (name, value) in &copies {
            rb = rb.header(*name, value);
        }
        let res = rb.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.bytes().await.unwrap();
    }
    let calls = upstream.recorder.calls();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        let token_body = &t["kb_".len()..];
        for needle in [&t, &other, &t.to_uppercase(), token_body] {
            assert!(
                carries(call, needle).is_empty(),
                "{}: {:?}",
                call.path_and_query,
                carries(call, needle)
            );
        }
        for word in ["cookie", "csrf", "xsrf", "session", "token"] {
            assert!(
                carries(call, word).is_empty(),
                "{word}: {:?}",
                carries(call, word)
            );
        }
        // What the SDKs need still arrives.
        assert!(call
            .headers
            .iter()
            .any(|(n, v)| n == "anthropic-version" && v == "2023-06-01"));
    }
}

// ---- the answer ----

/// An upstream that answers every call with the same body.
async fn answering(content_type: &'static str, body: String) -> String {
    answering_with(content_type, &[], body).await
}

/// An upstream that answers every call with the same headers and body.
async fn answering_with(
    content_type: &'static str,
    headers: &[(&'static str, &'static str)],
    body: String,
) -> String {
    let headers = headers.to_vec();
    let server = HttpServer::new(move || {
        let (body, headers) = (body.clone(), headers.clone());
        App::new().default_service(web::to(move || {
            let (body, headers) = (body.clone(), headers.clone());
            async move {
                let mut res = HttpResponse::Ok();
                for header in headers {
                    res.insert_header(header);
                }
                res.content_type(content_type).body(body)
            }
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn usage_that_makes_no_sense_settles_at_the_reservation() {
    let request = json!({"model": "gpt-4o", "max_completion_tokens": 1000, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let bytes = serde_json::to_vec(&request).unwrap();
    let held = reservation("openai", Dialect::OpenAi, &bytes, None);
    let json_answer = |usage: Value| {
        json!({"id": "c", "object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
            "usage": usage})
        .to_string()
    };
    let sse_answer = |usage: Value| {
        format!(
            "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
            json!({"model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}),
            json!({"model": "gpt-4o", "choices": [], "usage": usage})
        )
    };
    let nonsense = [
        json!({"prompt_tokens": -1000, "completion_tokens": -1000}),
        json!({"prompt_tokens": 10, "completion_tokens": 2_000_000_000u64}),
        json!({"prompt_tokens": "10", "completion_tokens": "20"}),
        json!({"prompt_tokens": 10.5, "completion_tokens": 20}),
        json!("free"),
    ];
    for usage in nonsense {
        for (content_type, answer) in [
            ("application/json", json_answer(usage.clone())),
            ("text/event-stream", sse_answer(usage.clone())),
        ] {
            let url = answering(content_type, answer).await;
            let app = TestApp::spawn_with(move |s| {
                s.proxy.upstreams.insert("openai".to_owned(), url);
            })
            .await;
            let s = app.signed_up().await;
            add_key(&app, &s, "openai", OPENAI_KEY).await;
            set_ceiling(&app, &s, "openai", "100.00").await;
            let t = token(&app, &s, None).await;
            let res = app
                .client
                .post(app.url("/proxy/openai/v1/chat/completions"))
                .bearer_auth(&t)
                .header("content-type", "application/json")
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.bytes().await.unwrap();
            assert_eq!(
                spent(&app, &s, "openai").await,
                held,
                "{content_type}: {usage}"
            );
            let logs = app.logs();
            let warned: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("usage report makes no sense"))
                .collect();
            assert!(
                warned.iter().any(|l| l.contains("openai")),
                "{content_type}: {usage}"
            );
            // The warning names the provider and nothing from the body.
            for line in warned {
                for figure in ["-1000", "2000000000", "10.5", "free"] {
                    assert!(!line.contains(figure), "{line}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_per_character_call_without_a_sensible_character_count_settles_at_the_reservation() {
    // 11 characters of text at 0.0003 USD each.
    let held = 11 * 300;
    for headers in [
        &[][..],
        &[("character-cost", "-5")][..],
        &[("character-cost", "lots")][..],
        &[("character-cost", "99999999999")][..],
    ] {
        let url = answering_with("audio/mpeg", headers, "ID3-audio".to_owned()).await;
        let app = TestApp::spawn_with(move |s| {
            s.proxy.upstreams.insert("elevenlabs".to_owned(), url);
        })
        .await;
        let s = app.signed_up().await;
        let key = format!("sk_{}", "ab12".repeat(12));
        add_key(&app, &s, "elevenlabs", &key).await;
        set_ceiling(&app, &s, "elevenlabs", "10.00").await;
        let t = token(&app, &s, None).await;
        let res = app
            .client
            .post(app.url("/proxy/elevenlabs/v1/text-to-speech/voice1"))
            .header("xi-api-key", &t)
            .json(&json!({"text": "hello world", "model_id": "eleven_multilingual_v2"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        assert_eq!(spent(&app, &s, "elevenlabs").await, held, "{headers:?}");
    }
}
