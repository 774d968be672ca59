//! Tool tokens (`/api/v1/tokens...`): create (the secret is shown once), list (never a secret),
//! change a token's name and spend limit, reset its spend, revoke (effective at once, in this
//! process's cache too, with every token it minted). Another account's token id is a 404.
//! `POST /api/v1/tokens/children` is the one route a tool token itself calls: it mints a child
//! whose limit is carved out of the caller's (see `spend::budget`).

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::{self, Actor, Outcome};
use crate::error::ApiError;
use crate::http::auth::{Authenticated, RequestContext};
use crate::money::Money;
use crate::routes::keys::{provider_of, user_event};
use crate::routes::spend::{ceiling_change, loosens, persist_terms, sync_shared};
use crate::spend::budget::{self, token_key};
use crate::spend::writer::{parse_period, period_name};
use crate::spend::{Period, Snapshot};
use crate::startup::AppState;
use crate::timefmt::{parse_rfc3339, rfc3339, rfc3339_opt};
use crate::tokens::{self, NewToken, Parent, ProviderScope, Scope, ScopeError, ToolToken};

const MAX_NAME_CHARS: usize = 100;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
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
    /// The token's own spend limit, decimal USD (at most 6 decimals), beside the account's
    /// provider ceilings: a call must fit in both.
    #[schema(pattern = "^[0-9]+(\\.[0-9]{1,6})?$")]
    spend_limit_usd: Option<String>,
    /// How often the limit starts over: none (default), daily, monthly (UTC).
    #[schema(pattern = "^(none|daily|monthly)$")]
    spend_period: Option<String>,
    /// Whole percents of the limit at which spend alerts go out (as for ceilings).
    alert_at_percent: Option<Vec<i64>>,
}

/// A token with its spend as the ledger has it.
struct Listed<'a> {
    token: &'a ToolToken,
    budget: Option<Snapshot>,
    alerts: &'a [u8],
    children: Vec<&'a str>,
}

fn listed_view(l: &Listed<'_>, now: i64) -> Value {
    let token = l.token;
    let b = l.budget.as_ref().filter(|b| b.limit.is_some());
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
        "parent_id": token.parent_id,
        "depth": token.depth,
        "children": l.children,
        "spend_limit_usd": b.and_then(|b| b.limit).map(|m| m.to_string()),
        "spend_period": b.map(|b| period_name(b.period)),
        "spent_usd": b.map(|b| b.spent.to_string()),
        "reserved_usd": b.map(|b| b.reserved.to_string()),
        "remaining_usd": b.and_then(|b| b.remaining).map(|m| m.to_string()),
        "alert_at_percent": l.alerts,
    })
}

fn parse_limit(raw: &str) -> Result<Money, ApiError> {
    Money::parse_non_negative(raw.trim()).map_err(|_| {
        ApiError::bad_request(
            "invalid_amount",
            "spend_limit_usd must be a decimal amount in USD, like \"5.00\"",
        )
    })
}

fn parse_spend_period(raw: Option<&str>) -> Result<Option<Period>, ApiError> {
    raw.map(|p| {
        parse_period(p).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_period",
                "spend_period is one of none, daily, monthly",
            )
        })
    })
    .transpose()
}

fn parse_alerts(raw: Option<&[i64]>) -> Result<Option<Vec<u8>>, ApiError> {
    raw.map(crate::alerts::parse_thresholds)
        .transpose()
        .map_err(|message| ApiError::bad_request("invalid_alert_percent", message))
}

/// Stores a token's limit (a ledger entry keyed `token:<id>`) and its alert thresholds.
async fn store_budget(
    state: &AppState,
    account: i64,
    key: &str,
    snap: &Snapshot,
    alerts: Option<Vec<u8>>,
) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
    persist_terms(state, account, key, snap).await?;
    let owned = key.to_owned();
    state
        .db
        .write(move |c| {
            crate::alerts::store_thresholds(c, account, &owned, alerts.as_deref())
                .map_err(ApiError::from)
        })
        .await
}

