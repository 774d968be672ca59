//! Spend ceilings (`/api/v1/ceilings`), usage (`/api/v1/usage`) and the price table
//! (`/api/v1/prices`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::{self, Actor, Outcome};
use crate::error::ApiError;
use crate::http::auth::Authenticated;
use crate::money::Money;
use crate::spend::store::GroupBy;
use crate::spend::writer::{parse_period, period_name, CeilingRow};
use crate::spend::{CeilingState, Period, Snapshot};
use crate::startup::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CeilingBody {
    /// Decimal USD, at most 6 decimals.
    #[schema(pattern = "^[0-9]+(\\.[0-9]{1,6})?$")]
    limit_usd: String,
    #[serde(default)]
    #[schema(pattern = "^(none|daily|monthly)$")]
    period: Option<String>,
    /// Whole percents of the limit (1 to 100, at most 10) at which spend alerts go out: one
    /// mail, one webhook event and one audit entry per threshold and period. Left out: the
    /// thresholds stay as they are; `[]` removes them.
    #[serde(default)]
    alert_at_percent: Option<Vec<i64>>,
}

fn provider_id(state: &AppState, raw: &str) -> Result<&'static str, ApiError> {
    state.providers.lookup(raw).map(|p| p.id).ok_or_else(|| {
        ApiError::bad_request("unknown_provider", "keybroker does not know this provider")
    })
}

fn view(provider: &str, s: &Snapshot, alerts: &[u8]) -> Value {
    json!({
        "alert_at_percent": alerts,
        "provider": provider,
        "limit_usd": s.limit.map(|m| m.to_string()),
        "spent_usd": s.spent.to_string(),
        "reserved_usd": s.reserved.to_string(),
        "remaining_usd": s.remaining.map(|m| m.to_string()),
        "period": period_name(s.period),
        "period_start": crate::timefmt::rfc3339(s.period_start.unix_timestamp()),
        "state": match s.state { CeilingState::Ok => "ok", CeilingState::Reached => "reached" },
    })
}

/// How much a period lets through for the same limit: one that starts over more often lets more
/// through in the end (`none` never starts over by itself).
fn period_reach(p: Period) -> u8 {
    match p {
        Period::None => 0,
        Period::Monthly => 1,
        Period::Daily => 2,
    }
}

/// Whether setting `limit` per `period` would let more through than the ceiling `current` holds:
/// a higher limit, or a period that starts over more often. A first ceiling only tightens.
pub(crate) fn loosens(current: &Snapshot, limit: Money, period: Period) -> bool {
    current
        .limit
        .is_some_and(|old| limit > old || period_reach(period) > period_reach(current.period))
}

/// The refusal of a loosening without a recent re-auth, recorded as denied (as for keys).
async fn refuse_without_reauth(
    state: &AppState,
    auth: &Authenticated,
    provider: &'static str,
    action: &'static str,
    refused: ApiError,
) -> Result<HttpResponse, ApiError> {
    audit_outcome(
        state,
        auth,
        provider,
        action,
        Outcome::Denied,
        String::new(),
    )
    .await?;
    Err(refused)
}

async fn audit_outcome(
    state: &AppState,
    auth: &Authenticated,
    provider: &'static str,
    action: &'static str,
    outcome: Outcome,
    detail: String,
) -> Result<(), ApiError> {
    let (account, ctx, now) = (auth.account_id, auth.ctx.clone(), state.clock.unix());
    state
        .db
        .write(move |conn| {
            audit::append_with_detail(
                conn,
                &audit::Event {
                    account_id: Some(account),
                    actor: Actor::User,
                    action,
                    resource: provider,
                    request_id: &ctx.request_id,
                    client_addr: &ctx.client_addr,
                    outcome,
                    at: now,
                },
                &detail,
            )
            .map_err(ApiError::from)
        })
        .await
}

