//! What every response carries, whichever handler (or the framework) made it: the security
//! headers, HSTS when the client's connection is HTTPS, and our JSON error body instead of the
//! framework's empty 405.

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::ResponseError;

use crate::error::ApiError;
use crate::http::client_addr::ClientAddr;
use crate::http::tls::HSTS;

/// Set when the handler did not set its own (pages send a stricter `Referrer-Policy` and their
/// own CSP). The CSP here is for anything that is not a page: it allows nothing at all.
const DEFAULTS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
];

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let https = ClientAddr::of(req.request()).https;
    let res = next.call(req).await?;
    let mut res = if is_bare_405(&res) {
        let allow = res.headers().get(header::ALLOW).cloned();
        let (req, _) = res.into_parts();
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not accept that method",
        )
        .error_response();
        if let Some(allow) = allow {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        ServiceResponse::new(req, response).map_into_right_body()
    } else {
        res.map_into_left_body()
    };
    let headers = res.headers_mut();
    for (name, value) in DEFAULTS {
        let name = HeaderName::from_static(name);
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    Ok(res)
}

/// The router's own "no route for this method" answer has no body; ours always do.
fn is_bare_405<B: MessageBody>(res: &ServiceResponse<B>) -> bool {
    res.status() == StatusCode::METHOD_NOT_ALLOWED
        && matches!(
            res.response().body().size(),
            BodySize::None | BodySize::Sized(0)
        )
}
