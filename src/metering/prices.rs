//! The price table: what a token of a given provider's model, or a call to a non-token provider's
//! endpoint, costs. A default table ships in the binary (`default_prices.toml`); operators override it.
//!
//! Prices are held as integer micro-dollars per million tokens ([`Money`] per Mtok) and a cost is
//! `ceil(Σ tokens_i × price_i / 1e6)`, summed in `i128` and rounded up once, so we never undercharge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::usage::Usage;
use crate::money::Money;

/// The table compiled into the binary.
pub const DEFAULT_PRICES_TOML: &str = include_str!("default_prices.toml");

/// Tokens per pricing unit: prices are per million tokens.
const TOKENS_PER_UNIT: i128 = 1_000_000;

/// What a call cost, and whether a known price was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub micros: Money,
    /// True when no price was known for the model or endpoint and the configured fallback was used.
    pub priced_by_fallback: bool,
}

/// Per-token prices of one tier, each in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrices {
    pub input: Money,
    pub cached_input: Money,
    pub cache_write: Money,
    pub cache_write_long: Money,
    pub audio_input: Money,
    pub output: Money,
    pub reasoning: Money,
}

impl TokenPrices {
    /// The dearest price any prompt token can be billed at: what an estimate must assume when it
    /// cannot know how the provider will split the prompt between buckets.
    pub fn max_input(&self) -> Money {
        self.input
            .max(self.cached_input)
            .max(self.cache_write)
            .max(self.cache_write_long)
            .max(self.audio_input)
    }

    /// The dearest price any generated token can be billed at.
    pub fn max_output(&self) -> Money {
        self.output.max(self.reasoning)
    }
}

/// Prices for prompts above a size, which providers bill at a higher rate for the whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongContext {
    pub above_input_tokens: u64,
    pub prices: TokenPrices,
}

/// Everything the table knows about one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrices {
    pub base: TokenPrices,
    pub long_context: Option<LongContext>,
    /// The model's output limit: the true worst case when a request does not bound its output.
    pub max_output_tokens: Option<u64>,
}

impl ModelPrices {
    /// The tier a request with `prompt_tokens` prompt tokens is billed at.
    pub fn tier(&self, prompt_tokens: u64) -> &TokenPrices {
        match &self.long_context {
            Some(long) if prompt_tokens > long.above_input_tokens => &long.prices,
            _ => &self.base,
        }
    }
}

/// A per-call price for calls matching a method and path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPrice {
    /// Upper-case HTTP method, or `*` for any.
    pub method: String,
    /// `/`-separated; a `*` segment matches any one segment, the last segment matches as a prefix.
    pub path: String,
    pub price: Money,
}

/// Prices of a provider billed per call (or per character) rather than per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPrices {
    pub default: Money,
    /// Price of one billed unit reported by the provider (ElevenLabs: characters).
    pub per_character: Option<Money>,
    pub endpoints: Vec<EndpointPrice>,
}

impl RequestPrices {
    /// The most specific endpoint entry matching the call: the exact method beats `*`, then the pattern
    /// with more literal characters wins.
    fn endpoint(&self, method: &str, path: &str) -> Option<&EndpointPrice> {
        self.endpoints
            .iter()
            .filter(|e| e.method == "*" || e.method.eq_ignore_ascii_case(method))
            .filter(|e| path_matches(&e.path, path))
            .max_by_key(|e| (e.method != "*", e.path.replace('*', "").len()))
    }
}

/// Why a price table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("the default price table is invalid: {0}")]
    Default(toml::de::Error),
    #[error("the price override is invalid: {0}")]
    Override(toml::de::Error),
}

/// Token and per-request prices, keyed by provider and model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    source_date: Option<String>,
    models: BTreeMap<String, BTreeMap<String, ModelPrices>>,
    fallback: ModelPrices,
    per_request: BTreeMap<String, RequestPrices>,
    fallback_per_request: Money,
}

