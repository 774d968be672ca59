//! The account's webhook (`/api/v1/webhook`): set (URL and signing secret), show (the URL, that a
//! secret is set, the latest deliveries), remove, and queue a test event. One per account; each
//! change is audited. The secret is never shown again once set.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Outcome};
use crate::error::ApiError;
use crate::http::auth::Authenticated;
use crate::routes::keys::user_event;
use crate::startup::AppState;
use crate::webhooks::{self, AddressError, WebhookUrl};

/// Deliveries shown by `GET /api/v1/webhook`.
const DELIVERIES_SHOWN: i64 = 20;
/// The webhook event type of `POST /api/v1/webhook/test`.
pub const EVENT_TEST: &str = "webhook.test";

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// `http` or `https`, no credentials in it; its host must resolve to public addresses only
    /// (unless the operator set `KEYBROKER_WEBHOOK_ALLOW_PRIVATE=1`).
    #[schema(max_length = 2048)]
    url: String,
    /// The HMAC-SHA256 key deliveries are signed with (16 to 256 bytes). Never shown again.
    #[schema(min_length = 16, max_length = 256)]
    secret: String,
}

fn url_error(e: AddressError) -> ApiError {
    match e {
        AddressError::Invalid => ApiError::bad_request(
            "webhook_url_invalid",
            "url must be an absolute http or https URL without user name or password, at most 2048 characters",
        ),
        AddressError::Unresolvable => ApiError::bad_request(
            "webhook_url_unresolvable",
            "the URL's host did not resolve",
        ),
        AddressError::Forbidden => ApiError::bad_request(
            "webhook_url_forbidden",
            "the URL's host resolves to a loopback, private, link-local or otherwise reserved address, which webhooks may not reach",
        ),
    }
}

fn check_secret(secret: &str) -> Result<(), ApiError> {
    let len = secret.len();
    if !(webhooks::SECRET_MIN..=webhooks::SECRET_MAX).contains(&len)
        || secret.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_webhook_secret",
            "secret must be 16 to 256 bytes, without control characters",
        ));
    }
    Ok(())
}

#[utoipa::path(
    put, path = "/api/v1/webhook", tag = "webhooks", operation_id = "set_webhook",
    request_body = WebhookBody,
    responses(
        (status = 200, description = "The webhook as set (the secret is not shown)", body = crate::openapi::WebhookView),
        (status = 400, description = "webhook_url_invalid, webhook_url_unresolvable, webhook_url_forbidden, invalid_webhook_secret, invalid_json", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn put(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<WebhookBody>,
) -> Result<HttpResponse, ApiError> {
    let WebhookBody { url, secret } = body.into_inner();
    let url = WebhookUrl::parse(&url).map_err(url_error)?;
    check_secret(&secret)?;
    url.resolve_checked(state.webhooks.allow_private())
        .await
        .map_err(url_error)?;
    let (account, now, ctx, vault) = (
        auth.account_id,
        state.clock.unix(),
        auth.ctx.clone(),
        state.vault.clone(),
    );
    let view = state
        .db
        .write(move |conn| -> Result<_, ApiError> {
            let created =
                webhooks::save(conn, &vault, account, &url, &secret, now).map_err(|e| match e {
                    webhooks::StoreError::Db(e) => ApiError::from(e),
                    webhooks::StoreError::Vault(e) => ApiError::from(e),
                })?;
            let action = if created {
                "webhook.set"
            } else {
                "webhook.update"
            };
            audit::append(
                conn,
                &user_event(account, action, "webhook", &ctx, Outcome::Success, now),
            )?;
            webhooks::view(conn, account)?
                .ok_or_else(|| ApiError::internal("the stored webhook was not found"))
        })
        .await?;
    Ok(HttpResponse::Ok().json(view))
}

#[utoipa::path(
    get, path = "/api/v1/webhook", tag = "webhooks", operation_id = "get_webhook",
    responses(
        (status = 200, description = "The webhook (or null) and its latest deliveries", body = crate::openapi::WebhookStatus),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
pub async fn get(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let account = auth.account_id;
    let (hook, deliveries) = state
        .db
        .read(move |conn| -> Result<_, ApiError> {
            Ok((
                webhooks::view(conn, account)?,
                webhooks::deliveries(conn, account, DELIVERIES_SHOWN)?,
            ))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "webhook": hook, "deliveries": deliveries })))
}

#[utoipa::path(
    delete, path = "/api/v1/webhook", tag = "webhooks", operation_id = "delete_webhook",
    responses(
        (status = 204, description = "No webhook any more; pending deliveries are marked failed"),
        (status = 404, description = "not_found: the account has no webhook", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn delete(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (account, now, ctx) = (auth.account_id, state.clock.unix(), auth.ctx.clone());
    state
        .db
        .write(move |conn| -> Result<_, ApiError> {
            if !webhooks::delete(conn, account, now)? {
                return Err(ApiError::not_found());
            }
            audit::append(
                conn,
                &user_event(
                    account,
                    "webhook.delete",
                    "webhook",
                    &ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            Ok(())
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    post, path = "/api/v1/webhook/test", tag = "webhooks", operation_id = "test_webhook",
    responses(
        (status = 202, description = "A `webhook.test` event is queued; its delivery shows in GET /api/v1/webhook", body = crate::openapi::QueuedDelivery),
        (status = 404, description = "not_found: the account has no webhook", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn test(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (account, now, ctx) = (auth.account_id, state.clock.unix(), auth.ctx.clone());
    let id = state
        .db
        .write(move |conn| -> Result<_, ApiError> {
            let event = webhooks::Event {
                kind: EVENT_TEST,
                data: json!({"message": "a test event from keybroker"}),
            };
            let Some(id) = webhooks::queue(conn, account, &event, now) else {
                return Err(ApiError::not_found());
            };
            audit::append(
                conn,
                &user_event(
                    account,
                    "webhook.test",
                    "webhook",
                    &ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            Ok(id)
        })
        .await?;
    state.webhooks.wake();
    Ok(HttpResponse::Accepted().json(json!({ "id": id, "status": "pending" })))
}
