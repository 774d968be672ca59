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

use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(crate::dashboard::configure);
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
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
                .route("/keys", web::post().to(keys::add))
                .route("/keys", web::get().to(keys::list))
                .route("/keys/export", web::get().to(keys::export))
                .route("/keys/{id}", web::put().to(keys::rotate))
                .route("/keys/{id}", web::delete().to(keys::delete))
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
