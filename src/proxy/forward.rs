//! `ANY /proxy/{provider}/{path...}`: authenticate the tool token, reserve the worst-case cost
//! against the ceiling, open the account's key for this one call, forward, and hand the response
//! to [`MeteredBody`] to stream back and settle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_service::ServiceExt as _;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use base64::Engine as _;
use futures_util::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::http::request_id::RequestId;
use crate::metering::estimate::{self, EstimateConfig};
use crate::metering::prices::PriceTable;
use crate::metering::usage::{self, Dialect, Framing, StreamMeter};
use crate::providers::{Injection, Metering, Provider};
use crate::proxy::body::{Meter, MeteredBody, Settlement};
use crate::proxy::headers;
use crate::proxy::path::UpstreamPath;
use crate::spend::budget::Denied;
use crate::spend::writer::{CallRecord, SpendWriter};
use crate::spend::{Ledger, Refused};
use crate::startup::AppState;
use crate::tokens::{self, KeyAccess};

/// Operator settings for the proxy, with sane defaults.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Per-provider base URL overrides (`KEYBROKER_UPSTREAM_<PROVIDER>`), operator only.
    pub upstreams: HashMap<String, String>,
    pub max_body_bytes: usize,
    pub connect_timeout: Duration,
    /// Longest wait for the response head, and for each chunk of the body after it.
    pub read_timeout: Duration,
    /// How long an idle upstream connection stays in the pool for reuse. Shorter than the idle
    /// timeout of common HTTP servers (5 s for Node, uvicorn, actix, Apache), as undici does: a
    /// connection the server may be closing at that very moment is never reused, so a call is
    /// never written onto it and lost as a 502.
    pub upstream_idle: Duration,
    pub max_in_flight_per_account: u32,
    pub requests_per_minute_per_token: u32,
    pub estimate: EstimateConfig,
    /// Request header names forwarded besides the built-in allow-list
    /// (`KEYBROKER_PROXY_FORWARD_HEADERS`, comma-separated), held to the same credential checks
    /// (see `proxy::headers`).
    pub forward_headers: Vec<String>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            upstreams: HashMap::new(),
            max_body_bytes: 32 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            upstream_idle: Duration::from_secs(4),
            max_in_flight_per_account: 256,
            requests_per_minute_per_token: 1000,
            estimate: EstimateConfig::default(),
            forward_headers: Vec::new(),
        }
    }
}

/// The proxy's shared state, built once and reached through `AppState`.
pub struct Proxy {
    pub settings: ProxySettings,
    pub ledger: Ledger,
    pub writer: Arc<SpendWriter>,
    pub prices: Arc<PriceTable>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Several instances on one database: leases of the ceilings (`spend::shared`).
    pub shared: Option<crate::spend::shared::Shared>,
    rate: DefaultKeyedRateLimiter<String>,
    in_flight: Arc<Mutex<HashMap<i64, u32>>>,
}

impl Proxy {
    pub fn new(
        settings: ProxySettings,
        ledger: Ledger,
        writer: Arc<SpendWriter>,
        prices: Arc<PriceTable>,
    ) -> Self {
        let per_minute = std::num::NonZeroU32::new(settings.requests_per_minute_per_token.max(1))
            .unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            rate: RateLimiter::keyed(Quota::per_minute(per_minute)),
            settings,
            shared: None,
            ledger,
            writer,
            prices,
            metrics: Arc::new(crate::metrics::Metrics::default()),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn base_url<'a>(&'a self, provider: &'a Provider) -> &'a str {
        self.settings
            .upstreams
            .get(provider.id)
            .map_or(provider.base_url, String::as_str)
    }
}

/// Holds one of an account's in-flight slots until dropped.
struct InFlight {
    map: Arc<Mutex<HashMap<i64, u32>>>,
    account: i64,
}

impl InFlight {
    fn acquire(map: &Arc<Mutex<HashMap<i64, u32>>>, account: i64, max: u32) -> Option<Self> {
        let mut m = map.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(account).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            map: Arc::clone(map),
            account,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.account);
            }
        }
    }
}

