//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers and
//! the vault canary decrypts).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::accounts::session;
use crate::db::DbError;
use crate::error::ApiError;
use crate::metrics::ScrapeInputs;
use crate::startup::AppState;
use crate::vault_store;

#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = crate::openapi::Status))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The database answers and the vault canary decrypts", body = crate::openapi::Status),
        (status = 503, description = "not_ready", body = crate::openapi::ErrorBody),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let vault = state.vault.clone();
    let ready = state
        .db
        .read(move |conn| Ok::<_, DbError>(vault_store::canary_ok(conn, &vault)))
        .await
        .unwrap_or(false);
    if ready {
        let database = match state.db.kind() {
            crate::db::Kind::Sqlite => json!({"backend": "sqlite"}),
            crate::db::Kind::Postgres => {
                let pool = state.db.pool_state();
                json!({
                    "backend": "postgres",
                    "pool": pool.map(|p| json!({"connections": p.connections, "idle": p.idle, "max": p.max})),
                })
            }
        };
        Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": database})))
    } else {
        Err(ApiError::unavailable(
            "not_ready",
            "database or vault is not ready",
        ))
    }
}

#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format (see the README's Metrics section)", content_type = "text/plain", body = String),
        (status = 404, description = "Served on the --metrics-bind listener instead", body = crate::openapi::ErrorBody),
    )
)]
/// Prometheus metrics on the main listener, unless `--metrics-bind` moved them elsewhere.
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.metrics_elsewhere {
        return Err(ApiError::not_found());
    }
    Ok(scrape(state).await)
}

/// Prometheus metrics (no label names an account, an email, a key or a token). Active sessions
/// are counted here, at scrape time, with one query.
pub async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    let now = state.clock.unix();
    let active_sessions = state
        .db
        .read(move |conn| {
            conn.query_row(
                "SELECT count(*) FROM sessions WHERE last_seen_at > ?1 AND created_at > ?2",
                crate::params![
                    now - session::IDLE_TIMEOUT_SECS,
                    now - session::ABSOLUTE_TIMEOUT_SECS
                ],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .ok()
        .and_then(|n| u64::try_from(n).ok());
    let mut body = state.metrics.render(ScrapeInputs {
        spend_queue_depth: state.proxy.writer.queue_depth(),
        active_sessions,
    });
    if let Some(pool) = state.db.pool_state() {
        use std::fmt::Write as _;
        let _ = write!(
            body,
            "# HELP keybroker_db_pool_connections PostgreSQL connections open in this instance's pool.\n\
             # TYPE keybroker_db_pool_connections gauge\n\
             keybroker_db_pool_connections {}\n\
             # HELP keybroker_db_pool_idle_connections Open PostgreSQL connections not in use.\n\
             # TYPE keybroker_db_pool_idle_connections gauge\n\
             keybroker_db_pool_idle_connections {}\n\
             # HELP keybroker_db_pool_max_connections The pool's size limit.\n\
             # TYPE keybroker_db_pool_max_connections gauge\n\
             keybroker_db_pool_max_connections {}\n\
             # HELP keybroker_db_pool_waits_total Connection requests that found no idle connection.\n\
             # TYPE keybroker_db_pool_waits_total counter\n\
             keybroker_db_pool_waits_total {}\n\
             # HELP keybroker_db_connect_failures_total Failed attempts to open a PostgreSQL connection.\n\
             # TYPE keybroker_db_connect_failures_total counter\n\
             keybroker_db_connect_failures_total {}\n",
            pool.connections, pool.idle, pool.max, pool.waits, pool.failures
        );
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(body)
}
