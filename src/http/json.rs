//! `ApiJson<T>`: the JSON body extractor of every API route. Syntax, size and content-type errors
//! are those of `web::Json` (see `error::extractors`); a body that parses but does not fit `T` is
//! refused with 400 `invalid_json` (the type clients already know), naming the field by its path (`limit_usd`,
//! `providers[0]`) and what it must be, never quoting the value that was sent.
//!
//! Bodies are strict as a class: a field that deserialization would ignore is refused, whatever
//! `T` says (with or without `deny_unknown_fields`), so a misspelt optional field (`"nmae"`,
//! `"expires"`) is an error instead of a setting silently left out. `serde_ignored` reports every
//! skipped field by its path; the first one is the answer, ahead of any other error in the body
//! (`{"nmae": "x"}` says `nmae` is unknown, not that `name` is missing).

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
            strict::<T>(value).map(ApiJson).map_err(Into::into)
        })
    }
}

/// `value` as a `T`, refusing any field `T` would ignore (the first, by its path), then any
/// other mismatch (see [`field_error`]).
fn strict<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    let mut ignored: Option<String> = None;
    let mut note = |path: serde_ignored::Path<'_>| {
        if ignored.is_none() {
            ignored = Some(shown_path(&path));
        }
    };
    let parsed = serde_path_to_error::deserialize::<_, T>(serde_ignored::Deserializer::new(
        value, &mut note,
    ));
    if let Some(field) = ignored {
        return Err(unknown_field(field, ""));
    }
    parsed.map_err(|e| field_error(&e))
}

/// A `serde_ignored` path in `serde_path_to_error`'s spelling: `a.b`, `items[0].x`.
fn shown_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => ".".to_owned(),
        Path::Seq { parent, index } => format!("{}[{index}]", shown_path(parent)),
        Path::Map { parent, key } => {
            let parent = shown_path(parent);
            if parent == "." {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => shown_path(parent),
    }
}

/// 400 `invalid_json` naming `field` (a path), which keybroker does not know; `known` is the
/// parenthesised list of the fields expected there, if serde said.
fn unknown_field(field: String, known: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_json",
        format!("{field} is not a field keybroker knows{known}"),
    )
    .with_field("field", field)
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
        return unknown_field(full, &known);
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

    /// No `deny_unknown_fields`: what `ApiJson` must refuse by itself.
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Lenient {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
        nested: Option<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        id: u32,
    }

    fn strict_err(v: Value) -> (String, String) {
        let body = strict::<Lenient>(v).unwrap_err().body();
        (
            body["error"]["field"].as_str().unwrap().to_owned(),
            body["error"]["message"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn a_field_the_type_would_ignore_is_refused_by_its_full_path() {
        assert!(strict::<Lenient>(serde_json::json!({"name": "x", "items": [{"id": 1}]})).is_ok());
        let (f, m) = strict_err(serde_json::json!({"name": "x", "nmae": "sk-secret-value-123456"}));
        assert_eq!(f, "nmae");
        assert_eq!(m, "nmae is not a field keybroker knows");
        let (f, _) =
            strict_err(serde_json::json!({"name": "x", "items": [{"id": 1}, {"id": 2, "idd": 3}]}));
        assert_eq!(f, "items[1].idd");
        let (f, _) =
            strict_err(serde_json::json!({"name": "x", "nested": {"id": 1, "zz": {"a": 1}}}));
        assert_eq!(f, "nested.zz");
    }

    #[test]
    fn an_unknown_field_is_named_ahead_of_a_missing_one() {
        // The typo is the cause: `name` is missing because it was spelt `nmae`.
        let (f, m) = strict_err(serde_json::json!({"nmae": "x"}));
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("nmae", "nmae is not a field keybroker knows")
        );
        let (f, m) = strict_err(serde_json::json!({}));
        assert_eq!((f.as_str(), m.as_str()), ("name", "name is required"));
    }

    #[test]
    fn a_deny_unknown_fields_type_still_names_the_field_and_what_was_expected() {
        let body =
            strict::<Body>(serde_json::json!({"limit_usd": "1", "name": "x", "zz_not_a_field": 1}))
                .unwrap_err()
                .body();
        assert_eq!(body["error"]["field"], "zz_not_a_field");
        assert_eq!(body["error"]["type"], "invalid_json");
    }
}
