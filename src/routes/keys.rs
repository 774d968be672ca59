//! Provider keys (`/api/v1/keys...`): add, list, rotate, delete, reveal, export. Every route is
//! session-authenticated; another account's key id is answered exactly like a missing one (404),
//! so ids do not reveal that they exist. Keys arrive only in bodies and leave only through
//! `reveal`; lists and exports show the mask and the fingerprint.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::{self, Actor, Outcome};
use crate::db::Conn;
use crate::error::ApiError;
use crate::http::auth::{Authenticated, RequestContext};
use crate::http::download::{self, Format};
use crate::keys::material::{self, KeyError, KeyMaterial};
use crate::keys::store::{self, KeyRow, StoreError};
use crate::providers::{Provider, Registry};
use crate::startup::AppState;
use crate::timefmt::{rfc3339, rfc3339_opt};

const MAX_LABEL_CHARS: usize = 100;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AddKey {
    /// A provider id from the registry.
    #[schema(min_length = 1)]
    provider: String,
    #[schema(value_type = String, format = Password)]
    key: SecretString,
    #[schema(max_length = 100)]
    label: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RotateKey {
    #[schema(value_type = String, format = Password)]
    key: SecretString,
    label: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// An audit event by the signed-in user about `resource`.
pub fn user_event<'a>(
    account_id: i64,
    action: &'a str,
    resource: &'a str,
    ctx: &'a RequestContext,
    outcome: Outcome,
    at: i64,
) -> audit::Event<'a> {
    audit::Event {
        account_id: Some(account_id),
        actor: Actor::User,
        action,
        resource,
        request_id: &ctx.request_id,
        client_addr: &ctx.client_addr,
        outcome,
        at,
    }
}

pub fn provider_of(registry: &Registry, raw: &str) -> Result<&'static Provider, ApiError> {
    registry.lookup(raw).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_provider",
            format!("unknown provider; supported: {}", registry.ids().join(", ")),
        )
    })
}

/// Never quotes the key: the message says what is wrong with it, not what it was.
fn key_error(e: KeyError, provider: &Provider) -> ApiError {
    match e {
        KeyError::Empty | KeyError::TooLong => ApiError::bad_request("invalid_key", e.to_string()),
        KeyError::Masked => ApiError::bad_request("masked_value", e.to_string()),
        KeyError::BadFormat => ApiError::bad_request(
            "invalid_key_format",
            format!(
                "that does not look like a {} key; check you pasted the whole key for the right provider",
                provider.display_name
            ),
        )
        .with_field("provider", provider.id),
    }
}

fn parse_label(raw: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let label = raw.trim();
    if label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_label",
            "a label is at most 100 characters, without control characters",
        ));
    }
    Ok(Some(label.to_owned()))
}

fn view(row: &KeyRow) -> Value {
    json!({
        "id": row.id,
        "provider": row.provider,
        "label": row.label,
        "masked": row.masked,
        "fingerprint": row.fingerprint,
        "created_at": rfc3339(row.created_at),
        "rotated_at": rfc3339_opt(row.rotated_at),
        "last_used_at": rfc3339_opt(row.last_used_at),
    })
}

fn no_store(status: StatusCode) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    res
}

