//! Which headers cross the proxy. Requests carry only an allow-list: the headers the official
//! SDKs send that a provider reads (content negotiation, SDK telemetry, API versions and betas,
//! idempotency, tracing), and among those never one that could carry a credential: a name with a
//! credential or session word in it, or a value holding the presented token or anything shaped like
//! a keybroker token (the token travels in the provider's usual auth header and must never reach
//! the provider). Responses carry an allow-list too (what the SDKs read: framing and caching
//! metadata, request ids, retry and rate-limit headers), and a value carrying any form of the
//! call's key drops its header ([`response_headers`]).

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus `proxy-connection`, which old clients still send.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Request headers forwarded by exact name. Not here, on purpose: `host`, `content-length` and
/// `accept-encoding` (keybroker sets them), `content-encoding` (a compressed body is refused),
/// credentials, cookies, forwarding headers, and method overrides.
const FORWARDED: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-language",
    "content-type",
    "user-agent",
    "idempotency-key",
    "traceparent",
    "tracestate",
    // google-genai sends its timeout for the server to honour.
    "x-server-timeout",
];

/// Request header families forwarded by prefix: OpenAI's and Anthropic's SDKs (`x-stainless-*`,
/// `openai-organization`, `openai-project`, `openai-beta`, `anthropic-version`, `anthropic-beta`),
/// Google's (`x-goog-api-client`, `x-goog-user-project`), Stripe's (`stripe-version`,
/// `stripe-account`, `x-stripe-client-user-agent`), Twilio's and ElevenLabs' (Fern: `x-fern-*`).
const FORWARDED_PREFIXES: &[&str] = &[
    "x-stainless-",
    "openai-",
    "anthropic-",
    "x-goog-",
    "stripe-",
    "x-stripe-",
    "x-twilio-",
    "x-fern-",
];

/// A header whose name contains one of these is never forwarded, whatever list admitted it
/// (`x-goog-api-key`, `openai-session-token`, `x-http-method-override`, ...). The provider key is
/// added by the handler after this filter.
const REFUSED_WORDS: &[&str] = &[
    "cookie", "csrf", "xsrf", "session", "auth", "token", "key", "override", "method",
];

/// The one allowed name with a refused word in it: it names a retry, not a credential. Its value
/// still passes the value checks.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Headers a tool may carry its keybroker token in (whichever its SDK uses): where
/// [`presented_token`] looks. None of them is on the allow-list.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "xi-api-key",
    "api-key",
    "cookie",
];