/// The figures a ceiling change moved, for its audit entry: `limit 5.00 -> 10.00; period monthly
/// -> daily; spent 3.20 -> 0.00`, each part only when it changed.
pub(crate) fn ceiling_change(before: &Snapshot, after: &Snapshot) -> String {
    let limit = |s: &Snapshot| s.limit.map_or_else(|| "none".to_owned(), |m| m.to_string());
    let mut parts = Vec::new();
    if before.limit != after.limit {
        parts.push(format!("limit {} -> {}", limit(before), limit(after)));
    }
    if before.period != after.period {
        parts.push(format!(
            "period {} -> {}",
            period_name(before.period),
            period_name(after.period)
        ));
    }
    if before.spent != after.spent {
        parts.push(format!("spent {} -> {}", before.spent, after.spent));
    }
    parts.join("; ")
}

/// Several instances: the ceiling as the database has it, before it is shown or changed here (the
/// last change may have been made through another instance).
pub(crate) async fn sync_shared(
    state: &AppState,
    account: i64,
    provider: &str,
) -> Result<(), ApiError> {
    match &state.proxy.shared {
        Some(shared) => shared
            .sync(account, provider)
            .await
            .map_err(|e| ApiError::from_db(&e)),
        None => Ok(()),
    }
}

async fn persist_and_audit(
    state: &AppState,
    auth: &Authenticated,
    provider: &'static str,
    before: &Snapshot,
    snap: &Snapshot,
    action: &'static str,
) -> Result<(), ApiError> {
    persist(state, auth, provider, snap).await?;
    let detail = ceiling_change(before, snap);
    audit_outcome(state, auth, provider, action, Outcome::Success, detail).await
}

async fn persist(
    state: &AppState,
    auth: &Authenticated,
    provider: &'static str,
    snap: &Snapshot,
) -> Result<(), ApiError> {
    persist_terms(state, auth.account_id, provider, snap).await
}

/// Stores a ledger entry's terms (a provider's ceiling or a token's limit, `key`) and, with
/// several instances, announces them.
pub(crate) async fn persist_terms(
    state: &AppState,
    account: i64,
    provider: &str,
    snap: &Snapshot,
) -> Result<(), ApiError> {
    state.proxy.writer.record_ceiling(CeilingRow {
        account,
        provider: provider.to_owned(),
        limit: snap.limit,
        period: snap.period,
        period_start: snap.period_start.unix_timestamp(),
        spent: snap.spent,
    });
    state.proxy.writer.flush().await;
    if let Some(shared) = &state.proxy.shared {
        // Every instance (this one too) takes the new terms and hands back what it leased
        // beyond them; calls lease again under them.
        shared
            .announce(account, provider)
            .await
            .map_err(|e| ApiError::from_db(&e))?;
    }
    Ok(())
}

/// Stores the ceiling's alert thresholds (`None`: keeps them) and re-arms them against the
/// spend so far; the thresholds before and after.
async fn store_alerts(
    state: &AppState,
    account: i64,
    provider: &'static str,
    thresholds: Option<Vec<u8>>,
) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
    state
        .db
        .write(move |c| {
            crate::alerts::store_thresholds(c, account, provider, thresholds.as_deref())
                .map_err(ApiError::from)
        })
        .await
}

