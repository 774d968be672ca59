//! The audit log of the signed-in account (`GET /api/v1/audit`), newest first, as JSON or CSV,
//! filtered by time and action, with cursor pagination. Read-only: there is no route that
//! changes or deletes entries.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Entry};
use crate::error::ApiError;
use crate::http::auth::Authenticated;
use crate::http::download::{self, Format};
use crate::startup::AppState;
use crate::timefmt::{parse_rfc3339, rfc3339};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Absent for a JSON page; `json` or `csv` for a download.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
    /// RFC 3339; entries at or after.
    since: Option<String>,
    /// RFC 3339; entries strictly before.
    until: Option<String>,
    action: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    limit: Option<u32>,
}

fn time_param(raw: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    raw.map(|r| {
        parse_rfc3339(r).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("{name} must be an RFC 3339 time, e.g. 2025-01-31T00:00:00Z"),
            )
        })
    })
    .transpose()
}

/// Cursors are opaque to clients; today they are the id of the last entry shown.
fn parse_cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|r| {
        r.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is not valid"))
    })
    .transpose()
}

const CSV_COLUMNS: &[&str] = &[
    "id",
    "seq",
    "at",
    "actor",
    "action",
    "resource",
    "request_id",
    "client_addr",
    "outcome",
    "detail",
];

#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit", operation_id = "list_audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries, newest first (or a CSV/JSON attachment with format=)", body = crate::openapi::AuditPage),
        (status = 400, description = "invalid_time, invalid_cursor, invalid_format, invalid_query", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let format = Format::parse(q.format.as_deref())?;
    let since = time_param(q.since.as_deref(), "since")?;
    let until = time_param(q.until.as_deref(), "until")?;
    let before_id = parse_cursor(q.cursor.as_deref())?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let action = q.action.filter(|a| !a.is_empty());
    if action.as_ref().is_some_and(|a| a.len() > 64) {
        return Err(ApiError::bad_request("invalid_query", "action is too long"));
    }
    let account_id = auth.account_id;
    let mut entries = state
        .db
        .read(move |conn| {
            let query = audit::Query {
                since,
                until,
                action: action.as_deref(),
                before_id,
                // One more than asked, to know whether there is a next page.
                limit: limit + 1,
            };
            audit::list(conn, account_id, &query).map_err(ApiError::from)
        })
        .await?;
    let next_cursor = if entries.len() > limit as usize {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.id.to_string())
    } else {
        None
    };
    match format {
        Format::Json => {
            let list: Vec<_> = entries.iter().map(entry_json).collect();
            Ok(HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(json!({ "entries": list, "next_cursor": next_cursor })))
        }
        Format::Csv => {
            let body = download::document(CSV_COLUMNS, entries.into_iter().map(entry_cells))
                .map_err(ApiError::internal)?;
            let mut res =
                download::attachment("text/csv; charset=utf-8", "keybroker-audit.csv", body);
            if let Some(cursor) = next_cursor {
                if let Ok(v) = header::HeaderValue::from_str(&cursor) {
                    res.headers_mut()
                        .insert(header::HeaderName::from_static("x-next-cursor"), v);
                }
            }
            Ok(res)
        }
    }
}

fn entry_json(e: &Entry) -> serde_json::Value {
    json!({
        "id": e.id,
        "seq": e.seq,
        "at": rfc3339(e.at),
        "actor": e.actor,
        "action": e.action,
        "resource": e.resource,
        "request_id": e.request_id,
        "client_addr": e.client_addr,
        "outcome": e.outcome,
        "detail": e.detail,
    })
}

fn entry_cells(e: Entry) -> Vec<String> {
    vec![
        e.id.to_string(),
        e.seq.to_string(),
        rfc3339(e.at),
        e.actor,
        e.action,
        e.resource,
        e.request_id,
        e.client_addr,
        e.outcome,
        e.detail,
    ]
}
