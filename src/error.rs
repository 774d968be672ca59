//! Errors as clients see them: one type, mapped to an HTTP status and the JSON body
//! `{"error": {"type", "message", "request_id", ...}}` in one place. Messages are ours, pass the
//! redactor, and internal errors are logged once here and answered with an opaque 500.

use std::borrow::Cow;
use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value};

use crate::db::DbError;
use crate::http::request_id;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: Cow<'static, str>,
    extra: Map<String, Value>,
    retry_after: Option<u64>,
    spend_remaining: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            extra: Map::new(),
            retry_after: None,
            spend_remaining: None,
        }
    }

    /// Adds a field beside `type` and `message` (e.g. `provider`, `limit_usd`).
    pub fn with_field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Sends `X-Keybroker-Spend-Remaining` with the error, as a proxied answer would.
    pub fn with_spend_remaining(mut self, remaining: crate::money::Money) -> Self {
        self.spend_remaining = Some(remaining.to_string());
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn bad_request(kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// One answer for every authentication failure, so the cause is not disclosed.
    pub fn authentication_failed() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "authentication failed",
        )
    }

    pub fn forbidden(kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, kind, message)
    }

    pub fn conflict(kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, message)
    }

    /// An error that is our fault. The cause is logged (redacted) once, here; the client gets an
    /// opaque body with the request id to quote.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; quote the request_id when reporting it",
        )
    }

    pub fn unavailable(kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, message)
    }

    /// The JSON body, as sent.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("type".into(), Value::from(self.kind));
        let message = crate::telemetry::redactor()
            .redact(&self.message)
            .into_owned();
        error.insert("message".into(), Value::from(message));
        error.insert("request_id".into(), Value::from(request_id::current()));
        for (k, v) in &self.extra {
            error.insert(k.clone(), v.clone());
        }
        let mut body = Map::new();
        body.insert("error".into(), Value::Object(error));
        Value::Object(body)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(remaining) = &self.spend_remaining {
            res.insert_header(("x-keybroker-spend-remaining", remaining.as_str()));
        }
        res.json(self.body())
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::from_db(&e)
    }
}

impl ApiError {
    /// A database error: `503 store_unavailable` (with `Retry-After`) when the database cannot
    /// be reached, so clients retry and nothing is half-done (the transaction rolled back);
    /// otherwise internal.
    pub fn from_db(e: &DbError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the database is unavailable");
            let mut err = Self::unavailable(
                "store_unavailable",
                "keybroker cannot reach its database right now; nothing was changed, try again shortly",
            );
            err.retry_after = Some(1);
            err
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<crate::vault::VaultError> for ApiError {
    fn from(e: crate::vault::VaultError) -> Self {
        ApiError::internal(e)
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::internal(e)
    }
}

/// Maps the framework's extractor failures (bad JSON, wrong content type, oversized body, bad
/// path or query) onto our error body instead of actix's plain-text defaults.
pub mod extractors {
    use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
    use actix_web::http::StatusCode;
    use actix_web::{web, HttpRequest};

    use super::ApiError;

    pub fn json_config(limit: usize) -> web::JsonConfig {
        web::JsonConfig::default()
            .limit(limit)
            .error_handler(|err, _req: &HttpRequest| json_error(&err).into())
    }

    fn json_error(err: &JsonPayloadError) -> ApiError {
        match err {
            JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is too large",
                )
            }
            JsonPayloadError::ContentType => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ),
            // serde's messages name the field and position but can quote input values; keep
            // only our own wording plus the category.
            JsonPayloadError::Deserialize(e) => {
                let what = match e.classify() {
                    serde_json::error::Category::Data => "a field is missing or has the wrong type",
                    serde_json::error::Category::Eof => "the JSON body ends too early",
                    _ => "the body is not valid JSON",
                };
                ApiError::bad_request(
                    "invalid_json",
                    format!("{what} (line {}, column {})", e.line(), e.column()),
                )
            }
            JsonPayloadError::Payload(e) if crate::http::body_deadline::is_timeout(e) => {
                body_timeout()
            }
            _ => ApiError::bad_request("invalid_body", "the request body could not be read"),
        }
    }

    /// A request body that did not arrive within `http::body_deadline`.
    pub fn body_timeout() -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        )
    }

    pub fn path_config() -> web::PathConfig {
        web::PathConfig::default().error_handler(|_err: PathError, _req| {
            ApiError::bad_request("invalid_path", "a path parameter is not valid").into()
        })
    }

    pub fn query_config() -> web::QueryConfig {
        web::QueryConfig::default().error_handler(|_err: QueryPayloadError, _req| {
            ApiError::bad_request("invalid_query", "a query parameter is missing or not valid")
                .into()
        })
    }
}
