//! The response body of a proxied call: the provider's bytes, observed by the meter on the way,
//! passed to the client as they arrive through the call's [`redactor::ScrubStream`] (which holds
//! back at most the tail of a chunk that could still be the start of the key, and masks every
//! form of the key at its own length, so a declared `Content-Length` stays true). When the stream ends the call is settled at
//! its metered cost; when it breaks, times out or the client goes away, it is settled at what the
//! stream reported so far if that is known, else at the full reservation (fail closed).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};

use crate::metering::prices::PriceTable;
use crate::metering::sse::SseFrameFilter;
use crate::metering::usage::{self, Dialect, StreamMeter, Usage};
use crate::money::Money;
use crate::spend::writer::{CallRecord, SpendWriter};
use crate::spend::Reservation;

/// Largest non-streamed body kept aside for metering; a bigger one is settled at its reservation.
const MAX_METERED_BODY: usize = 16 * 1024 * 1024;
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// How the body is metered.
pub enum Meter {
    /// An SSE or JSON-array stream of a token-priced provider.
    Stream(Box<StreamMeter>),
    /// A whole JSON body of a token-priced provider, kept aside as it passes.
    Json {
        dialect: Dialect,
        kept: Vec<u8>,
        overflow: bool,
    },
    /// A provider priced per request: the cost is known before the body arrives.
    Fixed(Money),
}

/// Everything that must outlive the response headers and be finished when the body ends.
pub struct Settlement {
    /// When the call arrived: its latency, recorded with it, runs to the settlement.
    pub started: std::time::Instant,
    pub reservation: Option<Reservation>,
    pub meter: Option<Meter>,
    pub prices: Arc<PriceTable>,
    pub provider: &'static str,
    pub request_model: Option<String>,
    pub writer: Arc<SpendWriter>,
    pub record: CallRecord,
    /// Held for the life of the call: dropping them ends the key's registration with the redactor
    /// and frees the account's in-flight slot.
    pub guards: Vec<Box<dyn Send>>,
}

impl Settlement {
    /// The provider's answer carried the call's key; it was masked. Said once, in the log.
    fn flag_masked(&self) {
        tracing::warn!(
            provider = self.provider,
            request_id = %self.record.request_id,
            "the provider's answer carried the call's key; it was masked"
        );
    }

    fn observe(&mut self, chunk: &[u8]) {
        match &mut self.meter {
            Some(Meter::Stream(m)) => m.feed(chunk),
            Some(Meter::Json { kept, overflow, .. }) => {
                if kept.len() + chunk.len() <= MAX_METERED_BODY {
                    kept.extend_from_slice(chunk);
                } else {
                    *overflow = true;
                }
            }
            Some(Meter::Fixed(_)) | None => {}
        }
    }

    /// Settles the call. `complete` is false when the body did not arrive whole.
    fn finish(&mut self, complete: bool) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let reserved = reservation.amount();
        // (usage, its cost, whether it is the whole bill). A stream's report is the whole bill
        // only once its final usage report arrived (`StreamUsage::is_trustworthy`): a stream that
        // ends cleanly after a partial report (an Anthropic `message_start` and no
        // `message_delta`) is not charged the part alone.
        let metered: Option<(Usage, Money, bool)> = match self.meter.take() {
            Some(Meter::Stream(m)) => {
                let su = m.finish();
                if su.nonsense {
                    warn_nonsense(self.provider);
                }
                let trustworthy = su.is_trustworthy();
                su.usage.map(|u| {
                    let cost = self.prices.token_cost(self.provider, &u);
                    (u, cost.micros, trustworthy)
                })
            }
            Some(Meter::Json {
                dialect,
                kept,
                overflow,
            }) if !overflow => {
                usage::read_usage_body(dialect, &kept, self.request_model.as_deref())
                    .unwrap_or_else(|_| {
                        warn_nonsense(self.provider);
                        None
                    })
                    .map(|u| {
                        let cost = self.prices.token_cost(self.provider, &u);
                        (u, cost.micros, true)
                    })
            }
            Some(Meter::Fixed(price)) => Some((Usage::default(), price, true)),
            _ => None,
        };
        let (usage, charge) = match metered {
            // A whole body with its whole usage report: charge what it says.
            Some((u, cost, true)) if complete => (u, cost),
            // Cut short, or only part of the bill reported: charge at least that, and never less
            // than what the provider may already have billed for the prompt.
            Some((u, cost, _)) => (u, cost.max(reserved)),
            // Nothing to go by: the full reservation (fail closed).
            None => (Usage::default(), reserved),
        };
        let settled = reservation.settle(charge);
        if let Some(over) = settled.overshoot {
            tracing::warn!(provider = self.provider, overshoot = %over, "call cost more than its reservation");
        }
        let record = &mut self.record;
        record.model = usage
            .model
            .clone()
            .or_else(|| self.request_model.clone())
            .unwrap_or_default();
        record.input_tokens = usage.input_tokens;
        record.cached_input_tokens = usage.cached_input_tokens;
        record.output_tokens = usage.output_tokens;
        record.reasoning_tokens = usage.reasoning_tokens;
        record.cost = settled.charged;
        if !complete {
            record.outcome = "failed";
        }
        record.took_since(self.started);
        self.writer.record_call(std::mem::take(record));
    }
}

