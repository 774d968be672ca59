//! Password reset by email: `POST /api/v1/auth/password-reset` mails a single-use link,
//! `POST /api/v1/auth/password-reset/confirm` redeems it.
//!
//! Timing: a request does the same work whether or not the account exists: it generates and
//! hashes a token, runs one write transaction that always appends an audit entry (so both paths
//! commit, and fsync, once), and answers 202 with one body. The mail is queued in that
//! transaction and sent by the mail worker, so SMTP latency never shows in the response. An
//! existing account's path adds the mail's insert (in a savepoint, so a failure is only logged)
//! beside the token's: microseconds on SQLite, three statements inside the transaction on
//! PostgreSQL, against the commit's fsync that both paths pay.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::reset::{self, ResetToken};
use crate::accounts::{self, password, session};
use crate::audit::{self, Outcome};
use crate::error::ApiError;
use crate::http::auth::{check_origin, RequestContext};
use crate::mail::Mail;
use crate::routes::auth::{client_ip, event, parse_email, password_error, throttled};
use crate::startup::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResetRequest {
    #[schema(format = Email)]
    email: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ResetConfirm {
    #[schema(value_type = String, format = Password)]
    token: SecretString,
    #[schema(value_type = String, format = Password, min_length = 12, max_length = 128)]
    password: SecretString,
}

fn invalid_token() -> ApiError {
    ApiError::bad_request(
        "invalid_token",
        "the reset link is invalid, already used or expired; request a new one",
    )
}

fn reset_mail(to: String, public_url: &str, token: &ResetToken) -> Mail {
    let link = format!("{public_url}/reset/confirm?token={}", token.as_str());
    Mail {
        kind: "password_reset",
        to,
        subject: "Reset your keybroker password",
        body: format!(
            "Someone (hopefully you) asked to reset the password of your keybroker account.\n\n\
             To choose a new password, open this link within 24 hours:\n\n{link}\n\n\
             The link works once. If you did not ask for it, ignore this mail: your password \
             stays as it is.\n"
        ),
    }
}

#[utoipa::path(
    post, path = "/api/v1/auth/password-reset", tag = "auth",
    request_body = ResetRequest,
    responses(
        (status = 202, description = "Always the same answer, whether or not the account exists: `accepted`, or `unavailable` (no mail sent) when the server has no KEYBROKER_PUBLIC_URL", body = crate::openapi::ResetAccepted),
        (status = 400, description = "invalid_email", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_attempts", body = crate::openapi::ErrorBody),
    )
)]
pub async fn request(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<ResetRequest>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let ctx = RequestContext::of(&req);
    let email = parse_email(&body.into_inner().email)?;
    state
        .reset_throttle
        .check(&state.emails.hash(&email), client_ip(&ctx))
        .map_err(throttled)?;
    let token = ResetToken::generate();
    let token_hash = token.hash();
    let now = state.clock.unix();
    let hasher = state.emails.clone();
    let lookup = email.clone();
    let (outbox, public_url) = (state.mail.clone(), state.public_url.clone());
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            let tx = conn;
            let account = accounts::find_by_email(tx, &hasher, &lookup)?.map(|a| a.id);
            if let Some(id) = account {
                reset::issue(tx, id, &token_hash, now)?;
                // Queued in this transaction, so the link commits with its token; never fails it.
                if let Some(base) = public_url.as_deref() {
                    outbox.queue(
                        tx,
                        &reset_mail(lookup.as_str().to_owned(), base, &token),
                        now,
                    );
                }
            }
            audit::append(
                tx,
                &event(
                    account,
                    "password_reset.request",
                    &ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            Ok(())
        })
        .await?;
    // Woken whatever the address: the worker finds nothing when nothing was queued.
    state.mail.wake();
    let body = match state.public_url.as_deref() {
        Some(_) => json!({
            "status": "accepted",
            "message": "if an account exists for this address, a reset link is on its way",
        }),
        None => {
            tracing::warn!(
                "a password reset was requested, but KEYBROKER_PUBLIC_URL is not set, so no link can be mailed"
            );
            // A fact about the configuration, the same for every address: say it.
            json!({"status": "unavailable", "message": RESET_UNAVAILABLE})
        }
    };
    Ok(HttpResponse::build(StatusCode::ACCEPTED)
        .insert_header(("Cache-Control", "no-store"))
        .json(body))
}

/// Tells the owner that the reset happened.
fn reset_done_mail(to: String) -> Mail {
    Mail {
        kind: "password_reset_done",
        to,
        subject: "Your keybroker password was reset",
        body: "The password of your keybroker account was just reset with a link sent to \
               this address. Every signed-in session was signed out; sign in again with the \
               new password.\n\nIf this was not you, reset your password again at once and \
               review your account's audit log.\n"
            .to_owned(),
    }
}

/// What the reset page and answer say when no link can be built (no `KEYBROKER_PUBLIC_URL`).
pub const RESET_UNAVAILABLE: &str = "this keybroker cannot mail reset links: it has no public \
    URL configured (KEYBROKER_PUBLIC_URL), and links are never built from a request's Host. \
    No mail was sent. Ask its operator to run `keybroker accounts reset-password EMAIL`, which \
    prints a one-time reset link for you";

#[utoipa::path(
    post, path = "/api/v1/auth/password-reset/confirm", tag = "auth",
    request_body = ResetConfirm,
    responses(
        (status = 204, description = "Password set; every session is signed out"),
        (status = 400, description = "invalid_token, password_too_short, password_too_long", body = crate::openapi::ErrorBody),
    )
)]
pub async fn confirm(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<ResetConfirm>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let ctx = RequestContext::of(&req);
    let ResetConfirm {
        token,
        password: pw,
    } = body.into_inner();
    let token_hash = reset::hash_presented(token.expose_secret()).ok_or_else(invalid_token)?;
    password::validate(&pw).map_err(password_error)?;
    let now = state.clock.unix();
    // A cheap look first, so a made-up token costs no argon2 run. The redemption below is what
    // decides.
    let redeemable = state
        .db
        .read(move |conn| reset::is_redeemable(conn, &token_hash, now).map_err(ApiError::from))
        .await?;
    if !redeemable {
        return Err(invalid_token());
    }
    let phc = state
        .passwords
        .run(move || password::hash(&pw))
        .await?
        .map_err(password_error)?;
    let (vault, outbox) = (state.vault.clone(), state.mail.clone());
    let account_id = state
        .db
        .write(move |conn| -> Result<Option<i64>, ApiError> {
            let tx = conn;
            let Some(account_id) = reset::redeem(tx, &token_hash, now)? else {
                return Ok(None);
            };
            accounts::set_password(tx, account_id, &phc)?;
            // The link proved the mailbox: an account still waiting for its sign-up
            // confirmation is confirmed, with the password chosen here.
            accounts::confirm(tx, account_id, now)?;
            session::revoke_all(tx, account_id)?;
            reset::revoke_all(tx, account_id)?;
            audit::append(
                tx,
                &event(
                    Some(account_id),
                    "password_reset.confirm",
                    &ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            if let Some(to) =
                accounts::email_of(tx, &vault, account_id).map_err(ApiError::internal)?
            {
                outbox.queue(tx, &reset_done_mail(to), now);
            }
            Ok(Some(account_id))
        })
        .await?
        .ok_or_else(invalid_token)?;
    state.mail.wake();
    tracing::info!(
        account_id,
        "password reset; every session of the account was revoked"
    );
    Ok(HttpResponse::NoContent()
        .insert_header(("Cache-Control", "no-store"))
        .finish())
}