/// The upstream HTTP client: one per worker (awc clients are not `Send`), pooled keep-alive
/// connections, HTTP/2 where the provider offers it over TLS, no automatic redirects or
/// decompression (bodies pass through as the provider sent them).
pub fn upstream_client(settings: &ProxySettings) -> awc::Client {
    // awc's own TCP connector leaves Nagle's algorithm on; a request written as head then body
    // would then wait for the peer's delayed ACK. Every upstream socket gets TCP_NODELAY.
    let tcp = actix_tls::connect::Connector::new(actix_tls::connect::Resolver::default())
        .service()
        .map(
            |conn: actix_tls::connect::Connection<awc::http::Uri, tokio::net::TcpStream>| {
                let _ = conn.io_ref().set_nodelay(true);
                // Interim heads are dropped on plain HTTP (`proxy::interim`); over TLS the
                // filter would see ciphertext, so it only passes bytes through.
                let plain = conn.request().scheme_str() != Some("https");
                let (io, conn) = conn.replace_io(());
                let (_, conn) =
                    conn.replace_io(crate::proxy::interim::InterimFilter::new(io, plain));
                conn
            },
        );
    let connector = awc::Connector::new()
        .connector(tcp)
        .timeout(settings.connect_timeout)
        .conn_keep_alive(settings.upstream_idle)
        .limit(0);
    awc::Client::builder()
        .connector(connector)
        .disable_redirects()
        .timeout(settings.read_timeout)
        .finish()
}

/// How a call is reserved and settled, decided on the normalised path in lower case
/// ([`UpstreamPath::folded`]), so no spelling of a path the provider serves the same way is priced
/// differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pricing {
    /// A generation endpoint: estimated from the body, settled by the usage reported.
    Tokens(Dialect),
    /// A read, a delete or a token count at a token-metered provider: costs nothing.
    Free,
    /// Priced per call by the price table: every call to a per-request provider, and an endpoint
    /// entry of a token-metered one.
    PerRequest,
    /// Any other call to a token-metered provider: reserved at the provider's worst case
    /// (`estimate::worst_case`), settled by the usage in its answer if any, else at the
    /// reservation. Unknown means expensive, never free.
    WorstCase(Dialect),
}

impl Pricing {
    fn of(
        provider: &Provider,
        prices: &PriceTable,
        method: &str,
        folded: &str,
        bodiless: bool,
    ) -> Self {
        let Some(dialect) = dialect_of(provider.metering) else {
            return Pricing::PerRequest;
        };
        if token_endpoint(dialect, method, folded) {
            Pricing::Tokens(dialect)
        } else if prices
            .explicit_request_cost(provider.id, method, folded)
            .is_some()
        {
            Pricing::PerRequest
        } else if free_call(method, folded, bodiless) {
            Pricing::Free
        } else {
            Pricing::WorstCase(dialect)
        }
    }

    /// The dialect a response is metered in, if it is metered by tokens.
    pub(crate) fn dialect(self) -> Option<Dialect> {
        match self {
            Pricing::Tokens(d) | Pricing::WorstCase(d) => Some(d),
            Pricing::Free | Pricing::PerRequest => None,
        }
    }
}

/// Whether a call is billed by the tokens its provider reports: the generation endpoints.
/// `folded` is the normalised path in lower case.
fn token_endpoint(dialect: Dialect, method: &str, folded: &str) -> bool {
    if method != "POST" {
        return false;
    }
    match dialect {
        Dialect::OpenAi => [
            "/chat/completions",
            "/completions",
            "/responses",
            "/embeddings",
        ]
        .iter()
        .any(|e| folded.ends_with(e)),
        Dialect::Anthropic => folded.ends_with("/messages"),
        Dialect::Google => [
            ":generatecontent",
            ":streamgeneratecontent",
            ":embedcontent",
            ":batchembedcontents",
        ]
        .iter()
        .any(|e| folded.ends_with(e)),
    }
}

/// Calls to a token-metered provider that cost nothing: reads and deletes without a body (OpenAI,
/// Anthropic and Google bill no delete: it frees a file, batch, cache or stored response), and
/// counting tokens. Any other method is not free (PATCH included: extending a Gemini cache's TTL
/// bills storage), and neither is a read or delete that carries a body.
fn free_call(method: &str, folded: &str, bodiless: bool) -> bool {
    match method {
        "GET" | "HEAD" | "OPTIONS" | "DELETE" => bodiless,
        "POST" => {
            folded.ends_with("/count_tokens")
                || folded.ends_with(":counttokens")
                || folded.ends_with("/responses/input_tokens")
        }
        _ => false,
    }
}

