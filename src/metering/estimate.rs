//! Worst-case cost of a request before it is sent: the amount the spend ledger reserves, so a
//! ceiling holds even while many calls are in flight.
//!
//! The estimate must be an upper bound, and it is built from two bounds:
//! - **Input**: the request body's length in bytes. For the byte-level BPE and SentencePiece
//!   (byte-fallback) tokenizers these providers use, every text token covers at least one byte, and
//!   JSON escaping only lengthens the body, so bytes ≥ text tokens. Not so for media: a small image
//!   can cost thousands of tokens (gpt-4o-mini bills a low-detail image as 2,833), and media sent by
//!   reference (a URL, a file id, Google `fileData`) has no size in the body at all. Each media part,
//!   inline or by reference, adds [`EstimateConfig::media_allowance_tokens`]. Providers also add
//!   hidden prompt text (Anthropic's tool-use system prompt), covered by
//!   [`EstimateConfig::overhead_tokens`]. A request that pulls in server-side context (OpenAI
//!   `previous_response_id` or `conversation`, Gemini `cachedContent`) adds
//!   [`EstimateConfig::stateful_input_tokens`], a context window's worth. Long video or audio by
//!   reference, and content fetched by server-side tools (web or file search), can still exceed these
//!   allowances; the ledger then records an overshoot (see `spend::ledger`).
//! - **Output**: the request's own limit (`max_completion_tokens`, `max_tokens`, `max_output_tokens`,
//!   `generationConfig.maxOutputTokens`, plus a Gemini `thinkingBudget`), capped at the model's
//!   `max_output_tokens`, times the number of choices (`n` or `best_of`, `candidateCount`). With no
//!   limit in the request, the model's `max_output_tokens` from the price table is the true bound.
//!   A model the table does not know is held at the dearest of its provider's known models for the
//!   same request (an unknown name may be an alias or a new release of any of them), and never
//!   below the fallback prices with [`EstimateConfig::default_output_tokens`]; it is flagged
//!   `priced_by_fallback`, since a model dearer than every known one is not bounded.
//!
//! Every input token is priced at the dearest input bucket and every output token at the dearest
//! output bucket of the tier the input bound falls in.
//!
//! **Reading what the provider reads.** The body is parsed once, duplicate keys refused
//! ([`super::unique_json`]). Every count or limit is read by one function ([`read_count`]) that
//! takes what the providers take (a JSON integer, an integral float such as `5.0`, a string of
//! digits such as `"5"`) and refuses anything else that is present (fractions, values the provider
//! would refuse such as `n: 0` or `-1`, booleans, other strings, anything above [`MAX_COUNT`]), so
//! no spelling of a number is estimated as one choice and billed as five. Google's proto-JSON
//! accepts both `generationConfig.candidateCount` and `generation_config.candidate_count` (and
//! mixes of the two): every spelling is read, and where several are present the largest wins. For
//! Google the model named in the path is the one served, and so the one priced; a `model` in the
//! body is ignored.
//!
//! **Unknown endpoints of a token-metered provider** ([`worst_case`]). A state-changing call that is
//! neither a token endpoint, nor free, nor priced by an endpoint entry of the price table may still
//! start token-billed work (a batch, an assistant run, an image). It is held at the provider's
//! worst case: for every model the table prices for that provider, and for the fallback prices,
//! the input bound above (body bytes, media parts and stored context when the body is JSON, the
//! overhead) at that model's dearest input price and the model's `max_output_tokens` (the default
//! output tokens where the table has none), times the choices the body asks for (`n`,
//! `candidateCount`, read as above), at its dearest output price; the dearest of these is
//! reserved. The call is settled by the usage in its answer when there is one, else at that
//! reservation (fail closed). An operator who wants such an endpoint priced otherwise gives it an
//! endpoint entry in the price table. Not bounded by this hold: work a call starts on input stored
//! at the provider (an OpenAI batch over an uploaded file, an assistant run over a thread), whose
//! size the body does not show and whose answer reports no usage.

use serde_json::Value;

use super::prices::{price_tokens, Cost, ModelPrices, PriceTable};
use super::usage::Dialect;

/// Knobs for the worst-case estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EstimateConfig {
    /// Output tokens held when neither the request nor the price table bounds the output.
    pub default_output_tokens: u64,
    /// Input tokens added per media part (image, audio, file, document), inline or by reference.
    pub media_allowance_tokens: u64,
    /// Input tokens added to every request for prompt text the provider injects.
    pub overhead_tokens: u64,
    /// Input tokens added when the request references context stored at the provider.
    pub stateful_input_tokens: u64,
}

