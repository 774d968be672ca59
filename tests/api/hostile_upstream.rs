//! A hostile upstream (issue 20): every way an upstream can try to hand the injected key back to
//! the tool — success bodies and streams in any encoding a client decodes, split across chunks,
//! hidden behind format characters; response headers; redirects; `Retry-After`; interim heads;
//! compressed bodies; every field of an error body. The tool must never get the key or a long
//! piece of it, and everything else it needs (status, body, framing, usage) must still arrive.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::drills::{response, write_then_close, RawUpstream};
use crate::helpers::{Session, TestApp};
use crate::proxy::{add_key, ceiling, chat, micros, set_ceiling, token, OPENAI_KEY};

/// What one gpt-4o-mini call with the fake usage (12 in, 34 out) costs, in micro-dollars, as
/// rounded by the ledger.
const CALL_COST: std::ops::RangeInclusive<i64> = 22..=23;
const USAGE: &str = r#""usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}"#;

struct Hostile {
    app: TestApp,
    s: Session,
    token: String,
    _upstream: RawUpstream,
}

impl Hostile {
    async fn start(upstream: RawUpstream) -> Hostile {
        let url = upstream.url.clone();
        let app = TestApp::spawn_with(move |s| {
            s.proxy.upstreams.insert("openai".into(), url);
            s.proxy.read_timeout = Duration::from_secs(3);
        })
        .await;
        let s = app.signed_up().await;
        add_key(&app, &s, "openai", OPENAI_KEY).await;
        set_ceiling(&app, &s, "openai", "1.00").await;
        let token = token(&app, &s, None).await;
        Hostile {
            app,
            s,
            token,
            _upstream: upstream,
        }
    }

    async fn call(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let res = self
            .app
            .client
            .post(self.app.url("/proxy/openai/v1/chat/completions"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("keybroker answers");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.bytes().await.expect("the whole body arrives").to_vec();
        (status, headers, body)
    }

    /// (spent, reserved) once the call has settled.
    async fn settled(&self) -> (i64, i64) {
        for _ in 0..100 {
            let c = ceiling(&self.app, &self.s, "openai").await;
            let (spent, reserved) = (micros(&c["spent_usd"]), micros(&c["reserved_usd"]));
            if reserved == 0 {
                return (spent, reserved);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the call never settled");
    }
}

/// The key in every form a client (or a person) could read it back from.
fn key_forms() -> Vec<String> {
    let k = OPENAI_KEY;
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    vec![
        k.to_owned(),
        b64.encode(k),
        b64url.encode(k),
        hex::encode(k),
        hex::encode_upper(k),
        k.bytes().map(|b| format!("%{b:02X}")).collect(),
        k.chars().map(|c| format!("\\u{:04x}", c as u32)).collect(),
        k.chars().map(|c| format!("&#{};", c as u32)).collect(),
        k.chars().flat_map(|c| [c, '\u{200B}']).collect(),
        k.chars()
            .map(|c| char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap())
            .collect(),
        k.replacen('T', "%54", 1),
        b64.encode(format!("AC123:{k}")),
    ]
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every string a JSON reader gets out of `v`.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

/// Asserts that neither the key, nor any of its forms, nor a 20-character piece of it, can be
/// read out of `text` as sent, percent-decoded, JSON-decoded, or with invisible characters and
/// fullwidth forms folded away.
fn assert_no_key(what: &str, text: &str) {
    let mut views = vec![text.to_owned(), percent_decode(text)];
    for line in text.lines().chain(std::iter::once(text)) {
        let line = line.strip_prefix("data: ").unwrap_or(line);
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            let mut s = Vec::new();
            strings(&v, &mut s);
            views.extend(s);
        }
    }
    let folded: Vec<String> = views
        .iter()
        .map(|v| {
            v.chars()
                .filter(|c| !matches!(c, '\u{200B}'..='\u{200F}' | '\u{FEFF}' | '\u{2060}'))
                .map(|c| match c as u32 {
                    f @ 0xFF01..=0xFF5E => char::from_u32(f - 0xFF01 + 0x21).unwrap(),
                    _ => c,
                })
                .collect()
        })
        .collect();
    views.extend(folded);
    for view in &views {
        for form in key_forms() {
            assert!(
                !view.contains(&form),
                "{what} carries a form of the key: {view}"
            );
        }
        let key: Vec<char> = OPENAI_KEY.chars().collect();
        for piece in key.windows(20) {
            let piece: String = piece.iter().collect();
            assert!(
                !view.contains(&piece),
                "{what} carries a piece of the key: {view}"
            );
        }
    }
}

fn assert_headers_clean(headers: &reqwest::header::HeaderMap) {
    for (name, value) in headers {
        assert_no_key(
            &format!("header {name}"),
            &String::from_utf8_lossy(value.as_bytes()),
        );
    }
}

/// A JSON chat completion carrying the key in every form, and a real usage report.
fn echoing_completion() -> String {
    let forms = key_forms();
    let key: Vec<char> = OPENAI_KEY.chars().collect();
    let (a, b) = key.split_at(key.len() / 2);
    let fields: Vec<String> = forms
        .iter()
        .enumerate()
        .map(|(i, f)| format!(r#""f{i}":"{}""#, f.replace('"', "\\\"")))
        .collect();
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"first half {} second half {}"}},"finish_reason":"stop"}}],{},{USAGE}}}"#,
        a.iter().collect::<String>(),
        b.iter().collect::<String>(),
        fields.join(",")
    )
}

