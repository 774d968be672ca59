//! Tool tokens (`/api/v1/tokens...`): create (the secret is shown once), list (never a secret),
//! revoke (effective at once, in this process's cache too). Another account's token id is a 404.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::{self, Outcome};
use crate::error::ApiError;
use crate::http::auth::Authenticated;
use crate::routes::keys::{provider_of, user_event};
use crate::startup::AppState;
use crate::timefmt::{parse_rfc3339, rfc3339, rfc3339_opt};
use crate::tokens::{self, NewToken, ProviderScope, Scope, ScopeError, ToolToken};

const MAX_NAME_CHARS: usize = 100;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateToken {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Provider ids the token may call; leave the field out for every provider. An empty list
    /// is refused (`invalid_providers`), never read as "all".
    #[schema(min_items = 1)]
    providers: Option<Vec<String>>,
    /// Methods the token may use (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; any case);
    /// leave the field out for every method. An empty list is refused (`invalid_methods`).
    #[schema(min_items = 1)]
    methods: Option<Vec<String>>,
    /// Upstream paths the token may call: exact (`/v1/balance`) or a prefix ending in `/*`
    /// (`/v1/chat/*`), matched case-insensitively on the normalised path; at most 32 patterns of
    /// at most 256 characters. Leave the field out for every path; an empty list is refused
    /// (`invalid_paths`).
    #[schema(min_items = 1, max_items = 32)]
    paths: Option<Vec<String>>,
    /// RFC 3339, in the future.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

fn view(token: &ToolToken, now: i64) -> Value {
    json!({
        "id": token.id,
        "name": token.name,
        "providers": token.providers,
        "methods": token.scope.methods,
        "paths": token.scope.paths,
        "created_at": rfc3339(token.created_at),
        "expires_at": rfc3339_opt(token.expires_at),
        "expired": token.expired(now),
        "last_used_at": rfc3339_opt(token.last_used_at),
    })
}

fn parse_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a token name is 1-100 characters, without control characters",
        ));
    }
    Ok(name.to_owned())
}

/// The token's scope: absent means every provider; a list must name at least one known provider.
fn parse_scope(state: &AppState, raw: Option<Vec<String>>) -> Result<ProviderScope, ApiError> {
    let Some(raw) = raw else {
        return Ok(ProviderScope::All);
    };
    let ids: Vec<&'static str> = raw
        .iter()
        .map(|p| provider_of(&state.providers, p).map(|p| p.id))
        .collect::<Result<_, _>>()?;
    ProviderScope::only(ids).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_providers",
            "providers must name at least one provider; leave the field out for every provider",
        )
    })
}

/// The token's method and path scope: an absent part is unrestricted; a list must be valid.
fn parse_call_scope(
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
) -> Result<Scope, ApiError> {
    let refused = |e: ScopeError| {
        let kind = match e {
            ScopeError::Methods => "invalid_methods",
            ScopeError::Paths => "invalid_paths",
        };
        ApiError::bad_request(kind, e.to_string())
    };
    Ok(Scope {
        methods: methods
            .as_deref()
            .map(Scope::parse_methods)
            .transpose()
            .map_err(refused)?,
        paths: paths
            .as_deref()
            .map(Scope::parse_paths)
            .transpose()
            .map_err(refused)?,
    })
}

#[utoipa::path(
    post, path = "/api/v1/tokens", tag = "tokens", operation_id = "create_token",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Issued; the token is in this answer only", body = crate::openapi::IssuedToken),
        (status = 400, description = "invalid_name, invalid_providers (an empty list), invalid_methods, invalid_paths, unknown_provider, invalid_expires_at", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn create(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<CreateToken>,
) -> Result<HttpResponse, ApiError> {
    let CreateToken {
        name,
        providers,
        methods,
        paths,
        expires_at,
    } = body.into_inner();
    let name = parse_name(&name)?;
    let providers = parse_scope(&state, providers)?;
    let scope = parse_call_scope(methods, paths)?;
    let now = state.clock.unix();
    let expires_at = match expires_at {
        None => None,
        Some(raw) => match parse_rfc3339(&raw) {
            Some(at) if at > now => Some(at),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_expires_at",
                    "expires_at must be an RFC 3339 time in the future",
                ))
            }
        },
    };
    let account_id = auth.account_id;
    let ((token, issued), keyed) = state
        .db
        .write(move |conn| -> Result<_, ApiError> {
            let tx = conn;
            let new = NewToken {
                account_id,
                name: &name,
                providers: &providers,
                scope: &scope,
                expires_at,
                now,
            };
            let created = tokens::create(tx, &new)?;
            let keyed: Vec<String> = crate::keys::store::list(tx, account_id)?
                .into_iter()
                .map(|k| k.provider)
                .collect();
            audit::append(
                tx,
                &user_event(
                    account_id,
                    "token.create",
                    &created.0.id,
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            Ok((created, keyed))
        })
        .await?;
    let mut body = view(&token, now);
    if let Some(obj) = body.as_object_mut() {
        obj.insert("token".into(), Value::from(issued.expose()));
        // A token named for a provider the account has no key for is allowed (the key may come
        // later), but said: its calls get 424 `no_key` until then.
        // An empty list is the "every provider" scope.
        let missing: Vec<&str> = token
            .providers
            .iter()
            .map(String::as_str)
            .filter(|id| !keyed.iter().any(|k| k == id))
            .collect();
        if !missing.is_empty() {
            obj.insert(
                "warnings".into(),
                Value::from(
                    missing
                        .iter()
                        .map(|id| {
                            format!("this account has no {id} key yet: calls through this token to {id} are refused with 424 no_key until one is added")
                        })
                        .collect::<Vec<_>>(),
                ),
            );
        }
    }
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

#[utoipa::path(
    get, path = "/api/v1/tokens", tag = "tokens", operation_id = "list_tokens",
    responses(
        (status = 200, description = "The account's tokens (never the tokens themselves)", body = crate::openapi::TokenList),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
pub async fn list(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let account_id = auth.account_id;
    let now = state.clock.unix();
    let list = state
        .db
        .read(move |conn| tokens::list(conn, account_id).map_err(ApiError::from))
        .await?;
    let list: Vec<Value> = list.iter().map(|t| view(t, now)).collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "tokens": list })))
}

#[utoipa::path(
    delete, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "revoke_token",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked at once"),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn revoke(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let (now, account_id) = (state.clock.unix(), auth.account_id);
    let revoked_id = id.clone();
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            let tx = conn;
            if !tokens::revoke(tx, account_id, &id, now)? {
                return Err(ApiError::not_found());
            }
            audit::append(
                tx,
                &user_event(
                    account_id,
                    "token.revoke",
                    &id,
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            Ok(())
        })
        .await?;
    state.tokens.invalidate(&revoked_id);
    Ok(HttpResponse::NoContent().finish())
}
