//! Sign-up and its confirmation, sign-in, sign-out, the current session, re-authentication and password change
//! (`/api/v1/auth/...`).

use std::net::IpAddr;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::password::{self, PasswordError, Verdict};
use crate::accounts::signup::SignupPolicy;
use crate::accounts::signup::{self, SignupToken};
use crate::accounts::throttle::RetryAfter;
use crate::accounts::{self, invite, oauth, reset, session, Email};
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

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignupBody {
    email: String,
    #[schema(value_type = String, format = Password)]
    password: SecretString,
    /// The `kbi_...` invite the operator made for this address (`KEYBROKER_SIGNUP=invite` only).
    #[schema(value_type = Option<String>, format = Password)]
    #[serde(default)]
    invite: Option<SecretString>,
}

/// What the login page and a session-starting answer say when the browser will drop the
/// session cookie (plain HTTP from off loopback; see `ClientAddr::drops_secure_cookies`).
pub const INSECURE_TRANSPORT_WARNING: &str = "this request reached keybroker over plain HTTP from     another machine, so your browser will drop the session cookie (it is Secure, as it must be)     and signing in will not stick; the operator must serve HTTPS (serve --tls-cert/--tls-key) or     put a TLS reverse proxy in front (serve --trusted-proxy)";

/// [`INSECURE_TRANSPORT_WARNING`] when it applies to this request.
pub fn insecure_transport_warning(req: &HttpRequest) -> Option<&'static str> {
    crate::http::client_addr::ClientAddr::of(req)
        .drops_secure_cookies()
        .then_some(INSECURE_TRANSPORT_WARNING)
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
/// with the cookie and the CSRF token, and a `warning` when the browser will drop the cookie.
async fn start_session(
    state: &AppState,
    account_id: i64,
    email: String,
    ctx: RequestContext,
    action: &'static str,
    status: StatusCode,
    warning: Option<&'static str>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.unix();
    let (id, _) = state
        .db
        .write(move |conn| -> Result<_, ApiError> {
            let tx = conn;
            let created = session::create(tx, account_id, now, &ctx.user_agent, &ctx.client_addr)?;
            accounts::operator::record_sign_in(tx, account_id, now)?;
            audit::append(
                tx,
                &event(Some(account_id), action, &ctx, Outcome::Success, now),
            )?;
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
        .json(match warning {
            Some(w) => json!({"email": email, "csrf_token": csrf, "warning": w}),
            None => json!({"email": email, "csrf_token": csrf}),
        }))
}

/// What every sign-up answers once its input is valid, whatever the address turned out to be:
/// new, an account's already (confirmed or not), or a lookalike of one. Same status, headers and
/// bytes; no cookie in any case. What happened is told only by mail, to the address itself.
/// Without SMTP the answer also names the outbox folder: that depends on configuration only.
fn signup_accepted(outbox: Option<&str>) -> HttpResponse {
    let body = match outbox {
        None => json!({
            "status": "accepted",
            "message": "check your mail: the next step is in a message to this address",
        }),
        Some(dir) => json!({
            "status": "accepted",
            "message": signup_outbox_message(dir),
            "outbox": dir,
        }),
    };
    HttpResponse::build(StatusCode::ACCEPTED)
        .insert_header(("Cache-Control", "no-store"))
        .json(body)
}

/// What the sign-up answer and page say when this server has no SMTP transport.
pub fn signup_outbox_message(dir: &str) -> String {
    format!(
        "check your mail: the next step is in a message to this address. This keybroker has no \
         SMTP server configured, so its mail is written to the outbox folder {dir} on the \
         server instead of being sent; its operator can open the message there, or confirm the \
         account with `keybroker accounts confirm EMAIL`"
    )
}

fn signup_closed() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "signup_closed",
        "sign-up is closed on this keybroker; ask its operator for an account",
    )
}

fn invite_required() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invite_required",
        "sign-up on this keybroker needs an invite for this address from its operator \
         (keybroker accounts invite EMAIL); the invite is missing, for another address, used or \
         expired",
    )
}

/// What a sign-up found, decided inside its one write transaction.
enum Found {
    /// A new, unconfirmed account; the confirmation token was stored.
    Created,
    /// The address has an account already.
    Existing { confirmed: bool },
    /// The address looks like another account's (same confusable skeleton, not the same address).
    Lookalike,
}

