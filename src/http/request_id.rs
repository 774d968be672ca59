//! Request ids: kept from the client's `X-Request-ID` when it is a sane id, otherwise generated;
//! echoed on the response, put in every log line of the request and in every error body.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled, stored in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request this task is serving, or `-` outside a request.
pub fn current() -> String {
    CURRENT
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// A client-supplied id is kept when it is 1-64 characters of `[A-Za-z0-9._:-]`: enough for
/// UUIDs, ULIDs and trace ids, too little to smuggle a header or a log line.
fn sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A random (v4) UUID from the thread's user-space generator: a request id must be unique, not
/// secret, and `Uuid::new_v4` would make a `getrandom` system call on every request.
fn new_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(str::to_owned)
        .unwrap_or_else(new_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut res = CURRENT
        .scope(id.clone(), next.call(req).instrument(span))
        .await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::{new_id, sane};

    #[test]
    fn generated_ids_are_distinct_v4_uuids_and_sane() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let parsed = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert!(sane(&id));
        }
    }

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        assert!(sane("3f0c1a4e-5b6d-4c2b-9d7e-1a2b3c4d5e6f"));
        assert!(sane("01HZX.trace:42_a-b"));
        assert!(!sane(""));
        assert!(!sane("a b"));
        assert!(!sane("x\r\nSet-Cookie: a=b"));
        assert!(!sane(&"a".repeat(65)));
    }
}
