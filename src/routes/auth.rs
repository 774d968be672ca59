//! Sign-up, sign-in, sign-out and the current session (`/api/v1/auth/...`).

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::accounts::password::{self, PasswordError, Verdict};
use crate::accounts::session;
use crate::accounts::{self, AccountError, Email};
use crate::audit::{self, Actor, Outcome};
use crate::error::ApiError;
use crate::http::auth::{check_origin, Authenticated, RequestContext};
use crate::startup::AppState;

#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: SecretString,
}

pub fn session_cookie(value: String) -> Cookie<'static> {
    Cookie::build(session::COOKIE_NAME, value)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish()
}

fn expired_cookie() -> Cookie<'static> {
    let mut c = session_cookie(String::new());
    c.make_removal();
    c
}

pub fn password_error(e: PasswordError) -> ApiError {
    match e {
        PasswordError::TooShort => ApiError::bad_request(
            "password_too_short",
            "the password must be at least 12 characters",
        ),
        PasswordError::TooLong => ApiError::bad_request(
            "password_too_long",
            "the password must be at most 128 characters",
        ),
        PasswordError::Hash => ApiError::internal(e),
    }
}

fn parse_email(raw: &str) -> Result<Email, ApiError> {
    Email::parse(raw)
        .map_err(|_| ApiError::bad_request("invalid_email", "the email address is not valid"))
}

pub fn event<'a>(
    account_id: Option<i64>,
    action: &'a str,
    ctx: &'a RequestContext,
    outcome: Outcome,
    at: i64,
) -> audit::Event<'a> {
    audit::Event {
        account_id,
        actor: if account_id.is_some() {
            Actor::User
        } else {
            Actor::Anonymous
        },
        action,
        resource: "",
        request_id: &ctx.request_id,
        client_addr: &ctx.client_addr,
        outcome,
        at,
    }
}

/// Starts a session for `account_id` (recording `action` in the same transaction) and answers
/// with the cookie and the CSRF token.
async fn start_session(
    state: &AppState,
    account_id: i64,
    email: String,
    ctx: RequestContext,
    action: &'static str,
    status: StatusCode,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.unix();
    let (id, _) = state
        .db
        .write(move |conn| -> Result<_, ApiError> {
            let tx = conn.transaction()?;
            let created = session::create(&tx, account_id, now, &ctx.user_agent, &ctx.client_addr)?;
            audit::append(
                &tx,
                &event(Some(account_id), action, &ctx, Outcome::Success, now),
            )?;
            tx.commit()?;
            Ok(created)
        })
        .await?;
    let csrf = session::csrf_token(&state.session_secret, &id);
    Ok(HttpResponse::build(status)
        .cookie(session_cookie(session::cookie_value(
            &state.session_secret,
            &id,
        )))
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"email": email, "csrf_token": csrf})))
}

pub async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let Credentials {
        email,
        password: pw,
    } = body.into_inner();
    let email = parse_email(&email)?;
    password::validate(&pw).map_err(password_error)?;
    let phc = web::block(move || password::hash(&pw))
        .await?
        .map_err(password_error)?;
    let (vault, hasher, now) = (
        state.vault.clone(),
        state.emails.clone(),
        state.clock.unix(),
    );
    let email_for_row = email.clone();
    let account_id = state
        .db
        .write(move |conn| {
            match accounts::create(conn, &vault, &hasher, &email_for_row, Some(&phc), now) {
                Ok(id) => Ok(id),
                Err(AccountError::Exists) => Err(ApiError::conflict(
                    "account_exists",
                    "an account with this email already exists; sign in instead",
                )),
                Err(e) => Err(ApiError::internal(e)),
            }
        })
        .await?;
    start_session(
        &state,
        account_id,
        email.as_str().to_owned(),
        RequestContext::of(&req),
        "signup",
        StatusCode::CREATED,
    )
    .await
}

pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let ctx = RequestContext::of(&req);
    let Credentials {
        email,
        password: pw,
    } = body.into_inner();
    let email = parse_email(&email)?;
    let hasher = state.emails.clone();
    let lookup = email.clone();
    let account = state
        .db
        .read(move |conn| accounts::find_by_email(conn, &hasher, &lookup).map_err(ApiError::from))
        .await?;
    let stored = account.as_ref().and_then(|a| a.password_hash.clone());
    let (verdict, pw) = web::block(move || (password::verify(&pw, stored.as_deref()), pw)).await?;
    let now = state.clock.unix();
    let (account_id, needs_rehash) = match (account, verdict) {
        (Some(a), Verdict::Valid { needs_rehash }) => (a.id, needs_rehash),
        (account, _) => {
            let account_id = account.map(|a| a.id);
            let fail_ctx = ctx.clone();
            state
                .db
                .write(move |conn| {
                    audit::append(
                        conn,
                        &event(account_id, "login", &fail_ctx, Outcome::Failure, now),
                    )
                    .map_err(ApiError::from)
                })
                .await?;
            return Err(ApiError::authentication_failed());
        }
    };
    if needs_rehash {
        let phc = web::block(move || password::hash(&pw))
            .await?
            .map_err(password_error)?;
        state
            .db
            .write(move |conn| {
                conn.execute(
                    "UPDATE accounts SET password_hash = ?1 WHERE id = ?2",
                    rusqlite::params![phc, account_id],
                )
                .map_err(ApiError::from)
            })
            .await?;
    }
    start_session(
        &state,
        account_id,
        email.as_str().to_owned(),
        ctx,
        "login",
        StatusCode::OK,
    )
    .await
}

pub async fn logout(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.unix();
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            let tx = conn.transaction()?;
            session::revoke(&tx, &auth.session_hash)?;
            audit::append(
                &tx,
                &event(
                    Some(auth.account_id),
                    "logout",
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(HttpResponse::NoContent().cookie(expired_cookie()).finish())
}

pub async fn current(
    auth: Authenticated,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let vault = state.vault.clone();
    let account_id = auth.account_id;
    let email = state
        .db
        .read(move |conn| accounts::email_of(conn, &vault, account_id).map_err(ApiError::internal))
        .await?
        .ok_or_else(ApiError::authentication_failed)?;
    let reauth_until = (auth.reauth_until > state.clock.unix())
        .then(|| time::OffsetDateTime::from_unix_timestamp(auth.reauth_until).ok())
        .flatten()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"email": email, "csrf_token": auth.csrf_token, "reauth_until": reauth_until})))
}