#[utoipa::path(
    post, path = "/api/v1/keys", tag = "keys", operation_id = "add_key",
    request_body = AddKey,
    responses(
        (status = 201, description = "Stored (sealed); shown masked", body = crate::openapi::KeyView),
        (status = 400, description = "unknown_provider, invalid_key, invalid_key_format, invalid_label", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
        (status = 409, description = "key_exists (with key_id)", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn add(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<AddKey>,
) -> Result<HttpResponse, ApiError> {
    let AddKey {
        provider,
        key,
        label,
    } = body.into_inner();
    let provider = provider_of(&state.providers, &provider)?;
    let label = parse_label(label)?.unwrap_or_default();
    let key =
        KeyMaterial::parse(provider, key.expose_secret()).map_err(|e| key_error(e, provider))?;
    let masked = material::mask(provider, key.expose());
    let fingerprint = material::fingerprint(&state.fingerprint_secret, key.expose());
    let (vault, now, account_id) = (state.vault.clone(), state.clock.unix(), auth.account_id);
    let row = state
        .db
        .write(move |conn| -> Result<KeyRow, ApiError> {
            let tx = conn;
            let id = store::new_key_id();
            let new = store::NewKey {
                id: &id,
                account_id,
                provider: provider.id,
                label: &label,
                masked: &masked,
                fingerprint: &fingerprint,
                now,
            };
            match store::insert(tx, &vault, &new, key.expose().as_bytes()) {
                Ok(()) => {}
                Err(StoreError::Exists) => {
                    let existing = store::find_by_provider(tx, account_id, provider.id)?
                        .map(|r| r.id)
                        .unwrap_or_default();
                    return Err(ApiError::conflict(
                        "key_exists",
                        format!(
                            "this account already has a {} key; to replace it, rotate it with PUT /api/v1/keys/{existing}",
                            provider.display_name
                        ),
                    )
                    .with_field("key_id", existing));
                }
                Err(e) => return Err(ApiError::internal(e)),
            }
            audit::append(
                tx,
                &user_event(account_id, "key.add", &id, &auth.ctx, Outcome::Success, now),
            )?;
            let row = store::get(tx, account_id, &id)?
                .ok_or_else(|| ApiError::internal("inserted key row not found"))?;
            Ok(row)
        })
        .await?;
    Ok(no_store(StatusCode::CREATED).json(view(&row)))
}

#[utoipa::path(
    get, path = "/api/v1/keys", tag = "keys", operation_id = "list_keys",
    responses(
        (status = 200, description = "The account's keys, masked", body = crate::openapi::KeyList),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let account_id = auth.account_id;
    let rows = state
        .db
        .read(move |conn| store::list(conn, account_id).map_err(ApiError::from))
        .await?;
    let keys: Vec<Value> = rows.iter().map(view).collect();
    Ok(no_store(StatusCode::OK).json(json!({ "keys": keys })))
}

#[utoipa::path(
    put, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = RotateKey,
    responses(
        (status = 200, description = "Replaced", body = crate::openapi::KeyView),
        (status = 400, description = "invalid_key, invalid_key_format, invalid_label", body = crate::openapi::ErrorBody),
        (status = 403, description = "reauth_required, csrf", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Rotation: the new key replaces the old in one UPDATE. A call that read the old key before
/// the commit finishes with it; every call that starts after the response reads the new one.
pub async fn rotate(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: crate::http::json::ApiJson<RotateKey>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let RotateKey { key, label } = body.into_inner();
    let label = parse_label(label)?;
    let (vault, now, account_id) = (state.vault.clone(), state.clock.unix(), auth.account_id);
    let secret = state.fingerprint_secret.clone();
    let registry = state.providers.clone();
    let row = state
        .db
        .write(move |conn| -> Result<KeyRow, ApiError> {
            let tx = conn;
            // Ownership first: another account's id is a 404 whatever the body says.
            let row = store::get(tx, account_id, &id)?.ok_or_else(ApiError::not_found)?;
            let provider = registry
                .lookup(&row.provider)
                .ok_or_else(|| ApiError::internal("stored key names an unknown provider"))?;
            if key.expose_secret().trim() == row.masked {
                return Err(key_error(KeyError::Masked, provider));
            }
            let key = KeyMaterial::parse(provider, key.expose_secret())
                .map_err(|e| key_error(e, provider))?;
            let rotation = store::Rotation {
                masked: &material::mask(provider, key.expose()),
                fingerprint: &material::fingerprint(&secret, key.expose()),
                now,
            };
            store::rotate(
                tx,
                &vault,
                account_id,
                &row,
                &rotation,
                key.expose().as_bytes(),
            )
            .map_err(ApiError::internal)?;
            if let Some(label) = &label {
                store::set_label(tx, account_id, &id, label)?;
            }
            audit::append(
                tx,
                &user_event(
                    account_id,
                    "key.rotate",
                    &id,
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            let row = store::get(tx, account_id, &id)?
                .ok_or_else(|| ApiError::internal("rotated key row not found"))?;
            Ok(row)
        })
        .await?;
    // Calls that start from now on use the new key.
    state.key_cache.invalidate_account(account_id);
    Ok(no_store(StatusCode::OK).json(view(&row)))
}

/// Runs `f` on the caller's key `id` inside a write transaction, after checking ownership (404)
/// and then the re-auth window (403, recorded in the audit log as denied).
async fn with_recent_auth<T, F>(
    auth: Authenticated,
    state: &AppState,
    id: String,
    action: &'static str,
    f: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Conn<'_>, &KeyRow) -> Result<T, ApiError> + Send + 'static,
{
    let now = state.clock.unix();
    let recent = auth.require_recent_auth(now);
    let account_id = auth.account_id;
    state
        .db
        // The outer `Err` rolls the transaction back; the inner one is a refusal whose audit
        // entry is committed.
        .write(move |tx| -> Result<Result<T, ApiError>, ApiError> {
            let row = store::get(tx, account_id, &id)?.ok_or_else(ApiError::not_found)?;
            if let Err(refused) = recent {
                audit::append(
                    tx,
                    &user_event(account_id, action, &id, &auth.ctx, Outcome::Denied, now),
                )?;
                return Ok(Err(refused));
            }
            let out = f(tx, &row)?;
            audit::append(
                tx,
                &user_event(account_id, action, &id, &auth.ctx, Outcome::Success, now),
            )?;
            Ok(Ok(out))
        })
        .await?
}

#[utoipa::path(
    delete, path = "/api/v1/keys/{id}", tag = "keys", operation_id = "delete_key",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "reauth_required, csrf", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Deletion: the row is gone when the response is sent, so the next proxied call finds no key.
pub async fn delete(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account_id = auth.account_id;
    with_recent_auth(
        auth,
        &state,
        path.into_inner(),
        "key.delete",
        move |tx, row| {
            store::delete(tx, account_id, &row.id)?;
            Ok(())
        },
    )
    .await?;
    // The proxy must not use a deleted key for even one more call.
    state.key_cache.invalidate_account(account_id);
    Ok(no_store(StatusCode::NO_CONTENT).finish())
}

#[utoipa::path(
    post, path = "/api/v1/keys/{id}/reveal", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The key itself; needs a re-authentication in the last ten minutes", body = crate::openapi::RevealedKey),
        (status = 403, description = "reauth_required, csrf", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn reveal(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account_id = auth.account_id;
    let vault = state.vault.clone();
    let key = with_recent_auth(
        auth,
        &state,
        path.into_inner(),
        "key.reveal",
        move |tx, row| {
            let (_, plain) = store::open_by_id(tx, &vault, account_id, &row.id)
                .map_err(ApiError::internal)?
                .ok_or_else(ApiError::not_found)?;
            plain
                .expose_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::internal("stored key is not UTF-8"))
        },
    )
    .await?;
    Ok(no_store(StatusCode::OK)
        .insert_header((header::PRAGMA, "no-cache"))
        .json(json!({ "key": key })))
}

const EXPORT_COLUMNS: &[&str] = &[
    "id",
    "provider",
    "label",
    "masked",
    "fingerprint",
    "created_at",
    "rotated_at",
    "last_used_at",
    "ceiling_usd",
    "spent_usd",
];

#[utoipa::path(
    get, path = "/api/v1/keys/export", tag = "keys",
    params(ExportQuery),
    responses(
        (status = 200, description = "An attachment: the keys' metadata (never the keys) as JSON or CSV", body = Object),
        (status = 400, description = "invalid_format", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
/// One row per key: never the key, never its ciphertext (the query does not even select it).
pub async fn export(
    auth: Authenticated,
    state: web::Data<AppState>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    let format = Format::parse(query.format.as_deref())?;
    let (now, account_id) = (state.clock.unix(), auth.account_id);
    let rows = state
        .db
        .write(move |conn| -> Result<Vec<KeyRow>, ApiError> {
            let tx = conn;
            let rows = store::list(tx, account_id)?;
            audit::append(
                tx,
                &user_event(
                    account_id,
                    "keys.export",
                    format.as_str(),
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            Ok(rows)
        })
        .await?;
    // The ledger is the live figure (settled spend of the current ceiling period); the database
    // copy lags it by one group commit.
    let ledger = &state.proxy.ledger;
    let with_spend = rows.into_iter().map(|row| {
        let snapshot = ledger.snapshot(account_id, &row.provider);
        let ceiling = snapshot.limit.map(|m| m.to_string());
        (row, ceiling, snapshot.spent.to_string())
    });
    match format {
        Format::Json => {
            let keys: Vec<Value> = with_spend
                .map(|(row, ceiling, spent)| {
                    let mut v = view(&row);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("ceiling_usd".into(), json!(ceiling));
                        obj.insert("spent_usd".into(), json!(spent));
                    }
                    v
                })
                .collect();
            let body = serde_json::to_vec_pretty(&json!({
                "exported_at": rfc3339(now),
                "keys": keys,
            }))
            .map_err(ApiError::internal)?;
            Ok(download::attachment(
                "application/json",
                "keybroker-keys.json",
                body,
            ))
        }
        Format::Csv => {
            let body = download::document(
                EXPORT_COLUMNS,
                with_spend.map(|(row, ceiling, spent)| {
                    vec![
                        row.id,
                        row.provider,
                        row.label,
                        row.masked,
                        row.fingerprint,
                        rfc3339(row.created_at),
                        rfc3339_opt(row.rotated_at).unwrap_or_default(),
                        rfc3339_opt(row.last_used_at).unwrap_or_default(),
                        ceiling.unwrap_or_default(),
                        spent,
                    ]
                }),
            )
            .map_err(ApiError::internal)?;
            Ok(download::attachment(
                "text/csv; charset=utf-8",
                "keybroker-keys.csv",
                body,
            ))
        }
    }
}
