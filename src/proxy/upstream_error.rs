//! Rebuilding provider error bodies (and redirects, which are answered like errors). The status
//! code is kept; the body the tool gets is ours: the provider's error `type`/`code`/`status` and a
//! message, every one of them passed through the call's [`redactor::Scrubber`] (the key in any
//! form a client decodes, or a long run of it) and the pattern redactor, with any long run of the
//! request body cut out of the message. Providers echo keys and request fragments in errors; none
//! of that gets through.
//!
//! The shape `{"error": {"type", "code", "message", ...}}` is what the OpenAI and Anthropic SDKs
//! read (`error.type`, `error.message`), and carries Google's `status` too, so each SDK raises
//! its usual exception with a useful message.

use serde_json::{json, Map, Value};

/// The most of a provider's message we pass on.
const MAX_MESSAGE_CHARS: usize = 500;

/// What we keep of an upstream error.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamError {
    pub kind: Option<String>,
    pub code: Option<Value>,
    pub status: Option<String>,
    pub message: Option<String>,
}

fn short_string(v: &Value) -> Option<String> {
    v.as_str().map(|s| s.chars().take(100).collect())
}

/// Reads the fields we keep from a provider's error body; anything unparseable keeps nothing.
pub fn parse(body: &[u8]) -> UpstreamError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // OpenAI/Google: {"error": {...}}; Anthropic: {"type": "error", "error": {...}}; some send a list.
    let e = match &v {
        Value::Array(items) => items.first().map(|i| &i["error"]).unwrap_or(&Value::Null),
        _ => &v["error"],
    };
    let code = match &e["code"] {
        Value::String(s) => Some(Value::from(s.chars().take(100).collect::<String>())),
        Value::Number(n) => Some(Value::Number(n.clone())),
        _ => None,
    };
    UpstreamError {
        kind: short_string(&e["type"]),
        code,
        status: short_string(&e["status"]),
        message: e["message"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| e.as_str().map(str::to_owned)),
    }
}

/// Shared runs at least this long between the message and the request body are cut.
const ECHO_WINDOW: usize = 16;
/// How much of the request body is compared (error path only; bounded work).
const ECHO_SCAN_LIMIT: usize = 1 << 20;

fn window_hashes(bytes: &[u8]) -> impl Iterator<Item = (usize, u64)> + '_ {
    const BASE: u64 = 1_000_003;
    let top = (1..ECHO_WINDOW).fold(1u64, |acc, _| acc.wrapping_mul(BASE));
    let mut h = bytes.iter().take(ECHO_WINDOW).fold(0u64, |acc, &b| {
        acc.wrapping_mul(BASE).wrapping_add(u64::from(b))
    });
    let last = bytes.len().saturating_sub(ECHO_WINDOW);
    (0..=last).map(move |i| {
        let out = (i, h);
        if let (Some(&old), Some(&new)) = (bytes.get(i), bytes.get(i + ECHO_WINDOW)) {
            h = h
                .wrapping_sub(u64::from(old).wrapping_mul(top))
                .wrapping_mul(BASE)
                .wrapping_add(u64::from(new));
        }
        out
    })
}

/// Replaces every run of the message that also occurs in the request body (16 bytes or more)
/// with `[request content]`. Linear in the body: one rolling hash over it, looked up in a small
/// map of the message's windows.
fn cut_request_echo(message: &str, request_body: &[u8]) -> String {
    let m = message.as_bytes();
    let body = request_body
        .get(..request_body.len().min(ECHO_SCAN_LIMIT))
        .unwrap_or(request_body);
    if m.len() < ECHO_WINDOW || body.len() < ECHO_WINDOW {
        return message.to_owned();
    }
    let mut windows: std::collections::HashMap<u64, Vec<usize>> = std::collections::HashMap::new();
    for (i, h) in window_hashes(m) {
        windows.entry(h).or_default().push(i);
    }
    let mut cut = vec![false; m.len()];
    for (j, h) in window_hashes(body) {
        let Some(positions) = windows.get(&h) else {
            continue;
        };
        for &i in positions {
            if m.get(i..i + ECHO_WINDOW) == body.get(j..j + ECHO_WINDOW) {
                cut[i..i + ECHO_WINDOW].iter_mut().for_each(|c| *c = true);
            }
        }
    }
    let mut out = String::with_capacity(message.len());
    let mut in_cut = false;
    for (i, ch) in message.char_indices() {
        if cut[i] {
            if !in_cut {
                out.push_str("[request content]");
                in_cut = true;
            }
        } else {
            in_cut = false;
            out.push(ch);
        }
    }
    out
}

/// One field the provider chose, made safe to pass on: the key in any form and anything
/// key-shaped cut out.
fn clean(text: &str, scrubber: &redactor::Scrubber) -> String {
    let redactor = crate::telemetry::redactor();
    let text = scrubber.scrub_str(text);
    redactor.redact(&text).into_owned()
}

