//! A deadline for receiving a request body. actix bounds the time to receive a request head
//! (`client_request_timeout`) but not the body: a client trickling its body a byte at a time, or
//! sending a chunked body that never ends, would hold its connection (and, on the proxy, one of
//! its account's in-flight slots) for as long as it liked. Past the deadline the body stream
//! fails with a timed-out I/O error, which the JSON extractor and the proxy answer with 408.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage as _;
use futures_util::Stream;

use crate::startup::AppState;

pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let has_body =
        req.headers().contains_key(CONTENT_LENGTH) || req.headers().contains_key(TRANSFER_ENCODING);
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.body_timeout);
    if let (true, Some(limit)) = (has_body, limit) {
        let inner = req.take_payload();
        let stream = Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(stream),
        });
    }
    next.call(req).await
}

/// Whether a body error is this deadline passing.
pub fn is_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}

struct Deadline {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request body did not arrive in time",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The default deadline: long enough for the largest proxied upload on a slow link.
pub const DEFAULT: Duration = Duration::from_secs(120);