impl Default for EstimateConfig {
    fn default() -> Self {
        EstimateConfig {
            default_output_tokens: 4_096,
            // Covers one large high-detail image on the dearest image tokenizer we ship
            // (gpt-4o-mini: 2,833 + 5,667 per 512px tile, six tiles ≈ 36,835 tokens).
            media_allowance_tokens: 40_000,
            // Anthropic's tool-use system prompt is a few hundred tokens.
            overhead_tokens: 1_000,
            // The largest context window among the shipped models (gpt-4.1, Gemini: about 1M).
            stateful_input_tokens: 1_048_576,
        }
    }
}

/// Where the output bound of an estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputBound {
    /// The request's own output limit.
    Requested,
    /// The model's maximum output from the price table.
    ModelMaximum,
    /// [`EstimateConfig::default_output_tokens`]: a policy figure, not a true bound.
    Default,
}

/// A worst-case estimate of one token-priced call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    pub cost: Cost,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub output_bound: OutputBound,
    pub media_parts: u64,
}

/// The largest count or limit a request may carry: far above any model's context or output, and
/// below anything whose product with a price could overflow.
pub const MAX_COUNT: u64 = 1_000_000_000;

/// What a count or limit field must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountRule {
    /// 1 or more: output limits and numbers of choices.
    Positive,
    /// 0 or more, or -1: Gemini's `thinkingBudget` (0 turns thinking off, -1 lets the model
    /// decide, up to its maximum).
    Budget,
}

/// A count the request sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Value(u64),
    /// A value that asks for as much as the model allows (`thinkingBudget: -1`).
    ModelMaximum,
}

/// A count or limit field the provider would read differently from us, or refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be {}", match .rule {
    CountRule::Positive => "a positive integer",
    CountRule::Budget => "an integer of -1 or more",
})]
pub struct InvalidCount {
    /// The field as spelled in the body, with its parents: `generation_config.candidate_count`.
    pub field: String,
    pub rule: CountRule,
}

/// Why a token-priced request cannot be estimated: the proxy refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstimateError {
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error(transparent)]
    InvalidCount(#[from] InvalidCount),
}

/// Reads one count or limit: a JSON integer, an integral float (`5.0`) or a string of ASCII digits
/// (`"5"`); `null` or absent is no value. Anything else present is refused.
pub fn read_count(
    value: Option<&Value>,
    field: impl FnOnce() -> String,
    rule: CountRule,
) -> Result<Option<Count>, InvalidCount> {
    let number = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_COUNT as f64)
                .map(|f| f as i64)
        }),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse::<i64>().ok()
        }
        Some(_) => None,
    };
    let count = match (number, rule) {
        (Some(n), _) if n > MAX_COUNT as i64 => None,
        (Some(n), CountRule::Positive) if n >= 1 => u64::try_from(n).ok().map(Count::Value),
        (Some(-1), CountRule::Budget) => Some(Count::ModelMaximum),
        (Some(n), CountRule::Budget) if n >= 0 => u64::try_from(n).ok().map(Count::Value),
        _ => None,
    };
    match count {
        Some(count) => Ok(Some(count)),
        None => Err(InvalidCount {
            field: field(),
            rule,
        }),
    }
}

/// The largest of a field read under each of its spellings in each of the given parents, named
/// in errors as `parent.field`. `ModelMaximum` beats any value.
fn largest_count(
    parents: &[(&str, &Value)],
    spellings: &[&str],
    rule: CountRule,
) -> Result<Option<Count>, InvalidCount> {
    let mut largest: Option<Count> = None;
    for (path, parent) in parents {
        for spelling in spellings {
            let field = || {
                if path.is_empty() {
                    (*spelling).to_owned()
                } else {
                    format!("{path}.{spelling}")
                }
            };
            let read = read_count(parent.get(*spelling), field, rule)?;
            largest = match (largest, read) {
                (Some(Count::ModelMaximum), _) | (_, Some(Count::ModelMaximum)) => {
                    Some(Count::ModelMaximum)
                }
                (Some(Count::Value(a)), Some(Count::Value(b))) => Some(Count::Value(a.max(b))),
                (a, b) => a.or(b),
            };
        }
    }
    Ok(largest)
}

/// The objects found under any of `spellings` in any of `parents`, with their dotted paths.
fn children<'a>(parents: &[(&str, &'a Value)], spellings: &[&str]) -> Vec<(String, &'a Value)> {
    let mut found = Vec::new();
    for (path, parent) in parents {
        for spelling in spellings {
            if let Some(child) = parent.get(*spelling).filter(|c| c.is_object()) {
                let child_path = if path.is_empty() {
                    (*spelling).to_owned()
                } else {
                    format!("{path}.{spelling}")
                };
                found.push((child_path, child));
            }
        }
    }
    found
}