/// A usage report that makes no sense is settled at the reservation, like a missing one; this
/// says so, without any figure from the body.
fn warn_nonsense(provider: &str) {
    tracing::warn!(
        provider,
        "the provider's usage report makes no sense; settled at the reservation"
    );
}

impl Drop for Settlement {
    fn drop(&mut self) {
        // The client went away or the body errored before the end.
        self.finish(false);
    }
}

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// The client-facing body.
pub struct MeteredBody {
    upstream: Upstream,
    settlement: Settlement,
    /// Withholds OpenAI's usage-only chunk when keybroker asked for it and the client did not.
    filter: Option<SseFrameFilter>,
    /// Masks the call's key in every form before a byte reaches the client.
    scrub: redactor::ScrubStream,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    /// An SSE stream ends with a comment line saying what budget is left (SDKs skip comments).
    trailer: Option<Box<dyn Fn() -> Option<Money>>>,
    /// Whether what was sent so far ends an event (a blank line), so a comment may follow.
    at_event_end: bool,
}

impl MeteredBody {
    pub fn new(
        upstream: Upstream,
        settlement: Settlement,
        strip_usage_chunk: bool,
        scrubber: Arc<redactor::Scrubber>,
        idle: Duration,
    ) -> Self {
        Self {
            upstream,
            settlement,
            filter: strip_usage_chunk.then(|| SseFrameFilter::new(MAX_EVENT_BYTES)),
            scrub: redactor::ScrubStream::new(scrubber),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            done: false,
            trailer: None,
            at_event_end: true,
        }
    }

    /// Ends the stream, once it has ended well and settled, with
    /// `: keybroker spend_remaining_usd=<what remaining() says>` (nothing when it says none).
    pub fn with_trailer(mut self, remaining: Box<dyn Fn() -> Option<Money>>) -> Self {
        self.trailer = Some(remaining);
        self
    }
}

fn ends_event(bytes: &[u8], before: bool) -> bool {
    if bytes.is_empty() {
        return before;
    }
    bytes.ends_with(b"\n\n") || bytes.ends_with(b"\r\n\r\n") || (before && bytes == b"\n")
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the provider stopped sending")]
    Idle,
    #[error("the provider's response broke off")]
    Upstream,
}

impl actix_web::ResponseError for BodyError {}

impl BodyError {
    /// Our answer when the body fails before anything was sent to the client.
    pub fn into_api_error(self, provider: &str) -> crate::error::ApiError {
        let (status, kind) = match self {
            BodyError::Idle => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            BodyError::Upstream => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        };
        crate::error::ApiError::new(status, kind, self.to_string()).with_field("provider", provider)
    }
}

/// A body whose first chunk has arrived, put back in front of the rest.
pub type Primed = futures_util::stream::Chain<
    futures_util::stream::Iter<std::option::IntoIter<Result<Bytes, BodyError>>>,
    MeteredBody,
>;

impl MeteredBody {
    /// Waits (up to the idle timeout) for the first chunk, so that a provider that sends its
    /// headers and then nothing gets the client our own error instead of a response head followed
    /// by a body that breaks off. A failure here has already settled the call (fail closed).
    pub async fn primed(mut self) -> Result<Primed, BodyError> {
        let first = match self.next().await {
            Some(Err(e)) => return Err(e),
            first => first,
        };
        Ok(futures_util::stream::iter(first).chain(self))
    }
}

impl Stream for MeteredBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                    let out = match &mut this.filter {
                        Some(filter) => {
                            let (forward, items) = filter.feed(&chunk, usage::is_usage_only_chunk);
                            if let Some(Meter::Stream(m)) = &mut this.settlement.meter {
                                for item in &items {
                                    m.observe(item);
                                }
                            }
                            Bytes::from(this.scrub.feed(&forward))
                        }
                        None => {
                            this.settlement.observe(&chunk);
                            Bytes::from(this.scrub.feed(&chunk))
                        }
                    };
                    if out.is_empty() {
                        continue;
                    }
                    this.at_event_end = ends_event(&out, this.at_event_end);
                    return Poll::Ready(Some(Ok(out)));
                }
                Poll::Ready(Some(Err(_))) => {
                    // What the scrubber still holds is never sent: the body breaks off here.
                    this.done = true;
                    this.settlement.finish(false);
                    return Poll::Ready(Some(Err(BodyError::Upstream)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let mut tail = Vec::new();
                    if let Some(filter) = &mut this.filter {
                        let (rest, items) = filter.finish();
                        if let Some(Meter::Stream(m)) = &mut this.settlement.meter {
                            for item in &items {
                                m.observe(item);
                            }
                        }
                        tail = rest;
                    }
                    let mut tail = this.scrub.feed(&tail);
                    tail.extend(this.scrub.finish());
                    if this.scrub.masked() {
                        this.settlement.flag_masked();
                    }
                    this.settlement.finish(true);
                    if let Some(remaining) = this.trailer.take() {
                        if ends_event(&tail, this.at_event_end) {
                            if let Some(left) = remaining() {
                                tail.extend_from_slice(
                                    format!(": keybroker spend_remaining_usd={left}\n\n")
                                        .as_bytes(),
                                );
                            }
                        }
                    }
                    return if tail.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Bytes::from(tail))))
                    };
                }
                Poll::Pending => {
                    if this.timer.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        this.settlement.finish(false);
                        return Poll::Ready(Some(Err(BodyError::Idle)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