fn named_in_connection(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a request header from the tool may be forwarded to the provider, by its name:
/// allow-listed (built in, or one of the operator's `extra` names), not refused by a word in it,
/// not hop-by-hop nor named in `Connection`. Its value is checked apart ([`carries_a_token`]).
pub fn forward_request_header(
    name: &HeaderName,
    connection_named: &[String],
    extra: &[String],
) -> bool {
    let n = name.as_str();
    let allowed = FORWARDED.contains(&n)
        || FORWARDED_PREFIXES.iter().any(|p| n.starts_with(p))
        || extra.iter().any(|e| e.eq_ignore_ascii_case(n));
    let refused_word = n != IDEMPOTENCY_KEY && REFUSED_WORDS.iter().any(|w| n.contains(w));
    allowed
        && !refused_word
        && !HOP_BY_HOP.contains(&n)
        && !n.starts_with("x-keybroker-")
        && !connection_named.iter().any(|c| c == n)
}

/// The request headers to forward, in order. `presented` is the token the tool authenticated
/// with; `extra` the operator's additional exact names (`ProxySettings::forward_headers`).
pub fn request_headers(
    headers: &HeaderMap,
    presented: &str,
    extra: &[String],
) -> Vec<(HeaderName, HeaderValue)> {
    let named = named_in_connection(headers);
    headers
        .iter()
        .filter(|(k, _)| forward_request_header(k, &named, extra))
        .filter(|(_, v)| !carries_a_token(v.as_bytes(), presented.as_bytes()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Characters of a token after its prefix (unpadded base64url).
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Fewer characters than a token has after `kb_`, and more than any word that happens to follow
/// those letters: a truncated token is still refused.
const SHAPE_MIN_CHARS: usize = 16;

/// Whether `value` holds something shaped like a keybroker token: `kb_` (any case, or
/// percent-encoded as `kb%5f`) followed by at least [`SHAPE_MIN_CHARS`] token characters.
fn token_shaped(value: &[u8]) -> bool {
    let prefixes: [&[u8]; 2] = [b"kb_", b"kb%5f"];
    (0..value.len()).any(|i| {
        prefixes.iter().any(|prefix| {
            let Some(rest) = value
                .get(i..i + prefix.len())
                .filter(|head| head.eq_ignore_ascii_case(prefix))
                .and_then(|_| value.get(i + prefix.len()..))
            else {
                return false;
            };
            rest.iter().take_while(|b| token_char(**b)).count() >= SHAPE_MIN_CHARS
        })
    })
}

/// Whether a header value carries the presented token or any token, as written, percent-encoded,
/// or inside a base64 run (`Basic base64(user:kb_...)` under another name). The presented token's
/// random part alone counts too: the prefix is no secret.
pub fn carries_a_token(value: &[u8], presented: &[u8]) -> bool {
    let secret = presented.strip_prefix(b"kb_").unwrap_or(presented);
    let holds = |bytes: &[u8]| {
        token_shaped(bytes) || (!secret.is_empty() && memchr::memmem::find(bytes, secret).is_some())
    };
    if holds(value) {
        return true;
    }
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
    value
        .split(|b| !b64(b))
        .filter(|run| run.len() >= 20)
        .any(|run| {
            let engines = [
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            // A run may start mid-value: try it from each of the four alignments.
            (0..4).any(|skip| {
                let Some(run) = run.get(skip..) else {
                    return false;
                };
                let usable = run.len() - run.len() % 4;
                engines.iter().any(|e| {
                    run.get(..usable)
                        .and_then(|r| e.decode(r).ok())
                        .is_some_and(|decoded| holds(&decoded))
                })
            })
        })
}

/// Response headers a client of one of the providers reads, by exact name: framing and caching
/// metadata, the providers' request ids, and what the official SDKs read to decide on retries
/// (`retry-after-ms`, `x-should-retry`). Everything else is dropped: a header is a channel, and a
/// made-up one (or `Link`, `WWW-Authenticate`, `Location`) can carry anything.
const RESPONSE_ALLOWED: &[&str] = &[
    "content-type",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
    "etag",
    "last-modified",
    "vary",
    "date",
    "x-request-id",
    "request-id",
    "x-should-retry",
    "retry-after-ms",
    "idempotency-key",
    "original-request",
    "history-item-id",
    "character-cost",
    "x-character-count",
    "tts-latency-ms",
    "current-concurrent-requests",
    "maximum-concurrent-requests",
];

/// Response header families forwarded by prefix: rate-limit state and the providers' own
/// metadata headers (`openai-processing-ms`, `anthropic-ratelimit-*`, `stripe-should-retry`,
/// `twilio-request-id`, ...).
const RESPONSE_ALLOWED_PREFIXES: &[&str] = &[
    "x-ratelimit-",
    "ratelimit-",
    "openai-",
    "anthropic-",
    "x-goog-",
    "stripe-",
    "twilio-",
    "x-twilio-",
];

/// Whether a response header from the provider may be passed to the tool, by name. Its value is
/// still checked (see [`response_headers`]). `content-length` is set by keybroker (see
/// [`declared_length`]), `retry-after` only in its two standard forms ([`retry_after`]).
pub fn forward_response_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    if n.contains("cookie") || n.contains("auth") {
        return false;
    }
    RESPONSE_ALLOWED.contains(&n) || RESPONSE_ALLOWED_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// Whether the provider's body is sent as itself: no `Content-Encoding` but `identity`, and no
/// transfer coding but `chunked`. keybroker asks for `identity`; a compressed body would pass the
/// scrubber unread and be decompressed by the tool.
pub fn identity_coded(headers: &HeaderMap) -> bool {
    let only = |name: &str, allowed: &[&str]| {
        headers.get_all(name).all(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .all(|c| c.is_empty() || allowed.contains(&c.as_str()))
            })
        })
    };
    only("content-encoding", &["identity"]) && only("transfer-encoding", &["chunked"])
}

/// A `Retry-After` value passed on only as delta-seconds or an HTTP-date (RFC 9110 §10.2.3);
/// anything else is text the provider chose, so it is dropped.
pub fn retry_after(headers: &HeaderMap) -> Option<actix_web::http::header::HeaderValue> {
    let value = headers.get("retry-after")?;
    let text = value.to_str().ok()?.trim();
    let seconds = !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit());
    let date = text.parse::<actix_web::http::header::HttpDate>().is_ok();
    (seconds || date)
        .then(|| actix_web::http::header::HeaderValue::from_str(text).ok())
        .flatten()
}

/// `Content-Type` rebuilt from its parts: the media type and a `charset` (or multipart
/// `boundary`) of token characters. Other parameters are dropped; a value that does not parse
/// becomes `application/octet-stream`.
pub fn content_type(
    value: &actix_web::http::header::HeaderValue,
) -> actix_web::http::header::HeaderValue {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+'*~".contains(&b))
    };
    let fallback = actix_web::http::header::HeaderValue::from_static("application/octet-stream");
    let Ok(text) = value.to_str() else {
        return fallback;
    };
    let mut parts = text.split(';');
    let media = parts.next().unwrap_or("").trim();
    let Some((kind, sub)) = media.split_once('/') else {
        return fallback;
    };
    if !token(kind) || !token(sub) {
        return fallback;
    }
    let mut out = media.to_ascii_lowercase();
    for param in parts {
        if let Some((k, v)) = param.split_once('=') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().trim_matches('"');
            if (k == "charset" || k == "boundary") && token(v) && v.len() <= 70 {
                out.push_str("; ");
                out.push_str(&k);
                out.push('=');
                out.push_str(v);
            }
        }
    }
    actix_web::http::header::HeaderValue::from_str(&out).unwrap_or(fallback)
}

