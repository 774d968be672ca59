//! Process metrics in the Prometheus text format (`GET /metrics`). Counters and fixed-bucket
//! histograms are relaxed atomics, so recording costs a few nanoseconds and never takes a lock;
//! the per-provider series are laid out once at start-up from the provider registry. The one
//! exception is the request counter, keyed by (method, route pattern, status): a read lock on a
//! map that only grows when a new combination first appears.
//!
//! Labels never carry an account, an email, a key or a token: the route label is the pattern
//! (`/api/v1/keys/{id}`), never the path, and a provider label is a registry id (or `other`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::spend::ledger::{SpendEvent, SpendKind, SpendSink};

/// Bucket upper bounds in microseconds.
const BOUNDS_US: [u64; 16] = [
    10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 50_000,
];

/// Upstream calls take far longer than keybroker's own work: seconds, not microseconds.
const UPSTREAM_BOUNDS_US: [u64; 16] = [
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
];

/// A latency histogram with fixed bucket bounds (microseconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64; 16],
    buckets: [AtomicU64; 17],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(&BOUNDS_US)
    }
}

impl Histogram {
    fn with_bounds(bounds: &'static [u64; 16]) -> Self {
        Self {
            bounds,
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self
            .bounds
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), in microseconds; `None` when
    /// empty or beyond the last bound.
    pub fn quantile_upper_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return self.bounds.get(i).copied();
            }
        }
        None
    }

    /// The series of this histogram; `labels` is empty or `key="value",` pairs ending in a comma.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(bound) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}le=\"{}\"}} {cumulative}",
                        *bound as f64 / 1e6
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let braces = labels_in_braces(labels);
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        self.render_series(out, name, "");
    }
}

/// `a="b",` → `{a="b"}`; empty stays empty.
fn labels_in_braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", labels.trim_end_matches(','))
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// How a proxied call ended, as of its response head: forwarded, or refused and why. The label
/// values are stable (dashboards and alerts use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyOutcome {
    /// Forwarded and answered with a success status.
    Ok,
    /// Forwarded; the provider answered with an error status.
    UpstreamError,
    /// Refused: the spend ceiling would be crossed.
    Ceiling,
    /// Refused: the token's request rate.
    RateLimit,
    /// Refused: the account's in-flight limit.
    InFlight,
    /// Refused: no valid token.
    Auth,
    /// Refused: the token may not use this provider.
    Forbidden,
    /// Refused: the upstream path is not acceptable.
    BadPath,
    /// Refused: the body could not be read or is too large.
    BadBody,
    /// Refused: the account holds no key for the provider.
    NoKey,
    /// Refused: no such provider.
    UnknownProvider,
    /// The provider did not answer in time.
    Timeout,
    /// The provider could not be reached.
    UpstreamUnreachable,
    /// Our fault (answered 500).
    Internal,
    /// Any other refusal.
    Other,
}