/// With several instances: the account's token limits as the database has them, taken into this
/// instance's ledger before they are shown.
async fn observe_budgets(state: &AppState, account: i64) -> Result<(), ApiError> {
    if state.proxy.shared.is_none() {
        return Ok(());
    }
    state.proxy.writer.flush().await;
    let stored = state
        .db
        .read(move |c| crate::spend::store::account_rows(c, account))
        .await
        .map_err(|e| ApiError::from_db(&e))?;
    let now = state.proxy.ledger.now();
    for row in stored {
        if budget::is_token_key(&row.provider) {
            state
                .proxy
                .ledger
                .observe(&crate::spend::shared::current(row, now));
        }
    }
    Ok(())
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
        spend_limit_usd,
        spend_period,
        alert_at_percent,
    } = body.into_inner();
    let name = parse_name(&name)?;
    let providers = parse_scope(&state, providers)?;
    let limit = spend_limit_usd.as_deref().map(parse_limit).transpose()?;
    let period = parse_spend_period(spend_period.as_deref())?;
    let alerts = parse_alerts(alert_at_percent.as_deref())?;
    if limit.is_none() && (period.is_some() || alerts.is_some()) {
        return Err(ApiError::bad_request(
            "spend_limit_required",
            "spend_period and alert_at_percent need a spend_limit_usd",
        ));
    }
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
                parent: None,
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
    let mut token = token;
    let mut listed_budget = None;
    let mut listed_alerts = Vec::new();
    if let Some(limit) = limit {
        let key = token_key(&token.id);
        let snap =
            state
                .proxy
                .ledger
                .set_ceiling(account_id, &key, limit, period.unwrap_or(Period::None));
        if let Err(e) = store_budget(&state, account_id, &key, &snap, alerts).await {
            // A token whose limit could not be stored is not handed out.
            revoke_quietly(&state, account_id, &token.id).await;
            return Err(e);
        }
        token.budgeted = true;
        listed_alerts = alerts_of(&state, account_id, &key).await?;
        listed_budget = Some(snap);
    }
    let mut body = listed_view(
        &Listed {
            token: &token,
            budget: listed_budget,
            alerts: &listed_alerts,
            children: Vec::new(),
        },
        now,
    );
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
    observe_budgets(&state, account_id).await?;
    let (list, alerts) = state
        .db
        .read(move |conn| -> Result<_, ApiError> {
            Ok((
                tokens::list(conn, account_id)?,
                crate::alerts::thresholds_of(conn, account_id)?,
            ))
        })
        .await?;
    let list: Vec<Value> = list
        .iter()
        .map(|t| {
            let key = token_key(&t.id);
            let listed = Listed {
                token: t,
                budget: state
                    .proxy
                    .ledger
                    .has_limit(account_id, &key)
                    .then(|| state.proxy.ledger.snapshot(account_id, &key)),
                alerts: alerts.get(&key).map_or(&[][..], Vec::as_slice),
                children: list
                    .iter()
                    .filter(|c| c.parent_id.as_deref() == Some(t.id.as_str()))
                    .map(|c| c.id.as_str())
                    .collect(),
            };
            listed_view(&listed, now)
        })
        .collect();
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
    let revoked = state
        .db
        .write(move |conn| -> Result<Vec<String>, ApiError> {
            let tx = conn;
            let revoked = tokens::revoke(tx, account_id, &id, now)?;
            if revoked.is_empty() {
                return Err(ApiError::not_found());
            }
            for gone in &revoked {
                audit::append(
                    tx,
                    &user_event(
                        account_id,
                        "token.revoke",
                        gone,
                        &auth.ctx,
                        Outcome::Success,
                        now,
                    ),
                )?;
            }
            Ok(revoked)
        })
        .await?;
    for gone in &revoked {
        state.tokens.invalidate(gone);
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Revokes a token this request just made and could not finish (its limit was not stored).
async fn revoke_quietly(state: &AppState, account_id: i64, id: &str) {
    let (owned, now) = (id.to_owned(), state.clock.unix());
    let revoked = state
        .db
        .write(move |c| tokens::revoke(c, account_id, &owned, now))
        .await;
    if let Err(e) = revoked {
        tracing::error!(error = %e, "a token whose limit was not stored could not be revoked");
    }
    state.tokens.invalidate(id);
}

async fn alerts_of(state: &AppState, account: i64, key: &str) -> Result<Vec<u8>, ApiError> {
    let owned = key.to_owned();
    let all = state
        .db
        .read(move |c| crate::alerts::thresholds_of(c, account))
        .await
        .map_err(|e| ApiError::from_db(&e))?;
    Ok(all.get(&owned).cloned().unwrap_or_default())
}

/// `null` in a body, told apart from a field left out (`None`: leave as is; `Some(None)`: remove).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToken {
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    /// A new limit (decimal USD), or `null` to remove it. Raising or removing a limit, or making
    /// it start over more often, needs a recent re-auth.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable)]
    spend_limit_usd: Option<Option<String>>,
    #[schema(pattern = "^(none|daily|monthly)$")]
    spend_period: Option<String>,
    alert_at_percent: Option<Vec<i64>>,
}

