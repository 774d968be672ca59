//! Scrubs API keys and credentials from text and bytes before they reach a log line, an error
//! body or a metrics label. keybroker promises that the provider keys it holds never appear in
//! either; this crate keeps that promise.
//!
//! Two mechanisms, applied in this order:
//!
//! 1. **Exact values.** The broker [`register`](Redactor::register)s each key it has just
//!    decrypted for as long as it uses it; that value and its base64, base64url, percent- and
//!    JSON-escaped forms are removed wherever they appear. This is the only way to catch keys that
//!    have no recognisable shape (Vultr, Railway, ElevenLabs v1, Twilio auth tokens).
//! 2. **Patterns.** Built-in rules for provider key shapes (OpenAI, Anthropic, Google, GitHub,
//!    Stripe, Twilio, AWS, Slack, ElevenLabs, Resend, …), JWTs, private-key blocks, HTTP
//!    credentials, secret query parameters and `name = value` pairs whose name says secret.
//!
//! Each secret becomes a marker naming its [`Kind`], e.g. `[REDACTED:openai]`; names, delimiters
//! and quotes are kept so a log line stays readable.
//!
//! Guarantees: text with nothing to redact comes back as `Cow::Borrowed` without allocating;
//! every step is linear in the input (`aho-corasick`, the `regex` crate's automata, `memchr`, a
//! fingerprint index for registered values — no backtracking); redaction is idempotent; nothing
//! panics, whatever the input; no IO and no state outside the [`Redactor`] value.
//!
//! ```
//! use redactor::Redactor;
//! let r = Redactor::new();
//! assert_eq!(
//!     r.redact("auth failed for key AKIAIOSFODNN7EXAMPL3"),
//!     "auth failed for key [REDACTED:aws]"
//! );
//! let key = r.register(b"a-key-with-no-shape-at-all");
//! assert_eq!(r.redact("got a-key-with-no-shape-at-all back"), "got [REDACTED:exact] back");
//! drop(key);
//! ```

mod exact;
mod format;
mod kind;
mod rules;
mod scrub;

pub use exact::MIN_SECRET_LEN;
pub use format::matches_format;
pub use kind::{marker, Counts, Kind};
pub use scrub::{ScrubStream, Scrubber, MIN_RUN};

