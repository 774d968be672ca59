//! Sign-up, sign-in, sign-out, the current session, re-authentication and password change
//! (`/api/v1/auth/...`).

use std::net::IpAddr;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::accounts::password::{self, PasswordError, Verdict};
use crate::accounts::throttle::RetryAfter;
use crate::accounts::{self, oauth, reset, session, AccountError, Email};
use crate::audit::{self, Actor, Outcome};
use crate::error::ApiError;
use crate::http::auth::{check_origin, Authenticated, RequestContext};
use crate::mail::Mail;
use crate::startup::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    email: String,
    #[schema(value_type = String, format = Password)]
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

pub fn expired_cookie() -> Cookie<'static> {
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

/// 429 with `Retry-After`.
pub fn throttled(wait: RetryAfter) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "too many attempts; wait and try again",
    )
    .with_retry_after(wait.secs())
}

/// The client address (`http::client_addr`, as the audit log records it), for per-client throttling.
pub fn client_ip(ctx: &RequestContext) -> Option<IpAddr> {
    ctx.client_addr.parse().ok()
}

/// Unix seconds as RFC 3339, for JSON.
pub fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

pub fn parse_email(raw: &str) -> Result<Email, ApiError> {
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

#[utoipa::path(
    post, path = "/api/v1/auth/signup", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "Account created and signed in; sets the session cookie", body = crate::openapi::SignedIn),
        (status = 400, description = "invalid_email, password_too_short, password_too_long, invalid_json", body = crate::openapi::ErrorBody),
        (status = 409, description = "account_exists", body = crate::openapi::ErrorBody),
    )
)]
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
    let phc = state
        .passwords
        .run(move || password::hash(&pw))
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

#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in; sets the session cookie", body = crate::openapi::SignedIn),
        (status = 400, description = "invalid_json", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_attempts (Retry-After)", body = crate::openapi::ErrorBody),
    )
)]
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
    // Before any lookup or hashing: a throttled guess costs us nothing and learns nothing.
    state
        .login_throttle
        .check(&state.emails.hash(&email), client_ip(&ctx))
        .map_err(throttled)?;
    let hasher = state.emails.clone();
    let lookup = email.clone();
    let account = state
        .db
        .read(move |conn| accounts::find_by_email(conn, &hasher, &lookup).map_err(ApiError::from))
        .await?;
    let stored = account.as_ref().and_then(|a| a.password_hash.clone());
    let (verdict, pw) = state
        .passwords
        .run(move || (password::verify(&pw, stored.as_deref()), pw))
        .await?;
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
        let phc = state
            .passwords
            .run(move || password::hash(&pw))
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

#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out; the cookie is cleared"),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
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

#[utoipa::path(
    get, path = "/api/v1/auth/session", tag = "auth",
    responses(
        (status = 200, description = "The signed-in account", body = crate::openapi::CurrentSession),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
    ),
    security(("session" = []))
)]
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
    let providers = state
        .db
        .read(move |conn| oauth::providers_of(conn, account_id).map_err(ApiError::from))
        .await?;
    let reauth_until = (auth.reauth_until > state.clock.unix())
        .then(|| rfc3339(auth.reauth_until))
        .flatten();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "email": email,
            "csrf_token": auth.csrf_token,
            "reauth_until": reauth_until,
            "oauth_providers": providers,
        })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ReauthBody {
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

#[utoipa::path(
    post, path = "/api/v1/auth/reauth", tag = "auth",
    request_body = ReauthBody,
    responses(
        (status = 200, description = "Sensitive actions allowed for ten minutes", body = crate::openapi::ReauthUntil),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_attempts", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Checks the password again and marks this session freshly authenticated for ten minutes.
/// A wrong password answers 401 but leaves the session signed in.
pub async fn reauth(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: web::Json<ReauthBody>,
) -> Result<HttpResponse, ApiError> {
    let pw = body.into_inner().password;
    let account_id = auth.account_id;
    let (stored, email_hash) = state
        .db
        .read(move |conn| accounts::credentials_of(conn, account_id).map_err(ApiError::from))
        .await?
        .ok_or_else(ApiError::authentication_failed)?;
    state
        .login_throttle
        .check(&email_hash, client_ip(&auth.ctx))
        .map_err(throttled)?;
    let verdict = state
        .passwords
        .run(move || password::verify(&pw, stored.as_deref()))
        .await?;
    let now = state.clock.unix();
    let until = now + session::REAUTH_WINDOW_SECS;
    let ok = matches!(verdict, Verdict::Valid { .. });
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            let tx = conn.transaction()?;
            if ok {
                session::set_reauth(&tx, &auth.session_hash, until)?;
            }
            let outcome = if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            audit::append(
                &tx,
                &event(Some(account_id), "reauth", &auth.ctx, outcome, now),
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    if !ok {
        return Err(ApiError::authentication_failed());
    }
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"reauth_until": rfc3339(until)})))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ChangePassword {
    #[schema(value_type = String, format = Password)]
    current_password: SecretString,
    #[schema(value_type = String, format = Password, min_length = 12, max_length = 128)]
    new_password: SecretString,
}

#[utoipa::path(
    post, path = "/api/v1/auth/password", tag = "auth",
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Password changed; other sessions are signed out"),
        (status = 400, description = "password_too_short, password_too_long", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed", body = crate::openapi::ErrorBody),
        (status = 403, description = "csrf", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Changes the password (needs a recent reauth and the current password), signs out every other
/// session, voids outstanding reset links and sends a notification mail.
pub async fn change_password(
    auth: Authenticated,
    state: web::Data<AppState>,
    body: web::Json<ChangePassword>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.unix();
    auth.require_recent_auth(now)?;
    let ChangePassword {
        current_password,
        new_password,
    } = body.into_inner();
    password::validate(&new_password).map_err(password_error)?;
    let account_id = auth.account_id;
    let (stored, _) = state
        .db
        .read(move |conn| accounts::credentials_of(conn, account_id).map_err(ApiError::from))
        .await?
        .ok_or_else(ApiError::authentication_failed)?;
    let verdict = state
        .passwords
        .run(move || password::verify(&current_password, stored.as_deref()))
        .await?;
    if verdict == Verdict::Invalid {
        return Err(ApiError::authentication_failed());
    }
    let phc = state
        .passwords
        .run(move || password::hash(&new_password))
        .await?
        .map_err(password_error)?;
    let vault = state.vault.clone();
    let email = state
        .db
        .write(move |conn| -> Result<Option<String>, ApiError> {
            let tx = conn.transaction()?;
            accounts::set_password(&tx, account_id, &phc)?;
            session::revoke_others(&tx, account_id, &auth.session_hash)?;
            reset::revoke_all(&tx, account_id)?;
            audit::append(
                &tx,
                &event(
                    Some(account_id),
                    "password.change",
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            let email = accounts::email_of(&tx, &vault, account_id).map_err(ApiError::internal)?;
            tx.commit()?;
            Ok(email)
        })
        .await?;
    if let Some(to) = email {
        state.mail.enqueue(Mail {
            kind: "password_changed",
            to,
            subject: "Your keybroker password was changed",
            body: "The password of your keybroker account was just changed, and every other \
                   signed-in session was signed out.\n\nIf this was not you, reset your password \
                   at once and review your account's audit log.\n"
                .to_owned(),
        });
    }
    Ok(HttpResponse::NoContent().finish())
}