/// A child's limit is what was carved out of its parent: it is not changed or reset afterwards.
fn child_budget_fixed() -> ApiError {
    ApiError::conflict(
        "child_budget_fixed",
        "a child token's limit is what was carved out of its parent's; revoke it and mint another",
    )
}

async fn owned_token(state: &AppState, account: i64, id: &str) -> Result<ToolToken, ApiError> {
    let owned = id.to_owned();
    state
        .db
        .read(move |c| tokens::get(c, account, &owned).map_err(ApiError::from))
        .await?
        .ok_or_else(ApiError::not_found)
}

async fn token_audit(
    state: &AppState,
    auth: &Authenticated,
    action: &'static str,
    id: &str,
    outcome: Outcome,
    detail: String,
) -> Result<(), ApiError> {
    let (account, ctx, now, id) = (
        auth.account_id,
        auth.ctx.clone(),
        state.clock.unix(),
        id.to_owned(),
    );
    state
        .db
        .write(move |conn| {
            audit::append_with_detail(
                conn,
                &user_event(account, action, &id, &ctx, outcome, now),
                &detail,
            )
            .map_err(ApiError::from)
        })
        .await
}

#[utoipa::path(
    patch, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "update_token",
    params(("id" = String, Path, description = "The token's id")),
    request_body = UpdateToken,
    responses(
        (status = 200, description = "The token as it is now", body = crate::openapi::TokenView),
        (status = 400, description = "invalid_name, invalid_amount, invalid_period, invalid_alert_percent, spend_limit_required, invalid_json", body = crate::openapi::ErrorBody),
        (status = 403, description = "reauth_required (raising, removing or loosening a limit), csrf", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
        (status = 409, description = "child_budget_fixed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
pub async fn update(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: crate::http::json::ApiJson<UpdateToken>,
) -> Result<HttpResponse, ApiError> {
    let UpdateToken {
        name,
        spend_limit_usd,
        spend_period,
        alert_at_percent,
    } = body.into_inner();
    let name = name.as_deref().map(parse_name).transpose()?;
    let limit = match &spend_limit_usd {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => Some(Some(parse_limit(raw)?)),
    };
    let period = parse_spend_period(spend_period.as_deref())?;
    let alerts = parse_alerts(alert_at_percent.as_deref())?;
    let account = auth.account_id;
    let mut token = owned_token(&state, account, &path).await?;
    let touches_budget = limit.is_some() || period.is_some() || alerts.is_some();
    if token.parent_id.is_some() && (limit.is_some() || period.is_some()) {
        return Err(child_budget_fixed());
    }
    let key = token_key(&token.id);
    let mut detail = Vec::new();
    if let Some(name) = name {
        if name != token.name {
            let (id, new_name) = (token.id.clone(), name.clone());
            state
                .db
                .write(move |c| {
                    c.execute(
                        "UPDATE tool_tokens SET name = ?1 WHERE id = ?2 AND account_id = ?3",
                        crate::params![new_name, id, account],
                    )
                    .map_err(ApiError::from)
                })
                .await?;
            detail.push(format!("name -> {name}"));
            token.name = name;
        }
    }
    if touches_budget {
        sync_shared(&state, account, &key).await?;
    }
    let before = state.proxy.ledger.snapshot(account, &key);
    let recent = auth.require_recent_auth(state.clock.unix());
    let changed: Option<Snapshot> = match limit {
        Some(None) if before.limit.is_some() => {
            if let Err(refused) = recent {
                token_audit(
                    &state,
                    &auth,
                    "token.update",
                    &token.id,
                    Outcome::Denied,
                    String::new(),
                )
                .await?;
                return Err(refused);
            }
            Some(state.proxy.ledger.remove_ceiling(account, &key))
        }
        Some(None) => None,
        Some(Some(new_limit)) => {
            let new_period = period.unwrap_or(if before.limit.is_some() {
                before.period
            } else {
                Period::None
            });
            let set = state.proxy.ledger.set_ceiling_unless(
                account,
                &key,
                new_limit,
                new_period,
                |current| recent.is_err() && loosens(current, new_limit, new_period),
            );
            match (set, recent) {
                (Ok(snap), _) => Some(snap),
                (Err(_), Err(refused)) => {
                    token_audit(
                        &state,
                        &auth,
                        "token.update",
                        &token.id,
                        Outcome::Denied,
                        String::new(),
                    )
                    .await?;
                    return Err(refused);
                }
                (Err(_), Ok(())) => {
                    return Err(ApiError::internal("limit refused after a re-auth"))
                }
            }
        }
        None => match (period, before.limit) {
            (Some(_), None) => {
                return Err(ApiError::bad_request(
                    "spend_limit_required",
                    "spend_period needs a spend limit on the token",
                ))
            }
            (Some(new_period), Some(current)) => {
                let set = state.proxy.ledger.set_ceiling_unless(
                    account,
                    &key,
                    current,
                    new_period,
                    |c| recent.is_err() && loosens(c, current, new_period),
                );
                match (set, recent) {
                    (Ok(snap), _) => Some(snap),
                    (Err(_), Err(refused)) => {
                        token_audit(
                            &state,
                            &auth,
                            "token.update",
                            &token.id,
                            Outcome::Denied,
                            String::new(),
                        )
                        .await?;
                        return Err(refused);
                    }
                    (Err(_), Ok(())) => {
                        return Err(ApiError::internal("limit refused after a re-auth"))
                    }
                }
            }
            (None, _) => None,
        },
    };
    if alerts.is_some()
        && changed
            .as_ref()
            .map_or(before.limit.is_none(), |s| s.limit.is_none())
    {
        return Err(ApiError::bad_request(
            "spend_limit_required",
            "alert_at_percent needs a spend limit on the token",
        ));
    }
    let after = changed.clone().unwrap_or_else(|| before.clone());
    if changed.is_some() || alerts.is_some() {
        let (alerts_before, alerts_after) =
            store_budget(&state, account, &key, &after, alerts).await?;
        let moved = ceiling_change(&before, &after);
        if !moved.is_empty() {
            detail.push(moved);
        }
        if alerts_before != alerts_after {
            detail.push(format!("alerts {alerts_before:?} -> {alerts_after:?}"));
        }
        state.tokens.invalidate(&token.id);
    }
    token_audit(
        &state,
        &auth,
        "token.update",
        &token.id,
        Outcome::Success,
        detail.join("; "),
    )
    .await?;
    let alerts_now = alerts_of(&state, account, &key).await?;
    let now = state.clock.unix();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(listed_view(
            &Listed {
                token: &token,
                budget: after.limit.is_some().then_some(after),
                alerts: &alerts_now,
                children: Vec::new(),
            },
            now,
        )))
}

#[utoipa::path(
    post, path = "/api/v1/tokens/{id}/reset", tag = "tokens", operation_id = "reset_token_spend",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The token's spend set back to zero", body = crate::openapi::TokenView),
        (status = 403, description = "reauth_required, csrf", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
        (status = 409, description = "child_budget_fixed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Forgiving a token's spend lets its whole limit through again, so it needs a recent re-auth.
pub async fn reset(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let account = auth.account_id;
    let token = owned_token(&state, account, &path).await?;
    if token.parent_id.is_some() {
        return Err(child_budget_fixed());
    }
    if let Err(refused) = auth.require_recent_auth(state.clock.unix()) {
        token_audit(
            &state,
            &auth,
            "token.reset",
            &token.id,
            Outcome::Denied,
            String::new(),
        )
        .await?;
        return Err(refused);
    }
    let key = token_key(&token.id);
    sync_shared(&state, account, &key).await?;
    let before = state.proxy.ledger.snapshot(account, &key);
    let snap = state.proxy.ledger.reset(account, &key);
    let (_, alerts) = store_budget(&state, account, &key, &snap, None).await?;
    token_audit(
        &state,
        &auth,
        "token.reset",
        &token.id,
        Outcome::Success,
        ceiling_change(&before, &snap),
    )
    .await?;
    let now = state.clock.unix();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(listed_view(
            &Listed {
                token: &token,
                budget: snap.limit.is_some().then_some(snap),
                alerts: &alerts,
                children: Vec::new(),
            },
            now,
        )))
}

/// Longest a child token may live: a month.
const MAX_CHILD_TTL_SECS: i64 = 30 * 86_400;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChild {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// The child's limit, decimal USD, carved out of what the calling token has left.
    #[schema(pattern = "^[0-9]+(\\.[0-9]{1,6})?$")]
    spend_limit_usd: String,
    /// How long the child lives (1 s to 30 days), never past the calling token's expiry.
    #[schema(minimum = 1, maximum = 2592000)]
    ttl_secs: i64,
    /// A subset of the calling token's providers; left out, the caller's own.
    #[schema(min_items = 1)]
    providers: Option<Vec<String>>,
    /// A subset of the calling token's methods; left out, the caller's own.
    #[schema(min_items = 1)]
    methods: Option<Vec<String>>,
    /// Patterns each within one of the calling token's; left out, the caller's own.
    #[schema(min_items = 1)]
    paths: Option<Vec<String>>,
}

/// The tool token a request presents (`Authorization: Bearer kb_...`), looked up in the database
/// (not the 1-second cache: a token revoked a moment ago mints nothing).
pub(crate) async fn bearer_token(
    state: &AppState,
    req: &HttpRequest,
) -> Result<ToolToken, ApiError> {
    let presented = zeroize::Zeroizing::new(
        crate::proxy::headers::presented_token(req.headers())
            .ok_or_else(ApiError::authentication_failed)?,
    );
    let now = state.clock.unix();
    state
        .db
        .read(move |c| tokens::authenticate(c, &presented, now).map_err(ApiError::from))
        .await?
        .ok_or_else(ApiError::authentication_failed)
}

fn parent_refused(refusal: &crate::spend::Refused) -> ApiError {
    let remaining = refusal
        .limit
        .saturating_sub(refusal.spent)
        .saturating_sub(refusal.reserved)
        .max(Money::ZERO);
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "parent_spend_limit_reached",
        format!(
            "a child's limit is carved out of what this token has left: ${} was asked, ${remaining} is left",
            refusal.requested
        ),
    )
    .with_field("limit_usd", refusal.limit.to_string())
    .with_field("spent_usd", refusal.spent.to_string())
    .with_field("reserved_usd", refusal.reserved.to_string())
    .with_field("remaining_usd", remaining.to_string())
}

#[utoipa::path(
    post, path = "/api/v1/tokens/children", tag = "tokens", operation_id = "create_child_token",
    request_body = CreateChild,
    responses(
        (status = 201, description = "Issued; the token is in this answer only", body = crate::openapi::IssuedToken),
        (status = 400, description = "invalid_name, invalid_amount, invalid_ttl, child_outlives_parent, unknown_provider, invalid_providers, invalid_json", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 402, description = "parent_spend_limit_reached", body = crate::openapi::ErrorBody),
        (status = 403, description = "child_depth_exceeded, child_scope_exceeds_parent", body = crate::openapi::ErrorBody),
    ),
    security(("token" = []))
)]
/// Mints a child of the calling tool token: the per-run token an agent framework gives each task.
pub async fn create_child(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<CreateChild>,
) -> Result<HttpResponse, ApiError> {
    let CreateChild {
        name,
        spend_limit_usd,
        ttl_secs,
        providers,
        methods,
        paths,
    } = body.into_inner();
    let parent = bearer_token(&state, &req).await?;
    let asked = parse_call_scope(methods, paths)?;
    let calls = Scope {
        methods: asked.methods.or_else(|| parent.scope.methods.clone()),
        paths: asked.paths.or_else(|| parent.scope.paths.clone()),
    };
    if !calls.narrows(&parent.scope) {
        return Err(ApiError::forbidden(
            "child_scope_exceeds_parent",
            "a child token may use only methods and paths its parent may use",
        ));
    }
    let name = parse_name(&name)?;
    let limit = parse_limit(&spend_limit_usd)?;
    if !(1..=MAX_CHILD_TTL_SECS).contains(&ttl_secs) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            "ttl_secs is a whole number of seconds from 1 to 2592000 (30 days)",
        ));
    }
    let depth = parent.depth + 1;
    if depth > budget::MAX_DEPTH {
        return Err(ApiError::forbidden(
            "child_depth_exceeded",
            format!(
                "tokens nest at most {} deep: this token's children may not mint more",
                budget::MAX_DEPTH
            ),
        ));
    }
    let scope = match providers {
        None if parent.providers.is_empty() => ProviderScope::All,
        None => ProviderScope::only(
            parent
                .providers
                .iter()
                .filter_map(|p| state.providers.lookup(p).map(|p| p.id)),
        )
        .ok_or_else(|| ApiError::internal("a scoped token without providers"))?,
        Some(raw) => {
            let scope = parse_scope(&state, Some(raw))?;
            if let ProviderScope::Only(ids) = &scope {
                if ids.iter().any(|id| !parent.allows(id)) {
                    return Err(ApiError::forbidden(
                        "child_scope_exceeds_parent",
                        "a child token may use only providers its parent may use",
                    ));
                }
            }
            scope
        }
    };
    let now = state.clock.unix();
    let expires_at = now.saturating_add(ttl_secs);
    if parent.expires_at.is_some_and(|p| expires_at > p) {
        return Err(ApiError::bad_request(
            "child_outlives_parent",
            "a child token may not outlive its parent: ask for a shorter ttl_secs",
        ));
    }
    let account = parent.account_id;
    let parent_key = token_key(&parent.id);
    // The carve: the child's limit charged to the parent's budget now, so the parent can never
    // spend it twice; what the child leaves goes back when it ends.
    let limited = budget::has_limit(&state.proxy, account, &parent_key, parent.budgeted)
        .await
        .map_err(|e| ApiError::from_db(&e))?;
    let carve = if limited {
        let held = match budget::reserve(&state.proxy, account, &parent_key, limit).await {
            Ok(held) => held,
            Err(Ok(crate::spend::ReserveError::Ceiling(refusal))) => {
                return Err(parent_refused(&refusal))
            }
            Err(Ok(_)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "spend_unavailable",
                    "keybroker cannot record spend right now; no token was made",
                ))
            }
            Err(Err(e)) => return Err(ApiError::from_db(&e)),
        };
        let _ = held.settle(limit);
        let start = state
            .proxy
            .ledger
            .snapshot(account, &parent_key)
            .period_start
            .unix_timestamp();
        Some((limit, start))
    } else {
        None
    };
    let ctx = RequestContext::of(&req);
    let parent_id = parent.id.clone();
    let created = state
        .db
        .write(move |conn| -> Result<_, ApiError> {
            let new = NewToken {
                account_id: account,
                name: &name,
                providers: &scope,
                scope: &calls,
                expires_at: Some(expires_at),
                now,
                parent: Some(Parent {
                    id: &parent_id,
                    depth,
                    carve,
                }),
            };
            let created = tokens::create(conn, &new)?;
            audit::append_with_detail(
                conn,
                &audit::Event {
                    account_id: Some(account),
                    actor: Actor::Token(parent_id.clone()),
                    action: "token.child_create",
                    resource: &created.0.id,
                    request_id: &ctx.request_id,
                    client_addr: &ctx.client_addr,
                    outcome: Outcome::Success,
                    at: now,
                },
                &format!("parent {parent_id}; limit {limit}"),
            )?;
            Ok(created)
        })
        .await;
    let (mut token, issued) = match created {
        Ok(created) => created,
        Err(e) => {
            if let Some((amount, start)) = carve {
                if let Err(back) =
                    budget::refund(&state.db, &state.proxy, account, &parent_key, amount, start)
                        .await
                {
                    tracing::error!(error = %back, "a carve for a child that was not made could not be given back");
                }
            }
            return Err(e);
        }
    };
    let key = token_key(&token.id);
    let snap = state
        .proxy
        .ledger
        .set_ceiling(account, &key, limit, Period::None);
    if let Err(e) = store_budget(&state, account, &key, &snap, None).await {
        // The sweeper gives the carve back once the revocation is past its grace.
        revoke_quietly(&state, account, &token.id).await;
        return Err(e);
    }
    token.budgeted = true;
    let mut body = listed_view(
        &Listed {
            token: &token,
            budget: Some(snap),
            alerts: &[],
            children: Vec::new(),
        },
        now,
    );
    if let Some(obj) = body.as_object_mut() {
        obj.insert("token".into(), Value::from(issued.expose()));
    }
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