/// Refuses a call outside the token's method or path scope, matched on the path as the
/// provider routes it (normalised, in lower case), before anything is reserved or a key opened.
fn refuse_out_of_scope(
    scope: &tokens::Scope,
    method: &str,
    path: &UpstreamPath,
) -> Result<(), ApiError> {
    if !scope.permits_method(method) {
        return Err(ApiError::forbidden(
            "forbidden_by_scope",
            "this token's scope does not include this method",
        ));
    }
    if !scope.permits_path(path.folded()) {
        return Err(ApiError::forbidden(
            "forbidden_by_scope",
            "this token's scope does not include this path",
        ));
    }
    Ok(())
}

/// Refuses, before the body is read, what would carry a body past the estimate: a GET or HEAD
/// that declares a body (a provider may read it, or a front end may route the call by an
/// override), or a compressed body (the provider decompresses what keybroker measured
/// compressed). A GET or HEAD body that arrives undeclared (chunked) is [`refuse_read_body`]'s.
fn refuse_body_tricks(req: &HttpRequest) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes().iter().any(|b| *b != b'0'));
    if declared {
        refuse_read_body(req, 1)?;
    }
    let encoded = req
        .headers()
        .get_all(actix_web::http::header::CONTENT_ENCODING)
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            "request bodies must not be compressed: send them without Content-Encoding",
        ));
    }
    Ok(())
}

/// A GET or HEAD whose body (of `len` bytes) arrived is refused.
fn refuse_read_body(req: &HttpRequest, len: usize) -> Result<(), ApiError> {
    let method = req.method();
    if len > 0
        && (method == actix_web::http::Method::GET || method == actix_web::http::Method::HEAD)
    {
        return Err(ApiError::bad_request(
            "body_not_allowed",
            "a GET or HEAD request may not have a body",
        ));
    }
    Ok(())
}

fn invalid_body(message: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::bad_request("invalid_request_body", message)
}

/// `{"type": "invalid_request_body", "message": "n must be a positive integer", "field": "n"}`.
fn invalid_count(invalid: estimate::InvalidCount) -> ApiError {
    let message = invalid.to_string();
    invalid_body(message).with_field("field", invalid.field)
}

