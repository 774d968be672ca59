//! Reads what a provider says a call used, from a whole JSON response or from a stream fed as it
//! passes through, and normalises it into [`Usage`] buckets the price table can bill.
//!
//! Per provider, what is counted where (each token lands in exactly one bucket, so nothing is billed
//! twice):
//! - **OpenAI** chat/embeddings: `prompt_tokens` includes `prompt_tokens_details.cached_tokens`, and
//!   `completion_tokens` includes `completion_tokens_details.reasoning_tokens`; we split them out.
//!   The Responses API does the same with `input_tokens`/`output_tokens` and their `*_details`.
//! - **Anthropic**: `input_tokens` excludes cache reads and writes, which come separately
//!   (`cache_read_input_tokens`, `cache_creation_input_tokens`, the latter split by TTL in
//!   `cache_creation`); thinking tokens are inside `output_tokens` and not reported apart.
//! - **Google**: `promptTokenCount` includes `cachedContentTokenCount`; `thoughtsTokenCount` is *not*
//!   inside `candidatesTokenCount` and is billed as output; `toolUsePromptTokenCount` is billed as input.
//!
//! A report that makes no sense is not believed ([`NonsenseUsage`]): a count that is negative, not
//! a JSON integer (the providers send integers, so `"12"` or `12.5` is not one), above
//! [`MAX_REPORTED_TOKENS`], or a usage object that is not an object. The call is then settled at
//! its reservation, as if no usage had come (fail closed). A count that is absent or `null` is 0
//! (Anthropic's `message_delta` sends `null` for what it does not update).

use serde::Serialize;
use serde_json::Value;

use super::sse::{SseEvent, SseItem, SseParser, DEFAULT_MAX_EVENT_BYTES};

/// Which provider's wire format a response is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Chat Completions, Responses and Embeddings.
    OpenAi,
    /// Messages.
    Anthropic,
    /// `generateContent` / `streamGenerateContent`.
    Google,
}

/// Token usage of one call, in disjoint billing buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The model that served the call (from the response, else the request).
    pub model: Option<String>,
    /// Prompt tokens billed at the plain input price: not cached, not cache writes, not audio.
    pub input_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_input_tokens: u64,
    /// Prompt tokens written to a short-lived (Anthropic: 5-minute) cache.
    pub cache_write_tokens: u64,
    /// Prompt tokens written to a long-lived (Anthropic: 1-hour) cache.
    pub cache_write_long_tokens: u64,
    /// Audio prompt tokens, where the provider prices them apart (Google).
    pub audio_input_tokens: u64,
    /// Generated tokens other than reasoning.
    pub output_tokens: u64,
    /// Reasoning/thinking tokens, where the provider reports them apart.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// The size of the prompt, all prompt buckets together: what long-context thresholds compare.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cached_input_tokens)
            .saturating_add(self.cache_write_tokens)
            .saturating_add(self.cache_write_long_tokens)
            .saturating_add(self.audio_input_tokens)
    }
}

/// The most tokens one count of one call may report: far above any context window and output
/// limit. A larger figure is a broken report, not a bill.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// A usage report that makes no sense (see the module doc): the call settles at its reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the provider's usage report makes no sense")]
pub struct NonsenseUsage;

/// Usage from a whole (non-streamed) JSON response body. `None` when the body carries no usage,
/// or usage that makes no sense (see [`read_usage_body`] to tell the two apart).
pub fn usage_from_body(
    dialect: Dialect,
    body: &[u8],
    request_model: Option<&str>,
) -> Option<Usage> {
    read_usage_body(dialect, body, request_model).ok().flatten()
}

/// Usage from a whole JSON response body: `Ok(None)` when it carries none (or is not JSON).
pub fn read_usage_body(
    dialect: Dialect,
    body: &[u8],
    request_model: Option<&str>,
) -> Result<Option<Usage>, NonsenseUsage> {
    let value = if body.trim_ascii_start().starts_with(b"[") {
        serde_json::from_slice::<Value>(body).ok()
    } else {
        serde_json::from_slice::<Metered>(body).ok().map(|m| m.0)
    };
    match value {
        Some(value) => read_usage_json(dialect, &value, request_model),
        None => Ok(None),
    }
}

/// The members of a response object that usage and the model are read from.
const METERED_MEMBERS: [&str; 6] = [
    "usage",
    "usageMetadata",
    "model",
    "modelVersion",
    "response",
    "message",
];

/// A response object with only [`METERED_MEMBERS`] built; every other member (the generated
/// content, most of a large body) is checked as JSON and skipped, never allocated.
struct Metered(Value);

impl<'de> serde::Deserialize<'de> for Metered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Metered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Metered, A::Error> {
                let mut kept = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if METERED_MEMBERS.contains(&key.as_str()) {
                        kept.insert(key, map.next_value()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Metered(Value::Object(kept)))
            }
        }
        d.deserialize_map(Members)
    }
}

/// Usage from a parsed JSON response. A Google body that is an array (a buffered
/// `streamGenerateContent` without `alt=sse`) yields the last element's cumulative usage.
pub fn usage_from_json(
    dialect: Dialect,
    body: &Value,
    request_model: Option<&str>,
) -> Option<Usage> {
    read_usage_json(dialect, body, request_model).ok().flatten()
}