fn confirmation_mail(to: String, public_url: Option<&str>, token: &SignupToken) -> Mail {
    let how = match public_url {
        Some(base) => format!(
            "To confirm it, open this link within 24 hours and enter the password you chose:\n\n\
             {base}/signup/confirm?token={}\n",
            token.as_str()
        ),
        None => format!(
            "To confirm it, open /signup/confirm on the keybroker you signed up at within 24 \
             hours, and enter this code with the password you chose:\n\n{}\n",
            token.as_str()
        ),
    };
    Mail {
        kind: "signup_confirm",
        to,
        subject: "Confirm your keybroker account",
        body: format!(
            "Someone (hopefully you) created a keybroker account for this address.\n\n{how}\n\
             If it was not you, ignore this mail: the account cannot be used without it.\n"
        ),
    }
}

fn existing_account_mail(to: String, confirmed: bool) -> Mail {
    let body = if confirmed {
        "Someone just tried to create a keybroker account with this address, which already has \
         one. No new account was created and nothing about yours changed.\n\n\
         If it was you, sign in instead; if you forgot your password, reset it from the sign-in \
         page. If it was not you, you can ignore this mail.\n"
    } else {
        "Someone just tried to create a keybroker account with this address, which already has \
         one waiting for confirmation.\n\n\
         If you started it, use the link in the first mail we sent. If that mail is lost or \
         expired, or you did not start it, reset the password from the sign-in page: the reset \
         link confirms the account with a password of your choosing.\n"
    };
    Mail {
        kind: "signup_existing",
        to,
        subject: "Someone tried to sign up with your address",
        body: body.to_owned(),
    }
}

fn lookalike_mail(to: String) -> Mail {
    Mail {
        kind: "signup_lookalike",
        to,
        subject: "Your keybroker sign-up could not be completed",
        body: "Someone (hopefully you) tried to create a keybroker account for this address. It \
               could not be created: the address looks too much like the address of an existing \
               account (some of its characters can be mistaken for others).\n\n\
               If this address is really yours and you need an account, ask the operator of this \
               keybroker.\n"
            .to_owned(),
    }
}