#[utoipa::path(
    put, path = "/api/v1/ceilings/{provider}", tag = "spend",
    params(("provider" = String, Path, description = "A provider id")),
    request_body = CeilingBody,
    responses(
        (status = 200, description = "The ceiling as set", body = crate::openapi::CeilingView),
        (status = 400, description = "unknown_provider, invalid_amount, invalid_period, invalid_alert_percent, invalid_json", body = crate::openapi::ErrorBody),
        (status = 403, description = "reauth_required (raising a limit or shortening the period of an existing ceiling), csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Setting a first ceiling or lowering one needs only the session; raising a limit or making an
/// existing ceiling start over more often needs a recent re-auth, like removing a key: a stolen
/// session alone must not lift the promise a ceiling makes.
pub async fn put_ceiling(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: crate::http::json::ApiJson<CeilingBody>,
) -> Result<HttpResponse, ApiError> {
    let provider = provider_id(&state, &path)?;
    let limit = Money::parse_non_negative(body.limit_usd.trim()).map_err(|_| {
        ApiError::bad_request(
            "invalid_amount",
            "limit_usd must be a decimal amount in USD, like \"5.00\"",
        )
    })?;
    let period = match body.period.as_deref() {
        None => crate::spend::Period::None,
        Some(p) => parse_period(p).ok_or_else(|| {
            ApiError::bad_request("invalid_period", "period is one of none, daily, monthly")
        })?,
    };
    let thresholds = body
        .alert_at_percent
        .as_deref()
        .map(crate::alerts::parse_thresholds)
        .transpose()
        .map_err(|message| ApiError::bad_request("invalid_alert_percent", message))?;
    let recent = auth.require_recent_auth(state.clock.unix());
    sync_shared(&state, auth.account_id, provider).await?;
    let before = state.proxy.ledger.snapshot(auth.account_id, provider);
    let set = state.proxy.ledger.set_ceiling_unless(
        auth.account_id,
        provider,
        limit,
        period,
        |current| recent.is_err() && loosens(current, limit, period),
    );
    let snap = match (set, recent) {
        (Ok(snap), _) => snap,
        (Err(_), Err(refused)) => {
            return refuse_without_reauth(&state, &auth, provider, "ceiling.set", refused).await
        }
        (Err(_), Ok(())) => return Err(ApiError::internal("ceiling refused after a re-auth")),
    };
    persist(&state, &auth, provider, &snap).await?;
    let (alerts_before, alerts) =
        store_alerts(&state, auth.account_id, provider, thresholds).await?;
    let mut detail = ceiling_change(&before, &snap);
    if alerts_before != alerts {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!("alerts {alerts_before:?} -> {alerts:?}"));
    }
    audit_outcome(
        &state,
        &auth,
        provider,
        "ceiling.set",
        Outcome::Success,
        detail,
    )
    .await?;
    Ok(HttpResponse::Ok().json(view(provider, &snap, &alerts)))
}

#[utoipa::path(
    get, path = "/api/v1/ceilings", tag = "spend",
    responses(
        (status = 200, description = "Spend and ceiling per provider", body = crate::openapi::CeilingList),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
pub async fn list_ceilings(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.proxy.shared.is_some() {
        // Spend settled through every instance is in the database, not in this one's ledger.
        state.proxy.writer.flush().await;
        let account = auth.account_id;
        let stored = state
            .db
            .read(move |c| crate::spend::store::account_rows(c, account))
            .await
            .map_err(|e| ApiError::from_db(&e))?;
        let now = state.proxy.ledger.now();
        for row in stored {
            state
                .proxy
                .ledger
                .observe(&crate::spend::shared::current(row, now));
        }
    }
    let account = auth.account_id;
    let alerts = state
        .db
        .read(move |c| crate::alerts::thresholds_of(c, account))
        .await
        .map_err(|e| ApiError::from_db(&e))?;
    let rows: Vec<Value> = state
        .proxy
        .ledger
        .snapshots(auth.account_id)
        .iter()
        .filter(|(p, s)| s.limit.is_some() && !crate::spend::budget::is_token_key(p))
        .map(|(p, s)| view(p, s, alerts.get(p).map_or(&[][..], Vec::as_slice)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "ceilings": rows })))
}

