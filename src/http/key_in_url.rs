//! Refuses any request whose URL carries something key-shaped, with 400 `key_in_url`. URLs end up
//! in browser history, proxy logs and `Referer` headers; keys belong in bodies only. The refusal
//! never quotes the URL, and the access log records only the route pattern (`<unmatched>` here),
//! never the path or query.
//!
//! Key-shaped means, after percent-decoding the path and the query:
//! - a piece that is a provider key with a distinctive prefix, or a `kb_` tool token
//!   ([`providers::looks_like_credential`]); or
//! - the value of a credential-named query parameter (`key`, `api_key`, `token`, `secret`,
//!   `password`, `..._key`, `..._token`, ...) that is long (≥ 16) and varied (≥ 3 bits of
//!   entropy per character), which catches keys of providers with no fixed format.

use std::collections::HashMap;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::ResponseError;

use crate::error::ApiError;
use crate::providers;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if url_carries_key(req.path(), req.query_string()) {
        let err = ApiError::bad_request(
            "key_in_url",
            "the URL contains what looks like an API key or token; send keys only in the request body \
             (and consider the key exposed: rotate it)",
        );
        let res = err.error_response();
        return Ok(req.into_response(res).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Whether the request target (path and raw query string) carries a key.
pub fn url_carries_key(path: &str, query: &str) -> bool {
    let path = decode_fully(path, false);
    if pieces(&path).any(providers::looks_like_credential) {
        return true;
    }
    for pair in query.split(['&', ';']) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_fully(name, true);
        let value = decode_fully(value, true);
        if our_mailed_link(&path, &name, &value) {
            continue;
        }
        if pieces(&name)
            .chain(pieces(&value))
            .any(providers::looks_like_credential)
        {
            return true;
        }
        if credential_name(&name) && high_entropy(value.trim()) {
            return true;
        }
    }
    false
}

/// The password-reset and sign-up confirmation links we mail (`/reset/confirm?token=kbr_…`,
/// `/signup/confirm?token=kbs_…`) carry our own one-time token in their query string by design;
/// the page moves it out of the URL at once. Only a value shaped exactly like that page's token is
/// let through, and only there.
fn our_mailed_link(path: &str, name: &str, value: &str) -> bool {
    name == "token"
        && match path {
            "/reset/confirm" => crate::accounts::reset::hash_presented(value).is_some(),
            "/signup/confirm" => crate::accounts::signup::hash_presented(value).is_some(),
            _ => false,
        }
}

/// Splits text on everything that cannot be part of a prefixed key (`[A-Za-z0-9_:-]`).
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')))
        .filter(|p| p.len() >= 16)
}

fn credential_name(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "key",
        "apikey",
        "api_key",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "bearer",
        "credential",
        "credentials",
        "sig",
        "signature",
    ];
    const SUFFIXES: &[&str] = &[
        "_key", "apikey", "_token", "_secret", "password", "_auth", "_sig",
    ];
    let name = name.trim().to_ascii_lowercase().replace('-', "_");
    EXACT.contains(&name.as_str()) || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Long and varied enough to be a secret rather than a word or a number.
fn high_entropy(value: &str) -> bool {
    let len = value.chars().count();
    if len < 16 {
        return false;
    }
    let mut counts: HashMap<char, usize> = HashMap::new();
    for c in value.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let n = len as f64;
    let bits: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    bits >= 3.0
}

/// Percent-decodes until nothing changes (at most three rounds, so `%2573k-` is seen as `sk-`).
/// Invalid escapes are kept as they are; invalid UTF-8 is replaced.
fn decode_fully(text: &str, plus_is_space: bool) -> String {
    let mut current = percent_decode(text, plus_is_space);
    for _ in 0..2 {
        if !current.contains('%') {
            break;
        }
        let next = percent_decode(&current, false);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b),
            },
            b'+' if plus_is_space => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mailed_reset_link_passes_but_only_on_its_page_and_with_a_reset_token() {
        let token = crate::accounts::reset::ResetToken::generate();
        let query = format!("token={}", token.as_str());
        assert!(!url_carries_key("/reset/confirm", &query));
        assert!(url_carries_key("/dashboard", &query));
        let key = format!("sk-proj-{}", "Ab3_x".repeat(10));
        assert!(url_carries_key("/reset/confirm", &format!("token={key}")));
    }

    #[test]
    fn the_mailed_signup_link_passes_but_only_on_its_page_and_with_a_signup_token() {
        let token = crate::accounts::signup::SignupToken::generate();
        let query = format!("token={}", token.as_str());
        assert!(!url_carries_key("/signup/confirm", &query));
        assert!(url_carries_key("/reset/confirm", &query));
        assert!(url_carries_key("/dashboard", &query));
        let reset = crate::accounts::reset::ResetToken::generate();
        assert!(url_carries_key(
            "/signup/confirm",
            &format!("token={}", reset.as_str())
        ));
    }

    fn openai_key() -> String {
        format!("sk-proj-{}", "Ab3_x".repeat(10))
    }

    #[test]
    fn provider_keys_and_tool_tokens_in_the_query_are_caught() {
        let key = openai_key();
        assert!(url_carries_key("/api/v1/keys", &format!("q={key}")));
        assert!(url_carries_key("/api/v1/keys", &format!("x=Bearer+{key}")));
        assert!(url_carries_key(
            "/api/v1/keys",
            &format!("x=Bearer%20{key}")
        ));
        assert!(url_carries_key("/x", &format!("t=kb_{}", "Q".repeat(43))));
        // Encoded once and twice.
        assert!(url_carries_key(
            "/x",
            "a=%73k-proj-aB3aaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ));
        assert!(url_carries_key(
            "/x",
            "a=%2573k-proj-aB3aaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ));
    }

    #[test]
    fn keys_in_the_path_are_caught() {
        assert!(url_carries_key(
            &format!("/api/v1/keys/{}", openai_key()),
            ""
        ));
        assert!(url_carries_key(
            &format!("/v1/AIza{}/x", "k".repeat(35)),
            ""
        ));
    }

    #[test]
    fn free_form_secrets_in_credential_parameters_are_caught() {
        assert!(url_carries_key("/x", "api_key=Z7QX2M9KD4HRTB8WVN3LPC6Y"));
        assert!(url_carries_key("/x", "access-token=9fa2c7e1b04d4e3fa6b2"));
        assert!(url_carries_key("/x", "KEY=Z7QX2M9KD4HRTB8WVN3LPC6Y"));
    }

    #[test]
    fn ordinary_urls_pass() {
        assert!(!url_carries_key(
            &format!("/api/v1/keys/key_{}", uuid::Uuid::new_v4().simple()),
            ""
        ));
        assert!(!url_carries_key(
            "/api/v1/audit",
            "format=csv&since=2025-01-01T00:00:00Z&action=key.add&cursor=12345&limit=50"
        ));
        assert!(!url_carries_key(
            &format!("/2010-04-01/Accounts/AC{}/Messages.json", "a".repeat(32)),
            "PageSize=20"
        ));
        assert!(!url_carries_key("/x", "key=name"));
        assert!(!url_carries_key("/x", "token=aaaaaaaaaaaaaaaaaaaa"));
        assert!(!url_carries_key("/x", "%zz=%"));
    }
}
