//! Discovery: `/.well-known/security.txt` (RFC 9116), its legacy location, and `/openapi.json`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::error::ApiError;
use crate::startup::AppState;

/// The security contact file, built per request so `Expires` always lies ahead of the clock.
/// 404 when no contact is configured.
#[utoipa::path(
    get,
    path = "/.well-known/security.txt",
    tag = "discovery",
    responses(
        (status = 200, description = "RFC 9116 security.txt: Contact, Expires, Policy, Preferred-Languages, Canonical",
         content_type = "text/plain", body = String),
        (status = 404, description = "No security contact is configured", body = crate::openapi::ErrorBody),
    )
)]
pub async fn security_txt(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = state
        .security_txt
        .render(state.clock.now(), state.public_url.as_deref())
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "max-age=3600"))
        .body(body))
}

/// RFC 9116 §3 lets the top-level file redirect to the `/.well-known/` one; one source of truth.
#[utoipa::path(
    get,
    path = "/security.txt",
    tag = "discovery",
    responses((status = 301, description = "Moved to /.well-known/security.txt",
               headers(("Location" = String, description = "/.well-known/security.txt"))))
)]
pub async fn legacy_security_txt() -> HttpResponse {
    HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, "/.well-known/security.txt"))
        .finish()
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "discovery",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::openapi::json())
}