/// The body length the provider declared, when keybroker can pass it on to the tool: one
/// `Content-Length` of digits, no `Transfer-Encoding`, on a response that has a body (not to
/// HEAD, not 1xx, 204 or 304). awc reads the provider's body by that length, so the tool gets
/// exactly that many bytes or a connection that breaks off, as it would from the provider.
///
/// Why: a body of known length goes out with `Content-Length` instead of chunked framing, as the
/// provider sent it (and as nginx passes it): smaller, cheaper for every client to read, and
/// what HTTP/1.0 clients and download progress bars need.
pub fn declared_length(
    method: &actix_web::http::Method,
    status: actix_web::http::StatusCode,
    headers: &HeaderMap,
) -> Option<u64> {
    use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    if method == actix_web::http::Method::HEAD
        || status.is_informational()
        || status == actix_web::http::StatusCode::NO_CONTENT
        || status == actix_web::http::StatusCode::NOT_MODIFIED
        || headers.contains_key(TRANSFER_ENCODING)
    {
        return None;
    }
    let mut values = headers.get_all(CONTENT_LENGTH);
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let digits = value.as_bytes();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.to_str().ok()?.parse().ok()
}

/// The response headers to forward, in order: allowed by name ([`forward_response_header`]),
/// `Content-Type` rebuilt ([`content_type`]), and any whose value `scrubber` finds a form of the
/// call's key in dropped whole.
pub fn response_headers(
    headers: &HeaderMap,
    scrubber: &redactor::Scrubber,
) -> Vec<(HeaderName, actix_web::http::header::HeaderValue)> {
    headers
        .iter()
        .filter(|(k, _)| forward_response_header(k))
        .map(|(k, v)| {
            if k == actix_web::http::header::CONTENT_TYPE {
                (k.clone(), content_type(v))
            } else {
                (k.clone(), v.clone())
            }
        })
        .filter(|(_, v)| !scrubber.finds(v.as_bytes()))
        .collect()
}