/// [`usage_from_json`], telling a report that makes no sense apart from a missing one.
pub fn read_usage_json(
    dialect: Dialect,
    body: &Value,
    request_model: Option<&str>,
) -> Result<Option<Usage>, NonsenseUsage> {
    let usage = match dialect {
        Dialect::OpenAi => openai_usage(body)?,
        Dialect::Anthropic => match usage_object(body.get("usage"))? {
            Some(reported) => {
                let mut state = AnthropicState::default();
                state.apply(reported)?;
                Some(state.usage())
            }
            None => None,
        },
        Dialect::Google => match body {
            Value::Array(items) => {
                let mut last = None;
                // Every element is checked: a nonsense report anywhere makes the whole suspect.
                for item in items {
                    if let Some(usage) = google_usage(item)? {
                        last = Some(usage);
                    }
                }
                last
            }
            _ => google_usage(body)?,
        },
    };
    Ok(usage.map(|mut usage| {
        usage.model = response_model(dialect, body).or_else(|| request_model.map(str::to_owned));
        usage
    }))
}

/// A usage member: absent or `null` is none, an object is one, anything else is nonsense.
fn usage_object(value: Option<&Value>) -> Result<Option<&Value>, NonsenseUsage> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) if v.is_object() => Ok(Some(v)),
        Some(_) => Err(NonsenseUsage),
    }
}

/// The number of characters ElevenLabs billed, from its `character-cost` response header; `None`
/// when it is missing or makes no sense (not digits, above [`MAX_REPORTED_TOKENS`]).
pub fn elevenlabs_character_cost(header: Option<&str>) -> Option<u64> {
    header?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_REPORTED_TOKENS)
}

/// Asks OpenAI to report usage at the end of a streamed chat completion, by setting
/// `stream_options.include_usage = true` when the client did not. Returns true when it was added, in
/// which case the proxy should withhold the extra usage-only chunk (see [`is_usage_only_chunk`]) from
/// the client, who did not ask for it.
///
/// Only Chat Completions (and legacy Completions) requests are touched — recognised by `messages` or
/// `prompt` — and only when `stream` is true; the Responses API always reports usage in
/// `response.completed` and has its own `stream_options`.
pub fn openai_prepare_stream_request(body: &mut Value) -> bool {
    let Some(object) = body.as_object_mut() else {
        return false;
    };
    let is_chat = object.contains_key("messages") || object.contains_key("prompt");
    if !is_chat || object.get("stream") != Some(&Value::Bool(true)) {
        return false;
    }
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = Value::Object(serde_json::Map::new());
    }
    let Some(options) = options.as_object_mut() else {
        return false;
    };
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return false;
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    true
}

/// True for the chunk OpenAI adds when `include_usage` is set: `"choices": []` and a `usage` object.
pub fn is_usage_only_chunk(event: &SseEvent) -> bool {
    let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
        return false;
    };
    let no_choices = match chunk.get("choices") {
        None | Some(Value::Null) => true,
        Some(Value::Array(choices)) => choices.is_empty(),
        Some(_) => false,
    };
    no_choices && chunk.get("usage").is_some_and(Value::is_object)
}

/// How a streamed response is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events (OpenAI, Anthropic, Google with `alt=sse`).
    Sse,
    /// A JSON array streamed element by element (Google `streamGenerateContent` without `alt=sse`).
    JsonArray,
}

/// What a finished stream told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUsage {
    /// The latest usage seen, possibly partial (e.g. Anthropic's input from `message_start` only).
    pub usage: Option<Usage>,
    /// True when the provider's final usage report arrived (OpenAI's usage chunk or
    /// `response.completed`, Anthropic's `message_delta`, a Google chunk with a `finishReason`).
    pub complete: bool,
    /// Events discarded for exceeding the size cap; any makes the usage suspect.
    pub dropped_events: u32,
    /// Some event reported usage that makes no sense: `usage` is then `None` (fail closed).
    pub nonsense: bool,
}

impl StreamUsage {
    /// Whether the usage can be trusted as the whole bill. When not, the caller should settle the
    /// call at its reservation (fail closed) rather than at a partial count.
    pub fn is_trustworthy(&self) -> bool {
        self.complete && self.dropped_events == 0 && !self.nonsense && self.usage.is_some()
    }
}

/// Meters a streamed response as it passes through: feed it the same bytes the client gets.
#[derive(Debug)]
pub struct StreamMeter {
    dialect: Dialect,
    framing: Framing,
    request_model: Option<String>,
    sse: SseParser,
    array: JsonArraySplitter,
    response_model: Option<String>,
    openai: Option<Usage>,
    anthropic: AnthropicState,
    anthropic_seen: bool,
    google: Option<Usage>,
    complete: bool,
    dropped_events: u32,
    nonsense: bool,
}

impl StreamMeter {
    pub fn new(dialect: Dialect, framing: Framing, request_model: Option<&str>) -> Self {
        StreamMeter {
            dialect,
            framing,
            request_model: request_model.map(str::to_owned),
            sse: SseParser::new(DEFAULT_MAX_EVENT_BYTES),
            array: JsonArraySplitter::new(DEFAULT_MAX_EVENT_BYTES),
            response_model: None,
            openai: None,
            anthropic: AnthropicState::default(),
            anthropic_seen: false,
            google: None,
            complete: false,
            dropped_events: 0,
            nonsense: false,
        }
    }

    /// Caps the size of one event (or JSON-array element); larger ones are dropped and counted in
    /// [`StreamUsage::dropped_events`]. Call before feeding.
    pub fn with_max_event_bytes(mut self, max_event_bytes: usize) -> Self {
        self.sse = SseParser::new(max_event_bytes);
        self.array = JsonArraySplitter::new(max_event_bytes);
        self
    }

