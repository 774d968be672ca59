//! OAuth sign-in pages (`GET /auth/oauth/{provider}/start` and `.../callback`: a browser flow of
//! redirects, answered in HTML) and unlinking (`DELETE /api/v1/auth/oauth/{provider}`).
//!
//! The callback answers a small HTML page that refreshes to `/` rather than a 303: the session
//! cookie is `SameSite=Strict`, and browsers treat a redirect chain that began at the provider as
//! cross-site, so the dashboard's first load after a 303 would arrive without the new cookie.

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::accounts::oauth::{self, OAuthError, Prelogin, Provider, PRELOGIN_COOKIE};
use crate::accounts::signup::SignupPolicy;
use crate::accounts::{self, session};
use crate::audit::{self, Outcome};
use crate::error::ApiError;
use crate::http::auth::{Authenticated, RequestContext};
use crate::routes::auth::{event, session_cookie};
use crate::startup::AppState;

/// Why a sign-in page could not continue: a status and a sentence for the person in front of it.
struct Failure {
    status: StatusCode,
    message: &'static str,
}

fn fail(status: StatusCode, message: &'static str) -> Failure {
    Failure { status, message }
}

fn internal(cause: impl std::fmt::Display) -> Failure {
    tracing::error!(error = %cause, "internal error during OAuth sign-in");
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong on our side. Please try again.",
    )
}

impl From<crate::db::DbError> for Failure {
    fn from(e: crate::db::DbError) -> Self {
        internal(e)
    }
}

/// Only our own constant text goes into these pages, never request input.
fn page(status: StatusCode, title: &str, body: &str, refresh_to: Option<&str>) -> HttpResponse {
    let refresh = refresh_to
        .map(|to| format!(r#"<meta http-equiv="refresh" content="0;url={to}">"#))
        .unwrap_or_default();
    let link = refresh_to
        .map(|to| format!(r#"<p><a href="{to}">Continue</a></p>"#))
        .unwrap_or_else(|| r#"<p><a href="/">Back to keybroker</a></p>"#.to_owned());
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; base-uri 'none'; form-action 'none'",
        ))
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}<title>{title}</title></head>\
             <body><h1>{title}</h1><p>{body}</p>{link}</body></html>"
        ))
}

fn failure_page(f: Failure) -> HttpResponse {
    page(f.status, "Sign-in failed", f.message, None)
}

fn prelogin_cookie(value: String) -> Cookie<'static> {
    Cookie::build(PRELOGIN_COOKIE, value)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(CookieDuration::seconds(oauth::STATE_TTL_SECS))
        .finish()
}

fn expired_prelogin_cookie() -> Cookie<'static> {
    let mut c = prelogin_cookie(String::new());
    c.make_removal();
    c
}

fn configured<'a>(
    state: &'a AppState,
    provider: &str,
) -> Result<
    (
        Provider,
        &'a crate::accounts::oauth::OAuthClientSettings,
        &'a str,
    ),
    Failure,
> {
    let not_here = || {
        fail(
            StatusCode::NOT_FOUND,
            "Sign-in with this provider is not set up here.",
        )
    };
    let provider = Provider::parse(provider).ok_or_else(not_here)?;
    let settings = provider.settings(&state.oauth).ok_or_else(not_here)?;
    let base = state.public_url.as_deref().ok_or_else(|| {
        fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in with a provider needs KEYBROKER_PUBLIC_URL to be configured.",
        )
    })?;
    Ok((provider, settings, base))
}

fn redirect_uri(base: &str, provider: Provider) -> String {
    format!("{base}/auth/oauth/{}/callback", provider.as_str())
}

#[utoipa::path(
    get, path = "/auth/oauth/{provider}/start", tag = "auth",
    params(("provider" = String, Path, description = "github or google")),
    responses(
        (status = 303, description = "To the provider's consent page"),
        (status = 404, description = "Not a configured provider (HTML page)"),
        (status = 503, description = "OAuth is not available: no public URL (HTML page)"),
    )
)]
pub async fn start(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    match start_inner(&state, &path).await {
        Ok(res) => res,
        Err(f) => failure_page(f),
    }
}