/// The keybroker token a tool presented, from whichever header its SDK uses: `Authorization:
/// Bearer` (OpenAI, and the Anthropic SDK's `api_key` in recent versions), `x-api-key`
/// (Anthropic), `x-goog-api-key` (Google), `xi-api-key` (ElevenLabs), `api-key`, or HTTP Basic
/// with the token as password (Twilio) or user name.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let auth = auth.trim();
        if let Some(t) = strip_prefix_ci(auth, "bearer ") {
            return Some(t.trim().to_owned());
        }
        if let Some(b64) = strip_prefix_ci(auth, "basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
            let pick = if pass.starts_with("kb_") || user.is_empty() {
                pass
            } else {
                user
            };
            return Some(pick.to_owned());
        }
    }
    ["x-api-key", "x-goog-api-key", "xi-api-key", "api-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(|v| v.trim().to_owned())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The request header a tool names its agent in, for usage attribution. Never forwarded: no
/// `x-keybroker-*` header is (see [`forwarded`]).
pub const AGENT_HEADER: &str = "x-keybroker-agent";
/// Longest agent label, in characters.
pub const MAX_AGENT_LABEL: usize = 64;

/// Why an `X-Keybroker-Agent` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentLabelError {
    #[error(
        "X-Keybroker-Agent must be sent once, 1-64 printable ASCII characters (spaces allowed)"
    )]
    Shape,
    #[error("X-Keybroker-Agent looks like it carries a secret: labels must not carry secrets (name the agent, e.g. \"nightly-eval\")")]
    Secret,
}

