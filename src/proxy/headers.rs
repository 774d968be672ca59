//! Which headers cross the proxy. Requests carry only an allow-list: the headers the official
//! SDKs send that a provider reads (content negotiation, SDK telemetry, API versions and betas,
//! idempotency, tracing), and among those never one that could carry a credential: a name with a
//! credential or session word in it, or a value holding the presented token or anything shaped like
//! a keybroker token (the token travels in the provider's usual auth header and must never reach
//! the provider). Responses lose hop-by-hop headers and cookies.

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

/// Whether a response header from the provider may be passed to the tool. `content-length` is
/// set by keybroker (see [`declared_length`]; a stream may be altered: see the usage chunk of
/// OpenAI streams).
pub fn forward_response_header(name: &HeaderName, connection_named: &[String]) -> bool {
    let n = name.as_str();
    !(HOP_BY_HOP.contains(&n)
        || n == "content-length"
        || n == "set-cookie"
        || n.starts_with("x-keybroker-")
        || connection_named.iter().any(|c| c == n))
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

pub fn response_headers(
    headers: &HeaderMap,
) -> Vec<(HeaderName, actix_web::http::header::HeaderValue)> {
    let named = named_in_connection(headers);
    headers
        .iter()
        .filter(|(k, _)| forward_response_header(k, &named))
        .map(|(k, v)| (k.clone(), v.clone()))
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
    fn response_cookies_lengths_and_hop_by_hop_are_dropped() {
        let h = map(&[
            ("set-cookie", "__cf_bm=x"),
            ("content-length", "10"),
            ("connection", "close"),
            ("content-type", "text/event-stream"),
            ("x-request-id", "up-1"),
            ("openai-processing-ms", "12"),
        ]);
        let mut kept: Vec<_> = response_headers(&h)
            .into_iter()
            .map(|(k, _)| k.as_str().to_owned())
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            ["content-type", "openai-processing-ms", "x-request-id"]
        );
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
}