fn dialect_of(metering: Metering) -> Option<Dialect> {
    match metering {
        Metering::OpenAi => Some(Dialect::OpenAi),
        Metering::Anthropic => Some(Dialect::Anthropic),
        Metering::Google => Some(Dialect::Google),
        Metering::PerRequest => None,
    }
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        )
    };
    // A declared length over the limit is refused before any of it is read.
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            if crate::http::body_deadline::is_timeout(&e) {
                crate::error::extractors::body_timeout()
            } else {
                ApiError::bad_request("invalid_body", "the request body could not be read")
            }
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The header that carries the key upstream. Its value lives in a zeroizing buffer that the
/// header value shares (not copies): the last holder to drop it, awc once the request is
/// written, wipes it. Built at its exact size, so no growth leaves a copy in freed memory. The
/// value is marked sensitive so no debug output prints it.
fn key_header(injection: Injection, key: &str) -> Result<(HeaderName, HeaderValue), ApiError> {
    let with_prefix = |prefix: &str, body: &[u8]| {
        let mut v = Zeroizing::new(Vec::with_capacity(prefix.len() + body.len()));
        v.extend_from_slice(prefix.as_bytes());
        v.extend_from_slice(body);
        v
    };
    let (name, value) = match injection {
        Injection::Bearer => (
            HeaderName::from_static("authorization"),
            with_prefix("Bearer ", key.as_bytes()),
        ),
        Injection::Header(name) => (
            HeaderName::from_bytes(name.as_bytes()).map_err(ApiError::internal)?,
            with_prefix("", key.as_bytes()),
        ),
        Injection::Basic => {
            let engine = &base64::engine::general_purpose::STANDARD;
            let mut encoded =
                Zeroizing::new(vec![0u8; base64::encoded_len(key.len(), true).unwrap_or(0)]);
            let written = engine
                .encode_slice(key, encoded.as_mut_slice())
                .map_err(ApiError::internal)?;
            (
                HeaderName::from_static("authorization"),
                with_prefix("Basic ", encoded.get(..written).unwrap_or_default()),
            )
        }
    };
    let mut value = HeaderValue::from_maybe_shared(web::Bytes::from_owner(value))
        .map_err(|_| ApiError::internal("stored key is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// The 402 for a call whose hold does not fit. Settled spend at or over the limit is "reached";
/// below it, the hold is what did not fit, and the answer says how large it was, what is left,
/// and how to ask for less. `remaining_usd` and `X-Keybroker-Spend-Remaining` mean what the
/// ceilings API's `remaining_usd` means: limit − spent − held by calls in flight.
fn refused(provider: &str, refusal: &Refused) -> ApiError {
    use crate::money::Money;
    let remaining = refusal
        .limit
        .saturating_sub(refusal.spent)
        .saturating_sub(refusal.reserved)
        .max(Money::ZERO);
    let message = if refusal.spent >= refusal.limit {
        "the spend ceiling for this provider is reached".to_owned()
    } else {
        format!(
            "this call could cost up to ${} (its worst case: the whole prompt, and the most output \
             it allows), and only ${remaining} of the ceiling is left; ask for less output \
             (max_tokens or the provider's equivalent) or raise the ceiling",
            refusal.requested
        )
    };
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "spend_ceiling_reached",
        message,
    )
    .with_field("provider", provider)
    .with_field("limit_usd", refusal.limit.to_string())
    .with_field("spent_usd", refusal.spent.to_string())
    .with_field("reserved_usd", refusal.reserved.to_string())
    .with_field("remaining_usd", remaining.to_string())
    .with_field("hold_usd", refusal.requested.to_string())
    .with_spend_remaining(remaining)
}

/// The 402 for a call that does not fit in its token's own limit (see [`refused`]).
fn token_refused(provider: &str, token_id: &str, refusal: &Refused) -> ApiError {
    use crate::money::Money;
    let remaining = refusal
        .limit
        .saturating_sub(refusal.spent)
        .saturating_sub(refusal.reserved)
        .max(Money::ZERO);
    let message = if refusal.spent >= refusal.limit {
        "this token's spend limit is reached".to_owned()
    } else {
        format!(
            "this call could cost up to ${} (its worst case), and only ${remaining} of this \
             token's spend limit is left; ask for less output or raise the token's limit",
            refusal.requested
        )
    };
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "token_spend_limit_reached",
        message,
    )
    .with_field("provider", provider)
    .with_field("token_id", token_id)
    .with_field("limit_usd", refusal.limit.to_string())
    .with_field("spent_usd", refusal.spent.to_string())
    .with_field("reserved_usd", refusal.reserved.to_string())
    .with_field("remaining_usd", remaining.to_string())
    .with_field("hold_usd", refusal.requested.to_string())
    .with_spend_remaining(remaining)
}

/// A call as it will be metered: how it is priced, its worst case, the model it names, and the
/// body to send (OpenAI streams are asked for their usage report).
pub(crate) struct Priced {
    pub pricing: Pricing,
    pub cost: crate::metering::prices::Cost,
    pub request_model: Option<String>,
    pub body: web::Bytes,
    /// keybroker asked for the stream's usage chunk; the client did not, so it is withheld.
    pub strip_usage_chunk: bool,
}

/// Prices a call before it is sent: the proxy reserves this, `POST /api/v1/estimate` reports it.
pub(crate) fn price_call(
    proxy: &Proxy,
    provider: &Provider,
    method: &str,
    upstream_path: &UpstreamPath,
    body: web::Bytes,
) -> Result<Priced, ApiError> {
    let method = method.to_owned();
    let mut body = body;
    let folded = upstream_path.folded();
    let pricing = Pricing::of(provider, &proxy.prices, &method, folded, body.is_empty());
    // The response is metered by tokens for token endpoints and for unknown calls (their answer
    // may report usage); reads cost nothing.
    let dialect = pricing.dialect();
    // The body as JSON, parsed once, duplicate keys refused (`None` when it is not JSON).
    let mut json = if body.is_empty() {
        None
    } else {
        match crate::metering::unique_json::parse(&body) {
            Ok(value) => Some(value),
            Err(crate::metering::unique_json::JsonError::NotJson) => None,
            Err(e @ crate::metering::unique_json::JsonError::DuplicateKey) => {
                return Err(invalid_body(e.to_string()));
            }
        }
    };
    if matches!(pricing, Pricing::Tokens(_)) && !json.as_ref().is_some_and(|j| j.is_object()) {
        return Err(invalid_body("the request body must be a JSON object"));
    }
    let request_model = match dialect {
        Some(Dialect::Google) => estimate::google_model_from_path(folded).map(str::to_owned),
        _ => json
            .as_ref()
            .and_then(|j| j.get("model"))
            .and_then(|m| m.as_str())
            .map(str::to_owned),
    };
    // OpenAI streams report usage only when asked: ask, and hide the extra chunk from a client
    // that did not.
    let mut strip_usage_chunk = false;
    let ask_usage = provider.stream_usage == crate::providers::StreamUsage::Ask;
    if let (Pricing::Tokens(Dialect::OpenAi), Some(j), true) = (pricing, json.as_mut(), ask_usage) {
        if usage::openai_prepare_stream_request(j) {
            strip_usage_chunk = true;
            body = serde_json::to_vec(j).map_err(ApiError::internal)?.into();
        }
    }

    let estimate = match pricing {
        Pricing::Tokens(d) => {
            let parsed = json.as_ref().unwrap_or(&serde_json::Value::Null);
            estimate::estimate_tokens_parsed(
                &proxy.prices,
                &proxy.settings.estimate,
                provider.id,
                d,
                body.len(),
                parsed,
                request_model.as_deref(),
            )
            .map_err(|e| match e {
                estimate::EstimateError::InvalidCount(invalid) => invalid_count(invalid),
                estimate::EstimateError::NotAnObject => invalid_body(e.to_string()),
            })?
            .cost
        }
        Pricing::Free => crate::metering::prices::Cost {
            micros: crate::money::Money::ZERO,
            priced_by_fallback: false,
        },
        Pricing::PerRequest => estimate::estimate_request(
            &proxy.prices,
            provider.id,
            &method,
            upstream_path.path(),
            json.as_ref(),
        ),
        Pricing::WorstCase(d) => {
            estimate::worst_case(
                &proxy.prices,
                &proxy.settings.estimate,
                provider.id,
                d,
                body.len(),
                json.as_ref(),
            )
            .map_err(invalid_count)?
            .cost
        }
    };
    Ok(Priced {
        pricing,
        cost: estimate,
        request_model,
        body,
        strip_usage_chunk,
    })
}

pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream_client: web::Data<crate::proxy::UpstreamClient>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let proxy = &state.proxy;
    let provider_id = req.match_info().get("provider").unwrap_or("");
    let provider = state.providers.lookup(provider_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_provider",
            "keybroker does not know this provider",
        )
    })?;
    let prefix_len = "/proxy/".len() + provider_id.len();
    let tail = req.uri().path().get(prefix_len..).unwrap_or("");
    let upstream_path = UpstreamPath::parse(tail, req.uri().query())
        .map_err(|e| ApiError::bad_request("invalid_path", e.to_string()))?;

    // Who is calling: one answer for every authentication failure.
    // Kept (wiped on drop) until the forwarded headers are chosen: none may carry it.
    let presented = Zeroizing::new(
        headers::presented_token(req.headers()).ok_or_else(ApiError::authentication_failed)?,
    );
    // A provider's own key (or anything else) where the keybroker token belongs: the same 401,
    // saying what is expected. The shape alone decides it, so it tells nothing about accounts.
    if !presented.starts_with(tokens::PREFIX) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_failed",
            "authentication failed: send a keybroker tool token (kb_...) where the provider's key \
             would go; the provider's own key stays in keybroker",
        ));
    }
    let now = state.clock.unix();
    let token = state
        .tokens
        .authenticate(&state.db, &presented, now)
        .await?
        .ok_or_else(ApiError::authentication_failed)?;
    if !token.allows(provider.id) {
        return Err(ApiError::forbidden(
            "provider_not_allowed",
            "this token is not allowed to use this provider",
        ));
    }
    refuse_out_of_scope(&token.scope, req.method().as_str(), &upstream_path)?;
    let agent = headers::agent_label(req.headers(), crate::telemetry::redactor())
        .map_err(|e| ApiError::bad_request("invalid_agent_label", e.to_string()))?;
    // A provider without a base URL (Azure OpenAI until the operator names the resource) is
    // refused before anything is reserved or sent: there is no host to guess.
    if proxy.base_url(provider).is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_not_configured",
            format!(
                "{} has no base URL on this server: the operator sets {} or base_url in the \
                 providers file",
                provider.display_name,
                crate::providers::upstream_env_var(provider.id)
            ),
        ));
    }
    if let Err(not_until) = proxy.rate.check_key(&token.id) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this token's request rate limit is reached",
        )
        .with_retry_after(wait.as_secs().max(1)));
    }
    let in_flight = InFlight::acquire(
        &proxy.in_flight,
        token.account_id,
        proxy.settings.max_in_flight_per_account,
    )
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_in_flight",
            "too many calls in flight for this account",
        )
        .with_retry_after(1)
    })?;

    refuse_body_tricks(&req)?;
    let body = read_body(&req, payload, proxy.settings.max_body_bytes).await?;
    refuse_read_body(&req, body.len())?;
    let method = req.method().as_str().to_owned();
    let Priced {
        pricing,
        cost: estimate,
        request_model,
        body,
        strip_usage_chunk,
    } = price_call(proxy, provider, &method, &upstream_path, body)?;
    let dialect = pricing.dialect();
    let free = pricing == Pricing::Free;
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let mut record = CallRecord {
        account: token.account_id,
        provider: provider.id.to_owned(),
        at: now,
        method: method.clone(),
        route: route_of(upstream_path.path()),
        status: 0,
        outcome: "ok",
        model: request_model.clone().unwrap_or_default(),
        priced_by_fallback: estimate.priced_by_fallback,
        request_id: request_id.clone(),
        token_id: token.id.clone(),
        agent,
        ..CallRecord::default()
    };
    if let Some(shared) = proxy.shared.as_ref() {
        shared.check_fresh();
    }
    let reserved = crate::spend::budget::reserve_call(
        proxy,
        token.account_id,
        provider.id,
        &token.id,
        token.budgeted,
        estimate.micros,
    )
    .await;
    let reservation = match reserved {
        Ok(r) => r,
        Err(Denied::Ceiling(refusal)) => {
            record.status = 402;
            record.outcome = "refused";
            record.took_since(started);
            proxy.writer.record_call(record);
            return Err(refused(provider.id, &refusal));
        }
        Err(Denied::Token(refusal)) => {
            record.status = 402;
            record.outcome = "refused";
            record.took_since(started);
            proxy.writer.record_call(record);
            return Err(token_refused(provider.id, &token.id, &refusal));
        }
        // The hold could not be journaled: without it a crash could lose this call's cost.
        Err(Denied::Unrecorded) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "spend_unavailable",
                "keybroker cannot record spend right now; the call was not sent",
            ));
        }
        Err(Denied::Db(e)) => return Err(ApiError::from_db(&e)),
    };

    // The key, for this call only.
    let access = tokens::key_for_cached(
        &state.key_cache,
        &state.db,
        &state.vault,
        &token,
        provider.id,
    )
    .await;
    let plaintext = match access {
        Ok(KeyAccess::Key { plaintext, .. }) => plaintext,
        Ok(KeyAccess::NoKey) => {
            reservation.release();
            return Err(ApiError::new(
                StatusCode::FAILED_DEPENDENCY,
                "no_key",
                "this account has no key for this provider",
            ));
        }
        Ok(KeyAccess::NotInScope) => {
            reservation.release();
            return Err(ApiError::forbidden(
                "provider_not_allowed",
                "this token is not allowed to use this provider",
            ));
        }
        Err(crate::keys::store::StoreError::Db(e)) => {
            reservation.release();
            return Err(ApiError::from_db(&e));
        }
        Err(e) => {
            reservation.release();
            return Err(ApiError::internal(e));
        }
    };
    let key = plaintext
        .expose_str()
        .ok_or_else(|| ApiError::internal("stored key is not UTF-8"))?;
    let registration = crate::telemetry::redactor().register(key.as_bytes());
    let (auth_name, auth_value) = key_header(provider.injection, key)?;
    // The key's only other copies: its forms in the call's scrubber (wiped on drop), which reads
    // every header and body byte the provider sends back before the client gets it.
    let scrubber = Arc::new(redactor::Scrubber::new(key.as_bytes()));
    drop(plaintext);

    let url = upstream_path.join(proxy.base_url(provider));
    let client = crate::proxy::UpstreamClient::checkout(&upstream_client);
    let mut upstream = client.request(req.method().clone(), url.as_str());
    for (name, value) in
        headers::request_headers(req.headers(), &presented, &proxy.settings.forward_headers)
    {
        upstream = upstream.insert_header((name, value));
    }
    drop(presented);
    upstream = upstream
        .insert_header((auth_name, auth_value))
        .insert_header(("accept-encoding", "identity"))
        .no_decompress();

    let before_send = started.elapsed();
    let send_at = std::time::Instant::now();
    let sent = upstream.send_body(body.clone()).await;
    let head_at = std::time::Instant::now();
    proxy
        .metrics
        .upstream_latency(provider.id)
        .record(head_at - send_at);
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            reservation.release();
            record.outcome = "failed";
            let (status, kind, message) = match e {
                awc::error::SendRequestError::Timeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the provider did not answer in time",
                ),
                _ => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the provider could not be reached",
                ),
            };
            record.status = status.as_u16();
            record.took_since(started);
            proxy.writer.record_call(record);
            tracing::warn!(provider = provider.id, error = %e, "upstream request failed");
            return Err(ApiError::new(status, kind, message).with_field("provider", provider.id));
        }
    };
    let status = response.status();
    record.status = status.as_u16();

    // An answer keybroker cannot pass on faithfully: an interim head taken as the final answer,
    // or a body in a coding keybroker did not ask for (the scrubber cannot read a compressed
    // body, and the tool would decompress it). The provider may have served the call: it is
    // charged at its hold (fail closed).
    if status.is_informational() || !headers::identity_coded(response.headers()) {
        let settled = reservation.settle(estimate.micros);
        record.outcome = "upstream_error";
        record.cost = settled.charged;
        record.took_since(started);
        proxy.writer.record_call(record);
        tracing::warn!(
            provider = provider.id,
            status = status.as_u16(),
            "the provider's answer was not one keybroker can pass on; charged at its hold"
        );
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_bad_response",
            "the provider's answer could not be passed on",
        )
        .with_field("provider", provider.id));
    }

    // Errors, and redirects (a `Location` can point anywhere and carry anything), get our body.
    let redirect = status.is_redirection() && status != StatusCode::NOT_MODIFIED;
    if status.is_client_error() || status.is_server_error() || redirect {
        let mut response = response;
        let upstream_body = response.body().limit(256 * 1024).await.unwrap_or_default();
        reservation.release();
        record.outcome = "upstream_error";
        record.took_since(started);
        proxy.writer.record_call(record);
        let rebuilt = crate::proxy::upstream_error::rebuild(
            provider.id,
            status.as_u16(),
            &upstream_body,
            &body,
            &scrubber,
            &request_id,
        );
        drop(registration);
        let mut out = HttpResponse::build(status);
        if let Some(retry) = headers::retry_after(response.headers()) {
            out.insert_header(("retry-after", retry));
        }
        return Ok(out
            .insert_header(("cache-control", "no-store"))
            .json(rebuilt));
    }

    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let meter = match dialect {
        Some(d) if content_type.starts_with("text/event-stream") => Meter::Stream(Box::new(
            StreamMeter::new(d, Framing::Sse, request_model.as_deref()),
        )),
        Some(Dialect::Google) if upstream_path.path().contains(":streamGenerateContent") => {
            Meter::Stream(Box::new(StreamMeter::new(
                Dialect::Google,
                Framing::JsonArray,
                request_model.as_deref(),
            )))
        }
        Some(d) => Meter::Json {
            dialect: d,
            kept: Vec::new(),
            overflow: false,
        },
        None if free => Meter::Fixed(crate::money::Money::ZERO),
        None => {
            let characters = usage::elevenlabs_character_cost(
                response
                    .headers()
                    .get("character-cost")
                    .and_then(|v| v.to_str().ok()),
            );
            let cost =
                proxy
                    .prices
                    .request_cost(provider.id, &method, upstream_path.path(), characters);
            // A price the answer did not confirm (a per-character provider without a sensible
            // `character-cost`) is never below the reservation: fail closed.
            Meter::Fixed(if cost.priced_by_fallback {
                cost.micros.max(estimate.micros)
            } else {
                cost.micros
            })
        }
    };
    // The call's hold survives a crash already: `reserve` journaled it before the call was sent
    // (see `spend::journal`), so nothing waits for the spend writer here.
    let remaining =
        crate::spend::budget::remaining(proxy, token.account_id, provider.id, &token.id)
            .map(|(m, _)| m);
    let mut out = HttpResponse::build(status);
    for (name, value) in headers::response_headers(response.headers(), &scrubber) {
        out.append_header((name, value));
    }
    if let Some(retry) = headers::retry_after(response.headers()) {
        out.insert_header(("retry-after", retry));
    }
    if let Some(remaining) = remaining {
        out.insert_header(("x-keybroker-spend-remaining", remaining.to_string()));
    }
    let settlement = Settlement {
        started,
        reservation: Some(reservation),
        meter: Some(meter),
        prices: proxy.prices.clone(),
        provider: provider.id,
        request_model,
        writer: proxy.writer.clone(),
        record,
        guards: vec![Box::new(registration), Box::new(in_flight)],
    };
    // Withholding OpenAI's usage chunk changes a stream's length; nothing else does.
    let filtered = strip_usage_chunk && content_type.starts_with("text/event-stream");
    // An event stream ends with the budget left, as an SSE comment, when a limit applies. Only
    // for the OpenAI and Anthropic wire formats, whose SDKs skip comment lines as SSE says; the
    // Google GenAI SDK reads every line as JSON and fails on one.
    let trailer = content_type.starts_with("text/event-stream")
        && matches!(dialect, Some(Dialect::OpenAi | Dialect::Anthropic))
        && remaining.is_some();
    let length = if filtered || trailer {
        None
    } else {
        headers::declared_length(req.method(), status, response.headers())
    };
    let mut body = MeteredBody::new(
        Box::pin(response),
        settlement,
        filtered,
        scrubber,
        proxy.settings.read_timeout,
    );
    if trailer {
        let (ledger, account, provider, token_id) = (
            proxy.ledger.clone(),
            token.account_id,
            provider.id,
            token.id.clone(),
        );
        body = body.with_trailer(Box::new(move || {
            crate::spend::budget::remaining_in(&ledger, account, provider, &token_id)
                .map(|(m, _)| m)
        }));
    }
    proxy
        .metrics
        .proxy_overhead
        .record(before_send + head_at.elapsed());
    // The head goes out with the body's first chunk, so headers followed by silence get our 504
    // (waiting for that chunk is the provider's time, not ours: it is not in the overhead).
    let primed = body.primed().await;
    let body = primed.map_err(|e| e.into_api_error(provider.id))?;
    Ok(match length {
        Some(length) => out.body(actix_web::body::SizedStream::new(length, body)),
        None => out.streaming(body),
    })
}