#[utoipa::path(
    delete, path = "/api/v1/tokens/children/{id}", tag = "tokens", operation_id = "revoke_child_token",
    params(("id" = String, Path, description = "The child's id")),
    responses(
        (status = 204, description = "Revoked at once, with its own children; what it did not spend goes back to its parent"),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found (not a token the caller minted, directly or below)", body = crate::openapi::ErrorBody),
    ),
    security(("token" = []))
)]
/// A tool token revokes a token it minted (directly or through its children): an agent framework
/// ends a task's token when the task is done, and the rest of the carve goes back.
pub async fn revoke_child(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = bearer_token(&state, &req).await?;
    let (account, id, now) = (caller.account_id, path.into_inner(), state.clock.unix());
    let ctx = RequestContext::of(&req);
    let revoked = state
        .db
        .write(move |conn| -> Result<Vec<String>, ApiError> {
            if !tokens::descendants(conn, account, &caller.id)?.contains(&id) {
                return Err(ApiError::not_found());
            }
            let revoked = tokens::revoke(conn, account, &id, now)?;
            for gone in &revoked {
                audit::append(
                    conn,
                    &audit::Event {
                        account_id: Some(account),
                        actor: Actor::Token(caller.id.clone()),
                        action: "token.revoke",
                        resource: gone,
                        request_id: &ctx.request_id,
                        client_addr: &ctx.client_addr,
                        outcome: Outcome::Success,
                        at: now,
                    },
                )?;
            }
            Ok(revoked)
        })
        .await?;
    for gone in &revoked {
        state.tokens.invalidate(gone);
    }
    Ok(HttpResponse::NoContent().finish())
}