#[utoipa::path(
    post, path = "/api/v1/ceilings/{provider}/reset", tag = "spend",
    params(("provider" = String, Path, description = "A provider id")),
    responses(
        (status = 200, description = "Spend set back to zero", body = crate::openapi::CeilingView),
        (status = 400, description = "unknown_provider", body = crate::openapi::ErrorBody),
        (status = 403, description = "reauth_required, csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Forgiving spend lets a ceiling's whole limit through again, so it needs a recent re-auth.
pub async fn reset_ceiling(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let provider = provider_id(&state, &path)?;
    if let Err(refused) = auth.require_recent_auth(state.clock.unix()) {
        return refuse_without_reauth(&state, &auth, provider, "ceiling.reset", refused).await;
    }
    sync_shared(&state, auth.account_id, provider).await?;
    let before = state.proxy.ledger.snapshot(auth.account_id, provider);
    let snap = state.proxy.ledger.reset(auth.account_id, provider);
    persist_and_audit(&state, &auth, provider, &before, &snap, "ceiling.reset").await?;
    // The reset set `alerted_percent` back to 0 with the spend: every threshold alerts again.
    let (_, alerts) = store_alerts(&state, auth.account_id, provider, None).await?;
    Ok(HttpResponse::Ok().json(view(provider, &snap, &alerts)))
}

#[utoipa::path(
    delete, path = "/api/v1/ceilings/{provider}", tag = "spend",
    params(("provider" = String, Path, description = "A provider id")),
    responses(
        (status = 204, description = "No ceiling any more"),
        (status = 400, description = "unknown_provider", body = crate::openapi::ErrorBody),
        (status = 403, description = "reauth_required, csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Removing a ceiling needs a recent re-auth, like removing a key.
pub async fn delete_ceiling(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let provider = provider_id(&state, &path)?;
    if let Err(refused) = auth.require_recent_auth(state.clock.unix()) {
        return refuse_without_reauth(&state, &auth, provider, "ceiling.delete", refused).await;
    }
    sync_shared(&state, auth.account_id, provider).await?;
    let before = state.proxy.ledger.snapshot(auth.account_id, provider);
    let snap = state.proxy.ledger.remove_ceiling(auth.account_id, provider);
    persist_and_audit(&state, &auth, provider, &before, &snap, "ceiling.delete").await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Range {
    since: Option<String>,
    until: Option<String>,
    /// `provider` (the default: `providers`, one row per provider), `token` or `agent` (`groups`,
    /// one row per provider and token, or per provider and `X-Keybroker-Agent` label).
    group_by: Option<String>,
}

fn parse_time(raw: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = raw.parse::<i64>() {
        return Ok(secs);
    }
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_time",
                "since/until are RFC 3339 timestamps or Unix seconds",
            )
        })
}

#[utoipa::path(
    get, path = "/api/v1/usage", tag = "spend",
    params(Range),
    responses(
        (status = 200, description = "Usage per provider (or per provider and token or agent label, by group_by) in [since, until)", body = crate::openapi::Usage),
        (status = 400, description = "invalid_time, invalid_group_by", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
pub async fn usage(
    auth: Authenticated,
    state: web::Data<AppState>,
    q: web::Query<Range>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.unix();
    let since = q
        .since
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(now - 30 * 86_400);
    let until = q
        .until
        .as_deref()
        .map(parse_time)
        .transpose()?
        .unwrap_or(now + 1);
    if until < since {
        return Err(ApiError::bad_request(
            "invalid_time",
            "until is before since",
        ));
    }
    let group_by = match q.group_by.as_deref() {
        None => GroupBy::Provider,
        Some(raw) => GroupBy::parse(raw).ok_or_else(|| {
            ApiError::bad_request("invalid_group_by", "group_by is provider, token or agent")
        })?,
    };
    state.proxy.writer.flush().await;
    let account = auth.account_id;
    let (rows, groups) = state
        .db
        .read(move |conn| -> Result<_, ApiError> {
            Ok(match group_by {
                GroupBy::Provider => (
                    Some(crate::spend::store::usage(conn, account, since, until)?),
                    None,
                ),
                by => (
                    None,
                    Some(crate::spend::store::usage_grouped(
                        conn, account, since, until, by,
                    )?),
                ),
            })
        })
        .await?;
    // Ceilings count per period (calendar day or month, UTC); usage without dates is the last 30
    // days, and says so, so the two are never read as the same figure by mistake.
    let window = match (&q.since, &q.until) {
        (None, None) => "the last 30 days (since/until choose another window; ceilings count per period: see /api/v1/ceilings)",
        _ => "as requested: [since, until)",
    };
    let mut body = json!({
        "since": crate::timefmt::rfc3339(since),
        "until": crate::timefmt::rfc3339(until),
        "window": window,
    });
    if let Some(obj) = body.as_object_mut() {
        match (rows, groups) {
            (Some(rows), _) => obj.insert("providers".into(), json!(rows)),
            (None, groups) => obj.insert("groups".into(), json!(groups.unwrap_or_default())),
        };
    }
    Ok(HttpResponse::Ok().json(body))
}

#[utoipa::path(
    get, path = "/api/v1/prices", tag = "spend",
    responses((status = 200, description = "The price table in force", body = crate::openapi::Prices))
)]
pub async fn prices(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "unit": "USD per million tokens (per request or per character where stated)",
        "source_date": state.proxy.prices.source_date(),
        "prices": state.proxy.prices.to_api_rows(),
    }))
}