    /// Observes a chunk of the response body exactly as received.
    pub fn feed(&mut self, chunk: &[u8]) {
        match self.framing {
            Framing::Sse => {
                for item in self.sse.feed(chunk) {
                    self.observe(&item);
                }
            }
            Framing::JsonArray => {
                for element in self.array.feed(chunk) {
                    match element {
                        Some(bytes) => self.observe_json_bytes(&bytes),
                        None => self.dropped_events = self.dropped_events.saturating_add(1),
                    }
                }
            }
        }
    }

    /// Observes an SSE item parsed elsewhere (e.g. by an [`super::sse::SseFrameFilter`]).
    pub fn observe(&mut self, item: &SseItem) {
        match item {
            SseItem::Event(event) => self.observe_event(event),
            SseItem::Dropped { .. } => self.dropped_events = self.dropped_events.saturating_add(1),
        }
    }

    /// Ends the stream and reports what was metered.
    pub fn finish(mut self) -> StreamUsage {
        if self.framing == Framing::Sse {
            for item in self.sse.finish() {
                self.observe(&item);
            }
        }
        let usage = match self.dialect {
            Dialect::OpenAi => self.openai.take(),
            Dialect::Anthropic => self.anthropic_seen.then(|| self.anthropic.usage()),
            Dialect::Google => self.google.take(),
        };
        let model = self.response_model.take().or(self.request_model.take());
        StreamUsage {
            usage: usage
                .filter(|_| !self.nonsense)
                .map(|u| Usage { model, ..u }),
            complete: self.complete && !self.nonsense,
            dropped_events: self.dropped_events,
            nonsense: self.nonsense,
        }
    }

    fn observe_event(&mut self, event: &SseEvent) {
        if event.data == "[DONE]" {
            return;
        }
        self.observe_json_bytes(event.data.as_bytes());
    }

    fn observe_json_bytes(&mut self, data: &[u8]) {
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(model) = response_model(self.dialect, &value) {
            self.response_model = Some(model);
        }
        let observed = match self.dialect {
            Dialect::OpenAi => openai_usage(&value).map(|usage| {
                if let Some(usage) = usage {
                    self.openai = Some(usage);
                    self.complete = true;
                }
            }),
            Dialect::Anthropic => self.observe_anthropic(&value),
            Dialect::Google => google_usage(&value).map(|usage| {
                if let Some(usage) = usage {
                    self.google = Some(usage);
                }
                if self.google.is_some() && google_finished(&value) {
                    self.complete = true;
                }
            }),
        };
        if observed.is_err() {
            self.nonsense = true;
        }
    }

    fn observe_anthropic(&mut self, value: &Value) -> Result<(), NonsenseUsage> {
        let (usage, last) = match value.get("type").and_then(Value::as_str) {
            Some("message_start") => (value.pointer("/message/usage"), false),
            Some("message_delta") => (value.get("usage"), true),
            _ => return Ok(()),
        };
        if let Some(usage) = usage_object(usage)? {
            self.anthropic.apply(usage)?;
            self.anthropic_seen = true;
            self.complete |= last;
        }
        Ok(())
    }
}

/// The model named in a response (or stream chunk), if any.
fn response_model(dialect: Dialect, value: &Value) -> Option<String> {
    let found = match dialect {
        Dialect::OpenAi => value
            .get("model")
            .or_else(|| value.pointer("/response/model")),
        Dialect::Anthropic => value
            .get("model")
            .or_else(|| value.pointer("/message/model")),
        Dialect::Google => match value {
            Value::Array(items) => items.iter().rev().find_map(|v| v.get("modelVersion")),
            _ => value.get("modelVersion"),
        },
    };
    found
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// One reported count: absent or `null` is 0; a JSON integer from 0 to [`MAX_REPORTED_TOKENS`]
/// is itself; anything else makes the report nonsense.
fn count(value: &Value, pointer: &str) -> Result<u64, NonsenseUsage> {
    match value.pointer(pointer) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n <= MAX_REPORTED_TOKENS)
            .ok_or(NonsenseUsage),
        Some(_) => Err(NonsenseUsage),
    }
}

/// OpenAI usage from a body, a chat chunk, or a Responses stream event (`response.usage`).
fn openai_usage(value: &Value) -> Result<Option<Usage>, NonsenseUsage> {
    let usage = match usage_object(value.get("usage"))? {
        Some(usage) => usage,
        None => match usage_object(value.pointer("/response/usage"))? {
            Some(usage) => usage,
            None => return Ok(None),
        },
    };
    let (prompt, cached, completion, reasoning) = if usage.get("prompt_tokens").is_some() {
        (
            count(usage, "/prompt_tokens")?,
            // DeepSeek reports its cache hits as `prompt_cache_hit_tokens` (the rest of the
            // prompt as `prompt_cache_miss_tokens`); the two spellings mean the same tokens.
            count(usage, "/prompt_tokens_details/cached_tokens")?
                .max(count(usage, "/prompt_cache_hit_tokens")?),
            count(usage, "/completion_tokens")?,
            count(usage, "/completion_tokens_details/reasoning_tokens")?,
        )
    } else {
        (
            count(usage, "/input_tokens")?,
            count(usage, "/input_tokens_details/cached_tokens")?,
            count(usage, "/output_tokens")?,
            count(usage, "/output_tokens_details/reasoning_tokens")?,
        )
    };
    Ok(Some(Usage {
        model: None,
        // Saturating: if a malformed report has a subset larger than its total, every reported
        // token is still billed once.
        input_tokens: prompt.saturating_sub(cached),
        cached_input_tokens: cached,
        output_tokens: completion.saturating_sub(reasoning),
        reasoning_tokens: reasoning,
        ..Usage::default()
    }))
}

