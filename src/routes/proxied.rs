//! The proxy route as registered: [`proxy::proxy`](crate::proxy::proxy) plus its bookkeeping
//! for `/metrics` (each call's outcome by provider, and the streamed responses in progress), kept
//! out of the proxy's own code.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::metrics::{ActiveStream, ProxyOutcome};
use crate::startup::AppState;

/// `ANY /proxy/{provider}/{path...}`; documented in `openapi`.
pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<crate::proxy::UpstreamClient>,
) -> Result<HttpResponse, ApiError> {
    // A registry id, never what the client typed: that would let clients mint label values.
    let provider = state
        .providers
        .lookup(req.match_info().get("provider").unwrap_or(""))
        .map_or("other", |p| p.id);
    let metrics = state.metrics.clone();
    match crate::proxy::proxy(req, payload, state, client).await {
        Ok(res) if res.status().is_client_error() || res.status().is_server_error() => {
            metrics.proxy_call(provider, ProxyOutcome::UpstreamError);
            Ok(res)
        }
        Ok(res) => {
            metrics.proxy_call(provider, ProxyOutcome::Ok);
            let stream = metrics.stream_started();
            Ok(res
                .map_body(|_, body| Counted {
                    body,
                    _stream: stream,
                })
                .map_into_boxed_body())
        }
        Err(e) => {
            metrics.proxy_call(provider, ProxyOutcome::of_error(e.kind()));
            Err(e)
        }
    }
}

/// A response body that counts as an active stream until it is dropped.
struct Counted {
    body: BoxBody,
    _stream: ActiveStream,
}

impl MessageBody for Counted {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