#[tokio::test]
async fn a_success_body_echoing_the_key_in_every_encoding_reaches_the_tool_masked_at_its_length() {
    let body = echoing_completion();
    let sent_len = body.len();
    let upstream = RawUpstream::start(move |s, _| {
        let body = body.clone();
        async move {
            let bytes = response(
                "200 OK",
                "content-type: application/json\r\n",
                body.as_bytes(),
            );
            write_then_close(s, bytes).await;
        }
    })
    .await;
    let h = Hostile::start(upstream).await;
    let (status, headers, body) = h.call(chat("gpt-4o-mini")).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), sent_len, "masks keep the body's length");
    assert_eq!(headers["content-length"], sent_len.to_string().as_str());
    let text = String::from_utf8(body).unwrap();
    let parsed: Value = serde_json::from_str(&text).expect("the masked body is still JSON");
    assert_eq!(parsed["usage"]["completion_tokens"], 34);
    assert_no_key("the body", &text);
    assert_headers_clean(&headers);
    let (spent, _) = h.settled().await;
    assert!(
        CALL_COST.contains(&spent),
        "metered from the usage: {spent}"
    );
    h.app.assert_not_logged(OPENAI_KEY);
}

/// Writes one chunk of a chunked body.
async fn chunk(s: &mut TcpStream, data: &str) {
    let _ = s
        .write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await;
    let _ = s.flush().await;
    tokio::time::sleep(Duration::from_millis(30)).await;
}

#[tokio::test]
async fn a_key_split_across_stream_chunks_is_masked_and_the_stream_still_parses_and_is_metered() {
    let upstream = RawUpstream::start(|mut s, _| async move {
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await;
        let delta = |text: &str| {
            format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
            )
        };
        chunk(&mut s, &delta("hello")).await;
        // The key cut in three, across chunk boundaries, one part escaped.
        let first = delta(&format!("key: {}", &OPENAI_KEY[..10]));
        let (head, tail) = first.split_at(first.len() - 20);
        chunk(&mut s, head).await;
        let escaped: String = OPENAI_KEY[10..30]
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        chunk(&mut s, tail).await;
        chunk(&mut s, &delta(&format!("{escaped}{}", &OPENAI_KEY[30..]))).await;
        chunk(
            &mut s,
            &format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],{USAGE}}}\n\n"),
        )
        .await;
        chunk(&mut s, "data: [DONE]\n\n").await;
        let _ = s.write_all(b"0\r\n\r\n").await;
        let _ = s.shutdown().await;
    })
    .await;
    let h = Hostile::start(upstream).await;
    let mut body = chat("gpt-4o-mini");
    body["stream"] = json!(true);
    let (status, headers, body) = h.call(body).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("hello") && text.contains("data: [DONE]\n\n") && text.ends_with("\n\n"),
        "{text}"
    );
    assert!(text.contains("[REDACTED"), "{text}");
    // Each event is still one JSON object an SDK can parse.
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line != "[DONE]" {
            serde_json::from_str::<Value>(line).expect("every event is still JSON");
        }
    }
    // The whole stream, events joined, still gives up no piece of the key.
    let joined: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_no_key("the stream's text", &joined);
    assert_no_key("the stream", &text);
    assert_headers_clean(&headers);
    let (spent, _) = h.settled().await;
    assert!(
        CALL_COST.contains(&spent),
        "metered from the stream's usage: {spent}"
    );
    h.app.assert_not_logged(OPENAI_KEY);
}

