//! One log line per request: method, route pattern (not the raw path, which could carry
//! anything a client typed), status, duration and the client's address (as resolved by
//! `client_addr`); the request id comes from the request's span. Query strings, bodies and
//! headers are never logged. The same pattern feeds the request counter on `/metrics` (resolved
//! once: it walks the router).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use crate::startup::AppState;

use crate::http::client_addr::ClientAddr;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    let client = ClientAddr::of(req.request()).ip_string();
    let res = next.call(req).await?;
    let pattern = res.request().match_pattern();
    let route = pattern.as_deref().unwrap_or("<unmatched>");
    let status = res.status().as_u16();
    let micros = start.elapsed().as_micros() as u64;
    write(method.as_str(), route, status, micros, &client);
    if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
        state
            .metrics
            .count_request(method.as_str(), pattern, status);
    }
    Ok(res)
}

/// The access-log line itself.
pub fn write(method: &str, route: &str, status: u16, micros: u64, client: &str) {
    if status >= 500 {
        tracing::warn!(%method, %route, status, micros, %client, "request");
    } else {
        tracing::info!(%method, %route, status, micros, %client, "request");
    }
}
