//! One log line per request: method, route pattern (not the raw path, which could carry
//! anything a client typed), status, duration and the client's address (as resolved by
//! `client_addr`); the request id comes from the request's span. Query strings, bodies and
//! headers are never logged.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::http::client_addr::ClientAddr;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    let client = ClientAddr::of(req.request()).ip_string();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let status = res.status().as_u16();
    let micros = start.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::warn!(%method, %route, status, micros, %client, "request");
    } else {
        tracing::info!(%method, %route, status, micros, %client, "request");
    }
    Ok(res)
}