/// The upstream path with ids blanked, for usage records and logs: `/v1/files/{id}`.
fn route_of(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let digits = seg.bytes().filter(u8::is_ascii_digit).count();
            if seg.len() > 20 || (seg.len() > 8 && digits * 3 >= seg.len()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn the_key_header_carries_the_key_in_each_injection_and_is_sensitive() {
        let key = "sk-test-0123456789abcdefghijklmnop";
        let cases = [
            (Injection::Bearer, "authorization", format!("Bearer {key}")),
            (Injection::Header("x-api-key"), "x-api-key", key.to_owned()),
            (
                Injection::Basic,
                "authorization",
                format!("Basic {}", STANDARD.encode(key)),
            ),
        ];
        for (injection, name, expected) in cases {
            let (n, v) = key_header(injection, key).unwrap();
            assert_eq!(n.as_str(), name);
            assert_eq!(v.as_bytes(), expected.as_bytes());
            assert!(v.is_sensitive());
            assert!(!format!("{v:?}").contains(key));
        }
        // A key that is not a valid header value is refused, and the error does not quote it.
        let bad = "sk-test-0123456789\nabcdefghijklmnop";
        let err = key_header(Injection::Bearer, bad).unwrap_err();
        assert!(!format!("{err:?}").contains("0123456789"));
    }
}
