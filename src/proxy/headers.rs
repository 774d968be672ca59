//! Which headers cross the proxy. Requests lose every credential the tool sent (its keybroker
//! token travels in the provider's usual auth header and must never reach the provider), the
//! hop-by-hop headers of RFC 9110 §7.6.1, and anything that would identify or steer the hop;
//! responses lose hop-by-hop headers and cookies.

use actix_web::http::header::{HeaderMap, HeaderName};

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

/// Headers a tool may carry its keybroker token in (whichever its SDK uses), and any other
/// credential-bearing header: none of them is forwarded.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "xi-api-key",
    "api-key",
    "cookie",
];

/// Set by keybroker itself, or describing the client's own network position.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "expect",
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

/// Whether a request header from the tool may be forwarded to the provider.
pub fn forward_request_header(name: &HeaderName, connection_named: &[String]) -> bool {
    let n = name.as_str();
    !(HOP_BY_HOP.contains(&n)
        || CREDENTIAL_HEADERS.contains(&n)
        || NOT_FORWARDED.contains(&n)
        || n.starts_with("x-keybroker-")
        || connection_named.iter().any(|c| c == n))
}

/// The request headers to forward, in order.
pub fn request_headers(
    headers: &HeaderMap,
) -> Vec<(HeaderName, actix_web::http::header::HeaderValue)> {
    let named = named_in_connection(headers);
    headers
        .iter()
        .filter(|(k, _)| forward_request_header(k, &named))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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

    #[test]
    fn credentials_hop_by_hop_and_connection_named_headers_are_not_forwarded() {
        let h = map(&[
            ("authorization", "Bearer kb_x"),
            ("x-api-key", "kb_x"),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-keybroker-debug", "1"),
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("x-stainless-lang", "python"),
        ]);
        let mut kept: Vec<_> = request_headers(&h)
            .into_iter()
            .map(|(k, _)| k.as_str().to_owned())
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            ["anthropic-version", "content-type", "x-stainless-lang"]
        );
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
