//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers and
//! the vault canary decrypts).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::db::DbError;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::vault_store;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let vault = state.vault.clone();
    let ready = state
        .db
        .read(move |conn| Ok::<_, DbError>(vault_store::canary_ok(conn, &vault)))
        .await
        .unwrap_or(false);
    if ready {
        Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
    } else {
        Err(ApiError::unavailable(
            "not_ready",
            "database or vault is not ready",
        ))
    }
}

/// Prometheus metrics (no label names an account, a key or a token).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.proxy.metrics.render(state.proxy.writer.queue_depth()))
}