/// Our body for an upstream error.
pub fn rebuild(
    provider: &str,
    status: u16,
    upstream_body: &[u8],
    request_body: &[u8],
    scrubber: &redactor::Scrubber,
    request_id: &str,
) -> Value {
    let parsed = parse(upstream_body);
    let message = match parsed.message {
        Some(m) => {
            let m: String = m.chars().take(MAX_MESSAGE_CHARS * 4).collect();
            let m = clean(&m, scrubber);
            let m = cut_request_echo(&m, request_body);
            // A second pass: cutting can join fragments into something key-shaped again.
            let m = clean(&m, scrubber);
            m.chars().take(MAX_MESSAGE_CHARS).collect::<String>()
        }
        None => format!("{provider} answered HTTP {status}"),
    };
    let mut error = Map::new();
    let kind = parsed
        .kind
        .map(|k| clean(&k, scrubber))
        .unwrap_or_else(|| "upstream_error".into());
    error.insert("type".into(), Value::from(kind));
    match parsed.code {
        Some(Value::String(code)) => {
            error.insert("code".into(), Value::from(clean(&code, scrubber)));
        }
        Some(code) => {
            error.insert("code".into(), code);
        }
        None => {}
    }
    if let Some(s) = parsed.status {
        error.insert("status".into(), Value::from(clean(&s, scrubber)));
    }
    error.insert("message".into(), Value::from(message));
    error.insert("provider".into(), Value::from(provider));
    error.insert("upstream_status".into(), Value::from(status));
    error.insert("request_id".into(), Value::from(request_id));
    json!({ "error": error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_shapes_are_parsed() {
        let openai = parse(br#"{"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#);
        assert_eq!(openai.kind.as_deref(), Some("invalid_request_error"));
        assert_eq!(openai.code, Some(Value::from("invalid_api_key")));
        let anthropic = parse(br#"{"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}"#);
        assert_eq!(anthropic.kind.as_deref(), Some("authentication_error"));
        let google = parse(br#"{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}"#);
        assert_eq!(google.code, Some(Value::from(400)));
        assert_eq!(google.status.as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(
            parse(b"<html>oops</html>"),
            UpstreamError {
                kind: None,
                code: None,
                status: None,
                message: None
            }
        );
    }

    #[test]
    fn the_key_and_request_echoes_never_survive() {
        let key = b"zz-unshaped-provider-key-0123456789";
        let scrubber = redactor::Scrubber::new(key);
        let body = br#"{"error": {"message": "Incorrect API key provided: zz-unshaped-provider-key-0123456789. Your prompt 'tell me the launch codes please' was rejected", "type": "invalid_request_error"}}"#;
        let request = br#"{"messages":[{"content":"tell me the launch codes please"}]}"#;
        let out = rebuild("openai", 401, body, request, &scrubber, "req-1").to_string();
        assert!(
            !out.contains("zz-unshaped-provider-key-0123456789"),
            "{out}"
        );
        assert!(!out.contains("launch codes please"), "{out}");
        assert!(out.contains("invalid_request_error"));
        assert!(out.contains("req-1"));
        // Every field the provider chose is checked, and format characters hide nothing.
        let body = "{\"error\": {\"message\": \"zz-unshaped\u{200B}-provider-key-0123456789\", \"type\": \"zz-unshaped-provider-key-0123456789\", \"code\": \"zz-unshaped-provider-key-0123456789\", \"status\": \"zz-unshaped-provider-key-0123456789\"}}";
        let out = rebuild("openai", 400, body.as_bytes(), b"", &scrubber, "r").to_string();
        assert!(!scrubber.finds(out.as_bytes()), "{out}");
    }

    #[test]
    fn only_shared_runs_of_sixteen_bytes_or_more_are_cut() {
        let request =
            br#"{"model":"gpt-4o-mini","messages":[{"content":"a fairly distinctive sentence"}]}"#;
        assert_eq!(
            cut_request_echo(
                "Model gpt-4o-mini rejected 'a fairly distinctive sentence' (too long)",
                request
            ),
            "Model gpt-4o-mini rejected '[request content]' (too long)"
        );
        assert_eq!(cut_request_echo("short message", request), "short message");
        assert_eq!(
            cut_request_echo("né è ü a fairly distinctive sentence ü", request),
            "né è ü [request content] ü"
        );
    }

    #[test]
    fn a_non_json_error_gets_our_own_message() {
        let out = rebuild(
            "anthropic",
            502,
            b"<html>Bad gateway for sk-ant-api03-xyz</html>",
            b"",
            &redactor::Scrubber::new(b"k"),
            "r",
        );
        assert_eq!(out["error"]["message"], "anthropic answered HTTP 502");
        assert_eq!(out["error"]["type"], "upstream_error");
    }
}