/// One row of `GET /api/v1/prices`: prices in USD per million tokens (tokens) or per call (requests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceRow {
    pub provider: String,
    /// The model name, `"*"` for the fallback row, absent for per-request rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub kind: PriceKind,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenPriceRow>,
    /// For per-request rows: method and path pattern, absent for the provider's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_request: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_character: Option<Money>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceKind {
    Tokens,
    Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenPriceRow {
    pub input: Money,
    pub cached_input: Money,
    pub cache_write: Money,
    pub cache_write_long: Money,
    pub audio_input: Money,
    pub output: Money,
    pub reasoning: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LongContextRow {
    pub above_input_tokens: u64,
    pub input: Money,
    pub cached_input: Money,
    pub cache_write: Money,
    pub cache_write_long: Money,
    pub audio_input: Money,
    pub output: Money,
    pub reasoning: Money,
}

impl PriceTable {
    /// The shipped table with no override.
    pub fn builtin() -> Result<PriceTable, PriceError> {
        PriceTable::load(DEFAULT_PRICES_TOML, None)
    }

    /// Loads `default` and applies `override_toml` on top: a model entry, a provider's per-request
    /// entry or the fallback in the override replaces the default's whole entry; anything else is kept.
    pub fn load(default: &str, override_toml: Option<&str>) -> Result<PriceTable, PriceError> {
        let mut raw: RawTable = toml::from_str(default).map_err(PriceError::Default)?;
        if let Some(text) = override_toml {
            let over: RawTable = toml::from_str(text).map_err(PriceError::Override)?;
            raw.merge(over);
        }
        Ok(raw.build())
    }

    /// The date the shipped (or overriding) prices were taken, as written in the table.
    pub fn source_date(&self) -> Option<&str> {
        self.source_date.as_deref()
    }

    /// Prices for a model: by exact name, else by the longest known name that the model extends with
    /// only a version suffix (see [`is_version_suffix`]). A leading `models/` (Google) is ignored.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<(&str, &ModelPrices)> {
        let models = self.models.get(provider)?;
        let model = model.strip_prefix("models/").unwrap_or(model);
        if let Some((name, prices)) = models.get_key_value(model) {
            return Some((name, prices));
        }
        // Model ids are matched in any ASCII case: a provider that accepts `GPT-4O` bills gpt-4o,
        // and the call must not fall to a price (and output bound) meant for unknown models.
        models
            .iter()
            .filter(|(name, _)| {
                strip_prefix_ci(model, name).is_some_and(|rest| {
                    rest.is_empty() || rest.strip_prefix('-').is_some_and(is_version_suffix)
                })
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(name, prices)| (name.as_str(), prices))
    }

    /// Prices for a model, or the fallback (flagged) when the model is unknown or not named.
    pub fn prices_for(&self, provider: &str, model: Option<&str>) -> (&ModelPrices, bool) {
        match model.and_then(|m| self.lookup(provider, m)) {
            Some((_, prices)) => (prices, false),
            None => (&self.fallback, true),
        }
    }

    /// Every model the table prices for a provider, by name.
    pub fn models_of(&self, provider: &str) -> impl Iterator<Item = (&str, &ModelPrices)> {
        self.models
            .get(provider)
            .into_iter()
            .flat_map(|models| models.iter().map(|(name, prices)| (name.as_str(), prices)))
    }

    /// The prices charged for a model the table does not know.
    pub fn fallback(&self) -> &ModelPrices {
        &self.fallback
    }

    /// The price of a call the table prices by an endpoint entry of its provider, if one matches
    /// (a provider's default price is not an entry: it prices what the table does not know).
    pub fn explicit_request_cost(&self, provider: &str, method: &str, path: &str) -> Option<Cost> {
        let endpoint = self.per_request.get(provider)?.endpoint(method, path)?;
        Some(Cost {
            micros: endpoint.price,
            priced_by_fallback: false,
        })
    }

    /// The cost of metered token usage.
    pub fn token_cost(&self, provider: &str, usage: &Usage) -> Cost {
        let (prices, priced_by_fallback) = self.prices_for(provider, usage.model.as_deref());
        let tier = prices.tier(usage.prompt_tokens());
        let terms = [
            (usage.input_tokens, tier.input),
            (usage.cached_input_tokens, tier.cached_input),
            (usage.cache_write_tokens, tier.cache_write),
            (usage.cache_write_long_tokens, tier.cache_write_long),
            (usage.audio_input_tokens, tier.audio_input),
            (usage.output_tokens, tier.output),
            (usage.reasoning_tokens, tier.reasoning),
        ];
        Cost {
            micros: price_tokens(&terms),
            priced_by_fallback,
        }
    }

    /// The per-request prices of a provider, if it has any.
    pub fn request_prices(&self, provider: &str) -> Option<&RequestPrices> {
        self.per_request.get(provider)
    }

    /// The cost of a call to a non-token provider. `characters` is the billed-unit count the provider
    /// reported (ElevenLabs' `character-cost` header), if any.
    ///
    /// A provider without a per-request entry is charged the fallback per-request price (flagged). A
    /// provider priced per character whose response did not report characters is charged its
    /// endpoint/default price and flagged too: the proxy may prefer to settle such a call at its
    /// reservation.
    pub fn request_cost(
        &self,
        provider: &str,
        method: &str,
        path: &str,
        characters: Option<u64>,
    ) -> Cost {
        let Some(prices) = self.per_request.get(provider) else {
            return Cost {
                micros: self.fallback_per_request,
                priced_by_fallback: true,
            };
        };
        if let Some(per_character) = prices.per_character {
            if let Some(count) = characters {
                return Cost {
                    micros: per_character.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX)),
                    priced_by_fallback: false,
                };
            }
        }
        let price = prices
            .endpoint(method, path)
            .map_or(prices.default, |e| e.price);
        Cost {
            micros: price,
            priced_by_fallback: prices.per_character.is_some(),
        }
    }

    /// The fallback per-request price, for providers without an entry.
    pub fn fallback_per_request(&self) -> Money {
        self.fallback_per_request
    }

    /// Every price as rows for the API, models first (by provider, then name), then per-request.
    pub fn to_api_rows(&self) -> Vec<PriceRow> {
        let mut rows = Vec::new();
        for (provider, models) in &self.models {
            for (model, prices) in models {
                rows.push(token_row(provider, model, prices));
            }
        }
        rows.push(token_row("*", "*", &self.fallback));
        for (provider, prices) in &self.per_request {
            rows.push(request_row(
                provider,
                None,
                prices.default,
                prices.per_character,
            ));
            for endpoint in &prices.endpoints {
                rows.push(request_row(provider, Some(endpoint), endpoint.price, None));
            }
        }
        rows.push(request_row("*", None, self.fallback_per_request, None));
        rows
    }
}

