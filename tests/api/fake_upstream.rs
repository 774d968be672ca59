//! A local stand-in for the providers' APIs, speaking their real wire formats (OpenAI chat
//! completions, Anthropic messages, Google generateContent; JSON and SSE), with fixed usage so
//! metering can be checked exactly. It records the credential headers each call carried, and a
//! request header `x-fake-mode` switches it into hostile behaviours (echo the key in an error,
//! hang, garbage, cut a stream short, 429).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

/// Token counts every successful fake call reports.
pub const OPENAI_USAGE: (u64, u64) = (12, 34);
pub const ANTHROPIC_USAGE: (u64, u64) = (25, 15);
pub const GOOGLE_USAGE: (u64, u64) = (8, 21);

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    /// Every credential-bearing header the call carried, as `name: value`.
    pub credentials: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Recorded>>>);

impl Recorder {
    pub fn calls(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub struct FakeUpstream {
    pub url: String,
    pub recorder: Recorder,
    handle: actix_web::dev::ServerHandle,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let recorder = Recorder::default();
        let r = recorder.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(r.clone()))
                .default_service(web::to(handle))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        FakeUpstream {
            url: format!("http://127.0.0.1:{port}"),
            recorder,
            handle,
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        let h = self.handle.clone();
        // Stop without waiting; the test runtime may already be shutting down.
        drop(h.stop(false));
    }
}

const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "xi-api-key",
    "api-key",
    "cookie",
];

async fn handle(req: HttpRequest, body: Bytes, rec: web::Data<Recorder>) -> HttpResponse {
    let credentials: Vec<String> = CREDENTIAL_HEADERS
        .iter()
        .flat_map(|name| {
            req.headers()
                .get_all(*name)
                .map(move |v| format!("{name}: {}", v.to_str().unwrap_or("<bin>")))
        })
        .collect();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<bin>").to_owned(),
            )
        })
        .collect();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    rec.0.lock().unwrap().push(Recorded {
        method: req.method().to_string(),
        path_and_query: path_and_query.clone(),
        credentials: credentials.clone(),
        headers,
        body: body.clone(),
    });
    let mode = req
        .headers()
        .get("x-fake-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("ok")
        .to_owned();
    let echoed = credentials.join(" | ");
    match mode.as_str() {
        "echo-key-401" => {
            return HttpResponse::Unauthorized().json(json!({"error": {
                "message": format!("Incorrect API key provided: {echoed}. Request was: {}", String::from_utf8_lossy(&body)),
                "type": "invalid_request_error", "code": "invalid_api_key"}}))
        }
        "echo-key-500" => {
            return HttpResponse::InternalServerError()
                .content_type("text/html")
                .body(format!("<html>proxy error for {echoed} body={}</html>", String::from_utf8_lossy(&body)))
        }
        "429" => {
            return HttpResponse::TooManyRequests()
                .insert_header(("retry-after", "7"))
                .json(json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}))
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        // An ordinary answer after a pause: calls that are in flight long enough to kill the
        // broker that forwards them.
        "slow" => {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        "garbage" => return HttpResponse::Ok().content_type("application/json").body("{\"choices\": [tru"),
        _ => {}
    }
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = req.uri().path();
    let cut = mode == "cut-stream";
    let gap = if mode == "slow-stream" {
        Duration::from_millis(20)
    } else {
        Duration::ZERO
    };
    if path.ends_with("/chat/completions") {
        openai_chat(&json_body, cut, gap)
    } else if path.ends_with("/v1/messages") {
        anthropic_messages(&json_body, cut, gap)
    } else if path.contains(":streamGenerateContent") {
        google(path, true, cut, gap)
    } else if path.contains(":generateContent") {
        google(path, false, cut, gap)
    } else {
        HttpResponse::Ok().json(json!({"ok": true, "path": path}))
    }
}

fn sse(events: Vec<String>, cut: bool, gap: Duration) -> HttpResponse {
    let n = events.len();
    let keep = if cut { n / 2 } else { n };
    let stream =
        stream::iter(events.into_iter().take(keep).enumerate()).then(move |(i, e)| async move {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Ok::<_, actix_web::Error>(Bytes::from(e))
        });
    let stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<Bytes, actix_web::Error>>>,
    > = if cut {
        Box::pin(stream.chain(stream::once(async {
            Err(actix_web::error::ErrorInternalServerError("cut"))
        })))
    } else {
        Box::pin(stream)
    };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

fn openai_chat(req: &Value, cut: bool, gap: Duration) -> HttpResponse {
    let model = req["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let (p, c) = OPENAI_USAGE;
    let usage = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}});
    if req["stream"].as_bool() != Some(true) {
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the fake."}, "finish_reason": "stop"}],
            "usage": usage}));
    }
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in ["Hello", " from", " the", " fake", "."] {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if req["stream_options"]["include_usage"].as_bool() == Some(true) {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
            "created": 1_700_000_000, "model": model, "choices": [], "usage": usage})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    sse(events, cut, gap)
}

fn anthropic_messages(req: &Value, cut: bool, gap: Duration) -> HttpResponse {
    let model = req["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-20250514")
        .to_owned();
    let (i, o) = ANTHROPIC_USAGE;
    if req["stream"].as_bool() != Some(true) {
        return HttpResponse::Ok().json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from the fake."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": i, "output_tokens": o, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}));
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
            "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": i, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for word in ["Hello", " from", " the", " fake", "."] {
        events.push(ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})));
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    // Cumulative usage: a metering bug that adds these twice shows up as 2x.
    events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": o / 2}})));
    events.push(ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": o}})));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    sse(events, cut, gap)
}

fn google(path: &str, stream: bool, cut: bool, gap: Duration) -> HttpResponse {
    let model = path
        .rsplit('/')
        .next()
        .and_then(|m| m.split(':').next())
        .unwrap_or("gemini-2.5-flash")
        .to_owned();
    let (p, c) = GOOGLE_USAGE;
    let body = |text: &str, cands: u64, finish: bool| {
        let mut cand = json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if finish {
            cand["finishReason"] = json!("STOP");
        }
        json!({"candidates": [cand], "usageMetadata": {"promptTokenCount": p, "candidatesTokenCount": cands, "totalTokenCount": p + cands},
            "modelVersion": model, "responseId": "fake"})
    };
    if !stream {
        return HttpResponse::Ok().json(body("Hello from the fake.", c, true));
    }
    let events = vec![
        format!("data: {}\r\n\r\n", body("Hello", 2, false)),
        format!("data: {}\r\n\r\n", body(" from the", 9, false)),
        format!("data: {}\r\n\r\n", body(" fake.", c, true)),
    ];
    sse(events, cut, gap)
}