#[utoipa::path(
    post, path = "/api/v1/auth/signup", tag = "auth",
    request_body = SignupBody,
    responses(
        (status = 202, description = "Always this one answer (no cookie), whether the address is new, has an account already, or looks like an account's address. A new account must be confirmed with the mailed link (POST /api/v1/auth/signup/confirm); the owner of an existing address is told by mail. Without SMTP, `outbox` names the server folder mail is written to", body = crate::openapi::SignupAccepted),
        (status = 400, description = "invalid_email, email_lookalike (the address mixes scripts within one part), password_too_short, password_too_long, invalid_json", body = crate::openapi::ErrorBody),
        (status = 403, description = "signup_closed (KEYBROKER_SIGNUP=closed), invite_required (KEYBROKER_SIGNUP=invite and no valid invite for this address)", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_attempts (Retry-After)", body = crate::openapi::ErrorBody),
    )
)]
/// Signs an address up. The answer is the same whatever the address turns out to be, and so is
/// the work behind it: one argon2 hash, one write transaction with an audit entry, one queued
/// mail. See ARCHITECTURE.md, "Sign-up".
pub async fn signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<SignupBody>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    // Configuration alone decides this, so the refusal says nothing about any account.
    if state.signup_policy == SignupPolicy::Closed {
        return Err(signup_closed());
    }
    let ctx = RequestContext::of(&req);
    let SignupBody {
        email,
        password: pw,
        invite,
    } = body.into_inner();
    let email = parse_email(&email)?;
    // Under `invite`: the invite and the address decide, never whether an account exists.
    let invite_hash = match state.signup_policy {
        SignupPolicy::Invite => Some(
            invite
                .as_ref()
                .and_then(|i| invite::hash_presented(i.expose_secret()))
                .ok_or_else(invite_required)?,
        ),
        _ => None,
    };
    // Decided from the address alone, so it says nothing about other accounts.
    if email.mixes_scripts() {
        return Err(ApiError::bad_request(
            "email_lookalike",
            "the address mixes alphabets within one part (for example a Cyrillic letter among \
             Latin ones); type it exactly as your mail provider spells it",
        ));
    }
    password::validate(&pw).map_err(password_error)?;
    let email_hash = state.emails.hash(&email);
    state
        .signup_throttle
        .check(&email_hash, client_ip(&ctx))
        .map_err(throttled)?;
    if let Some(invite_hash) = invite_hash {
        // A cheap look before the argon2 run; the redemption in the transaction decides.
        let now = state.clock.unix();
        let ok = state
            .db
            .read(move |conn| {
                invite::is_redeemable(conn, &invite_hash, &email_hash, now).map_err(ApiError::from)
            })
            .await?;
        if !ok {
            return Err(invite_required());
        }
    }
    // Hashed whatever the address turns out to be, before it is looked up: an existing address
    // costs the same argon2 run as a new one.
    let phc = state
        .passwords
        .run(move || password::hash(&pw))
        .await?
        .map_err(password_error)?;
    let token = SignupToken::generate();
    let token_hash = token.hash();
    let (vault, hasher, now) = (
        state.vault.clone(),
        state.emails.clone(),
        state.clock.unix(),
    );
    let lookup = email.clone();
    let (outbox, public_url) = (state.mail.clone(), state.public_url.clone());
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            let tx = conn;
            if let Some(invite_hash) = invite_hash {
                if !invite::redeem(tx, &invite_hash, &email_hash, now)? {
                    return Err(invite_required());
                }
            }
            let (found, account_id, action, outcome) =
                match accounts::find_by_email(tx, &hasher, &lookup)? {
                    Some(a) => (
                        Found::Existing {
                            confirmed: a.confirmed,
                        },
                        Some(a.id),
                        "signup.existing",
                        Outcome::Failure,
                    ),
                    // An ASCII address is never refused as a lookalike: ASCII confusables
                    // (`rn`/`m`, `1`/`l`) are distinct mailboxes people really have, and it is
                    // the non-ASCII imitation of an ASCII address that is the attack.
                    None if !lookup.is_ascii()
                        && accounts::lookalike_exists(tx, &hasher, &lookup)? =>
                    {
                        (Found::Lookalike, None, "signup.lookalike", Outcome::Failure)
                    }
                    None => {
                        let id = accounts::create_unconfirmed_in(
                            tx, &vault, &hasher, &lookup, &phc, now,
                        )
                        .map_err(ApiError::internal)?;
                        signup::issue(tx, id, &token_hash, now)?;
                        (Found::Created, None, "signup.request", Outcome::Success)
                    }
                };
            audit::append(tx, &event(account_id, action, &ctx, outcome, now))?;
            // Every path queues one mail, in this transaction (it commits with the token).
            let to = lookup.as_str().to_owned();
            let mail = match found {
                Found::Created => confirmation_mail(to, public_url.as_deref(), &token),
                Found::Existing { confirmed } => existing_account_mail(to, confirmed),
                Found::Lookalike => lookalike_mail(to),
            };
            outbox.queue(tx, &mail, now);
            Ok(())
        })
        .await?;
    state.mail.wake();
    Ok(signup_accepted(state.mail_outbox.as_deref()))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignupConfirm {
    /// The `kbs_...` token from the confirmation mail.
    #[schema(value_type = String, format = Password)]
    token: SecretString,
    /// The password chosen at sign-up.
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

fn invalid_confirmation() -> ApiError {
    ApiError::bad_request(
        "invalid_token",
        "the confirmation link is invalid, already used or expired; reset your password from the \
         sign-in page to confirm the account instead",
    )
}

#[utoipa::path(
    post, path = "/api/v1/auth/signup/confirm", tag = "auth",
    request_body = SignupConfirm,
    responses(
        (status = 201, description = "Account confirmed and signed in; sets the session cookie", body = crate::openapi::SignedIn),
        (status = 400, description = "invalid_token, invalid_json", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed (not the password chosen at sign-up)", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_attempts (Retry-After)", body = crate::openapi::ErrorBody),
    )
)]
/// Confirms a sign-up with the mailed token and the password chosen at sign-up, and signs in.
/// The token proves the mailbox; the password proves the confirmer is who signed up, so the owner
/// of an address can never be made to confirm a password someone else chose.
pub async fn confirm_signup(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<SignupConfirm>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let ctx = RequestContext::of(&req);
    let SignupConfirm {
        token,
        password: pw,
    } = body.into_inner();
    let token_hash =
        signup::hash_presented(token.expose_secret()).ok_or_else(invalid_confirmation)?;
    let now = state.clock.unix();
    // A cheap look first, so a made-up token costs no argon2 run; the redemption below decides.
    let (account_id, stored) = state
        .db
        .read(move |conn| signup::pending(conn, &token_hash, now).map_err(ApiError::from))
        .await?
        .ok_or_else(invalid_confirmation)?;
    // Per token only: a valid token names one account, so there is no spraying across accounts
    // for a per-client limit to stop.
    state
        .login_throttle
        .check(&token_hash, None)
        .map_err(throttled)?;
    let verdict = state
        .passwords
        .run(move || password::verify(&pw, stored.as_deref()))
        .await?;
    if !matches!(verdict, Verdict::Valid { .. }) {
        return Err(ApiError::authentication_failed());
    }
    let vault = state.vault.clone();
    let email = state
        .db
        .write(move |conn| -> Result<Option<String>, ApiError> {
            let tx = conn;
            if signup::redeem(tx, &token_hash, now)? != Some(account_id) {
                return Ok(None);
            }
            accounts::confirm(tx, account_id, now)?;
            let email = accounts::email_of(tx, &vault, account_id).map_err(ApiError::internal)?;
            Ok(email)
        })
        .await?
        .ok_or_else(invalid_confirmation)?;
    start_session(
        &state,
        account_id,
        email,
        ctx,
        "signup",
        StatusCode::CREATED,
        insecure_transport_warning(&req),
    )
    .await
}