/// Estimates a token-priced call from its JSON request body (parsed here, duplicate keys
/// refused as not JSON). `request_model` is used when the body does not name the model, and is
/// the model for Google (see [`google_model_from_path`]).
pub fn estimate_tokens(
    table: &PriceTable,
    config: &EstimateConfig,
    provider: &str,
    dialect: Dialect,
    body: &[u8],
    request_model: Option<&str>,
) -> Result<Estimate, EstimateError> {
    let json = super::unique_json::parse(body).map_err(|_| EstimateError::NotAnObject)?;
    estimate_tokens_parsed(
        table,
        config,
        provider,
        dialect,
        body.len(),
        &json,
        request_model,
    )
}

/// [`estimate_tokens`] for a body already parsed; `body_len` is the length of the body as sent.
pub fn estimate_tokens_parsed(
    table: &PriceTable,
    config: &EstimateConfig,
    provider: &str,
    dialect: Dialect,
    body_len: usize,
    json: &Value,
    request_model: Option<&str>,
) -> Result<Estimate, EstimateError> {
    if !json.is_object() {
        return Err(EstimateError::NotAnObject);
    }
    // Google serves the model in the path, whatever the body says.
    let model = match dialect {
        Dialect::Google => request_model,
        Dialect::OpenAi | Dialect::Anthropic => {
            json.get("model").and_then(Value::as_str).or(request_model)
        }
    };
    let requested = requested_output(dialect, json)?;
    let choices = choices(dialect, json)?;
    let (prices, priced_by_fallback) = table.prices_for(provider, model);
    let (input_tokens, media_parts) = input_bound(config, body_len, Some(json));
    let one = |prices: &ModelPrices, known: bool| {
        model_bound(config, prices, known, requested, choices, input_tokens)
    };
    let mut worst = one(prices, !priced_by_fallback);
    // A name the table does not know may be an alias or a new release of any model the provider
    // serves: the hold is the dearest of them, never less than the fallback's.
    if priced_by_fallback {
        for (_, known) in table.models_of(provider) {
            let bound = one(known, true);
            if bound.0 > worst.0 {
                worst = bound;
            }
        }
    }
    let (micros, output_tokens, output_bound) = worst;
    Ok(Estimate {
        cost: Cost {
            micros,
            priced_by_fallback,
        },
        input_tokens,
        output_tokens,
        output_bound,
        media_parts,
    })
}

/// One model's bound for a request: its cost, output tokens and where their bound came from.
/// `known` is false for the fallback prices, whose output limit is no model's.
fn model_bound(
    config: &EstimateConfig,
    prices: &ModelPrices,
    known: bool,
    requested: Option<Count>,
    choices: u64,
    input_tokens: u64,
) -> (crate::money::Money, u64, OutputBound) {
    let (per_choice, output_bound) = match (requested, prices.max_output_tokens) {
        (Some(Count::Value(requested)), Some(max)) => (requested.min(max), OutputBound::Requested),
        (Some(Count::Value(requested)), None) => (requested, OutputBound::Requested),
        (_, Some(max)) if known => (max, OutputBound::ModelMaximum),
        (_, _) => (config.default_output_tokens, OutputBound::Default),
    };
    let output_tokens = per_choice.saturating_mul(choices);
    let tier = prices.tier(input_tokens);
    let micros = price_tokens(&[
        (input_tokens, tier.max_input()),
        (output_tokens, tier.max_output()),
    ]);
    (micros, output_tokens, output_bound)
}

/// The input bound of a call (see the module doc) and the media parts counted in it.
fn input_bound(config: &EstimateConfig, body_len: usize, json: Option<&Value>) -> (u64, u64) {
    let media_parts = json.map_or(0, count_media_parts);
    let stateful = json.is_some_and(references_stored_context);
    let body_len = u64::try_from(body_len).unwrap_or(u64::MAX);
    let tokens = body_len
        .saturating_add(media_parts.saturating_mul(config.media_allowance_tokens))
        .saturating_add(config.overhead_tokens)
        .saturating_add(if stateful {
            config.stateful_input_tokens
        } else {
            0
        });
    (tokens, media_parts)
}