#[tokio::test]
async fn response_headers_carrying_the_key_never_reach_the_tool_and_the_ones_it_needs_do() {
    let upstream = RawUpstream::start(|s, _| async move {
        let k = OPENAI_KEY;
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        let headers = format!(
            "content-type: application/json; note={k}\r\n\
             link: <https://api.example/?key={k}>; rel=next\r\n\
             www-authenticate: Bearer realm=\"{k}\"\r\n\
             x-made-up: {b64}\r\n\
             x-ratelimit-remaining-requests: 99 {k}\r\n\
             x-ratelimit-limit-requests: 100\r\n\
             set-cookie: s={k}\r\n\
             openai-processing-ms: 12\r\n"
        );
        let body = format!(r#"{{"id":"x","object":"chat.completion","choices":[],{USAGE}}}"#);
        write_then_close(s, response("200 OK", &headers, body.as_bytes())).await;
    })
    .await;
    let h = Hostile::start(upstream).await;
    let (status, headers, _) = h.call(chat("gpt-4o-mini")).await;
    assert_eq!(status, 200);
    assert_headers_clean(&headers);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["openai-processing-ms"], "12");
    assert_eq!(headers["x-ratelimit-limit-requests"], "100");
    for dropped in [
        "link",
        "www-authenticate",
        "x-made-up",
        "set-cookie",
        "x-ratelimit-remaining-requests",
    ] {
        assert!(headers.get(dropped).is_none(), "{dropped} was forwarded");
    }
}

#[tokio::test]
async fn a_redirect_is_rebuilt_like_an_error_and_its_location_never_reaches_the_tool() {
    let upstream = RawUpstream::start(|s, _| async move {
        let headers = format!(
            "location: https://evil.example/collect?k={OPENAI_KEY}\r\ncontent-type: text/html\r\n"
        );
        let body = format!("<a href=\"https://evil.example/?k={OPENAI_KEY}\">moved</a>");
        write_then_close(s, response("302 Found", &headers, body.as_bytes())).await;
    })
    .await;
    let h = Hostile::start(upstream).await;
    let (status, headers, body) = h.call(chat("gpt-4o-mini")).await;
    assert_eq!(status, 302);
    assert!(headers.get("location").is_none());
    let v: Value = serde_json::from_slice(&body).expect("our JSON body");
    assert_eq!(v["error"]["upstream_status"], 302);
    assert_no_key("the body", &String::from_utf8_lossy(&body));
    assert_headers_clean(&headers);
    assert_eq!(h.settled().await.0, 0, "a redirect is not billed");
}

#[tokio::test]
async fn a_retry_after_that_is_not_seconds_or_a_date_is_dropped() {
    let upstream = RawUpstream::start(|s, _| async move {
        let headers = format!("retry-after: 7 {OPENAI_KEY}\r\ncontent-type: application/json\r\n");
        let body = r#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#;
        write_then_close(
            s,
            response("429 Too Many Requests", &headers, body.as_bytes()),
        )
        .await;
    })
    .await;
    let h = Hostile::start(upstream).await;
    let (status, headers, _) = h.call(chat("gpt-4o-mini")).await;
    assert_eq!(status, 429);
    assert!(headers.get("retry-after").is_none());
    assert_headers_clean(&headers);
}

#[tokio::test]
async fn an_interim_head_is_dropped_and_the_final_answer_is_served_and_metered() {
    let upstream = RawUpstream::start(|mut s, _| async move {
        let interim = format!(
            "HTTP/1.1 103 Early Hints\r\nlink: <https://evil.example/?k={OPENAI_KEY}>\r\n\r\n"
        );
        let _ = s.write_all(interim.as_bytes()).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let body = format!(
            r#"{{"id":"x","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"final"}}}}],{USAGE}}}"#
        );
        write_then_close(
            s,
            response("200 OK", "content-type: application/json\r\n", body.as_bytes()),
        )
        .await;
    })
    .await;
    let h = Hostile::start(upstream).await;
    let (status, headers, body) = h.call(chat("gpt-4o-mini")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "final");
    assert_headers_clean(&headers);
    let (spent, _) = h.settled().await;
    assert!(
        CALL_COST.contains(&spent),
        "the final answer is metered: {spent}"
    );
}

