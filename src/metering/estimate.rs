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
//!   `max_output_tokens`, times the number of choices (`n`, `candidateCount`). With no limit in the
//!   request, the model's `max_output_tokens` from the price table is the true bound; for a model the
//!   table does not know, [`EstimateConfig::default_output_tokens`] is used and the estimate is
//!   marked as not a bound.
//!
//! Every input token is priced at the dearest input bucket and every output token at the dearest
//! output bucket of the tier the input bound falls in.

use serde_json::Value;

use super::prices::{price_tokens, Cost, PriceTable};
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

/// Estimates a token-priced call from its JSON request body. `request_model` is used when the body
/// does not name the model (Google puts it in the path: see [`google_model_from_path`]).
pub fn estimate_tokens(
    table: &PriceTable,
    config: &EstimateConfig,
    provider: &str,
    dialect: Dialect,
    body: &[u8],
    request_model: Option<&str>,
) -> Estimate {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
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

/// [`estimate_tokens`] for a body already parsed (`Value::Null` when it is not JSON); `body_len`
/// is the length of the body as sent.
pub fn estimate_tokens_parsed(
    table: &PriceTable,
    config: &EstimateConfig,
    provider: &str,
    dialect: Dialect,
    body_len: usize,
    json: &Value,
    request_model: Option<&str>,
) -> Estimate {
    let model = json.get("model").and_then(Value::as_str).or(request_model);
    let (prices, priced_by_fallback) = table.prices_for(provider, model);

    let media_parts = count_media_parts(json);
    let body_len = u64::try_from(body_len).unwrap_or(u64::MAX);
    let stateful = references_stored_context(json);
    let input_tokens = body_len
        .saturating_add(media_parts.saturating_mul(config.media_allowance_tokens))
        .saturating_add(config.overhead_tokens)
        .saturating_add(if stateful {
            config.stateful_input_tokens
        } else {
            0
        });

    let (per_choice, output_bound) =
        match (requested_output(dialect, json), prices.max_output_tokens) {
            (Some(requested), Some(max)) => (requested.min(max), OutputBound::Requested),
            (Some(requested), None) => (requested, OutputBound::Requested),
            (None, Some(max)) if !priced_by_fallback => (max, OutputBound::ModelMaximum),
            (None, _) => (config.default_output_tokens, OutputBound::Default),
        };
    let output_tokens = per_choice.saturating_mul(choices(dialect, json));

    let tier = prices.tier(input_tokens);
    let micros = price_tokens(&[
        (input_tokens, tier.max_input()),
        (output_tokens, tier.max_output()),
    ]);
    Estimate {
        cost: Cost {
            micros,
            priced_by_fallback,
        },
        input_tokens,
        output_tokens,
        output_bound,
        media_parts,
    }
}

/// Estimates a call to a provider priced per request. For a provider priced per character
/// (ElevenLabs) the characters of every `text` field in a JSON body bound what it will bill; the
/// endpoint's price is the floor.
pub fn estimate_request(
    table: &PriceTable,
    provider: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Cost {
    let flat = table.request_cost(provider, method, path, None);
    let Some(per_character) = table.request_prices(provider).and_then(|p| p.per_character) else {
        return flat;
    };
    let characters = serde_json::from_slice::<Value>(body)
        .map(|json| text_characters(&json))
        .unwrap_or(0);
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

fn as_count(value: Option<&Value>) -> Option<u64> {
    value.and_then(Value::as_u64)
}

/// The request's own output limit per choice, if it sets one.
fn requested_output(dialect: Dialect, json: &Value) -> Option<u64> {
    match dialect {
        // `max_completion_tokens` superseded `max_tokens` and covers reasoning; if both are sent the
        // larger is the safe bound.
        Dialect::OpenAi => [
            as_count(json.get("max_completion_tokens")),
            as_count(json.get("max_tokens")),
            as_count(json.get("max_output_tokens")),
        ]
        .into_iter()
        .flatten()
        .max(),
        Dialect::Anthropic => as_count(json.get("max_tokens")),
        Dialect::Google => {
            let config = json
                .get("generationConfig")
                .or_else(|| json.get("generation_config"))?;
            let max = as_count(
                config
                    .get("maxOutputTokens")
                    .or_else(|| config.get("max_output_tokens")),
            )?;
            // Whether thinking counts inside maxOutputTokens is not stated clearly for every Gemini
            // model, so an explicit thinking budget is added on top.
            let thinking = as_count(
                config
                    .pointer("/thinkingConfig/thinkingBudget")
                    .or_else(|| config.pointer("/thinking_config/thinking_budget")),
            )
            .unwrap_or(0);
            Some(max.saturating_add(thinking))
        }
    }
}

/// How many alternative outputs the request asks for: each is billed.
fn choices(dialect: Dialect, json: &Value) -> u64 {
    let n = match dialect {
        Dialect::OpenAi => as_count(json.get("n")),
        Dialect::Anthropic => None,
        Dialect::Google => as_count(json.pointer("/generationConfig/candidateCount")),
    };
    n.unwrap_or(1).max(1)
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
    fn unknown_model_holds_default_output_at_fallback_price() {
        let body = json!({"model": "mystery-1", "messages": []});
        let e = estimate("openai", Dialect::OpenAi, &body);
        assert_eq!(
            (e.output_tokens, e.output_bound),
            (4_096, OutputBound::Default)
        );
        assert!(e.cost.priced_by_fallback);
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
        );
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
        );
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
    fn unparseable_body_is_still_estimated() {
        let e = estimate_tokens(
            &table(),
            &no_overhead(),
            "openai",
            Dialect::OpenAi,
            b"not json",
            None,
        );
        assert!(e.cost.priced_by_fallback);
        assert_eq!(e.input_tokens, 8);
        assert!(e.cost.micros > Money::ZERO);
    }

    #[test]
    fn per_character_request_is_bounded_by_text_characters() {
        let body = json!({"text": "héllo", "model_id": "eleven_multilingual_v2"});
        let cost = estimate_request(
            &table(),
            "elevenlabs",
            "POST",
            "/v1/text-to-speech/voice123",
            body.to_string().as_bytes(),
        );
        assert_eq!(cost.micros, Money::from_micros(5 * 300));
    }

    #[test]
    fn per_request_estimate_is_the_endpoint_price() {
        let cost = estimate_request(&table(), "resend", "POST", "/emails", b"{}");
        assert_eq!(cost.micros, Money::from_micros(900));
        let unknown = estimate_request(&table(), "acme", "GET", "/", b"");
        assert!(unknown.priced_by_fallback);
    }
}