/// The worst case of a state-changing call to a token-metered provider at an endpoint keybroker
/// does not know (see the module doc): the dearest of the provider's models and the fallback, at
/// the input bound and each model's maximum output times the choices the body asks for (read as
/// for a token endpoint of `dialect`, in case it is one in a spelling keybroker does not know).
/// Always marked `priced_by_fallback`: it is a hold, not a price.
pub fn worst_case(
    table: &PriceTable,
    config: &EstimateConfig,
    provider: &str,
    dialect: Dialect,
    body_len: usize,
    json: Option<&Value>,
) -> Result<Estimate, InvalidCount> {
    let (input_tokens, media_parts) = input_bound(config, body_len, json);
    let choices = match json {
        Some(json) => choices(dialect, json)?,
        None => 1,
    };
    let candidates = table
        .models_of(provider)
        .map(|(_, prices)| prices)
        .chain(std::iter::once(table.fallback()));
    let mut worst = Estimate {
        cost: Cost {
            micros: crate::money::Money::ZERO,
            priced_by_fallback: true,
        },
        input_tokens,
        output_tokens: 0,
        output_bound: OutputBound::ModelMaximum,
        media_parts,
    };
    for prices in candidates {
        let (per_choice, output_bound) = match prices.max_output_tokens {
            Some(max) => (max, OutputBound::ModelMaximum),
            None => (config.default_output_tokens, OutputBound::Default),
        };
        let output_tokens = per_choice.saturating_mul(choices);
        let tier = prices.tier(input_tokens);
        let micros = price_tokens(&[
            (input_tokens, tier.max_input()),
            (output_tokens, tier.max_output()),
        ]);
        if micros > worst.cost.micros {
            worst.cost.micros = micros;
            worst.output_tokens = output_tokens;
            worst.output_bound = output_bound;
        }
    }
    Ok(worst)
}

/// Estimates a call to a provider priced per request. For a provider priced per character
/// (ElevenLabs) the characters of every `text` field in a JSON body bound what it will bill; the
/// endpoint's price is the floor. `json` is the body, parsed, when it is JSON.
pub fn estimate_request(
    table: &PriceTable,
    provider: &str,
    method: &str,
    path: &str,
    json: Option<&Value>,
) -> Cost {
    let flat = table.request_cost(provider, method, path, None);
    let Some(per_character) = table.request_prices(provider).and_then(|p| p.per_character) else {
        return flat;
    };
    let characters = json.map_or(0, text_characters);
    let by_characters = per_character.saturating_mul(i64::try_from(characters).unwrap_or(i64::MAX));
    Cost {
        micros: by_characters.max(flat.micros),
        priced_by_fallback: false,
    }
}

/// The model in a Google path such as `/v1beta/models/gemini-2.5-flash:streamGenerateContent`.
pub fn google_model_from_path(path: &str) -> Option<&str> {
    let after = path.split_once("models/")?.1;
    let model = after.split([':', '/', '?']).next()?;
    (!model.is_empty()).then_some(model)
}

/// Google's generation configs, under either spelling, at the top of the body.
fn google_configs(json: &Value) -> Vec<(String, &Value)> {
    children(&[("", json)], &["generationConfig", "generation_config"])
}

fn as_parents<'a>(found: &'a [(String, &'a Value)]) -> Vec<(&'a str, &'a Value)> {
    found.iter().map(|(path, v)| (path.as_str(), *v)).collect()
}

/// The request's own output limit per choice, if it sets one.
fn requested_output(dialect: Dialect, json: &Value) -> Result<Option<Count>, InvalidCount> {
    match dialect {
        // `max_completion_tokens` superseded `max_tokens` and covers reasoning; if both are sent the
        // larger is the safe bound.
        Dialect::OpenAi => largest_count(
            &[("", json)],
            &["max_completion_tokens", "max_tokens", "max_output_tokens"],
            CountRule::Positive,
        ),
        Dialect::Anthropic => largest_count(&[("", json)], &["max_tokens"], CountRule::Positive),
        Dialect::Google => {
            let configs = google_configs(json);
            let configs = as_parents(&configs);
            let max = largest_count(
                &configs,
                &["maxOutputTokens", "max_output_tokens"],
                CountRule::Positive,
            )?;
            // Whether thinking counts inside maxOutputTokens is not stated clearly for every Gemini
            // model, so an explicit thinking budget is added on top.
            let thinking = children(&configs, &["thinkingConfig", "thinking_config"]);
            let budget = largest_count(
                &as_parents(&thinking),
                &["thinkingBudget", "thinking_budget"],
                CountRule::Budget,
            )?;
            Ok(match (max, budget) {
                (None, _) => None,
                (Some(Count::ModelMaximum), _) | (_, Some(Count::ModelMaximum)) => {
                    Some(Count::ModelMaximum)
                }
                (Some(Count::Value(max)), Some(Count::Value(budget))) => {
                    Some(Count::Value(max.saturating_add(budget)))
                }
                (Some(max), None) => Some(max),
            })
        }
    }
}

/// How many alternative outputs the request asks for: each is billed.
fn choices(dialect: Dialect, json: &Value) -> Result<u64, InvalidCount> {
    let n = match dialect {
        // Legacy completions generate `best_of` candidates server-side and bill them all.
        Dialect::OpenAi => largest_count(&[("", json)], &["n", "best_of"], CountRule::Positive)?,
        Dialect::Anthropic => None,
        Dialect::Google => {
            let configs = google_configs(json);
            largest_count(
                &as_parents(&configs),
                &["candidateCount", "candidate_count"],
                CountRule::Positive,
            )?
        }
    };
    Ok(match n {
        Some(Count::Value(n)) => n.max(1),
        // Not produced by the Positive rule.
        Some(Count::ModelMaximum) | None => 1,
    })
}

/// Whether the request makes the provider add context stored on its side to the prompt.
fn references_stored_context(json: &Value) -> bool {
    let present = |key: &str| json.get(key).is_some_and(|v| !v.is_null());
    [
        "previous_response_id",
        "conversation",
        "cachedContent",
        "cached_content",
    ]
    .into_iter()
    .any(present)
}

/// Content parts carrying media, across the three request formats.
fn count_media_parts(json: &Value) -> u64 {
    const MEDIA_TYPES: [&str; 8] = [
        "image_url",
        "input_image",
        "input_audio",
        "input_file",
        "file",
        "image",
        "document",
        "audio",
    ];
    const MEDIA_KEYS: [&str; 4] = ["inlineData", "inline_data", "fileData", "file_data"];
    match json {
        Value::Array(items) => items
            .iter()
            .map(count_media_parts)
            .fold(0, u64::saturating_add),
        Value::Object(map) => {
            let is_media = map
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| MEDIA_TYPES.contains(&t))
                || MEDIA_KEYS.iter().any(|key| map.contains_key(*key));
            map.values()
                .map(count_media_parts)
                .fold(u64::from(is_media), u64::saturating_add)
        }
        _ => 0,
    }
}