#[tokio::test]
async fn a_compressed_answer_is_refused_and_charged_its_hold() {
    let upstream = RawUpstream::start(|s, _| async move {
        // Whatever the bytes are, the tool would decompress them and the scrubber cannot.
        let mut body = vec![0x1f, 0x8b, 0x08, 0x00];
        body.extend_from_slice(OPENAI_KEY.as_bytes());
        let headers = "content-type: application/json\r\ncontent-encoding: gzip\r\n";
        write_then_close(s, response("200 OK", headers, &body)).await;
    })
    .await;
    let h = Hostile::start(upstream).await;
    let (status, headers, body) = h.call(chat("gpt-4o-mini")).await;
    assert_eq!(status, 502);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "upstream_bad_response");
    assert_no_key("the body", &String::from_utf8_lossy(&body));
    assert_headers_clean(&headers);
    let (spent, _) = h.settled().await;
    assert!(
        spent > *CALL_COST.end(),
        "charged its hold, not its usage: {spent}"
    );
}

#[tokio::test]
async fn an_error_body_hiding_the_key_in_any_field_is_rebuilt_clean() {
    let upstream = RawUpstream::start(|s, _| async move {
        let zw: String = OPENAI_KEY.chars().flat_map(|c| [c, '\u{200B}']).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(OPENAI_KEY);
        let body = json!({"error": {
            "type": OPENAI_KEY,
            "code": b64,
            "status": zw,
            "param": OPENAI_KEY,
            "message": format!("Incorrect API key provided: {zw}"),
        }})
        .to_string();
        write_then_close(
            s,
            response(
                "401 Unauthorized",
                "content-type: application/json\r\n",
                body.as_bytes(),
            ),
        )
        .await;
    })
    .await;
    let h = Hostile::start(upstream).await;
    let (status, headers, body) = h.call(chat("gpt-4o-mini")).await;
    assert_eq!(status, 401);
    let text = String::from_utf8_lossy(&body);
    let v: Value = serde_json::from_str(&text).expect("our JSON body");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Incorrect API key provided"));
    assert_no_key("the error body", &text);
    assert_headers_clean(&headers);
    h.app.assert_not_logged(OPENAI_KEY);
}

#[tokio::test]
async fn a_stream_that_ends_cleanly_after_a_partial_usage_report_is_charged_its_hold() {
    use crate::proxy::ANTHROPIC_KEY;
    let upstream = RawUpstream::start(|mut s, _| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        // message_start reports the input; the output's message_delta never comes.
        chunk(
            &mut s,
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-sonnet-4-20250514\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n",
        )
        .await;
        chunk(
            &mut s,
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a long answer\"}}\n\n",
        )
        .await;
        let _ = s.write_all(b"0\r\n\r\n").await;
        let _ = s.shutdown().await;
    })
    .await;
    let url = upstream.url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.proxy.upstreams.insert("anthropic".into(), url);
    })
    .await;
    let s = app.signed_up().await;
    add_key(&app, &s, "anthropic", ANTHROPIC_KEY).await;
    set_ceiling(&app, &s, "anthropic", "5.00").await;
    let t = token(&app, &s, None).await;
    let res = app
        .client
        .post(app.url("/proxy/anthropic/v1/messages"))
        .header("x-api-key", &t)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "claude-sonnet-4-20250514", "max_tokens": 1000, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let mut spent = 0;
    for _ in 0..100 {
        let c = ceiling(&app, &s, "anthropic").await;
        if micros(&c["reserved_usd"]) == 0 {
            spent = micros(&c["spent_usd"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 1,000 output tokens at $15/M alone is $0.015: far above the one-token report ($0.000018).
    assert!(spent >= 15_000, "charged {spent} µ$, not its hold");
    drop(upstream);
}
