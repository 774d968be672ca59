//! Every HTTP route, registered in one place. The JSON API, health, metrics, discovery and the
//! proxy come from one table ([`API_ROUTES`]): the same macro invocation registers each entry with
//! actix and lists it, and a test checks that list against `/openapi.json` both ways. The
//! dashboard's HTML pages are registered by `dashboard::configure` and are not part of the API.

pub mod audit;
pub mod auth;
pub mod discovery;
pub mod estimate;
pub mod health;
pub mod keys;
pub mod oauth;
pub mod password_reset;
pub mod proxied;
pub mod sessions;
pub mod spend;
pub mod tokens;
pub mod webhook;

use actix_web::http::Method;
use actix_web::{guard, web, Resource};

use crate::error::{extractors, ApiError};

/// Largest body the key routes read (a key itself is refused above 4 KiB with `invalid_key`).
const KEY_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// One registered route: its method (`ANY` for the proxy) and its actix path pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRoute {
    pub method: &'static str,
    pub path: &'static str,
}

/// Declares the route table: `METHOD "path" => handler [, app_data];`. Expands to [`API_ROUTES`]
/// and to `register_api`, which adds one resource per entry (guarded by its method, so two
/// entries may share a path) and then, per path, a fallback answering 405 in our JSON shape.
macro_rules! route_table {
    ($($method:ident $path:literal => $handler:path $(, $data:expr)?;)*) => {
        /// Every route `register_api` adds, in registration order.
        pub const API_ROUTES: &[ApiRoute] = &[
            $(ApiRoute { method: stringify!($method), path: $path },)*
        ];

        fn register_api(cfg: &mut web::ServiceConfig) {
            $(
                cfg.service(
                    resource(stringify!($method), $path)
                        $(.app_data($data))?
                        .to($handler),
                );
            )*
            $(
                cfg.service(web::resource($path).to(method_not_allowed));
            )*
        }
    };
}

route_table! {
    // The router tries resources in order; the proxy is the hot path, so it goes first (no other
    // path starts with /proxy/).
    ANY "/proxy/{provider}" => proxied::proxy;
    ANY "/proxy/{provider}/{tail:.*}" => proxied::proxy;
    GET "/healthz" => health::healthz;
    GET "/readyz" => health::readyz;
    GET "/metrics" => health::metrics;
    GET "/openapi.json" => discovery::openapi;
    GET "/.well-known/security.txt" => discovery::security_txt;
    GET "/security.txt" => discovery::legacy_security_txt;
    POST "/api/v1/auth/signup" => auth::signup;
    POST "/api/v1/auth/signup/confirm" => auth::confirm_signup;
    POST "/api/v1/auth/login" => auth::login;
    POST "/api/v1/auth/logout" => auth::logout;
    GET "/api/v1/auth/session" => auth::current;
    POST "/api/v1/auth/reauth" => auth::reauth;
    POST "/api/v1/auth/password" => auth::change_password;
    POST "/api/v1/auth/password-reset" => password_reset::request;
    POST "/api/v1/auth/password-reset/confirm" => password_reset::confirm;
    GET "/api/v1/auth/sessions" => sessions::list;
    DELETE "/api/v1/auth/sessions/{id}" => sessions::revoke;
    DELETE "/api/v1/auth/oauth/{provider}" => oauth::unlink;
    // Key bodies may be larger than the API's 64 KiB, so an oversized key gets its own clear 400
    // (`invalid_key`) rather than a generic 413.
    POST "/api/v1/keys" => keys::add, extractors::json_config(KEY_BODY_LIMIT);
    GET "/api/v1/keys" => keys::list;
    GET "/api/v1/keys/export" => keys::export;
    PUT "/api/v1/keys/{id}" => keys::rotate, extractors::json_config(KEY_BODY_LIMIT);
    DELETE "/api/v1/keys/{id}" => keys::delete;
    POST "/api/v1/keys/{id}/reveal" => keys::reveal;
    POST "/api/v1/tokens" => tokens::create;
    GET "/api/v1/tokens" => tokens::list;
    POST "/api/v1/tokens/children" => tokens::create_child;
    DELETE "/api/v1/tokens/children/{id}" => tokens::revoke_child;
    PATCH "/api/v1/tokens/{id}" => tokens::update;
    DELETE "/api/v1/tokens/{id}" => tokens::revoke;
    POST "/api/v1/tokens/{id}/reset" => tokens::reset;
    POST "/api/v1/estimate" => estimate::estimate;
    GET "/api/v1/audit" => audit::list;
    GET "/api/v1/ceilings" => spend::list_ceilings;
    PUT "/api/v1/ceilings/{provider}" => spend::put_ceiling;
    DELETE "/api/v1/ceilings/{provider}" => spend::delete_ceiling;
    POST "/api/v1/ceilings/{provider}/reset" => spend::reset_ceiling;
    GET "/api/v1/usage" => spend::usage;
    GET "/api/v1/prices" => spend::prices;
    PUT "/api/v1/webhook" => webhook::put;
    GET "/api/v1/webhook" => webhook::get;
    DELETE "/api/v1/webhook" => webhook::delete;
    POST "/api/v1/webhook/test" => webhook::test;
    GET "/auth/oauth/{provider}/start" => oauth::start;
    GET "/auth/oauth/{provider}/callback" => oauth::callback;
}

/// A resource for `path` that only `method` reaches (`ANY`: every method). A `GET` route also
/// answers `HEAD` (RFC 9110 §9.3.2: the same headers, no body; actix leaves the body out).
fn resource(method: &str, path: &str) -> Resource {
    let r = web::resource(path);
    match Method::from_bytes(method.as_bytes()) {
        Ok(Method::GET) => r.guard(guard::Any(guard::Get()).or(guard::Head())),
        Ok(m) if method != "ANY" => r.guard(guard::Method(m)),
        _ => r,
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(register_api);
    cfg.configure(crate::dashboard::configure);
}

pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found())
}

/// The path exists, the method does not: 405 with `Allow` (RFC 9110 §15.5.6) from the table.
pub async fn method_not_allowed(req: actix_web::HttpRequest) -> actix_web::HttpResponse {
    use actix_web::ResponseError as _;
    let pattern = req.match_pattern();
    let allow: Vec<&str> = API_ROUTES
        .iter()
        .filter(|r| Some(r.path) == pattern.as_deref())
        .flat_map(|r| match r.method {
            "GET" => &["GET", "HEAD"][..],
            _ => std::slice::from_ref(&r.method),
        })
        .copied()
        .collect();
    let mut res = ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept this method",
    )
    .error_response();
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&allow.join(", ")) {
        res.headers_mut().insert(actix_web::http::header::ALLOW, v);
    }
    res
}