/// Anthropic's usage fields, each overwritten by the latest report: `message_delta` figures are
/// cumulative, so the last one seen is the total and adding them up would double-count.
#[derive(Debug, Default)]
struct AnthropicState {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    cache_creation_1h: u64,
    output: u64,
}

impl AnthropicState {
    /// Takes the fields a report sets; absent and `null` fields keep their last value. Nothing
    /// is taken from a report with any field that makes no sense.
    fn apply(&mut self, usage: &Value) -> Result<(), NonsenseUsage> {
        let read = |pointer: &str| match usage.pointer(pointer) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => count(usage, pointer).map(Some),
        };
        let input = read("/input_tokens")?;
        let cache_read = read("/cache_read_input_tokens")?;
        let cache_creation = read("/cache_creation_input_tokens")?;
        let cache_creation_1h = read("/cache_creation/ephemeral_1h_input_tokens")?;
        let output = read("/output_tokens")?;
        let set = |field: &mut u64, value: Option<u64>| {
            if let Some(n) = value {
                *field = n;
            }
        };
        set(&mut self.input, input);
        set(&mut self.cache_read, cache_read);
        set(&mut self.cache_creation, cache_creation);
        set(&mut self.cache_creation_1h, cache_creation_1h);
        set(&mut self.output, output);
        Ok(())
    }

    fn usage(&self) -> Usage {
        let long = self.cache_creation_1h.min(self.cache_creation);
        Usage {
            model: None,
            input_tokens: self.input,
            cached_input_tokens: self.cache_read,
            cache_write_tokens: self.cache_creation - long,
            cache_write_long_tokens: long,
            output_tokens: self.output,
            ..Usage::default()
        }
    }
}

/// Google usage from one `GenerateContentResponse` (a body or a stream chunk).
fn google_usage(value: &Value) -> Result<Option<Usage>, NonsenseUsage> {
    let Some(meta) = usage_object(value.get("usageMetadata"))? else {
        return Ok(None);
    };
    let prompt =
        count(meta, "/promptTokenCount")?.saturating_add(count(meta, "/toolUsePromptTokenCount")?);
    let cached = count(meta, "/cachedContentTokenCount")?;
    let uncached = prompt.saturating_sub(cached);
    let audio = modality_tokens(meta.get("promptTokensDetails"), "AUDIO")?
        .saturating_sub(modality_tokens(meta.get("cacheTokensDetails"), "AUDIO")?)
        .min(uncached);
    Ok(Some(Usage {
        model: None,
        input_tokens: uncached - audio,
        cached_input_tokens: cached,
        audio_input_tokens: audio,
        output_tokens: count(meta, "/candidatesTokenCount")?,
        reasoning_tokens: count(meta, "/thoughtsTokenCount")?,
        ..Usage::default()
    }))
}

fn modality_tokens(details: Option<&Value>, modality: &str) -> Result<u64, NonsenseUsage> {
    let Some(entries) = details.and_then(Value::as_array) else {
        return Ok(0);
    };
    let mut total = 0u64;
    for entry in entries {
        if entry.get("modality").and_then(Value::as_str) == Some(modality) {
            total = total.saturating_add(count(entry, "/tokenCount")?);
        }
    }
    Ok(total)
}

fn google_finished(value: &Value) -> bool {
    value
        .get("candidates")
        .and_then(Value::as_array)
        .is_some_and(|candidates| {
            candidates
                .iter()
                .any(|c| c.get("finishReason").is_some_and(|r| !r.is_null()))
        })
}

/// Splits a streamed top-level JSON array into its elements as they complete, tracking only nesting
/// and strings, so memory is bounded by the largest element (capped: a larger one is skipped and
/// reported as `None`).
#[derive(Debug)]
struct JsonArraySplitter {
    max_element_bytes: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    element: Vec<u8>,
    element_len: usize,
}

impl JsonArraySplitter {
    fn new(max_element_bytes: usize) -> Self {
        JsonArraySplitter {
            max_element_bytes,
            depth: 0,
            in_string: false,
            escaped: false,
            element: Vec::new(),
            element_len: 0,
        }
    }