/// `ceil(Σ tokens × price / 1e6)` in `i128`, saturating at [`Money::MAX`] (a cost that large is refused
/// by any ceiling anyway).
pub(crate) fn price_tokens(terms: &[(u64, Money)]) -> Money {
    let mut total: i128 = 0;
    for &(tokens, price) in terms {
        let term = i128::from(tokens).checked_mul(i128::from(price.micros().max(0)));
        match term.and_then(|t| total.checked_add(t)) {
            Some(sum) => total = sum,
            None => return Money::MAX,
        }
    }
    let micros =
        total.div_euclid(TOKENS_PER_UNIT) + i128::from(total.rem_euclid(TOKENS_PER_UNIT) != 0);
    i64::try_from(micros).map_or(Money::MAX, Money::from_micros)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// A suffix that names a dated or pinned release of the same model, never a different model:
/// `2024-08-06`, `20250514`, `latest`, `001`. `mini-2024-07-18` is not one, so `gpt-4o-mini-2024-07-18`
/// never falls back to `gpt-4o`.
pub fn is_version_suffix(suffix: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if suffix.eq_ignore_ascii_case("latest") || digits(suffix, 8) || digits(suffix, 3) {
        return true;
    }
    let parts: Vec<&str> = suffix.split('-').collect();
    matches!(parts.as_slice(), [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2))
}

/// Matches a request path against an endpoint pattern (see [`EndpointPrice::path`]). A query string
/// on the request path is ignored. Literal segments match in any ASCII case: providers route some
/// paths case-insensitively, and `/v2/INSTANCES` must cost what `/v2/instances` costs.
fn path_matches(pattern: &str, path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let mut wanted: Vec<&str> = pattern.split('/').collect();
    let Some(last) = wanted.pop() else {
        return false;
    };
    let mut actual = path.split('/');
    for segment in wanted {
        match actual.next() {
            Some(got) if segment == "*" || segment.eq_ignore_ascii_case(got) => {}
            _ => return false,
        }
    }
    match actual.next() {
        Some(got) => {
            last == "*"
                || got
                    .get(..last.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(last))
        }
        None => false,
    }
}

fn token_row(provider: &str, model: &str, prices: &ModelPrices) -> PriceRow {
    let base = &prices.base;
    PriceRow {
        provider: provider.to_owned(),
        model: Some(model.to_owned()),
        kind: PriceKind::Tokens,
        tokens: Some(TokenPriceRow {
            input: base.input,
            cached_input: base.cached_input,
            cache_write: base.cache_write,
            cache_write_long: base.cache_write_long,
            audio_input: base.audio_input,
            output: base.output,
            reasoning: base.reasoning,
            max_output_tokens: prices.max_output_tokens,
            long_context: prices.long_context.map(|long| LongContextRow {
                above_input_tokens: long.above_input_tokens,
                input: long.prices.input,
                cached_input: long.prices.cached_input,
                cache_write: long.prices.cache_write,
                cache_write_long: long.prices.cache_write_long,
                audio_input: long.prices.audio_input,
                output: long.prices.output,
                reasoning: long.prices.reasoning,
            }),
        }),
        method: None,
        path: None,
        per_request: None,
        per_character: None,
    }
}

fn request_row(
    provider: &str,
    endpoint: Option<&EndpointPrice>,
    price: Money,
    per_character: Option<Money>,
) -> PriceRow {
    PriceRow {
        provider: provider.to_owned(),
        model: None,
        kind: PriceKind::Request,
        tokens: None,
        method: endpoint.map(|e| e.method.clone()),
        path: endpoint.map(|e| e.path.clone()),
        per_request: Some(price),
        per_character,
    }
}

// ------------------------------------------------------------------------------------ TOML shape

/// A price in the TOML: a non-negative decimal string.
#[derive(Debug, Clone, Copy)]
struct Price(Money);

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Money::parse_non_negative(&text)
            .map(Price)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    source_date: Option<String>,
    fallback: Option<RawModel>,
    fallback_per_request: Option<RawFallbackRequest>,
    #[serde(default)]
    models: BTreeMap<String, BTreeMap<String, RawModel>>,
    #[serde(default)]
    per_request: BTreeMap<String, RawRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallbackRequest {
    price: Price,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    input: Price,
    cached_input: Option<Price>,
    cache_write: Option<Price>,
    cache_write_long: Option<Price>,
    audio_input: Option<Price>,
    output: Price,
    reasoning: Option<Price>,
}

impl RawTier {
    fn build(&self) -> TokenPrices {
        let input = self.input.0;
        let cache_write = self.cache_write.map_or(input, |p| p.0);
        let output = self.output.0;
        TokenPrices {
            input,
            cached_input: self.cached_input.map_or(input, |p| p.0),
            cache_write,
            cache_write_long: self.cache_write_long.map_or(cache_write, |p| p.0),
            audio_input: self.audio_input.map_or(input, |p| p.0),
            output,
            reasoning: self.reasoning.map_or(output, |p| p.0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(flatten)]
    tier: RawTier,
    max_output_tokens: Option<u64>,
    long_context: Option<RawLongContext>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLongContext {
    above_input_tokens: u64,
    #[serde(flatten)]
    tier: RawTier,
}

impl RawModel {
    fn build(&self) -> ModelPrices {
        ModelPrices {
            base: self.tier.build(),
            long_context: self.long_context.as_ref().map(|long| LongContext {
                above_input_tokens: long.above_input_tokens,
                prices: long.tier.build(),
            }),
            max_output_tokens: self.max_output_tokens,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    default: Price,
    per_character: Option<Price>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    method: String,
    path: String,
    price: Price,
}

/// Used only when neither the default nor the override has a `[fallback]`: the dearest list prices in
/// the shipped table, so a missing section still never makes an unknown model cheap.
const BUILTIN_FALLBACK: TokenPrices = TokenPrices {
    input: Money::from_micros(15_000_000),
    cached_input: Money::from_micros(15_000_000),
    cache_write: Money::from_micros(30_000_000),
    cache_write_long: Money::from_micros(30_000_000),
    audio_input: Money::from_micros(15_000_000),
    output: Money::from_micros(75_000_000),
    reasoning: Money::from_micros(75_000_000),
};

/// Likewise for calls to providers without per-request prices.
const BUILTIN_FALLBACK_PER_REQUEST: Money = Money::from_micros(10_000);

impl RawTable {
    fn merge(&mut self, over: RawTable) {
        if over.source_date.is_some() {
            self.source_date = over.source_date;
        }
        if over.fallback.is_some() {
            self.fallback = over.fallback;
        }
        if over.fallback_per_request.is_some() {
            self.fallback_per_request = over.fallback_per_request;
        }
        for (provider, models) in over.models {
            self.models.entry(provider).or_default().extend(models);
        }
        self.per_request.extend(over.per_request);
    }

    fn build(self) -> PriceTable {
        let models = self
            .models
            .into_iter()
            .map(|(provider, models)| {
                let built = models
                    .into_iter()
                    .map(|(name, model)| (name, model.build()))
                    .collect();
                (provider, built)
            })
            .collect();
        let fallback = self.fallback.map_or(
            ModelPrices {
                base: BUILTIN_FALLBACK,
                long_context: None,
                max_output_tokens: None,
            },
            |raw| raw.build(),
        );
        let per_request = self
            .per_request
            .into_iter()
            .map(|(provider, raw)| {
                let prices = RequestPrices {
                    default: raw.default.0,
                    per_character: raw.per_character.map(|p| p.0),
                    endpoints: raw
                        .endpoints
                        .into_iter()
                        .map(|e| EndpointPrice {
                            method: e.method.to_ascii_uppercase(),
                            path: e.path,
                            price: e.price.0,
                        })
                        .collect(),
                };
                (provider, prices)
            })
            .collect();
        PriceTable {
            source_date: self.source_date,
            models,
            fallback,
            per_request,
            fallback_per_request: self
                .fallback_per_request
                .map_or(BUILTIN_FALLBACK_PER_REQUEST, |f| f.price.0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        match PriceTable::builtin() {
            Ok(table) => table,
            Err(e) => panic!("builtin table must load: {e}"),
        }
    }

    fn usd(s: &str) -> Money {
        s.parse().unwrap_or(Money::MAX)
    }

    fn matched<'a>(table: &'a PriceTable, provider: &str, model: &str) -> Option<&'a str> {
        table.lookup(provider, model).map(|(name, _)| name)
    }

    fn for_model(model: &str) -> Usage {
        Usage {
            model: Some(model.to_owned()),
            ..Usage::default()
        }
    }

    #[test]
    fn builtin_table_loads_with_every_required_model() {
        let table = table();
        let required = [
            ("openai", "gpt-4o gpt-4o-mini gpt-4.1 gpt-4.1-mini gpt-4.1-nano o1 o3 o3-mini o4-mini gpt-5 gpt-5-mini gpt-5-nano text-embedding-3-small text-embedding-3-large"),
            ("anthropic", "claude-opus-4 claude-sonnet-4 claude-3-7-sonnet claude-3-5-haiku claude-haiku-4-5 claude-sonnet-4-5 claude-opus-4-1"),
            ("google", "gemini-2.5-pro gemini-2.5-flash gemini-2.5-flash-lite gemini-2.0-flash"),
        ];
        for (provider, models) in required {
            for model in models.split(' ') {
                assert_eq!(
                    matched(&table, provider, model),
                    Some(model),
                    "{provider}/{model}"
                );
            }
        }
        assert_eq!(table.source_date(), Some("2025-10-01"));
    }

    #[test]
    fn dated_model_names_match_their_base_model() {
        let table = table();
        assert_eq!(
            matched(&table, "openai", "gpt-4o-2024-08-06"),
            Some("gpt-4o")
        );
        assert_eq!(
            matched(&table, "anthropic", "claude-sonnet-4-20250514"),
            Some("claude-sonnet-4")
        );
        assert_eq!(
            matched(&table, "anthropic", "claude-3-7-sonnet-latest"),
            Some("claude-3-7-sonnet")
        );
        assert_eq!(
            matched(&table, "google", "models/gemini-2.0-flash-001"),
            Some("gemini-2.0-flash")
        );
    }

    #[test]
    fn model_names_match_in_any_case() {
        let table = table();
        assert_eq!(matched(&table, "openai", "GPT-4o"), Some("gpt-4o"));
        assert_eq!(matched(&table, "openai", "O1-2024-12-17"), Some("o1"));
        assert_eq!(
            matched(&table, "anthropic", "Claude-Opus-4-1-LATEST"),
            Some("claude-opus-4-1")
        );
        assert_eq!(matched(&table, "openai", "GPT-4o-Mini-TTS"), None);
    }

    #[test]
    fn longest_dated_prefix_wins() {
        let table = table();
        assert_eq!(
            matched(&table, "openai", "gpt-4o-mini-2024-07-18"),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            matched(&table, "anthropic", "claude-opus-4-1-20250805"),
            Some("claude-opus-4-1")
        );
        assert_eq!(
            matched(&table, "openai", "o3-mini-2025-01-31"),
            Some("o3-mini")
        );
    }

    #[test]
    fn unrelated_longer_names_do_not_match_a_shorter_model() {
        let table = table();
        assert_eq!(matched(&table, "openai", "gpt-4o-mini-tts"), None);
        assert_eq!(matched(&table, "openai", "gpt-4o-audio-preview"), None);
        assert_eq!(matched(&table, "openai", "o1-pro"), None);
        assert_eq!(matched(&table, "anthropic", "claude-opus-4-5"), None);
        assert_eq!(matched(&table, "google", "gemini-2.5-flash-image"), None);
        assert_eq!(matched(&table, "openai", "claude-sonnet-4"), None);
    }

    #[test]
    fn openai_cost_bills_each_bucket_and_rounds_up() {
        let table = table();
        // gpt-4o: 2.50 input, 1.25 cached, 10.00 output per Mtok.
        let usage = Usage {
            input_tokens: 1_000,
            cached_input_tokens: 1_000,
            output_tokens: 1_000,
            ..for_model("gpt-4o-2024-08-06")
        };
        let cost = table.token_cost("openai", &usage);
        assert_eq!(cost.micros, Money::from_micros(2_500 + 1_250 + 10_000));
        assert!(!cost.priced_by_fallback);

        // One gpt-4o-mini input token costs 0.15 micro-dollars: charged as 1.
        let one = Usage {
            input_tokens: 1,
            ..for_model("gpt-4o-mini")
        };
        assert_eq!(
            table.token_cost("openai", &one).micros,
            Money::from_micros(1)
        );
    }

    #[test]
    fn zero_usage_costs_nothing() {
        let cost = table().token_cost("openai", &for_model("gpt-4o"));
        assert_eq!(cost.micros, Money::ZERO);
    }

    #[test]
    fn unknown_model_is_charged_at_fallback_and_flagged() {
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            ..for_model("gpt-7-ultra")
        };
        let cost = table().token_cost("openai", &usage);
        assert_eq!(cost.micros, usd("90.00"));
        assert!(cost.priced_by_fallback);
    }

    #[test]
    fn missing_model_name_is_charged_at_fallback() {
        let usage = Usage {
            input_tokens: 10,
            ..Usage::default()
        };
        let cost = table().token_cost("anthropic", &usage);
        assert!(cost.priced_by_fallback);
        assert!(cost.micros > Money::ZERO);
    }

    #[test]
    fn long_context_tier_applies_to_the_whole_request_above_threshold() {
        let table = table();
        let below = Usage {
            input_tokens: 200_000,
            output_tokens: 1_000,
            ..for_model("gemini-2.5-pro")
        };
        let above = Usage {
            input_tokens: 200_001,
            ..below.clone()
        };
        assert_eq!(table.token_cost("google", &below).micros, usd("0.26"));
        // 200,001 × 2.50 + 1,000 × 15.00, per Mtok, rounded up.
        assert_eq!(
            table.token_cost("google", &above).micros,
            Money::from_micros(515_003)
        );
    }

    #[test]
    fn anthropic_cache_buckets_use_their_own_prices() {
        // claude-sonnet-4: 3.00 input, 0.30 read, 3.75 write, 6.00 1h write, 15.00 output.
        let usage = Usage {
            input_tokens: 1_000_000,
            cached_input_tokens: 1_000_000,
            cache_write_tokens: 1_000_000,
            cache_write_long_tokens: 1_000_000,
            output_tokens: 1_000_000,
            ..for_model("claude-sonnet-4-20250514")
        };
        let cost = table().token_cost("anthropic", &usage);
        // Above 200K prompt tokens: the long-context tier, 6 + 0.6 + 7.5 + 12 + 22.5.
        assert_eq!(cost.micros, usd("48.60"));
    }

    #[test]
    fn reasoning_defaults_to_output_price() {
        let usage = Usage {
            reasoning_tokens: 1_000_000,
            ..for_model("o3")
        };
        assert_eq!(table().token_cost("openai", &usage).micros, usd("8.00"));
    }

    #[test]
    fn override_replaces_and_adds_entries() {
        let over = r#"
            [fallback]
            input = "100"
            output = "100"
            [models.openai."gpt-4o"]
            input = "1.00"
            output = "2.00"
            [models.mistral."mistral-large"]
            input = "2.00"
            output = "6.00"
        "#;
        let table = PriceTable::load(DEFAULT_PRICES_TOML, Some(over));
        let Ok(table) = table else {
            panic!("override must load: {table:?}");
        };
        let (gpt4o, _) = table.prices_for("openai", Some("gpt-4o"));
        assert_eq!(gpt4o.base.input, usd("1.00"));
        assert_eq!(gpt4o.base.cached_input, usd("1.00"), "whole entry replaced");
        assert!(
            table.lookup("openai", "gpt-4o-mini").is_some(),
            "others kept"
        );
        assert!(table.lookup("mistral", "mistral-large").is_some());
        let (fallback, flagged) = table.prices_for("openai", Some("unknown"));
        assert!(flagged);
        assert_eq!(fallback.base.input, usd("100"));
    }

    #[test]
    fn invalid_override_is_rejected_with_a_typed_error() {
        for bad in [
            "[models.openai.x]\ninput = \"-1\"\noutput = \"1\"",
            "[models.openai.x]\ninput = 1.5\noutput = \"1\"",
            "[models.openai.x]\ninput = \"1e3\"\noutput = \"1\"",
            "[models.openai.x]\ninput = \"1\"\noutput = \"1\"\ntypo = \"1\"",
        ] {
            let result = PriceTable::load(DEFAULT_PRICES_TOML, Some(bad));
            assert!(matches!(result, Err(PriceError::Override(_))), "{bad}");
        }
    }

    #[test]
    fn per_character_cost_uses_reported_characters() {
        let cost =
            table().request_cost("elevenlabs", "POST", "/v1/text-to-speech/abc", Some(1_000));
        assert_eq!(cost.micros, usd("0.30"));
        assert!(!cost.priced_by_fallback);
    }

    #[test]
    fn per_character_provider_without_header_is_flagged() {
        let cost = table().request_cost("elevenlabs", "POST", "/v1/text-to-speech/abc", None);
        assert_eq!(cost.micros, Money::ZERO);
        assert!(cost.priced_by_fallback);
    }

    #[test]
    fn endpoint_prices_match_wildcard_segments_and_prefixes() {
        let table = table();
        let sms = table.request_cost(
            "twilio",
            "POST",
            "/2010-04-01/Accounts/AC123/Messages.json",
            None,
        );
        assert_eq!(sms.micros, usd("0.0083"));
        let read = table.request_cost(
            "twilio",
            "GET",
            "/2010-04-01/Accounts/AC123/Messages.json",
            None,
        );
        assert_eq!(read.micros, Money::ZERO);
    }

    #[test]
    fn most_specific_endpoint_wins() {
        let table = table();
        assert_eq!(
            table
                .request_cost("resend", "POST", "/emails/batch", None)
                .micros,
            usd("0.09")
        );
        assert_eq!(
            table.request_cost("resend", "POST", "/emails", None).micros,
            usd("0.0009")
        );
    }

    #[test]
    fn unknown_request_provider_is_charged_fallback() {
        let cost = table().request_cost("acme", "POST", "/x", None);
        assert_eq!(cost.micros, usd("0.01"));
        assert!(cost.priced_by_fallback);
    }

    #[test]
    fn path_matching_is_segment_wise() {
        assert!(path_matches("/v2/instances", "/v2/instances"));
        assert!(path_matches("/v2/instances", "/v2/instances/abc"));
        assert!(path_matches("/v2/instances", "/v2/instances?x=1"));
        assert!(!path_matches("/v2/instances", "/v2/instance"));
        assert!(!path_matches("/v2/instances", "/v1/instances"));
        assert!(path_matches("/a/*/c", "/a/b/c.json"));
        assert!(!path_matches("/a/*/c", "/a/c"));
        assert!(path_matches("/v2/instances", "/V2/Instances"));
        assert!(path_matches("/a/*/Messages", "/A/x/messages.json"));
        assert!(!path_matches("/v2/instances", "/v2/instanc\u{e9}s"));
    }

    #[test]
    fn only_an_endpoint_entry_is_an_explicit_price() {
        let table = table();
        let calls = table.explicit_request_cost("vultr", "POST", "/v2/Instances");
        assert_eq!(calls.map(|c| c.micros), Some(usd("5.00")));
        assert_eq!(
            table.explicit_request_cost("vultr", "GET", "/v2/account"),
            None
        );
        assert_eq!(
            table.explicit_request_cost("openai", "POST", "/v1/batches"),
            None
        );
        // The uploads the token-metered providers do not bill are priced, at zero.
        for (provider, path) in [
            ("openai", "/v1/files"),
            ("openai", "/v1/moderations"),
            ("anthropic", "/v1/files"),
            ("google", "/upload/v1beta/files"),
        ] {
            let cost = table.explicit_request_cost(provider, "POST", path);
            assert_eq!(
                cost.map(|c| c.micros),
                Some(Money::ZERO),
                "{provider} {path}"
            );
        }
    }

    #[test]
    fn a_providers_models_are_listed_and_the_fallback_is_reachable() {
        let table = table();
        assert!(table.models_of("openai").any(|(name, _)| name == "o1"));
        assert_eq!(table.models_of("acme").count(), 0);
        assert_eq!(table.fallback().base.output, usd("75.00"));
    }

    #[test]
    fn api_rows_serialise_prices_as_usd_strings() {
        let rows = table().to_api_rows();
        let row = rows
            .iter()
            .find(|r| r.provider == "openai" && r.model.as_deref() == Some("gpt-4o"));
        let json = serde_json::to_value(row).unwrap_or_default();
        assert_eq!(json["input"], "2.50");
        assert_eq!(json["cached_input"], "1.25");
        assert_eq!(json["output"], "10.00");
        assert_eq!(json["kind"], "tokens");
        assert!(rows.iter().any(|r| r.provider == "twilio"
            && r.path.as_deref() == Some("/2010-04-01/Accounts/*/Messages")));
    }

    #[test]
    fn cost_saturates_instead_of_overflowing() {
        let usage = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            reasoning_tokens: u64::MAX,
            ..for_model("o1")
        };
        assert_eq!(table().token_cost("openai", &usage).micros, Money::MAX);
    }

    #[test]
    fn version_suffixes() {
        for ok in ["2024-08-06", "20250514", "latest", "001"] {
            assert!(is_version_suffix(ok), "{ok}");
        }
        for not in ["mini", "mini-2024-07-18", "preview", "2024-08", "1", "tts"] {
            assert!(!is_version_suffix(not), "{not}");
        }
    }
}