use aho_corasick::{AhoCorasick, MatchKind};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A byte range of the input to replace with the marker of `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

struct Rule {
    kind: Kind,
    /// See `rules::RuleSpec::shape`.
    shape: bool,
    regex: regex::bytes::Regex,
    check: rules::Check,
    /// Capture groups whose bytes are replaced; empty means the whole match.
    targets: Vec<usize>,
    name_group: Option<usize>,
}

/// The redaction engine: compiled patterns plus the set of registered values.
///
/// Build it once with [`Redactor::new`] (it compiles a few dozen regexes) and share it behind an
/// `Arc`; every method takes `&self` and is safe to call from many threads at once.
pub struct Redactor {
    rules: Vec<Rule>,
    /// Finds the literal anchors that make rules worth running.
    prefilter: Prefilter,
    all_rules: u64,
    /// Rules without anchors, run on every text.
    always: u64,
    /// Rules run only if an anchor hit passes `rules::could_be_pair`.
    gated: u64,
    registry: Arc<exact::Registry>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new()
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("rules", &self.rules.len())
            .field("registered", &self.registry.len())
            .finish()
    }
}

/// Keeps a value registered with [`Redactor::register`]; dropping it unregisters the value.
///
/// Registering the same value several times is reference-counted: it stays redacted until the
/// last of its registrations is dropped. `Debug` shows only whether the registration is active.
#[must_use = "the value is unregistered as soon as the Registration is dropped"]
pub struct Registration {
    held: Option<(Arc<exact::Registry>, exact::SecretKey)>,
}

impl Registration {
    /// False for values [`Redactor::register`] refused (shorter than [`MIN_SECRET_LEN`]).
    pub fn is_active(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some((registry, key)) = self.held.take() {
            registry.release(&key);
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("active", &self.is_active())
            .finish()
    }
}

impl Redactor {
    /// Compiles the built-in patterns. Takes a few milliseconds: do it once.
    pub fn new() -> Redactor {
        let mut rules = Vec::new();
        let mut always = 0u64;
        let mut gated = 0u64;
        let mut anchors: Vec<(String, u64)> = Vec::new();
        for spec in rules::specs() {
            let pattern = format!("(?-u){}", spec.pattern);
            // The patterns are constants covered by tests; a rule that failed to compile would
            // show up there, so at run time it is skipped rather than taking the service down.
            let Ok(regex) = regex::bytes::RegexBuilder::new(&pattern)
                .size_limit(1 << 24)
                .build()
            else {
                continue;
            };
            let Some(bit) = 1u64.checked_shl(rules.len() as u32) else {
                continue;
            };
            let mut targets = Vec::new();
            let mut name_group = None;
            for (i, name) in regex.capture_names().enumerate() {
                match name {
                    Some("s" | "t" | "u") => targets.push(i),
                    Some("name") => name_group = Some(i),
                    _ => {}
                }
            }
            if spec.anchors.is_empty() {
                always |= bit;
            }
            if spec.gated {
                gated |= bit;
            }
            for a in spec.anchors {
                anchors.push((a, bit));
            }
            rules.push(Rule {
                kind: spec.kind,
                shape: spec.shape,
                regex,
                check: spec.check,
                targets,
                name_group,
            });
        }
        let all_rules = rules.iter().enumerate().fold(0u64, |m, (i, _)| {
            m | 1u64.checked_shl(i as u32).unwrap_or(0)
        });
        let prefilter = Prefilter::new(anchors);
        Redactor {
            rules,
            prefilter,
            all_rules,
            always,
            gated,
            registry: Arc::new(exact::Registry::new()),
        }
    }

    /// Redacts registered values and built-in patterns from `text`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        to_str(text, self.run(text.as_bytes(), &[], None))
    }

    /// [`redact`](Redactor::redact) on arbitrary bytes; invalid UTF-8 is fine and kept as is.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        self.run(bytes, &[], None)
    }

    /// [`redact`](Redactor::redact), also removing `extra` values (and their encodings) for this
    /// one call. Values shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn redact_with<'a>(&self, text: &'a str, extra: &[&[u8]]) -> Cow<'a, str> {
        to_str(text, self.run(text.as_bytes(), extra, None))
    }

    /// [`redact_bytes`](Redactor::redact_bytes), adding one to `counts` per marker written.
    pub fn redact_counting<'a>(&self, text: &'a [u8], counts: &mut Counts) -> Cow<'a, [u8]> {
        self.run(text, &[], Some(counts))
    }

    /// Redacts `secret` and its encodings (base64, base64url, padded or not, percent- and
    /// JSON-escaped) from everything this `Redactor` processes until the returned guard drops.
    ///
    /// Cost does not grow with the number of registered values, neither here nor when scanning.
    /// Values shorter than [`MIN_SECRET_LEN`] bytes are refused: the returned `Registration`
    /// does nothing (see [`Registration::is_active`]), because redacting short strings verbatim
    /// would shred ordinary text and no real key is that short.
    pub fn register(&self, secret: &[u8]) -> Registration {
        if secret.len() < MIN_SECRET_LEN {
            return Registration { held: None };
        }
        let key = self.registry.add(secret);
        Registration {
            held: Some((Arc::clone(&self.registry), key)),
        }
    }

    /// True if [`redact`](Redactor::redact) would change `text`; stops at the first finding.
    pub fn contains_secret(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        let mut spans = Vec::new();
        self.registry.scan(bytes, &mut spans);
        if !spans.is_empty() {
            return true;
        }
        self.pattern_spans(bytes, &mut spans, true);
        !spans.is_empty()
    }

    /// Exact values first, then patterns over the result until nothing changes: a pattern never
    /// sees a registered value, and the output is a fixed point, which is what makes redaction
    /// idempotent.
    fn run<'a>(
        &self,
        text: &'a [u8],
        extra: &[&[u8]],
        mut counts: Option<&mut Counts>,
    ) -> Cow<'a, [u8]> {
        let mut spans = Vec::new();
        self.registry.scan(text, &mut spans);
        exact::scan_extra(text, extra, &mut spans);
        let stage: Cow<'a, [u8]> = if spans.is_empty() {
            Cow::Borrowed(text)
        } else {
            let merged = merge(spans);
            tally(&merged, counts.as_deref_mut());
            Cow::Owned(apply(text, &merged))
        };
        let mut current = stage;
        for _ in 0..MAX_PASSES {
            let mut spans = Vec::new();
            self.pattern_spans(&current, &mut spans, false);
            if spans.is_empty() {
                break;
            }
            let merged = merge(spans);
            tally(&merged, counts.as_deref_mut());
            current = Cow::Owned(apply(&current, &merged));
        }
        current
    }

    /// Rules whose anchors occur in `text`, as bits.
    fn triggered(&self, text: &[u8]) -> u64 {
        self.prefilter.triggered(text, self.all_rules, self.gated) | self.always
    }

    fn pattern_spans(&self, text: &[u8], out: &mut Vec<Span>, first_only: bool) {
        let mask = self.triggered(text);
        if mask == 0 {
            return;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if mask & 1u64.checked_shl(i as u32).unwrap_or(0) == 0 {
                continue;
            }
            if rule.shape {
                if self.shape_spans(rule, text, out, first_only) {
                    return;
                }
                continue;
            }
            let mut pos = 0;
            while pos <= text.len() {
                let Some(caps) = rule.regex.captures_at(text, pos) else {
                    break;
                };
                let Some(whole) = caps.get(0) else { break };
                let name = rule
                    .name_group
                    .and_then(|g| caps.get(g))
                    .map(|m| m.as_bytes());
                let targets: Vec<regex::bytes::Match<'_>> = if rule.targets.is_empty() {
                    vec![whole]
                } else {
                    rule.targets.iter().filter_map(|g| caps.get(*g)).collect()
                };
                let mut rejected = None;
                for m in targets {
                    if m.start() < m.end() && rules::check(rule.check, name, m.as_bytes()) {
                        out.push(Span {
                            start: m.start(),
                            end: m.end(),
                            kind: rule.kind,
                        });
                        if first_only {
                            return;
                        }
                    } else {
                        rejected = Some(m);
                    }
                }
                // A rejected value may itself start a real match (`Bearer Bearer sk-…`): look
                // again from the value's start. Only short values are looked at again, which
                // bounds the extra work per rejection and keeps the scan linear.
                pos = match rejected {
                    Some(m) if m.len() <= RESCAN_LIMIT => m.start().max(whole.start() + 1),
                    _ if whole.end() > whole.start() => whole.end(),
                    _ => whole.end() + 1,
                };
            }
        }
    }
}

impl Redactor {
    /// Spans of a shape rule, found without resolving capture groups. Returns true when
    /// `first_only` is satisfied.
    fn shape_spans(&self, rule: &Rule, text: &[u8], out: &mut Vec<Span>, first_only: bool) -> bool {
        let mut pos = 0;
        while pos <= text.len() {
            let Some(m) = rule.regex.find_at(text, pos) else {
                break;
            };
            // The left boundary consumed at most a `\n`-style escape; the secret never starts
            // with a backslash.
            let start = if text.get(m.start()) == Some(&b'\\') {
                m.start() + 2
            } else {
                m.start()
            };
            let value = text.get(start..m.end()).unwrap_or_default();
            if !value.is_empty() && rules::check(rule.check, None, value) {
                out.push(Span {
                    start,
                    end: m.end(),
                    kind: rule.kind,
                });
                if first_only {
                    return true;
                }
                pos = m.end().max(m.start() + 1);
            } else if value.len() <= RESCAN_LIMIT {
                pos = start.max(m.start() + 1);
            } else {
                pos = m.end().max(m.start() + 1);
            }
        }
        false
    }
}

/// Pattern passes per call. Markers never match, so a further pass only finds what an earlier
/// redaction uncovered: a value rejected as a placeholder because of the key glued to it
/// (`Bearer Zf3D0LXa-ghp_123456…`) is judged again without the key. In practice the second pass
/// finds nothing; the bound keeps the cost linear.
const MAX_PASSES: usize = 4;

/// Longest rejected value that is searched again for a match starting inside it.
const RESCAN_LIMIT: usize = 512;

/// Finds which rules' anchors occur in a text. Teddy (SIMD, from `aho-corasick`'s packed
/// searchers) over groups of at most 64 anchors runs at several GB/s on clean text; where Teddy
/// is unavailable (no SSSE3, or a group it refuses) an Aho-Corasick DFA does the same job slower,
/// and if even that cannot be built every rule runs.
enum Prefilter {
    Teddy(Vec<(aho_corasick::packed::Searcher, Vec<u64>)>),
    Automaton(AhoCorasick, Vec<u64>),
    RunEverything,
}

impl Prefilter {
    fn new(anchors: Vec<(String, u64)>) -> Prefilter {
        let mut uniq: Vec<(String, u64)> = Vec::new();
        for (a, bit) in anchors {
            match uniq.iter_mut().find(|(u, _)| *u == a) {
                Some((_, m)) => *m |= bit,
                None => uniq.push((a, bit)),
            }
        }
        // A searcher reports one anchor per start position; anchors that are prefixes of one
        // another share their rules so it does not matter which one it picks.
        let merged: Vec<(String, u64)> = uniq
            .iter()
            .map(|(a, m)| {
                let mask = uniq
                    .iter()
                    .filter(|(b, _)| a.starts_with(b.as_str()) || b.starts_with(a.as_str()))
                    .fold(*m, |acc, (_, bm)| acc | bm);
                (a.clone(), mask)
            })
            .collect();
        // Short anchors make Teddy's fingerprints weak; keeping them in their own group stops
        // them from diluting the others.
        let mut sorted = merged.clone();
        sorted.sort_by_key(|(a, _)| a.len());
        let mut groups = Vec::new();
        for chunk in sorted.chunks(TEDDY_GROUP) {
            let mut b = aho_corasick::packed::Config::new()
                .match_kind(aho_corasick::packed::MatchKind::LeftmostFirst)
                .builder();
            for (a, _) in chunk {
                b.add(a.as_bytes());
            }
            match b.build() {
                Some(searcher) => groups.push((searcher, chunk.iter().map(|(_, m)| *m).collect())),
                None => {
                    groups.clear();
                    break;
                }
            }
        }
        if !groups.is_empty() {
            return Prefilter::Teddy(groups);
        }
        match AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(merged.iter().map(|(a, _)| a.as_bytes()))
        {
            Ok(ac) => Prefilter::Automaton(ac, merged.iter().map(|(_, m)| *m).collect()),
            Err(_) => Prefilter::RunEverything,
        }
    }

    /// Rules whose anchors occur in `text`. Bits in `gated` are kept only if one of their hits
    /// passes `rules::could_be_pair`.
    fn triggered(&self, text: &[u8], all: u64, gated: u64) -> u64 {
        let mut mask = 0u64;
        let mut gate_open = false;
        let mut hit = |pattern: usize, start: usize, masks: &[u64], mask: &mut u64| {
            let m = masks.get(pattern).copied().unwrap_or(all);
            if m & gated != 0 && !gate_open && rules::could_be_pair(text, start) {
                gate_open = true;
            }
            *mask |= m;
        };
        match self {
            Prefilter::Teddy(groups) => {
                for (searcher, masks) in groups {
                    let mut at = 0;
                    // Restart one byte after each hit, not after its end, so an anchor inside
                    // another (`api-key` in `xi-api-key`) is still seen.
                    while at < text.len() {
                        let span = aho_corasick::Span::from(at..text.len());
                        let Some(m) = searcher.find_in(text, span) else {
                            break;
                        };
                        hit(m.pattern().as_usize(), m.start(), masks, &mut mask);
                        at = m.start() + 1;
                    }
                }
            }
            Prefilter::Automaton(ac, masks) => {
                let mut at = 0;
                while at < text.len() {
                    let Some(m) = ac.find(aho_corasick::Input::new(text).range(at..)) else {
                        break;
                    };
                    hit(m.pattern().as_usize(), m.start(), masks, &mut mask);
                    at = m.start() + 1;
                }
            }
            Prefilter::RunEverything => return all,
        }
        if gate_open {
            mask
        } else {
            mask & !gated
        }
    }
}

const TEDDY_GROUP: usize = 64;

/// Sorts spans and merges overlapping ones; the merged span takes the most specific kind.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(cur) if s.start < cur.end => {
                cur.end = cur.end.max(s.end);
                if s.kind.specificity() > cur.kind.specificity() {
                    cur.kind = s.kind;
                }
            }
            _ => out.push(s),
        }
    }
    out
}

fn tally(spans: &[Span], counts: Option<&mut Counts>) {
    if let Some(c) = counts {
        for s in spans {
            c.add(s.kind);
        }
    }
}

fn apply(text: &[u8], spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + spans.len() * 16);
    let mut at = 0;
    for s in spans {
        out.extend_from_slice(text.get(at..s.start).unwrap_or_default());
        out.extend_from_slice(marker(s.kind).as_bytes());
        at = s.end;
    }
    out.extend_from_slice(text.get(at..).unwrap_or_default());
    out
}

/// Pattern spans start and end on ASCII bytes, so they keep UTF-8 intact; a registered value
/// that is not itself valid UTF-8 could split a character, which is replaced, never panicked on.
fn to_str<'a>(original: &'a str, bytes: Cow<'a, [u8]>) -> Cow<'a, str> {
    match bytes {
        Cow::Borrowed(_) => Cow::Borrowed(original),
        Cow::Owned(v) => match String::from_utf8(v) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        let r = Redactor::new();
        assert_eq!(r.rules.len(), rules::specs().len());
        assert!(!matches!(r.prefilter, Prefilter::RunEverything));
    }

    #[test]
    fn redactor_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Redactor>();
        assert_send_sync::<Registration>();
    }
}
