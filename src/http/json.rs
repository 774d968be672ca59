//! `ApiJson<T>`: the JSON body extractor of every API route. Syntax, size and content-type errors
//! are those of `web::Json` (see `error::extractors`); a body that parses but does not fit `T` is
//! refused with 400 `invalid_json` (the type clients already know), naming the field by its path (`limit_usd`,
//! `providers[0]`) and what it must be, never quoting the value that was sent.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T> ApiJson<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for ApiJson<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for ApiJson<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let value = web::Json::<Value>::from_request(req, payload);
        Box::pin(async move {
            let value = value.await?.into_inner();
            serde_path_to_error::deserialize::<_, T>(value)
                .map(ApiJson)
                .map_err(|e| field_error(&e).into())
        })
    }
}

/// Hints for fields whose type alone does not say what to send.
fn hint(field: &str) -> Option<&'static str> {
    if field.ends_with("_usd") {
        Some("a decimal string like \"5.00\"")
    } else if field.ends_with("_secs") || field.ends_with("_percent") {
        Some("a whole number")
    } else {
        None
    }
}

fn field_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    // serde's own wording, without the part that quotes what was sent: "invalid type: string
    // \"…\", expected u64" keeps "u64"; "missing field `x`" and "unknown field `x`, expected one
    // of …" name fields only.
    let message = if let Some(field) = inner
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        let full = if path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return ApiError::bad_request("invalid_json", format!("{full} is required"))
            .with_field("field", full);
    } else if inner.starts_with("unknown field `") {
        let known = inner
            .split_once("expected ")
            .map(|(_, k)| k.replace('`', ""))
            .unwrap_or_default();
        let known = if known.is_empty() {
            String::new()
        } else {
            format!(" (expected {known})")
        };
        let full = inner
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(|f| {
                if path == "." {
                    f.to_owned()
                } else if path == f || path.ends_with(&format!(".{f}")) {
                    path.clone()
                } else {
                    format!("{path}.{f}")
                }
            })
            .unwrap_or_else(|| path.clone());
        return ApiError::bad_request(
            "invalid_json",
            format!("{full} is not a field keybroker knows{known}"),
        )
        .with_field("field", full);
    } else {
        let expected = inner
            .rsplit_once(", expected ")
            .map(|(_, x)| x.to_owned())
            .or_else(|| inner.strip_prefix("invalid value: ").map(|_| String::new()))
            .unwrap_or_default();
        match (hint(&path), expected.as_str()) {
            (Some(h), _) => format!("{path} must be {h}"),
            (None, "") => format!("{path} has a value keybroker does not accept"),
            (None, x) => format!("{path} must be {x}"),
        }
    };
    ApiError::bad_request("invalid_json", message).with_field("field", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        limit_usd: String,
        name: String,
        #[serde(default)]
        providers: Vec<String>,
    }

    fn err(v: Value) -> (String, String) {
        let e = serde_path_to_error::deserialize::<_, Body>(v).unwrap_err();
        let api = field_error(&e);
        let body = api.body();
        (
            body["error"]["field"].as_str().unwrap().to_owned(),
            body["error"]["message"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn the_field_is_named_and_the_value_never_quoted() {
        let (f, m) = err(serde_json::json!({"limit_usd": 5, "name": "x"}));
        assert_eq!(f, "limit_usd");
        assert_eq!(m, "limit_usd must be a decimal string like \"5.00\"");
        let (f, m) = err(
            serde_json::json!({"limit_usd": "1", "name": "sk-secret-value-123456"
            , "providers": ["a", 7]}),
        );
        assert_eq!(f, "providers[1]");
        assert_eq!(m, "providers[1] must be a string");
        let (f, m) = err(serde_json::json!({"limit_usd": "1", "name": ["sk-secret-value-123456"]}));
        assert_eq!((f.as_str(), m.as_str()), ("name", "name must be a string"));
        let (f, m) = err(serde_json::json!({"limit_usd": "1"}));
        assert_eq!((f.as_str(), m.as_str()), ("name", "name is required"));
        let (f, m) = err(serde_json::json!({"limit_usd": "1", "name": "x", "spend_limt_usd": "1"}));
        assert_eq!(f, "spend_limt_usd");
        assert!(
            m.starts_with("spend_limt_usd is not a field keybroker knows"),
            "{m}"
        );
    }
}