    /// Returns each element completed in this chunk: `Some(bytes)`, or `None` if it was too large.
    fn feed(&mut self, chunk: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut done = Vec::new();
        for &byte in chunk {
            let inside_element =
                self.depth >= 2 || (self.depth == 1 && matches!(byte, b'{' | b'['));
            if inside_element {
                self.element_len = self.element_len.saturating_add(1);
                if self.element_len <= self.max_element_bytes {
                    self.element.push(byte);
                } else {
                    self.element = Vec::new();
                }
            }
            if self.in_string {
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' if self.depth >= 2 => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 1 && inside_element {
                        let within_cap = self.element_len <= self.max_element_bytes;
                        let element = std::mem::take(&mut self.element);
                        done.push(within_cap.then_some(element));
                        self.element_len = 0;
                    }
                }
                _ => {}
            }
        }
        done
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_whole_body_meters_as_its_full_parse_does_with_its_content_skipped() {
        let content = "word \\\" ".repeat(5_000);
        let bodies = [
            (
                Dialect::OpenAi,
                json!({"id": "c", "model": "gpt-4o-2024-08-06",
                    "choices": [{"message": {"content": content}}],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 40,
                        "prompt_tokens_details": {"cached_tokens": 100},
                        "completion_tokens_details": {"reasoning_tokens": 10}}}),
            ),
            (
                Dialect::OpenAi,
                json!({"object": "response", "model": "o3", "output": [{"content": content}],
                    "usage": {"input_tokens": 9, "output_tokens": 7}}),
            ),
            (
                Dialect::Anthropic,
                json!({"type": "message", "model": "claude-sonnet-4-5",
                    "content": [{"type": "text", "text": content}],
                    "usage": {"input_tokens": 12, "output_tokens": 30,
                        "cache_read_input_tokens": 5}}),
            ),
            (
                Dialect::Google,
                json!({"candidates": [{"content": {"parts": [{"text": content}]}}],
                    "modelVersion": "gemini-2.5-flash",
                    "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 3}}),
            ),
            (
                Dialect::Google,
                json!([{"usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1}},
                    {"candidates": [], "modelVersion": "gemini-2.5-pro",
                        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 5}}]),
            ),
            (Dialect::OpenAi, json!({"choices": [{"text": content}]})),
        ];
        let mut metered = 0;
        for (dialect, body) in bodies {
            let bytes = serde_json::to_vec(&body).unwrap();
            let usage = usage_from_body(dialect, &bytes, Some("asked"));
            assert_eq!(
                usage,
                usage_from_json(dialect, &body, Some("asked")),
                "{dialect:?}"
            );
            metered += usize::from(usage.is_some_and(|u| u.output_tokens > 0));
        }
        assert_eq!(metered, 5);
        assert!(
            usage_from_body(Dialect::OpenAi, br#"{"usage": {"prompt_tokens": 1}"#, None).is_none()
        );
        assert!(usage_from_body(Dialect::OpenAi, b"42", None).is_none());
    }

    fn sse(events: &[(&str, Value)]) -> Vec<u8> {
        let mut out = String::new();
        for (name, data) in events {
            if !name.is_empty() {
                out.push_str(&format!("event: {name}\n"));
            }
            out.push_str(&format!("data: {data}\n\n"));
        }
        out.into_bytes()
    }

    fn meter_in_chunks(
        dialect: Dialect,
        framing: Framing,
        bytes: &[u8],
        size: usize,
    ) -> StreamUsage {
        let mut meter = StreamMeter::new(dialect, framing, Some("request-model"));
        for chunk in bytes.chunks(size) {
            meter.feed(chunk);
        }
        meter.finish()
    }

    // ------------------------------------------------------------------------------------- OpenAI

    #[test]
    fn openai_chat_body_splits_cached_and_reasoning_tokens() {
        let body = json!({
            "id": "chatcmpl-abc123",
            "object": "chat.completion",
            "created": 1741569952,
            "model": "o4-mini-2025-04-16",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 1117,
                "completion_tokens": 46,
                "total_tokens": 1163,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 32, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
            }
        });
        let usage = usage_from_json(Dialect::OpenAi, &body, Some("o4-mini")).unwrap();
        assert_eq!(
            usage,
            Usage {
                model: Some("o4-mini-2025-04-16".to_owned()),
                input_tokens: 93,
                cached_input_tokens: 1024,
                output_tokens: 14,
                reasoning_tokens: 32,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn deepseek_cache_hits_are_read_from_its_own_field() {
        let body = json!({"model": "deepseek-chat", "usage": {"prompt_tokens": 100,
            "prompt_cache_hit_tokens": 60, "prompt_cache_miss_tokens": 40,
            "completion_tokens": 7, "total_tokens": 107}});
        let usage = usage_from_json(Dialect::OpenAi, &body, None).unwrap();
        assert_eq!((usage.input_tokens, usage.cached_input_tokens), (40, 60));
        assert_eq!(usage.output_tokens, 7);
        // A report of it that makes no sense is refused like any other field.
        let bad = json!({"usage": {"prompt_tokens": 1, "prompt_cache_hit_tokens": "many"}});
        assert_eq!(usage_from_json(Dialect::OpenAi, &bad, None), None);
    }

    #[test]
    fn openai_reasoning_is_not_billed_twice() {
        use crate::metering::prices::PriceTable;
        let body = json!({"model": "o3", "usage": {"prompt_tokens": 0, "completion_tokens": 1_000_000,
            "completion_tokens_details": {"reasoning_tokens": 600_000}}});
        let usage = usage_from_json(Dialect::OpenAi, &body, None).unwrap();
        let cost = PriceTable::builtin().unwrap().token_cost("openai", &usage);
        assert_eq!(
            cost.micros.to_string(),
            "8.00",
            "1M completion tokens at o3's 8.00"
        );
    }

    #[test]
    fn openai_embeddings_body() {
        let body = json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8}
        });
        let usage = usage_from_body(Dialect::OpenAi, body.to_string().as_bytes(), None).unwrap();
        assert_eq!(usage.input_tokens, 8);
        assert_eq!(usage.output_tokens, 0);
        assert_eq!(usage.model.as_deref(), Some("text-embedding-3-small"));
    }

    #[test]
    fn openai_responses_body() {
        let body = json!({
            "id": "resp_67ccd2bed1ec8190", "object": "response", "status": "completed",
            "model": "gpt-4.1-2025-04-14",
            "usage": {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 10},
                      "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 123}
        });
        let usage = usage_from_json(Dialect::OpenAi, &body, None).unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens
            ),
            (26, 10, 87)
        );
    }

    #[test]
    fn openai_body_without_usage_yields_none() {
        let body = json!({"error": {"message": "bad", "type": "invalid_request_error"}});
        assert_eq!(usage_from_json(Dialect::OpenAi, &body, None), None);
        assert_eq!(usage_from_body(Dialect::OpenAi, b"not json", None), None);
    }

    fn openai_chat_stream(with_usage: bool) -> Vec<u8> {
        let mut events = vec![
            (
                "",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}], "usage": null}),
            ),
            (
                "",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}], "usage": null}),
            ),
            (
                "",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": null}),
            ),
        ];
        if with_usage {
            events.push((
                "",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-4o-mini-2024-07-18", "choices": [],
                "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                          "prompt_tokens_details": {"cached_tokens": 0}}}),
            ));
        }
        let mut bytes = sse(&events);
        bytes.extend_from_slice(b"data: [DONE]\n\n");
        bytes
    }

    #[test]
    fn openai_chat_stream_takes_usage_from_final_chunk() {
        let result = meter_in_chunks(Dialect::OpenAi, Framing::Sse, &openai_chat_stream(true), 7);
        assert!(result.is_trustworthy());
        let usage = result.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (19, 10));
        assert_eq!(usage.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    }

    #[test]
    fn openai_chat_stream_without_usage_is_incomplete() {
        let result = meter_in_chunks(
            Dialect::OpenAi,
            Framing::Sse,
            &openai_chat_stream(false),
            64,
        );
        assert_eq!(result.usage, None);
        assert!(!result.complete);
        assert!(!result.is_trustworthy());
    }

    #[test]
    fn openai_responses_stream_takes_usage_from_response_completed() {
        let bytes = sse(&[
            (
                "response.created",
                json!({"type": "response.created", "sequence_number": 0,
                "response": {"id": "resp_1", "status": "in_progress", "model": "gpt-5-2025-08-07", "usage": null}}),
            ),
            (
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "sequence_number": 1,
                "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hi"}),
            ),
            (
                "response.completed",
                json!({"type": "response.completed", "sequence_number": 2,
                "response": {"id": "resp_1", "status": "completed", "model": "gpt-5-2025-08-07",
                    "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 256},
                              "total_tokens": 312}}}),
            ),
        ]);
        let result = meter_in_chunks(Dialect::OpenAi, Framing::Sse, &bytes, 5);
        assert!(result.is_trustworthy());
        let usage = result.usage.unwrap();
        assert_eq!((usage.output_tokens, usage.reasoning_tokens), (44, 256));
        assert_eq!(usage.model.as_deref(), Some("gpt-5-2025-08-07"));
    }

    #[test]
    fn prepare_stream_request_adds_include_usage_once() {
        let mut body = json!({"model": "gpt-4o", "stream": true, "messages": []});
        assert!(openai_prepare_stream_request(&mut body));
        assert_eq!(body["stream_options"]["include_usage"], json!(true));
        assert!(!openai_prepare_stream_request(&mut body));
    }

    #[test]
    fn prepare_stream_request_keeps_other_stream_options() {
        let mut body = json!({"stream": true, "messages": [], "stream_options": {"include_obfuscation": false}});
        assert!(openai_prepare_stream_request(&mut body));
        assert_eq!(
            body["stream_options"],
            json!({"include_obfuscation": false, "include_usage": true})
        );
    }

    #[test]
    fn prepare_stream_request_respects_client_choice_and_non_streams() {
        let mut asked =
            json!({"stream": true, "messages": [], "stream_options": {"include_usage": true}});
        assert!(!openai_prepare_stream_request(&mut asked));
        let mut not_streaming = json!({"messages": []});
        assert!(!openai_prepare_stream_request(&mut not_streaming));
        assert_eq!(not_streaming, json!({"messages": []}));
        let mut responses_api = json!({"stream": true, "input": "hi"});
        assert!(!openai_prepare_stream_request(&mut responses_api));
    }

    #[test]
    fn recognises_usage_only_chunk() {
        let event = |data: Value| SseEvent {
            event: "message".to_owned(),
            data: data.to_string(),
            id: None,
        };
        assert!(is_usage_only_chunk(&event(
            json!({"choices": [], "usage": {"prompt_tokens": 1}})
        )));
        assert!(!is_usage_only_chunk(&event(
            json!({"choices": [{"delta": {}}], "usage": null})
        )));
        assert!(!is_usage_only_chunk(&event(
            json!({"choices": [], "usage": null})
        )));
        let done = SseEvent {
            event: "message".to_owned(),
            data: "[DONE]".to_owned(),
            id: None,
        };
        assert!(!is_usage_only_chunk(&done));
    }

    #[test]
    fn injected_usage_chunk_is_metered_but_not_forwarded() {
        use crate::metering::sse::SseFrameFilter;
        let stream = openai_chat_stream(true);
        let mut filter = SseFrameFilter::new(DEFAULT_MAX_EVENT_BYTES);
        let mut meter = StreamMeter::new(Dialect::OpenAi, Framing::Sse, None);
        let mut forwarded = Vec::new();
        for chunk in stream.chunks(11) {
            let (bytes, items) = filter.feed(chunk, is_usage_only_chunk);
            forwarded.extend(bytes);
            items.iter().for_each(|item| meter.observe(item));
        }
        let (bytes, items) = filter.finish();
        forwarded.extend(bytes);
        items.iter().for_each(|item| meter.observe(item));
        assert_eq!(forwarded, openai_chat_stream(false));
        assert_eq!(meter.finish().usage.map(|u| u.input_tokens), Some(19));
    }

    // ---------------------------------------------------------------------------------- Anthropic

    #[test]
    fn anthropic_body_with_cache_fields() {
        let body = json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-20250514",
            "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 3000,
                      "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
                      "output_tokens": 6, "service_tier": "standard"}
        });
        let usage = usage_from_json(Dialect::Anthropic, &body, None).unwrap();
        assert_eq!(
            usage,
            Usage {
                model: Some("claude-sonnet-4-20250514".to_owned()),
                input_tokens: 12,
                cached_input_tokens: 3000,
                cache_write_tokens: 1500,
                cache_write_long_tokens: 500,
                output_tokens: 6,
                ..Usage::default()
            }
        );
    }

    fn anthropic_stream(deltas: &[Value]) -> Vec<u8> {
        let mut events = vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "content": [], "model": "claude-opus-4-1-20250805",
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 100, "output_tokens": 2}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
        ];
        for delta in deltas {
            events.push(("message_delta", delta.clone()));
        }
        events.push(("message_stop", json!({"type": "message_stop"})));
        sse(&events)
    }

    #[test]
    fn anthropic_stream_takes_latest_cumulative_usage() {
        let bytes = anthropic_stream(&[
            json!({"type": "message_delta", "delta": {"stop_reason": null, "stop_sequence": null}, "usage": {"output_tokens": 10}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
        ]);
        let result = meter_in_chunks(Dialect::Anthropic, Framing::Sse, &bytes, 13);
        assert!(result.is_trustworthy());
        let usage = result.usage.unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens
            ),
            (472, 100, 15)
        );
        assert_eq!(usage.model.as_deref(), Some("claude-opus-4-1-20250805"));
    }

    #[test]
    fn anthropic_message_delta_may_update_input_and_cache_fields() {
        let bytes = anthropic_stream(&[json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 500, "cache_creation_input_tokens": 40,
                      "cache_read_input_tokens": 100, "output_tokens": 89}})]);
        let usage = meter_in_chunks(Dialect::Anthropic, Framing::Sse, &bytes, 1000)
            .usage
            .unwrap();
        assert_eq!(
            (
                usage.input_tokens,
                usage.cache_write_tokens,
                usage.output_tokens
            ),
            (500, 40, 89)
        );
    }

    #[test]
    fn anthropic_stream_cut_before_message_delta_is_partial() {
        let mut bytes = anthropic_stream(&[]);
        let cut = bytes.len() / 2;
        bytes.truncate(cut);
        let result = meter_in_chunks(Dialect::Anthropic, Framing::Sse, &bytes, 9);
        assert!(!result.complete);
        assert_eq!(result.usage.map(|u| u.input_tokens), Some(472));
    }

    // ------------------------------------------------------------------------------------- Google

    fn gemini_chunk(
        text: &str,
        finish: Option<&str>,
        candidates: u64,
        thoughts: Option<u64>,
    ) -> Value {
        let mut candidate =
            json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
        if let Some(reason) = finish {
            candidate["finishReason"] = json!(reason);
        }
        let mut meta = json!({"promptTokenCount": 120, "candidatesTokenCount": candidates,
            "totalTokenCount": 120 + candidates + thoughts.unwrap_or(0),
            "cachedContentTokenCount": 100,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}]});
        if let Some(t) = thoughts {
            meta["thoughtsTokenCount"] = json!(t);
        }
        json!({"candidates": [candidate], "usageMetadata": meta,
               "modelVersion": "gemini-2.5-flash", "responseId": "abc"})
    }

    #[test]
    fn google_body_bills_thoughts_and_cache() {
        let body = gemini_chunk("Hi", Some("STOP"), 7, Some(300));
        let usage = usage_from_json(Dialect::Google, &body, None).unwrap();
        assert_eq!(
            usage,
            Usage {
                model: Some("gemini-2.5-flash".to_owned()),
                input_tokens: 20,
                cached_input_tokens: 100,
                output_tokens: 7,
                reasoning_tokens: 300,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn google_audio_prompt_tokens_are_priced_apart() {
        let body = json!({"usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 5,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 200}, {"modality": "AUDIO", "tokenCount": 800}]}});
        let usage = usage_from_json(Dialect::Google, &body, Some("gemini-2.5-flash")).unwrap();
        assert_eq!((usage.input_tokens, usage.audio_input_tokens), (200, 800));
        assert_eq!(usage.model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn google_sse_stream_keeps_last_cumulative_usage() {
        let bytes = sse(&[
            ("", gemini_chunk("Once", None, 1, Some(250))),
            ("", gemini_chunk(" upon", None, 4, Some(250))),
            ("", gemini_chunk(" a time", Some("STOP"), 9, Some(250))),
        ]);
        let result = meter_in_chunks(Dialect::Google, Framing::Sse, &bytes, 17);
        assert!(result.is_trustworthy());
        let usage = result.usage.unwrap();
        assert_eq!((usage.output_tokens, usage.reasoning_tokens), (9, 250));
    }

    #[test]
    fn google_json_array_stream_split_anywhere() {
        let body = format!(
            "[{},\r\n{}\r\n,{}]",
            gemini_chunk("a \"quoted\" {brace} [x]", None, 2, None),
            gemini_chunk("b\\", None, 5, None),
            gemini_chunk("c", Some("STOP"), 8, None)
        );
        for size in [1, 2, 3, 10, 1000] {
            let result =
                meter_in_chunks(Dialect::Google, Framing::JsonArray, body.as_bytes(), size);
            assert!(result.is_trustworthy(), "chunk size {size}");
            assert_eq!(result.usage.map(|u| u.output_tokens), Some(8));
        }
    }

    #[test]
    fn google_buffered_array_body_uses_last_element() {
        let body = json!([
            gemini_chunk("a", None, 2, None),
            gemini_chunk("b", Some("STOP"), 6, None)
        ]);
        let usage = usage_from_json(Dialect::Google, &body, None).unwrap();
        assert_eq!(usage.output_tokens, 6);
    }

    #[test]
    fn oversized_array_element_is_reported_not_held() {
        let mut splitter = JsonArraySplitter::new(8);
        let out = splitter.feed(br#"[{"a":"0123456789"},{"b":1}]"#);
        assert_eq!(out, vec![None, Some(br#"{"b":1}"#.to_vec())]);
    }

    #[test]
    fn oversized_stream_event_makes_usage_untrustworthy() {
        let mut meter =
            StreamMeter::new(Dialect::OpenAi, Framing::Sse, None).with_max_event_bytes(64);
        meter.feed(&openai_chat_stream(true));
        let result = meter.finish();
        assert!(result.dropped_events > 0);
        assert!(!result.is_trustworthy());
    }

    #[test]
    fn usage_that_makes_no_sense_is_nonsense_in_every_dialect() {
        let cases = [
            (
                Dialect::OpenAi,
                json!({"usage": {"prompt_tokens": -5, "completion_tokens": 3}}),
            ),
            (
                Dialect::OpenAi,
                json!({"usage": {"prompt_tokens": 5, "completion_tokens": "3"}}),
            ),
            (
                Dialect::OpenAi,
                json!({"usage": {"prompt_tokens": 5, "completion_tokens": 3.5}}),
            ),
            (
                Dialect::OpenAi,
                json!({"usage": {"prompt_tokens": 5, "completion_tokens": 2_000_000_000u64}}),
            ),
            (
                Dialect::OpenAi,
                json!({"usage": {"input_tokens": 5, "output_tokens": true}}),
            ),
            (
                Dialect::OpenAi,
                json!({"usage": {"prompt_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": -1}}}),
            ),
            (Dialect::OpenAi, json!({"usage": "lots"})),
            (
                Dialect::Anthropic,
                json!({"usage": {"input_tokens": 5, "output_tokens": -15}}),
            ),
            (
                Dialect::Anthropic,
                json!({"usage": {"input_tokens": "5", "output_tokens": 15}}),
            ),
            (
                Dialect::Anthropic,
                json!({"usage": {"input_tokens": 5, "cache_read_input_tokens": [1]}}),
            ),
            (
                Dialect::Google,
                json!({"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": -3}}),
            ),
            (
                Dialect::Google,
                json!({"usageMetadata": {"promptTokenCount": 5,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": "4"}]}}),
            ),
            (
                Dialect::Google,
                json!([{"usageMetadata": {"promptTokenCount": -1}},
                {"usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}}]),
            ),
        ];
        for (dialect, body) in cases {
            assert_eq!(
                read_usage_json(dialect, &body, None),
                Err(NonsenseUsage),
                "{body}"
            );
            assert_eq!(usage_from_json(dialect, &body, None), None, "{body}");
            let bytes = serde_json::to_vec(&body).unwrap();
            assert_eq!(
                read_usage_body(dialect, &bytes, None),
                Err(NonsenseUsage),
                "{body}"
            );
        }
        // Missing and null counts are zero, not nonsense.
        let body = json!({"usage": {"input_tokens": 5, "output_tokens": 2,
            "cache_read_input_tokens": null}});
        assert_eq!(
            read_usage_json(Dialect::Anthropic, &body, None).map(|u| u.map(|u| u.input_tokens)),
            Ok(Some(5))
        );
        assert_eq!(
            read_usage_json(Dialect::OpenAi, &json!({"usage": null}), None),
            Ok(None)
        );
    }

    #[test]
    fn a_stream_with_a_nonsense_report_has_no_usage_and_is_not_trustworthy() {
        let openai = sse(&[
            (
                "",
                json!({"choices": [{"delta": {"content": "Hi"}}], "usage": null}),
            ),
            (
                "",
                json!({"choices": [], "usage": {"prompt_tokens": -100, "completion_tokens": -5}}),
            ),
        ]);
        let anthropic = anthropic_stream(&[json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": "15"}})]);
        let google = sse(&[
            ("", gemini_chunk("a", None, 2, None)),
            (
                "",
                json!({"candidates": [{"finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 1e12}}),
            ),
        ]);
        for (dialect, bytes) in [
            (Dialect::OpenAi, openai),
            (Dialect::Anthropic, anthropic),
            (Dialect::Google, google),
        ] {
            let result = meter_in_chunks(dialect, Framing::Sse, &bytes, 11);
            assert!(result.nonsense, "{dialect:?}");
            assert_eq!(result.usage, None, "{dialect:?}");
            assert!(!result.is_trustworthy(), "{dialect:?}");
        }
        // Anthropic's message_delta may send null for what it does not update.
        let nulls = anthropic_stream(&[json!({"type": "message_delta", "delta": {},
            "usage": {"input_tokens": null, "cache_read_input_tokens": null, "output_tokens": 15}})]);
        let result = meter_in_chunks(Dialect::Anthropic, Framing::Sse, &nulls, 11);
        assert!(result.is_trustworthy());
        assert_eq!(
            result.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((472, 15))
        );
    }

    #[test]
    fn elevenlabs_header_parses() {
        assert_eq!(elevenlabs_character_cost(Some(" 42 ")), Some(42));
        assert_eq!(elevenlabs_character_cost(Some("n/a")), None);
        assert_eq!(elevenlabs_character_cost(Some("-5")), None);
        assert_eq!(elevenlabs_character_cost(Some("99999999999")), None);
        assert_eq!(elevenlabs_character_cost(None), None);
    }
}
