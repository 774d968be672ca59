//! Every HTTP route, registered in one place.

pub mod audit;
pub mod auth;
pub mod health;
pub mod keys;
pub mod oauth;
pub mod password_reset;
pub mod sessions;
pub mod spend;
pub mod tokens;

use actix_web::web;

use crate::error::{extractors, ApiError};

/// Largest body the key routes read (a key itself is refused above 4 KiB with `invalid_key`).
const KEY_BODY_LIMIT: usize = 2 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(crate::dashboard::configure);
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .service(
            web::scope("/api/v1")
                .route("/auth/signup", web::post().to(auth::signup))
                .route("/auth/login", web::post().to(auth::login))
                .route("/auth/logout", web::post().to(auth::logout))
                .route("/auth/session", web::get().to(auth::current))
                .route("/auth/reauth", web::post().to(auth::reauth))
                .route("/auth/password", web::post().to(auth::change_password))
                .route(
                    "/auth/password-reset",
                    web::post().to(password_reset::request),
                )
                .route(
                    "/auth/password-reset/confirm",
                    web::post().to(password_reset::confirm),
                )
                .route("/auth/sessions", web::get().to(sessions::list))
                .route("/auth/sessions/{id}", web::delete().to(sessions::revoke))
                .route("/auth/oauth/{provider}", web::delete().to(oauth::unlink))
                // Key bodies may be larger than the API's 64 KiB, so an oversized key gets its own
                // clear 400 (`invalid_key`) rather than a generic 413.
                .service(
                    web::resource("/keys")
                        .app_data(extractors::json_config(KEY_BODY_LIMIT))
                        .route(web::post().to(keys::add))
                        .route(web::get().to(keys::list)),
                )
                .route("/keys/export", web::get().to(keys::export))
                .service(
                    web::resource("/keys/{id}")
                        .app_data(extractors::json_config(KEY_BODY_LIMIT))
                        .route(web::put().to(keys::rotate))
                        .route(web::delete().to(keys::delete)),
                )
                .route("/keys/{id}/reveal", web::post().to(keys::reveal))
                .route("/tokens", web::post().to(tokens::create))
                .route("/tokens", web::get().to(tokens::list))
                .route("/tokens/{id}", web::delete().to(tokens::revoke))
                .route("/audit", web::get().to(audit::list))
                .route("/ceilings", web::get().to(spend::list_ceilings))
                .route("/ceilings/{provider}", web::put().to(spend::put_ceiling))
                .route(
                    "/ceilings/{provider}",
                    web::delete().to(spend::delete_ceiling),
                )
                .route(
                    "/ceilings/{provider}/reset",
                    web::post().to(spend::reset_ceiling),
                )
                .route("/usage", web::get().to(spend::usage))
                .route("/prices", web::get().to(spend::prices)),
        )
        .route("/auth/oauth/{provider}/start", web::get().to(oauth::start))
        .route(
            "/auth/oauth/{provider}/callback",
            web::get().to(oauth::callback),
        )
        .service(
            web::resource(["/proxy/{provider}", "/proxy/{provider}/{tail:.*}"])
                .route(web::route().to(crate::proxy::proxy)),
        );
}

pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found())
}
