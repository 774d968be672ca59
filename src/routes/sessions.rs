//! A signed-in user's sessions: `GET /api/v1/auth/sessions` lists them,
//! `DELETE /api/v1/auth/sessions/{id}` revokes one (by its public id, never the cookie value).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::accounts::session;
use crate::audit::{self, Outcome};
use crate::error::ApiError;
use crate::http::auth::Authenticated;
use crate::routes::auth::{event, expired_cookie, rfc3339};
use crate::startup::AppState;

#[utoipa::path(
    get, path = "/api/v1/auth/sessions", tag = "auth", operation_id = "list_sessions",
    responses(
        (status = 200, description = "The account's sessions", body = crate::openapi::SessionList),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.unix();
    let account_id = auth.account_id;
    let rows = state
        .db
        .read(move |conn| session::list(conn, account_id, now).map_err(ApiError::from))
        .await?;
    let sessions: Vec<_> = rows
        .into_iter()
        .map(|s| {
            json!({
                "id": s.public_id,
                "created_at": rfc3339(s.created_at),
                "last_seen_at": rfc3339(s.last_seen_at),
                "user_agent": s.user_agent,
                "client_addr": s.client_addr,
                "current": s.id_hash == auth.session_hash,
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "sessions": sessions })))
}

#[utoipa::path(
    delete, path = "/api/v1/auth/sessions/{id}", tag = "auth", operation_id = "revoke_session",
    params(("id" = String, Path, description = "A session id from the list")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Revokes one of the caller's sessions; another account's session id is answered 404, as if it
/// did not exist. Revoking the current session signs the caller out.
pub async fn revoke(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let public_id = path.into_inner();
    let now = state.clock.unix();
    let account_id = auth.account_id;
    let current = auth.session_hash;
    let revoked = state
        .db
        .write(move |conn| -> Result<Option<[u8; 32]>, ApiError> {
            let tx = conn;
            let revoked = session::revoke_public(tx, account_id, &public_id)?;
            if revoked.is_some() {
                audit::append(
                    tx,
                    &audit::Event {
                        resource: &public_id,
                        ..event(
                            Some(account_id),
                            "session.revoke",
                            &auth.ctx,
                            Outcome::Success,
                            now,
                        )
                    },
                )?;
            }
            Ok(revoked)
        })
        .await?
        .ok_or_else(ApiError::not_found)?;
    let mut res = HttpResponse::NoContent();
    if revoked == current {
        res.cookie(expired_cookie());
    }
    Ok(res.finish())
}
