//! Request authentication for the dashboard API: the [`Authenticated`] extractor loads the
//! session named by the signed cookie, enforces its timeouts, and for state-changing methods
//! requires the session's CSRF token in `X-CSRF-Token` and a same-origin `Origin` when present.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::Method;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use crate::accounts::session::{self, SessionRow};
use crate::error::ApiError;
use crate::http::client_addr::{own_origin, ClientAddr};
use crate::http::request_id::RequestId;
use crate::startup::AppState;

pub const CSRF_HEADER: &str = "x-csrf-token";

/// A signed-in user's request.
#[derive(Debug)]
pub struct Authenticated {
    pub account_id: i64,
    pub session_public_id: String,
    pub session_hash: [u8; 32],
    pub csrf_token: String,
    pub reauth_until: i64,
    pub ctx: RequestContext,
}

impl Authenticated {
    /// Sensitive actions need a password re-entered within the last ten minutes.
    pub fn require_recent_auth(&self, now: i64) -> Result<(), ApiError> {
        if now < self.reauth_until {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "reauth_required",
                "confirm your password (POST /api/v1/auth/reauth) and try again",
            ))
        }
    }
}

/// Who is asking, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub client_addr: String,
    pub user_agent: String,
}

impl RequestContext {
    pub fn of(req: &HttpRequest) -> Self {
        Self {
            request_id: req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            // X-Forwarded-For is believed only from a configured trusted proxy.
            client_addr: ClientAddr::of(req).ip_string(),
            user_agent: req
                .headers()
                .get(actix_web::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        }
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A state-changing request whose `Origin` names another site is refused.
pub fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if is_safe(req.method()) {
        return Ok(());
    }
    let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let allowed = match &state.public_url {
        Some(url) => origin_of(url).is_some_and(|o| o.eq_ignore_ascii_case(origin)),
        None => own_origin(req).eq_ignore_ascii_case(origin),
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden("csrf", "cross-origin request refused"))
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{host}"))
}

async fn authenticate(req: HttpRequest) -> Result<Authenticated, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("application state missing"))?;
    let cookie = req
        .cookie(session::COOKIE_NAME)
        .ok_or_else(ApiError::authentication_failed)?;
    let id = session::parse_cookie(&state.session_secret, cookie.value())
        .ok_or_else(ApiError::authentication_failed)?;
    let now = state.clock.unix();
    let id_hash = id.hash();
    let row: Option<SessionRow> = state
        .db
        .read(move |conn| session::load(conn, &id_hash))
        .await?;
    let row = row.ok_or_else(ApiError::authentication_failed)?;
    if row.expired(now) {
        state
            .db
            .write(move |conn| session::revoke(conn, &id_hash))
            .await?;
        return Err(ApiError::authentication_failed());
    }
    check_origin(&req, &state)?;
    if !is_safe(req.method()) {
        let presented = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !session::csrf_matches(&state.session_secret, &id, presented) {
            return Err(ApiError::forbidden("csrf", "missing or wrong X-CSRF-Token"));
        }
    }
    if row.needs_touch(now) {
        state
            .db
            .write(move |conn| session::touch(conn, &id_hash, now))
            .await?;
    }
    Ok(Authenticated {
        account_id: row.account_id,
        session_public_id: row.public_id,
        session_hash: id_hash,
        csrf_token: session::csrf_token(&state.session_secret, &id),
        reauth_until: row.reauth_until,
        ctx: RequestContext::of(&req),
    })
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Box::pin(authenticate(req.clone()))
    }
}