async fn start_inner(state: &AppState, provider: &str) -> Result<HttpResponse, Failure> {
    let (provider, settings, base) = configured(state, provider)?;
    let prelogin = Prelogin::generate();
    let oauth_state = oauth::new_state();
    let verifier = prelogin.pkce_verifier(&state.session_secret, &oauth_state);
    let url = oauth::authorize_url(
        provider,
        settings,
        &redirect_uri(base, provider),
        &oauth_state,
        &verifier,
    )
    .map_err(internal)?;
    let (state_hash, prelogin_hash, now) = (
        oauth::state_hash(&oauth_state),
        prelogin.hash(),
        state.clock.unix(),
    );
    state
        .db
        .write(move |conn| oauth::save_state(conn, &state_hash, provider, &prelogin_hash, now))
        .await
        .map_err(Failure::from)?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, url))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(prelogin_cookie(
            prelogin.cookie_value(&state.session_secret),
        ))
        .finish())
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[utoipa::path(
    get, path = "/auth/oauth/{provider}/callback", tag = "auth",
    params(
        ("provider" = String, Path, description = "github or google"),
        ("code" = Option<String>, Query, description = "From the provider"),
        ("state" = Option<String>, Query, description = "From the provider"),
        ("error" = Option<String>, Query, description = "From the provider"),
    ),
    responses(
        (status = 303, description = "Signed in: to the dashboard, with the session cookie"),
        (status = 400, description = "The sign-in failed (HTML page)"),
        (status = 404, description = "Not a configured provider (HTML page)"),
    )
)]
pub async fn callback(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let mut res = match callback_inner(&req, &state, &path).await {
        Ok(res) => res,
        Err(f) => failure_page(f),
    };
    // The pre-login cookie is single use, whatever happened.
    let _ = res.add_cookie(&expired_prelogin_cookie());
    res
}

const START_AGAIN: &str = "This sign-in could not be verified or has expired. Please start again.";

async fn callback_inner(
    req: &HttpRequest,
    state: &AppState,
    provider: &str,
) -> Result<HttpResponse, Failure> {
    let (provider, settings, base) = configured(state, provider)?;
    let query = web::Query::<CallbackQuery>::from_query(req.query_string())
        .map_err(|_| fail(StatusCode::BAD_REQUEST, START_AGAIN))?
        .into_inner();
    let prelogin = req
        .cookie(PRELOGIN_COOKIE)
        .and_then(|c| Prelogin::parse_cookie(&state.session_secret, c.value()))
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, START_AGAIN))?;
    let oauth_state = query
        .state
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, START_AGAIN))?;
    let (state_hash, prelogin_hash, now) = (
        oauth::state_hash(&oauth_state),
        prelogin.hash(),
        state.clock.unix(),
    );
    let valid = state
        .db
        .write(move |conn| oauth::take_state(conn, &state_hash, provider, &prelogin_hash, now))
        .await
        .map_err(Failure::from)?;
    if !valid {
        return Err(fail(StatusCode::BAD_REQUEST, START_AGAIN));
    }
    if query.error.is_some() {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "The sign-in was cancelled or refused at the provider.",
        ));
    }
    let code = query
        .code
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, START_AGAIN))?;
    let verifier = prelogin.pkce_verifier(&state.session_secret, &oauth_state);
    let identity = async {
        let token = oauth::exchange_code(
            &state.http,
            settings,
            &redirect_uri(base, provider),
            code,
            verifier,
        )
        .await?;
        oauth::fetch_identity(&state.http, provider, settings, &token).await
    }
    .await
    .map_err(|e| {
        tracing::warn!(provider = provider.as_str(), error = %e, "OAuth sign-in failed");
        match e {
            OAuthError::NoVerifiedEmail => fail(
                StatusCode::FORBIDDEN,
                "Your account at the provider has no verified primary email address, so it \
                 cannot be used to sign in here.",
            ),
            OAuthError::Config(_) => internal(e),
            _ => fail(
                StatusCode::BAD_GATEWAY,
                "The provider did not complete the sign-in. Please try again.",
            ),
        }
    })?;

    let ctx = RequestContext::of(req);
    let (vault, hasher) = (state.vault.clone(), state.emails.clone());
    let signup = state.signup_policy;
    let (id, _) = state
        .db
        .write(move |conn| -> Result<_, Failure> {
            let tx = conn;
            let account_id = match oauth::find_identity(tx, provider, &identity.subject, now)? {
                Some(id) => id,
                None => {
                    let (account_id, action) =
                        match accounts::find_by_email(tx, &hasher, &identity.email)? {
                            Some(a) => {
                                // The provider vouches for the address; a password someone
                                // signed it up with never was, so it does not survive.
                                if !a.confirmed {
                                    accounts::confirm_without_password(tx, a.id, now)?;
                                }
                                (a.id, "oauth.link")
                            }
                            // A new account through OAuth is a sign-up: only `open` allows
                            // it (an invite is redeemed with a password sign-up).
                            None if signup != SignupPolicy::Open => {
                                return Err(fail(
                                    StatusCode::FORBIDDEN,
                                    "This keybroker does not let new accounts sign up this way; \
                                     ask its operator for an account.",
                                ));
                            }
                            None => (
                                accounts::create_confirmed_in(
                                    tx,
                                    &vault,
                                    &hasher,
                                    &identity.email,
                                    None,
                                    now,
                                )
                                .map_err(internal)?,
                                "signup.oauth",
                            ),
                        };
                    if !oauth::link(tx, provider, &identity.subject, account_id, now)? {
                        return Err(fail(
                            StatusCode::CONFLICT,
                            "The keybroker account with this email is already linked to a \
                             different user of this provider.",
                        ));
                    }
                    audit::append(
                        tx,
                        &audit::Event {
                            resource: provider.as_str(),
                            ..event(Some(account_id), action, &ctx, Outcome::Success, now)
                        },
                    )?;
                    account_id
                }
            };
            if accounts::operator::is_disabled(tx, account_id)? {
                return Err(fail(
                    StatusCode::FORBIDDEN,
                    "This keybroker account is disabled; ask its operator.",
                ));
            }
            let created = session::create(tx, account_id, now, &ctx.user_agent, &ctx.client_addr)?;
            accounts::operator::record_sign_in(tx, account_id, now)?;
            audit::append(
                tx,
                &audit::Event {
                    resource: provider.as_str(),
                    ..event(Some(account_id), "login.oauth", &ctx, Outcome::Success, now)
                },
            )?;
            Ok(created)
        })
        .await?;
    let mut res = page(
        StatusCode::OK,
        "Signed in",
        "You are signed in to keybroker.",
        Some("/"),
    );
    res.add_cookie(&session_cookie(session::cookie_value(
        &state.session_secret,
        &id,
    )))
    .map_err(internal)?;
    Ok(res)
}