impl ProxyOutcome {
    const ALL: [ProxyOutcome; 15] = [
        Self::Ok,
        Self::UpstreamError,
        Self::Ceiling,
        Self::RateLimit,
        Self::InFlight,
        Self::Auth,
        Self::Forbidden,
        Self::BadPath,
        Self::BadBody,
        Self::NoKey,
        Self::UnknownProvider,
        Self::Timeout,
        Self::UpstreamUnreachable,
        Self::Internal,
        Self::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::UpstreamError => "upstream_error",
            Self::Ceiling => "ceiling",
            Self::RateLimit => "rate_limit",
            Self::InFlight => "in_flight",
            Self::Auth => "auth",
            Self::Forbidden => "forbidden",
            Self::BadPath => "bad_path",
            Self::BadBody => "bad_body",
            Self::NoKey => "no_key",
            Self::UnknownProvider => "unknown_provider",
            Self::Timeout => "timeout",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::Internal => "internal",
            Self::Other => "other",
        }
    }

    /// The outcome of a refusal, from the error's stable `type`.
    pub fn of_error(kind: &str) -> Self {
        match kind {
            "spend_ceiling_reached" => Self::Ceiling,
            "rate_limited" => Self::RateLimit,
            "too_many_in_flight" => Self::InFlight,
            "authentication_failed" => Self::Auth,
            "provider_not_allowed" => Self::Forbidden,
            "invalid_path" => Self::BadPath,
            "invalid_body"
            | "invalid_request_body"
            | "body_not_allowed"
            | "unsupported_content_encoding"
            | "payload_too_large" => Self::BadBody,
            "no_key" => Self::NoKey,
            "unknown_provider" => Self::UnknownProvider,
            "upstream_timeout" => Self::Timeout,
            "upstream_unreachable" => Self::UpstreamUnreachable,
            "internal_error" => Self::Internal,
            _ => Self::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Everything measured about one provider.
#[derive(Debug)]
struct ProviderSeries {
    id: &'static str,
    upstream_latency: Histogram,
    outcomes: [AtomicU64; ProxyOutcome::ALL.len()],
    settled_micros: AtomicU64,
}

impl ProviderSeries {
    fn new(id: &'static str) -> Self {
        Self {
            id,
            upstream_latency: Histogram::with_bounds(&UPSTREAM_BOUNDS_US),
            outcomes: Default::default(),
            settled_micros: AtomicU64::new(0),
        }
    }
}

/// The label for a provider that is not in the registry (or not a provider at all).
const OTHER_PROVIDER: &str = "other";

/// HTTP methods we name; anything else counts as `OTHER`, so a client cannot mint label values.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RequestKey {
    method: &'static str,
    route: String,
    status: u16,
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    /// Time keybroker itself spends on a proxied call: before the upstream request is sent, and
    /// from the upstream's response head to ours.
    pub proxy_overhead: Histogram,
    /// One per registry provider. Never grows after start-up.
    providers: Vec<ProviderSeries>,
    index: HashMap<&'static str, usize>,
    /// Calls for anything not in the registry.
    other: ProviderSeries,
    requests: RwLock<HashMap<RequestKey, AtomicU64>>,
    open_reservations: AtomicI64,
    active_streams: Arc<AtomicI64>,
    /// Shared ceilings (several instances on PostgreSQL): lease requests by result.
    pub leases: LeaseCounters,
}

/// What this instance asked of the shared ceilings (see `spend::shared`).
#[derive(Debug, Default)]
pub struct LeaseCounters {
    /// Round trips that leased more of a ceiling.
    pub granted: AtomicU64,
    /// Round trips that found too little free (the call was refused).
    pub refused: AtomicU64,
    /// Round trips that found no ceiling (any more).
    pub no_ceiling: AtomicU64,
    /// Leases handed back (idle, or the ceiling changed).
    pub handed_back: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

/// What is read from elsewhere at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrapeInputs {
    pub spend_queue_depth: usize,
    /// `None` when the database did not answer.
    pub active_sessions: Option<u64>,
}

impl Metrics {
    /// Series for each of `providers` (the registry's ids) and for `other`.
    pub fn new(providers: Vec<&'static str>) -> Self {
        let mut series: Vec<ProviderSeries> = Vec::with_capacity(providers.len());
        for id in providers {
            if id != OTHER_PROVIDER && !series.iter().any(|s| s.id == id) {
                series.push(ProviderSeries::new(id));
            }
        }
        let index = series.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        Self {
            proxy_overhead: Histogram::default(),
            providers: series,
            index,
            other: ProviderSeries::new(OTHER_PROVIDER),
            requests: RwLock::new(HashMap::new()),
            open_reservations: AtomicI64::new(0),
            active_streams: Arc::new(AtomicI64::new(0)),
            leases: LeaseCounters::default(),
        }
    }

    fn provider(&self, id: &str) -> &ProviderSeries {
        self.index
            .get(id)
            .and_then(|&i| self.providers.get(i))
            .unwrap_or(&self.other)
    }

    /// Time from sending a proxied request to `provider` to its response head.
    pub fn upstream_latency(&self, provider: &str) -> &Histogram {
        &self.provider(provider).upstream_latency
    }

    /// Counts one proxied call by provider and outcome.
    pub fn proxy_call(&self, provider: &str, outcome: ProxyOutcome) {
        if let Some(c) = self.provider(provider).outcomes.get(outcome.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one answered request. `route` is the matched pattern, or `None` when no route
    /// matched (counted as `<unmatched>`).
    pub fn count_request(&self, method: &str, route: Option<String>, status: u16) {
        let method = METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("OTHER");
        let key = RequestKey {
            method,
            route: route.unwrap_or_else(|| "<unmatched>".to_owned()),
            status,
        };
        {
            let map = self.requests.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = map.get(&key) {
                c.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(key)
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A guard that counts one streamed response as active until it is dropped.
    pub fn stream_started(&self) -> ActiveStream {
        self.active_streams.fetch_add(1, Ordering::Relaxed);
        ActiveStream(Arc::clone(&self.active_streams))
    }

    /// Wraps the ledger's sink: counts open reservations and settled micro-dollars per provider
    /// as the events pass (atomics only: the sink runs under a ledger lock). An event the inner
    /// sink could not record (a hold refused, see `SpendSink`) is not counted.
    pub fn spend_sink(self: &Arc<Self>, inner: SpendSink) -> SpendSink {
        let metrics = Arc::clone(self);
        Arc::new(move |e: &SpendEvent| {
            let recorded = inner(e);
            if recorded.is_ok() {
                metrics.observe_spend(e);
            }
            recorded
        })
    }

    fn observe_spend(&self, e: &SpendEvent) {
        match e.kind {
            SpendKind::Reserved => {
                self.open_reservations.fetch_add(1, Ordering::Relaxed);
            }
            SpendKind::Released => {
                self.open_reservations.fetch_sub(1, Ordering::Relaxed);
            }
            SpendKind::Settled { .. } | SpendKind::Abandoned => {
                self.open_reservations.fetch_sub(1, Ordering::Relaxed);
                let micros = u64::try_from(e.amount.micros()).unwrap_or(0);
                self.provider(&e.provider)
                    .settled_micros
                    .fetch_add(micros, Ordering::Relaxed);
            }
            SpendKind::Reset => {}
        }
    }

    pub fn render(&self, inputs: ScrapeInputs) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_requests(&mut out);
        self.render_providers(&mut out);
        self.proxy_overhead.render(
            &mut out,
            "keybroker_proxy_overhead_seconds",
            "Time keybroker adds to a proxied call (handler time minus upstream time).",
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            &mut out,
            "keybroker_proxy_streams_active",
            "Proxied responses whose body is still being streamed to the client.",
            self.active_streams.load(Ordering::Relaxed).max(0),
        );
        gauge(
            &mut out,
            "keybroker_spend_reservations_open",
            "Spend holds for calls in flight, not yet settled or released.",
            self.open_reservations.load(Ordering::Relaxed).max(0),
        );
        gauge(
            &mut out,
            "keybroker_spend_writer_queue_depth",
            "Spend records waiting to be committed.",
            i64::try_from(inputs.spend_queue_depth).unwrap_or(i64::MAX),
        );
        let leases = "keybroker_ceiling_lease_requests_total";
        header(
            &mut out,
            leases,
            "counter",
            "Round trips to the database for a lease of a shared ceiling (several instances on PostgreSQL), by result.",
        );
        for (result, n) in [
            ("granted", &self.leases.granted),
            ("refused", &self.leases.refused),
            ("no_ceiling", &self.leases.no_ceiling),
        ] {
            let _ = writeln!(
                out,
                "{leases}{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let back = "keybroker_ceiling_leases_handed_back_total";
        header(
            &mut out,
            back,
            "counter",
            "Leases of a shared ceiling handed back to the database (idle, or the ceiling changed).",
        );
        let _ = writeln!(
            out,
            "{back} {}",
            self.leases.handed_back.load(Ordering::Relaxed)
        );
        if let Some(n) = inputs.active_sessions {
            gauge(
                &mut out,
                "keybroker_sessions_active",
                "Dashboard sessions within their idle and absolute timeouts.",
                i64::try_from(n).unwrap_or(i64::MAX),
            );
        }
        out
    }

    fn render_requests(&self, out: &mut String) {
        let name = "keybroker_http_requests_total";
        header(
            out,
            name,
            "counter",
            "Requests answered, by method, route pattern and status code.",
        );
        let map = self.requests.read().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<_> = map
            .iter()
            .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
            .collect();
        rows.sort_by(|a, b| {
            (&a.0.route, a.0.method, a.0.status).cmp(&(&b.0.route, b.0.method, b.0.status))
        });
        for (k, n) in rows {
            let _ = writeln!(
                out,
                "{name}{{method=\"{}\",route=\"{}\",status=\"{}\"}} {n}",
                k.method,
                escape_label(&k.route),
                k.status
            );
        }
    }

    fn render_providers(&self, out: &mut String) {
        let calls = "keybroker_proxy_requests_total";
        header(
            out,
            calls,
            "counter",
            "Proxied calls by provider and outcome (ok, upstream_error, or why keybroker refused).",
        );
        for p in self.providers.iter().chain([&self.other]) {
            for outcome in ProxyOutcome::ALL {
                let n = p
                    .outcomes
                    .get(outcome.index())
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "{calls}{{provider=\"{}\",outcome=\"{}\"}} {n}",
                    escape_label(p.id),
                    outcome.label()
                );
            }
        }
        let latency = "keybroker_upstream_latency_seconds";
        header(
            out,
            latency,
            "histogram",
            "Time from sending a proxied request upstream to its response head, by provider.",
        );
        for p in self.providers.iter().chain([&self.other]) {
            let labels = format!("provider=\"{}\",", escape_label(p.id));
            p.upstream_latency.render_series(out, latency, &labels);
        }
        let settled = "keybroker_spend_settled_microdollars_total";
        header(
            out,
            settled,
            "counter",
            "Micro-dollars charged for proxied calls (settled or abandoned holds), by provider.",
        );
        for p in self.providers.iter().chain([&self.other]) {
            let _ = writeln!(
                out,
                "{settled}{{provider=\"{}\"}} {}",
                escape_label(p.id),
                p.settled_micros.load(Ordering::Relaxed)
            );
        }
    }
}

/// Prometheus label values escape `\`, `"` and newlines.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One streamed response in progress; dropping it (the body finished, failed or was abandoned by
/// the client) takes it off the gauge.
#[derive(Debug)]
pub struct ActiveStream(Arc<AtomicI64>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(40));
        }
        h.record(Duration::from_micros(90));
        h.record(Duration::from_micros(400));
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_upper_bound_us(0.5), Some(50));
        assert_eq!(h.quantile_upper_bound_us(0.99), Some(100));
        assert_eq!(h.quantile_upper_bound_us(1.0), Some(500));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.00005\"} 98"), "{s}");
        assert!(s.contains("x_count 100"));
    }

    #[test]
    fn unknown_providers_and_methods_fold_into_fixed_labels() {
        let m = Metrics::new(vec!["openai"]);
        m.proxy_call("openai", ProxyOutcome::Ok);
        m.proxy_call(
            "no-such-provider-typed-by-a-client",
            ProxyOutcome::UnknownProvider,
        );
        m.count_request("BREW", None, 404);
        let text = m.render(ScrapeInputs::default());
        assert!(
            text.contains("keybroker_proxy_requests_total{provider=\"openai\",outcome=\"ok\"} 1")
        );
        assert!(text.contains(
            "keybroker_proxy_requests_total{provider=\"other\",outcome=\"unknown_provider\"} 1"
        ));
        assert!(!text.contains("no-such-provider"));
        assert!(text.contains(
            "keybroker_http_requests_total{method=\"OTHER\",route=\"<unmatched>\",status=\"404\"} 1"
        ));
    }

    #[test]
    fn labelled_histograms_put_le_last_and_label_sum_and_count() {
        let m = Metrics::new(vec!["anthropic"]);
        m.upstream_latency("anthropic")
            .record(Duration::from_millis(3));
        let text = m.render(ScrapeInputs::default());
        assert!(text.contains(
            "keybroker_upstream_latency_seconds_bucket{provider=\"anthropic\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("keybroker_upstream_latency_seconds_count{provider=\"anthropic\"} 1"));
    }

    #[test]
    fn streams_gauge_follows_guards() {
        let m = Metrics::default();
        let a = m.stream_started();
        let b = m.stream_started();
        drop(a);
        assert!(m
            .render(ScrapeInputs::default())
            .contains("keybroker_proxy_streams_active 1"));
        drop(b);
        assert!(m
            .render(ScrapeInputs::default())
            .contains("keybroker_proxy_streams_active 0"));
    }
}