/// Characters in every string under a `text` key.
fn text_characters(json: &Value) -> u64 {
    match json {
        Value::Array(items) => items
            .iter()
            .map(text_characters)
            .fold(0, u64::saturating_add),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) if key == "text" => {
                    u64::try_from(text.chars().count()).unwrap_or(u64::MAX)
                }
                other => text_characters(other),
            })
            .fold(0, u64::saturating_add),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::metering::usage::{usage_from_json, Usage};
    use crate::money::Money;
    use serde_json::json;

    fn table() -> PriceTable {
        PriceTable::builtin().unwrap()
    }

    fn no_overhead() -> EstimateConfig {
        EstimateConfig {
            overhead_tokens: 0,
            ..EstimateConfig::default()
        }
    }

    fn estimate(provider: &str, dialect: Dialect, body: &Value) -> Estimate {
        estimate_tokens(
            &table(),
            &no_overhead(),
            provider,
            dialect,
            body.to_string().as_bytes(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn openai_estimate_uses_body_bytes_and_max_completion_tokens() {
        let body = json!({"model": "gpt-4o", "max_completion_tokens": 100,
            "messages": [{"role": "user", "content": "Hello"}]});
        let bytes = body.to_string().len() as u64;
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!((e.input_tokens, e.output_tokens), (bytes, 100));
        assert_eq!(e.output_bound, OutputBound::Requested);
        // gpt-4o: 2.50 input, 10.00 output per Mtok, rounded up.
        let expected = (bytes * 2_500_000 + 100 * 10_000_000).div_ceil(1_000_000);
        assert_eq!(e.cost.micros, Money::from_micros(expected as i64));
    }

    #[test]
    fn missing_output_limit_holds_the_model_maximum() {
        let body = json!({"model": "gpt-4.1-mini", "messages": []});
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!(
            (e.output_tokens, e.output_bound),
            (32_768, OutputBound::ModelMaximum)
        );
    }

    #[test]
    fn an_unknown_model_is_held_at_the_dearest_known_model_of_its_provider() {
        // o1: 15.00 input, 60.00 output per Mtok, up to 100,000 output tokens.
        let body = json!({"model": "mystery-1", "messages": []});
        let bytes = body.to_string().len() as u64;
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!(
            (e.output_tokens, e.output_bound),
            (100_000, OutputBound::ModelMaximum)
        );
        assert!(e.cost.priced_by_fallback);
        let o1 = (bytes * 15_000_000 + 100_000 * 60_000_000).div_ceil(1_000_000);
        assert_eq!(e.cost.micros, Money::from_micros(o1 as i64));
        // With a limit, the limit at the dearest output price: the fallback's 75.00.
        let body = json!({"model": "O1-Pro", "max_tokens": 10, "messages": []});
        let bytes = body.to_string().len() as u64;
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!(
            (e.output_tokens, e.output_bound),
            (10, OutputBound::Requested)
        );
        let fallback = (bytes * 15_000_000 + 10 * 75_000_000).div_ceil(1_000_000);
        assert_eq!(e.cost.micros, Money::from_micros(fallback as i64));
        // A provider with no models in the table falls to the default output.
        let body = json!({"model": "acme-large", "messages": []});
        let e = estimate("acme-llm", Dialect::OpenAi, &body);
        assert_eq!(
            (e.output_tokens, e.output_bound),
            (4_096, OutputBound::Default)
        );
    }

    #[test]
    fn requested_output_is_capped_at_model_maximum_and_multiplied_by_choices() {
        let body = json!({"model": "gpt-4o", "max_tokens": 1_000_000, "n": 3, "messages": []});
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!(e.output_tokens, 16_384 * 3);
    }

    #[test]
    fn anthropic_estimate_uses_max_tokens_and_cache_write_price() {
        let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hi"}]});
        let bytes = body.to_string().len() as u64;
        let e = estimate("anthropic", Dialect::Anthropic, &body);
        assert_eq!(e.output_tokens, 1024);
        // Input at the 1-hour cache-write price (6.00), the dearest input bucket.
        let expected = (bytes * 6_000_000 + 1024 * 15_000_000).div_ceil(1_000_000);
        assert_eq!(e.cost.micros, Money::from_micros(expected as i64));
    }

    #[test]
    fn google_estimate_reads_generation_config_and_path_model() {
        let body = json!({"contents": [{"parts": [{"text": "Hi"}]}],
            "generationConfig": {"maxOutputTokens": 500, "candidateCount": 2,
                                 "thinkingConfig": {"thinkingBudget": 1000}}});
        let model =
            google_model_from_path("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");
        assert_eq!(model, Some("gemini-2.5-flash"));
        let e = estimate_tokens(
            &table(),
            &no_overhead(),
            "google",
            Dialect::Google,
            body.to_string().as_bytes(),
            model,
        )
        .unwrap();
        assert_eq!(e.output_tokens, 3_000);
        assert!(!e.cost.priced_by_fallback);
    }

    #[test]
    fn media_parts_add_the_allowance() {
        let body = json!({"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        ]}]});
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!(e.media_parts, 1);
        assert_eq!(e.input_tokens, body.to_string().len() as u64 + 40_000);

        let gemini = json!({"contents": [{"parts": [
            {"fileData": {"mimeType": "video/mp4", "fileUri": "gs://b/v.mp4"}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}]});
        assert_eq!(count_media_parts(&gemini), 2);
    }

    #[test]
    fn stored_context_adds_a_context_window() {
        let body =
            json!({"model": "gpt-5", "previous_response_id": "resp_123", "input": "and then?"});
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!(e.input_tokens, body.to_string().len() as u64 + 1_048_576);
        let gemini = json!({"cachedContent": "cachedContents/abc", "contents": []});
        assert!(references_stored_context(&gemini));
        assert!(!references_stored_context(
            &json!({"previous_response_id": null})
        ));
    }

    #[test]
    fn overhead_is_added_to_input() {
        let body = br#"{"model":"gpt-4o","max_tokens":1}"#;
        let e = estimate_tokens(
            &table(),
            &EstimateConfig::default(),
            "openai",
            Dialect::OpenAi,
            body,
            None,
        )
        .unwrap();
        assert_eq!(e.input_tokens, body.len() as u64 + 1_000);
    }

    #[test]
    fn estimate_bounds_the_metered_cost_of_a_real_exchange() {
        let request = json!({"model": "gpt-4o-mini", "max_completion_tokens": 50,
            "messages": [{"role": "user", "content": "Say hello in five words."}]});
        let response = json!({"model": "gpt-4o-mini-2024-07-18",
            "usage": {"prompt_tokens": 14, "completion_tokens": 7,
                      "prompt_tokens_details": {"cached_tokens": 0}}});
        let e = estimate("openai", Dialect::OpenAi, &request);
        let usage: Usage = usage_from_json(Dialect::OpenAi, &response, None).unwrap();
        assert!(table().token_cost("openai", &usage).micros <= e.cost.micros);
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_refused() {
        for body in [&b"not json"[..], b"[1]", b"42", br#"{"n": 1, "n": 2}"#, b""] {
            let e = estimate_tokens(
                &table(),
                &no_overhead(),
                "openai",
                Dialect::OpenAi,
                body,
                None,
            );
            assert_eq!(e, Err(EstimateError::NotAnObject), "{body:?}");
        }
    }

    #[test]
    fn per_character_request_is_bounded_by_text_characters() {
        let body = json!({"text": "héllo", "model_id": "eleven_multilingual_v2"});
        let cost = estimate_request(
            &table(),
            "elevenlabs",
            "POST",
            "/v1/text-to-speech/voice123",
            Some(&body),
        );
        assert_eq!(cost.micros, Money::from_micros(5 * 300));
    }

    #[test]
    fn per_request_estimate_is_the_endpoint_price() {
        let cost = estimate_request(&table(), "resend", "POST", "/emails", Some(&json!({})));
        assert_eq!(cost.micros, Money::from_micros(900));
        let unknown = estimate_request(&table(), "acme", "GET", "/", None);
        assert!(unknown.priced_by_fallback);
    }

    fn try_estimate(
        provider: &str,
        dialect: Dialect,
        body: &Value,
    ) -> Result<Estimate, EstimateError> {
        estimate_tokens(
            &table(),
            &no_overhead(),
            provider,
            dialect,
            body.to_string().as_bytes(),
            Some("gemini-2.5-flash"),
        )
    }

    fn invalid(field: &str) -> Result<Estimate, EstimateError> {
        Err(EstimateError::InvalidCount(InvalidCount {
            field: field.to_owned(),
            rule: CountRule::Positive,
        }))
    }

    #[test]
    fn a_count_is_read_from_an_integer_an_integral_float_or_a_string_of_digits() {
        let field = || "n".to_owned();
        for (value, expected) in [
            (json!(5), 5),
            (json!(5.0), 5),
            (json!("5"), 5),
            (json!("0005"), 5),
            (json!(1e3), 1_000),
            (json!(MAX_COUNT), MAX_COUNT),
        ] {
            assert_eq!(
                read_count(Some(&value), field, CountRule::Positive),
                Ok(Some(Count::Value(expected))),
                "{value}"
            );
        }
        assert_eq!(read_count(None, field, CountRule::Positive), Ok(None));
        assert_eq!(
            read_count(Some(&Value::Null), field, CountRule::Positive),
            Ok(None)
        );
    }

    #[test]
    fn a_count_in_any_other_shape_is_refused() {
        let field = || "n".to_owned();
        for value in [
            json!(0),
            json!(-1),
            json!(5.5),
            json!(-0.0e0 - 1.0),
            json!(true),
            json!("5.0"),
            json!(" 5"),
            json!("-1"),
            json!("five"),
            json!(""),
            json!([5]),
            json!({"n": 5}),
            json!(MAX_COUNT + 1),
            json!(1e300),
            json!(u64::MAX),
            json!("99999999999"),
        ] {
            let read = read_count(Some(&value), field, CountRule::Positive);
            assert_eq!(
                read,
                Err(InvalidCount {
                    field: "n".to_owned(),
                    rule: CountRule::Positive
                }),
                "{value}"
            );
        }
        assert_eq!(
            read_count(Some(&json!(-1)), field, CountRule::Budget),
            Ok(Some(Count::ModelMaximum))
        );
        assert_eq!(
            read_count(Some(&json!(0)), field, CountRule::Budget),
            Ok(Some(Count::Value(0)))
        );
        assert!(read_count(Some(&json!(-2)), field, CountRule::Budget).is_err());
    }

    #[test]
    fn every_spelling_of_a_choice_count_is_reserved_as_that_many_choices() {
        let five = 16_384 * 5;
        for n in [json!(5), json!(5.0), json!("5")] {
            let body = json!({"model": "gpt-4o", "n": n, "messages": []});
            assert_eq!(
                estimate("openai", Dialect::OpenAi, &body).output_tokens,
                five
            );
        }
        let best_of = json!({"model": "gpt-4o", "n": 1, "best_of": 5, "prompt": "x"});
        assert_eq!(
            estimate("openai", Dialect::OpenAi, &best_of).output_tokens,
            five
        );
        for n in [json!(-1), json!(0), json!(2.5), json!("2x"), json!(false)] {
            let body = json!({"model": "gpt-4o", "n": n, "messages": []});
            assert_eq!(
                try_estimate("openai", Dialect::OpenAi, &body),
                invalid("n"),
                "{n}"
            );
        }
        let body = json!({"model": "gpt-4o", "max_tokens": "lots", "messages": []});
        assert_eq!(
            try_estimate("openai", Dialect::OpenAi, &body),
            invalid("max_tokens")
        );
        let body = json!({"model": "claude-sonnet-4", "max_tokens": 0, "messages": []});
        assert_eq!(
            try_estimate("anthropic", Dialect::Anthropic, &body),
            invalid("max_tokens")
        );
    }

    #[test]
    fn google_reads_both_spellings_and_the_larger_wins() {
        // gemini-2.5-flash allows 65,536 output tokens.
        for (body, expected) in [
            (
                json!({"generation_config": {"candidate_count": 3, "max_output_tokens": 100}}),
                300,
            ),
            (
                json!({"generationConfig": {"candidate_count": "3", "maxOutputTokens": 100.0}}),
                300,
            ),
            (
                json!({"generationConfig": {"candidateCount": 1, "maxOutputTokens": 10},
                       "generation_config": {"candidate_count": 4, "max_output_tokens": 20}}),
                80,
            ),
            (
                json!({"generationConfig": {"maxOutputTokens": 10, "max_output_tokens": 50,
                       "thinking_config": {"thinking_budget": 5}, "thinkingConfig": {"thinkingBudget": 7}}}),
                57,
            ),
            (
                json!({"generationConfig": {"maxOutputTokens": 10, "thinkingConfig": {"thinkingBudget": -1}}}),
                65_536,
            ),
            (
                json!({"generationConfig": {"candidateCount": 2}}),
                65_536 * 2,
            ),
        ] {
            let e = try_estimate("google", Dialect::Google, &body).unwrap();
            assert_eq!(e.output_tokens, expected, "{body}");
        }
        let bad = json!({"generation_config": {"candidate_count": 2.5}});
        assert_eq!(
            try_estimate("google", Dialect::Google, &bad),
            invalid("generation_config.candidate_count")
        );
        let bad = json!({"generationConfig": {"thinking_config": {"thinking_budget": -7}}});
        assert_eq!(
            try_estimate("google", Dialect::Google, &bad),
            Err(EstimateError::InvalidCount(InvalidCount {
                field: "generationConfig.thinking_config.thinking_budget".to_owned(),
                rule: CountRule::Budget,
            }))
        );
    }

    #[test]
    fn google_prices_the_model_in_the_path_not_the_one_in_the_body() {
        let body =
            json!({"model": "gemini-2.0-flash", "generationConfig": {"maxOutputTokens": 1000}});
        let e = estimate_tokens(
            &table(),
            &no_overhead(),
            "google",
            Dialect::Google,
            body.to_string().as_bytes(),
            Some("gemini-2.5-pro"),
        )
        .unwrap();
        let bytes = body.to_string().len() as u64;
        // gemini-2.5-pro: 1.25 input, 10.00 output per Mtok.
        let expected = (bytes * 1_250_000 + 1000 * 10_000_000).div_ceil(1_000_000);
        assert_eq!(e.cost.micros, Money::from_micros(expected as i64));
    }

    #[test]
    fn the_worst_case_is_the_dearest_model_at_its_maximum_output() {
        let e = worst_case(
            &table(),
            &no_overhead(),
            "openai",
            Dialect::OpenAi,
            1_000,
            None,
        )
        .unwrap();
        // o1: 15.00 input, 60.00 output per Mtok, 100,000 output tokens.
        let expected = (1_000 * 15_000_000 + 100_000 * 60_000_000u64).div_ceil(1_000_000);
        assert_eq!(e.cost.micros, Money::from_micros(expected as i64));
        assert_eq!(e.output_tokens, 100_000);
        assert!(e.cost.priced_by_fallback);
        // Above every model the provider has, at any body size.
        for (name, prices) in table().models_of("openai") {
            let max = prices.max_output_tokens.unwrap_or(4_096);
            let tier = prices.tier(1_000);
            let cost = price_tokens(&[(1_000, tier.max_input()), (max, tier.max_output())]);
            assert!(cost <= e.cost.micros, "{name}");
        }
        // A provider the table has no models for is held at the fallback prices.
        let unknown = worst_case(
            &table(),
            &no_overhead(),
            "acme-llm",
            Dialect::OpenAi,
            0,
            None,
        )
        .unwrap();
        assert_eq!(unknown.cost.micros, Money::from_micros(4_096 * 75));
        // Media parts and stored context in a JSON body raise the input bound.
        let body = json!({"previous_response_id": "resp_1", "input": [{"type": "input_image"}]});
        let stateful = worst_case(
            &table(),
            &no_overhead(),
            "openai",
            Dialect::OpenAi,
            10,
            Some(&body),
        )
        .unwrap();
        assert_eq!(stateful.input_tokens, 10 + 40_000 + 1_048_576);
    }

    #[test]
    fn the_worst_case_multiplies_by_the_choices_the_body_asks_for() {
        let body = json!({"generation_config": {"candidate_count": "8"}});
        let e = worst_case(
            &table(),
            &no_overhead(),
            "google",
            Dialect::Google,
            10,
            Some(&body),
        )
        .unwrap();
        // gemini-2.5-pro and -flash both allow 65,536 output tokens.
        assert_eq!(e.output_tokens, 8 * 65_536);
        let bad = json!({"n": 2.5});
        assert_eq!(
            worst_case(
                &table(),
                &no_overhead(),
                "openai",
                Dialect::OpenAi,
                10,
                Some(&bad)
            ),
            Err(InvalidCount {
                field: "n".to_owned(),
                rule: CountRule::Positive
            })
        );
    }
}