/// The call's agent label: trimmed, 1–[`MAX_AGENT_LABEL`] printable ASCII characters; empty when
/// the header is absent. A label in which `redactor` finds a secret shape is refused, since labels
/// are stored and shown.
pub fn agent_label(
    headers: &HeaderMap,
    redactor: &redactor::Redactor,
) -> Result<String, AgentLabelError> {
    let mut values = headers.get_all(AGENT_HEADER);
    let Some(value) = values.next() else {
        return Ok(String::new());
    };
    if values.next().is_some() {
        return Err(AgentLabelError::Shape);
    }
    let label = value.as_bytes().trim_ascii();
    if label.is_empty()
        || label.len() > MAX_AGENT_LABEL
        || !label.iter().all(|b| (b' '..=b'~').contains(b))
    {
        return Err(AgentLabelError::Shape);
    }
    let label = String::from_utf8_lossy(label).into_owned();
    if redactor.contains_secret(&label) {
        return Err(AgentLabelError::Secret);
    }
    Ok(label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    const TOKEN: &str = "kb_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";

    fn kept(h: &HeaderMap, extra: &[String]) -> Vec<String> {
        let mut kept: Vec<_> = request_headers(h, TOKEN, extra)
            .into_iter()
            .map(|(k, _)| k.as_str().to_owned())
            .collect();
        kept.sort();
        kept
    }

    #[test]
    fn only_allow_listed_headers_are_forwarded() {
        let h = map(&[
            ("authorization", "Bearer kb_x"),
            ("x-api-key", "kb_x"),
            ("cookie", "a=b"),
            ("cookie2", "a=b"),
            ("x-csrf-token", "abc"),
            ("x-xsrf-token", "abc"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-keybroker-debug", "1"),
            ("x-unknown", "1"),
            ("x-http-method-override", "POST"),
            ("x-http-method", "POST"),
            ("x-method-override", "POST"),
            ("content-encoding", "gzip"),
            ("accept-encoding", "gzip"),
            ("host", "evil.example"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("user-agent", "OpenAI/Python 1.0"),
            ("idempotency-key", "retry-1"),
            ("traceparent", "00-abc-def-01"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "files-api-2025-04-14"),
            ("openai-organization", "org-1"),
            ("x-stainless-lang", "python"),
            ("x-goog-api-client", "google-genai-sdk/1.0"),
            ("x-goog-api-key", "AIzaSyDifferent"),
            ("stripe-version", "2024-06-20"),
            ("x-stripe-client-user-agent", "{}"),
            ("x-fern-sdk-name", "elevenlabs"),
        ]);
        assert_eq!(
            kept(&h, &[]),
            [
                "accept",
                "anthropic-beta",
                "anthropic-version",
                "content-type",
                "idempotency-key",
                "openai-organization",
                "stripe-version",
                "traceparent",
                "user-agent",
                "x-fern-sdk-name",
                "x-goog-api-client",
                "x-stainless-lang",
                "x-stripe-client-user-agent",
            ]
        );
    }

    #[test]
    fn credential_words_in_a_name_refuse_it_under_any_prefix() {
        let h = map(&[
            ("openai-session-token", "s"),
            ("anthropic-auth", "a"),
            ("x-goog-api-key", "k"),
            ("x-stainless-csrf", "c"),
            ("x-goog-method-override", "GET"),
            ("x-stainless-cookie", "c"),
            ("stripe-key", "k"),
        ]);
        assert!(kept(&h, &[]).is_empty());
        // An operator's extra name is held to the same words.
        let extra = ["x-fake-mode".to_owned(), "x-team-token".to_owned()];
        let h = map(&[("x-fake-mode", "hang"), ("x-team-token", "t")]);
        assert_eq!(kept(&h, &extra), ["x-fake-mode"]);
    }

    #[test]
    fn a_value_carrying_a_token_is_never_forwarded() {
        let other = "kb_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{TOKEN}"));
        let shifted = base64::engine::general_purpose::STANDARD.encode(format!("xy{other}"));
        for value in [
            TOKEN.to_owned(),
            TOKEN["kb_".len()..].to_owned(),
            format!("Bearer {TOKEN}"),
            format!("prefix{TOKEN}suffix"),
            other.to_owned(),
            "KB_ZZZZZZZZZZZZZZZZZZZZ".to_owned(),
            "kb%5FZZZZZZZZZZZZZZZZZZZZ".to_owned(),
            format!("Basic {basic}"),
            shifted,
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static("openai-organization"),
                HeaderValue::from_str(&value).unwrap(),
            );
            assert!(kept(&h, &[]).is_empty(), "{value}");
        }
        let h = map(&[("user-agent", "kb_short and a knowledge base")]);
        assert_eq!(kept(&h, &[]), ["user-agent"]);
    }

    #[test]
    fn the_token_is_found_in_whichever_header_the_sdk_uses() {
        assert_eq!(
            presented_token(&map(&[("authorization", "Bearer kb_a")])).as_deref(),
            Some("kb_a")
        );
        assert_eq!(
            presented_token(&map(&[("authorization", "bearer  kb_a ")])).as_deref(),
            Some("kb_a")
        );
        assert_eq!(
            presented_token(&map(&[("x-api-key", "kb_b")])).as_deref(),
            Some("kb_b")
        );
        assert_eq!(
            presented_token(&map(&[("x-goog-api-key", "kb_c")])).as_deref(),
            Some("kb_c")
        );
        assert_eq!(
            presented_token(&map(&[("xi-api-key", "kb_d")])).as_deref(),
            Some("kb_d")
        );
        // Twilio's SDK sends Basic base64(AccountSid:AuthToken); the token is the password.
        assert_eq!(
            presented_token(&map(&[("authorization", "Basic QUMxMjM6a2JfZQ==")])).as_deref(),
            Some("kb_e")
        );
        assert_eq!(
            presented_token(&map(&[("authorization", "Basic !!!")])),
            None
        );
        assert_eq!(presented_token(&map(&[])), None);
    }

    #[test]
    fn response_headers_are_allowed_by_name_and_dropped_when_they_carry_the_key() {
        let key = "sk-proj-0123456789abcdefghijklmnopqrstuv";
        let scrubber = redactor::Scrubber::new(key.as_bytes());
        let mut h = map(&[
            ("set-cookie", "__cf_bm=x"),
            ("content-length", "10"),
            ("connection", "close"),
            ("content-type", "text/event-stream; charset=utf-8; x=\"sk\""),
            ("x-request-id", "up-1"),
            ("openai-processing-ms", "12"),
            ("link", "<https://x.example/>; rel=next"),
            ("www-authenticate", "Bearer realm=x"),
            ("location", "https://x.example/"),
            ("x-made-up", "1"),
            ("x-api-key-echo", "1"),
            ("retry-after", "soon"),
        ]);
        h.append(
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from_str(&format!("9 {key}")).unwrap(),
        );
        h.append(
            HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
            HeaderValue::from_static("100"),
        );
        let mut kept: Vec<_> = response_headers(&h, &scrubber)
            .into_iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                "anthropic-ratelimit-tokens-remaining: 100",
                "content-type: text/event-stream; charset=utf-8",
                "openai-processing-ms: 12",
                "x-request-id: up-1",
            ]
        );
    }

    #[test]
    fn retry_after_passes_only_as_seconds_or_an_http_date() {
        let get = |v: &'static str| retry_after(&map(&[("retry-after", v)]));
        assert_eq!(get("30").unwrap(), "30");
        assert!(get("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        for bad in ["", "-1", "30 sk-abc", "soon", "99999999999", "1.5"] {
            assert!(get(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn content_type_keeps_the_media_type_and_charset_only() {
        let ct = |v: &'static str| content_type(&HeaderValue::from_static(v));
        assert_eq!(ct("application/json"), "application/json");
        assert_eq!(
            ct("Application/JSON; Charset=\"UTF-8\""),
            "application/json; charset=UTF-8"
        );
        assert_eq!(
            ct("text/plain; secret=sk-abc; charset=utf-8"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(ct("nonsense"), "application/octet-stream");
        assert_eq!(ct("text/pl ain"), "application/octet-stream");
    }

    #[test]
    fn a_single_plain_content_length_is_passed_on_and_anything_doubtful_is_not() {
        use actix_web::http::{Method, StatusCode};
        let ok = StatusCode::OK;
        let length = |pairs: &[(&'static str, &'static str)]| {
            declared_length(&Method::POST, ok, &map(pairs))
        };
        assert_eq!(length(&[("content-length", "256")]), Some(256));
        assert_eq!(length(&[("content-length", "0")]), Some(0));
        assert_eq!(length(&[]), None);
        assert_eq!(length(&[("content-length", "")]), None);
        assert_eq!(length(&[("content-length", "+5")]), None);
        assert_eq!(length(&[("content-length", "5, 5")]), None);
        assert_eq!(length(&[("content-length", "99999999999999999999")]), None);
        assert_eq!(
            length(&[("content-length", "5"), ("content-length", "5")]),
            None
        );
        assert_eq!(
            length(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
            None
        );
        let h = map(&[("content-length", "256")]);
        assert_eq!(declared_length(&Method::HEAD, ok, &h), None);
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            assert_eq!(declared_length(&Method::GET, status, &h), None);
        }
    }

    #[test]
    fn an_agent_label_is_trimmed_printable_ascii_of_at_most_64_characters() {
        let r = redactor::Redactor::new();
        let label = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for value in v {
                h.append(
                    HeaderName::from_static(AGENT_HEADER),
                    HeaderValue::from_bytes(value.as_bytes()).unwrap(),
                );
            }
            agent_label(&h, &r)
        };
        assert_eq!(label(&[]), Ok(String::new()));
        assert_eq!(label(&["  nightly eval  "]), Ok("nightly eval".to_owned()));
        let (longest, too_long) = ("a".repeat(64), "a".repeat(65));
        assert_eq!(label(&[longest.as_str()]), Ok(longest.clone()));
        for bad in ["", "   ", too_long.as_str(), "caf\u{e9}", "tab\there"] {
            assert_eq!(label(&[bad]), Err(AgentLabelError::Shape), "{bad:?}");
        }
        assert_eq!(label(&["a", "b"]), Err(AgentLabelError::Shape));
        assert_eq!(
            label(&["deploy bot AKIAIOSFODNN7EXAMPL3"]),
            Err(AgentLabelError::Secret)
        );
    }
}
