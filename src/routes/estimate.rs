//! `POST /api/v1/estimate`: what a call would be held at, and whether it would be admitted now,
//! without calling the provider. Priced by the proxy's own function (`forward::price_call`), so
//! the answer is the hold the call would get.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::proxy::forward::{price_call, Priced};
use crate::proxy::path::UpstreamPath;
use crate::routes::spend::sync_shared;
use crate::spend::budget::{self, LimitedBy};
use crate::startup::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EstimateBody {
    /// A provider id.
    provider: String,
    /// The path after `/proxy/{provider}`, with its query if any: `/v1/chat/completions`.
    path: String,
    /// The HTTP method (default POST).
    method: Option<String>,
    /// The JSON body the call would send; left out for a call without a body.
    #[schema(value_type = Option<Object>)]
    body: Option<serde_json::Value>,
}

#[utoipa::path(
    post, path = "/api/v1/estimate", tag = "spend",
    request_body = EstimateBody,
    responses(
        (status = 200, description = "The call's worst case and whether it fits now", body = crate::openapi::EstimateView),
        (status = 400, description = "unknown_provider, invalid_path, invalid_method, invalid_body, invalid_count, invalid_json", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 403, description = "provider_not_allowed", body = crate::openapi::ErrorBody),
    ),
    security(("token" = []))
)]
pub async fn estimate(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<EstimateBody>,
) -> Result<HttpResponse, ApiError> {
    let EstimateBody {
        provider,
        path,
        method,
        body,
    } = body.into_inner();
    let token = crate::routes::tokens::bearer_token(&state, &req).await?;
    let provider = state.providers.lookup(&provider).ok_or_else(|| {
        ApiError::bad_request("unknown_provider", "keybroker does not know this provider")
    })?;
    if !token.allows(provider.id) {
        return Err(ApiError::forbidden(
            "provider_not_allowed",
            "this token is not allowed to use this provider",
        ));
    }
    let method = method
        .unwrap_or_else(|| "POST".to_owned())
        .to_ascii_uppercase();
    if !matches!(
        method.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
    ) {
        return Err(ApiError::bad_request(
            "invalid_method",
            "method is one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ));
    }
    let (raw_path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path.as_str(), None),
    };
    if !raw_path.starts_with('/') {
        return Err(ApiError::bad_request(
            "invalid_path",
            "path starts with /, as after /proxy/{provider}",
        ));
    }
    let upstream_path = UpstreamPath::parse(raw_path, query)
        .map_err(|e| ApiError::bad_request("invalid_path", e.to_string()))?;
    let bytes = match &body {
        None => web::Bytes::new(),
        Some(v) => serde_json::to_vec(v).map_err(ApiError::internal)?.into(),
    };
    let Priced { cost, .. } = price_call(&state.proxy, provider, &method, &upstream_path, bytes)?;
    let account = token.account_id;
    let key = budget::token_key(&token.id);
    sync_shared(&state, account, provider.id).await?;
    if token.budgeted {
        sync_shared(&state, account, &key).await?;
    }
    let ledger = &state.proxy.ledger;
    let ceiling = ledger.snapshot(account, provider.id).remaining;
    let own = ledger
        .has_limit(account, &key)
        .then(|| ledger.snapshot(account, &key).remaining)
        .flatten();
    let refused_by = [(ceiling, LimitedBy::Ceiling), (own, LimitedBy::Token)]
        .into_iter()
        .find(|(left, _)| left.is_some_and(|left| cost.micros > left))
        .map(|(_, by)| by);
    let tightest = budget::remaining(&state.proxy, account, provider.id, &token.id);
    let limited_by = refused_by.or(tightest.map(|(_, by)| by));
    Ok(HttpResponse::Ok().json(json!({
        "provider": provider.id,
        "worst_case_usd": cost.micros.to_string(),
        "priced_by_fallback": cost.priced_by_fallback,
        "admitted": refused_by.is_none(),
        "remaining_usd": tightest.map(|(m, _)| m.to_string()),
        "limited_by": limited_by.map(LimitedBy::name),
    })))
}