#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in; sets the session cookie. `warning` says why the browser will drop it when the request came over plain HTTP from another machine", body = crate::openapi::SignedIn),
        (status = 400, description = "invalid_json", body = crate::openapi::ErrorBody),
        (status = 401, description = "authentication_failed (a disabled or unconfirmed account answers exactly as an unknown address)", body = crate::openapi::ErrorBody),
        (status = 429, description = "too_many_attempts (Retry-After)", body = crate::openapi::ErrorBody),
    )
)]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: crate::http::json::ApiJson<Credentials>,
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
                    crate::params![phc, account_id],
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
        insecure_transport_warning(&req),
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
            let tx = conn;
            session::revoke(tx, &auth.session_hash)?;
            audit::append(
                tx,
                &event(
                    Some(auth.account_id),
                    "logout",
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
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
    body: crate::http::json::ApiJson<ReauthBody>,
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
            let tx = conn;
            if ok {
                session::set_reauth(tx, &auth.session_hash, until)?;
            }
            let outcome = if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            audit::append(
                tx,
                &event(Some(account_id), "reauth", &auth.ctx, outcome, now),
            )?;
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
    body: crate::http::json::ApiJson<ChangePassword>,
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
    let (vault, outbox) = (state.vault.clone(), state.mail.clone());
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            let tx = conn;
            accounts::set_password(tx, account_id, &phc)?;
            session::revoke_others(tx, account_id, &auth.session_hash)?;
            reset::revoke_all(tx, account_id)?;
            audit::append(
                tx,
                &event(
                    Some(account_id),
                    "password.change",
                    &auth.ctx,
                    Outcome::Success,
                    now,
                ),
            )?;
            if let Some(to) =
                accounts::email_of(tx, &vault, account_id).map_err(ApiError::internal)?
            {
                outbox.queue(tx, &password_changed_mail(to), now);
            }
            Ok(())
        })
        .await?;
    state.mail.wake();
    Ok(HttpResponse::NoContent().finish())
}

/// Tells the owner that the password changed.
fn password_changed_mail(to: String) -> Mail {
    Mail {
        kind: "password_changed",
        to,
        subject: "Your keybroker password was changed",
        body: "The password of your keybroker account was just changed, and every other \
               signed-in session was signed out.\n\nIf this was not you, reset your password \
               at once and review your account's audit log.\n"
            .to_owned(),
    }
}