#[utoipa::path(
    delete, path = "/api/v1/auth/oauth/{provider}", tag = "auth",
    params(("provider" = String, Path, description = "github or google")),
    responses(
        (status = 204, description = "Unlinked"),
        (status = 403, description = "reauth_required, csrf", body = crate::openapi::ErrorBody),
        (status = 404, description = "not_found", body = crate::openapi::ErrorBody),
        (status = 409, description = "last_sign_in_method", body = crate::openapi::ErrorBody),
    ),
    security(("session" = [], "csrf" = []))
)]
/// Unlinks a provider from the signed-in account. Needs a recent reauth, and refuses to remove
/// the last way to sign in (an account with no password and no other provider).
pub async fn unlink(
    auth: Authenticated,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let provider = Provider::parse(&path).ok_or_else(ApiError::not_found)?;
    let now = state.clock.unix();
    auth.require_recent_auth(now)?;
    let account_id = auth.account_id;
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            let tx = conn;
            let linked = oauth::providers_of(tx, account_id)?;
            if !linked.iter().any(|p| p == provider.as_str()) {
                return Err(ApiError::not_found());
            }
            let has_password = accounts::credentials_of(tx, account_id)?
                .is_some_and(|(hash, _)| hash.is_some());
            if !has_password && linked.len() == 1 {
                return Err(ApiError::conflict(
                    "last_sign_in_method",
                    "this is the account's only way to sign in; set a password (via password reset) or link another provider first",
                ));
            }
            oauth::unlink(tx, account_id, provider)?;
            audit::append(
                tx,
                &audit::Event {
                    resource: provider.as_str(),
                    ..event(
                        Some(account_id),
                        "oauth.unlink",
                        &auth.ctx,
                        Outcome::Success,
                        now,
                    )
                },
            )?;
            Ok(())
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
