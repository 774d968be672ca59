//! The provider registry: every upstream keybroker can hold a key for, in one table — its id, its
//! API's base URL, how a key is presented to it, and what its keys look like.
//!
//! # Key formats
//!
//! A key is checked against its provider's format before it is stored, so a key pasted into the
//! wrong provider (or a truncated one) is refused at once instead of failing on the first call.
//!
//! Where the `redactor` crate knows a provider's key shape, [`Provider::key_format_ok`] asks it
//! (`redactor::matches_format`, built from the same constants as the redactor's scanning rules),
//! so a shape is defined once and a change there changes what is accepted here. Two kinds of
//! registry-owned pattern remain:
//!
//! - shapes the redactor has none for: Vultr and Railway keys (any plausible charset and length),
//!   the Twilio auth token, the bare 32-hex ElevenLabs v1 key;
//! - `also` patterns, accepted *besides* the redactor's shape: looser shapes this registry took
//!   before it delegated (OpenAI project keys without the `T3BlbkFJ` marker, Anthropic keys of
//!   other lengths, ...). Keys already stored and scripts that add them must keep working; while
//!   the proxy uses a key the redactor holds its exact value, which covers these keys whatever
//!   their shape. Each is a candidate for removal, not a second definition of the format.
//!
//! # Twilio
//!
//! Twilio authenticates with HTTP Basic: the account SID as user and the auth token as password.
//! keybroker stores the pair as one key string, `"AC<32 hex>:<32 hex auth token>"`, so every
//! provider has exactly one secret string and one code path; the proxy splits it at the `:` to
//! build the `Authorization: Basic` header.

use std::sync::LazyLock;

use redactor::Kind;
use regex::Regex;

/// How the proxy presents a key upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// The key as the value of this header.
    Header(&'static str),
    /// `Authorization: Basic base64(user:password)`, the key being `user:password`.
    Basic,
}

/// How a provider's calls are metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metering {
    /// Token usage in OpenAI's wire format (chat completions, responses, embeddings).
    OpenAi,
    /// Token usage in Anthropic's Messages format.
    Anthropic,
    /// Token usage in Google's `generateContent` format.
    Google,
    /// A price per request (per endpoint), or the provider's reported cost where it has one.
    PerRequest,
}

impl Metering {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "openai" => Some(Metering::OpenAi),
            "anthropic" => Some(Metering::Anthropic),
            "google" => Some(Metering::Google),
            "per_request" => Some(Metering::PerRequest),
            _ => None,
        }
    }
}

/// What a provider's keys look like.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// The redactor has a shape for these keys: a key is accepted if `redactor::matches_format`
    /// says it is a `kind` key, or if it matches one of the registry's `also` patterns (see the
    /// module docs).
    Redactor {
        kind: Kind,
        /// Anchored patterns accepted besides the redactor's shape.
        also: &'static [&'static str],
        /// The literal starts of the provider's keys: shown in masks and used to spot keys in URLs.
        prefixes: &'static [&'static str],
        /// Starts refused even if a shape matches: keys of another provider or of another kind
        /// that the shape also takes (a Stripe webhook secret is not an API key).
        not_prefixes: &'static [&'static str],
    },
    /// `user:password` (HTTP Basic): `user` must be a `user_kind` key of the redactor starting
    /// with one of `prefixes`; `password` is an anchored registry pattern.
    Pair {
        user_kind: Kind,
        prefixes: &'static [&'static str],
        password: &'static str,
    },
    /// No published shape: printable, no whitespace, 16–512 characters.
    Free,
}

const FREE_PATTERN: &str = r"^[A-Za-z0-9._~+/=:-]{16,512}$";

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Stable id used in the API, the database and proxy paths.
    pub id: &'static str,
    pub display_name: &'static str,
    /// Scheme and host of the upstream API, no trailing slash.
    pub base_url: &'static str,
    pub injection: Injection,
    pub metering: Metering,
    format: Format,
}

/// The registry. Order is the order providers are listed in.
pub static PROVIDERS: &[Provider] = &[
    Provider {
        id: "openai",
        display_name: "OpenAI",
        base_url: "https://api.openai.com",
        injection: Injection::Bearer,
        metering: Metering::OpenAi,
        format: Format::Redactor {
            kind: Kind::OpenAi,
            // The redactor wants the `T3BlbkFJ` marker in project, service-account and admin keys.
            also: &[r"^sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,250}$"],
            prefixes: &["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-"],
            not_prefixes: &["sk-ant-"],
        },
    },
    Provider {
        id: "anthropic",
        display_name: "Anthropic",
        base_url: "https://api.anthropic.com",
        injection: Injection::Header("x-api-key"),
        metering: Metering::Anthropic,
        format: Format::Redactor {
            kind: Kind::Anthropic,
            // The redactor wants exactly 93 characters then `AA`.
            also: &[r"^sk-ant-api03-[A-Za-z0-9_-]{32,200}$"],
            prefixes: &["sk-ant-api03-", "sk-ant-admin01-"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "google",
        display_name: "Google AI (Gemini)",
        base_url: "https://generativelanguage.googleapis.com",
        injection: Injection::Header("x-goog-api-key"),
        metering: Metering::Google,
        format: Format::Redactor {
            kind: Kind::Google,
            also: &[],
            prefixes: &["AIza"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "elevenlabs",
        display_name: "ElevenLabs",
        base_url: "https://api.elevenlabs.io",
        injection: Injection::Header("xi-api-key"),
        metering: Metering::PerRequest,
        format: Format::Redactor {
            kind: Kind::ElevenLabs,
            also: &[
                // The redactor's format takes `sk_` + exactly 48 hex (its scanner 32–64).
                r"^sk_[0-9a-f]{32,64}$",
                // v1 keys, 32 bare hex digits: no shape of their own (the redactor cannot tell
                // them from Twilio auth tokens), so the registry keeps this one.
                r"^[0-9a-f]{32}$",
            ],
            prefixes: &["sk_"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "stripe",
        display_name: "Stripe",
        base_url: "https://api.stripe.com",
        injection: Injection::Bearer,
        metering: Metering::PerRequest,
        format: Format::Redactor {
            kind: Kind::Stripe,
            also: &[],
            prefixes: &["sk_live_", "sk_test_", "rk_live_", "rk_test_"],
            // The redactor's Stripe shape includes webhook signing secrets, which the API refuses.
            not_prefixes: &["whsec_"],
        },
    },
    Provider {
        id: "twilio",
        display_name: "Twilio",
        base_url: "https://api.twilio.com",
        injection: Injection::Basic,
        metering: Metering::PerRequest,
        // The account SID authenticates (`SK` API key SIDs pair with a different secret).
        format: Format::Pair {
            user_kind: Kind::Twilio,
            prefixes: &["AC"],
            password: r"^[0-9a-f]{32}$",
        },
    },
    Provider {
        id: "resend",
        display_name: "Resend",
        base_url: "https://api.resend.com",
        injection: Injection::Bearer,
        metering: Metering::PerRequest,
        format: Format::Redactor {
            kind: Kind::Resend,
            // The redactor wants `re_` + 6–12 + `_` + 16–40.
            also: &[r"^re_[A-Za-z0-9_]{16,100}$"],
            prefixes: &["re_"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "vultr",
        display_name: "Vultr",
        base_url: "https://api.vultr.com",
        injection: Injection::Bearer,
        metering: Metering::PerRequest,
        format: Format::Free,
    },
    Provider {
        id: "railway",
        display_name: "Railway",
        base_url: "https://backboard.railway.app",
        injection: Injection::Bearer,
        metering: Metering::PerRequest,
        format: Format::Free,
    },
];

impl Format {
    /// The registry's own patterns for this format (the redactor's are compiled by the redactor).
    fn own_patterns(&self) -> &[&'static str] {
        match self {
            Format::Redactor { also, .. } => also,
            Format::Pair { password, .. } => std::slice::from_ref(password),
            Format::Free => &[FREE_PATTERN],
        }
    }
}

/// The registry's own patterns, compiled once, in registry order. A pattern that failed to
/// compile is `None` and matches nothing (fail closed); a unit test keeps them all valid.
static COMPILED: LazyLock<Vec<Vec<Option<Regex>>>> = LazyLock::new(|| {
    PROVIDERS
        .iter()
        .map(|p| {
            p.format
                .own_patterns()
                .iter()
                .map(|s| Regex::new(s).ok())
                .collect()
        })
        .collect()
});

/// The free format, for providers from the operator's file too (they are not in `PROVIDERS`).
static FREE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(FREE_PATTERN).ok());

/// The `kb_` tool tokens keybroker issues, for spotting them where they do not belong.
static TOOL_TOKEN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^kb_[A-Za-z0-9_-]{20,}$").ok());

/// The provider with this id, if there is one.
pub fn lookup(id: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.id == id)
}

/// Every provider id, for error messages.
pub fn ids() -> Vec<&'static str> {
    PROVIDERS.iter().map(|p| p.id).collect()
}

impl Provider {
    fn index(&self) -> Option<usize> {
        PROVIDERS.iter().position(|p| p.id == self.id)
    }

    /// Whether `key` matches one of the registry's own patterns for this provider.
    fn own_format_ok(&self, key: &str) -> bool {
        if matches!(self.format, Format::Free) {
            return FREE.as_ref().is_some_and(|re| re.is_match(key));
        }
        self.index()
            .and_then(|i| COMPILED.get(i))
            .is_some_and(|patterns| patterns.iter().flatten().any(|re| re.is_match(key)))
    }

    /// Whether `key` (already trimmed) has this provider's key format.
    pub fn key_format_ok(&self, key: &str) -> bool {
        match &self.format {
            Format::Redactor {
                kind, not_prefixes, ..
            } => {
                !not_prefixes.iter().any(|p| key.starts_with(p))
                    && (redactor::matches_format(*kind, key) || self.own_format_ok(key))
            }
            Format::Pair {
                user_kind,
                prefixes,
                ..
            } => key.split_once(':').is_some_and(|(user, password)| {
                prefixes.iter().any(|p| user.starts_with(p))
                    && redactor::matches_format(*user_kind, user)
                    && self.own_format_ok(password)
            }),
            Format::Free => self.own_format_ok(key),
        }
    }

    /// The literal starts of this provider's keys (empty when keys have no fixed start). The
    /// dashboard uses them for a quick check before submitting; the server's check is the real one.
    pub fn prefixes(&self) -> &'static [&'static str] {
        match &self.format {
            Format::Redactor { prefixes, .. } | Format::Pair { prefixes, .. } => prefixes,
            Format::Free => &[],
        }
    }

    /// The fixed, public start of `key` for this provider (`sk-proj-`, `AIza`, ...), if any.
    /// Never derived from the secret part: only literal prefixes from the registry.
    pub fn known_prefix(&self, key: &str) -> Option<&'static str> {
        match &self.format {
            Format::Redactor { prefixes, .. } | Format::Pair { prefixes, .. } => {
                prefixes.iter().copied().find(|p| key.starts_with(p))
            }
            Format::Free => None,
        }
    }

    /// Whether `candidate` is unmistakably one of this provider's keys: it has the format *and*
    /// starts with a distinctive prefix. Bare hex or free-form strings are too common in URLs
    /// (object ids, hashes) to be called keys on shape alone.
    fn distinctive_key(&self, candidate: &str) -> bool {
        self.known_prefix(candidate).is_some() && self.key_format_ok(candidate)
    }
}

/// The providers this server knows: the built-in table, changed and extended by the operator's
/// TOML file (`KEYBROKER_PROVIDERS`). Users can never change it.
///
/// ```toml
/// [providers.anthropic]            # change a built-in provider
/// base_url = "https://anthropic-gateway.internal.example"
///
/// [providers.mistral]              # add one (its keys have no fixed shape)
/// display_name = "Mistral"
/// base_url = "https://api.mistral.ai"
/// auth = "bearer"                  # bearer | basic | header:<name>
/// metering = "openai"              # openai | anthropic | google | per_request
/// ```
#[derive(Debug, Clone)]
pub struct Registry {
    providers: Vec<&'static Provider>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("providers file is not valid TOML: {0}")]
    Toml(String),
    #[error("provider {0:?}: ids are 1-32 characters of a-z, 0-9 and -")]
    BadId(String),
    #[error("provider {id:?}: {what}")]
    Bad { id: String, what: &'static str },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    display_name: Option<String>,
    base_url: Option<String>,
    auth: Option<String>,
    metering: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    providers: std::collections::BTreeMap<String, FileEntry>,
}

/// Loaded once at start; the registry lives for the whole process.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn parse_auth(raw: &str) -> Option<Injection> {
    match raw {
        "bearer" => Some(Injection::Bearer),
        "basic" => Some(Injection::Basic),
        _ => {
            let name = raw.strip_prefix("header:")?.trim().to_ascii_lowercase();
            let ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            ok.then(|| Injection::Header(leak(name)))
        }
    }
}

/// An operator's upstream base URL: `http(s)://host[:port][/path]` with no credentials, query or
/// fragment, returned without a trailing slash. The one check for the providers file and the
/// `KEYBROKER_UPSTREAM_<PROVIDER>` variables alike.
pub fn checked_base_url(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || url.contains(['?', '#', ' ']) {
        return None;
    }
    Some(url.trim_end_matches('/').to_owned())
}

fn check_base_url(id: &str, url: &str) -> Result<&'static str, RegistryError> {
    checked_base_url(url)
        .map(leak)
        .ok_or_else(|| RegistryError::Bad {
            id: id.to_owned(),
            what: "base_url must be an http(s) URL without credentials, query or fragment",
        })
}

impl Registry {
    pub fn builtin() -> Self {
        Self {
            providers: PROVIDERS.iter().collect(),
        }
    }

    /// The built-in table with the operator's file applied.
    pub fn load(toml_text: &str) -> Result<Self, RegistryError> {
        let file: File =
            toml::from_str(toml_text).map_err(|e| RegistryError::Toml(e.message().to_owned()))?;
        let mut registry = Self::builtin();
        for (id, entry) in file.providers {
            if id.is_empty()
                || id.len() > 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(RegistryError::BadId(id));
            }
            let bad = |what| RegistryError::Bad {
                id: id.clone(),
                what,
            };
            let existing = registry.providers.iter().position(|p| p.id == id);
            let mut provider = match existing {
                Some(i) => registry
                    .providers
                    .get(i)
                    .map(|p| (*p).clone())
                    .ok_or_else(|| bad("internal"))?,
                None => Provider {
                    id: leak(id.clone()),
                    display_name: "",
                    base_url: "",
                    injection: Injection::Bearer,
                    metering: Metering::PerRequest,
                    format: Format::Free,
                },
            };
            if let Some(name) = entry.display_name {
                provider.display_name = leak(name);
            } else if existing.is_none() {
                provider.display_name = provider.id;
            }
            match entry.base_url {
                Some(url) => provider.base_url = check_base_url(&id, &url)?,
                None if existing.is_none() => return Err(bad("a new provider needs base_url")),
                None => {}
            }
            match entry.auth {
                Some(a) => {
                    provider.injection = parse_auth(&a)
                        .ok_or_else(|| bad("auth is bearer, basic or header:<name>"))?
                }
                None if existing.is_none() => return Err(bad("a new provider needs auth")),
                None => {}
            }
            if let Some(m) = entry.metering {
                provider.metering = Metering::parse(&m)
                    .ok_or_else(|| bad("metering is openai, anthropic, google or per_request"))?;
            }
            let provider: &'static Provider = Box::leak(Box::new(provider));
            match existing {
                Some(i) => {
                    if let Some(slot) = registry.providers.get_mut(i) {
                        *slot = provider;
                    }
                }
                None => registry.providers.push(provider),
            }
        }
        Ok(registry)
    }

    pub fn lookup(&self, id: &str) -> Option<&'static Provider> {
        self.providers.iter().copied().find(|p| p.id == id)
    }

    pub fn ids(&self) -> Vec<&'static str> {
        self.providers.iter().map(|p| p.id).collect()
    }

    pub fn all(&self) -> &[&'static Provider] {
        &self.providers
    }
}

/// Whether `candidate` is unmistakably a credential: a provider key with a distinctive prefix, or
/// a keybroker tool token. Used to refuse keys in URLs.
pub fn looks_like_credential(candidate: &str) -> bool {
    TOOL_TOKEN.as_ref().is_some_and(|re| re.is_match(candidate))
        || PROVIDERS.iter().any(|p| p.distinctive_key(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    fn p(id: &str) -> &'static Provider {
        lookup(id).unwrap()
    }

    #[test]
    fn every_pattern_compiles() {
        for (provider, patterns) in PROVIDERS.iter().zip(COMPILED.iter()) {
            assert!(
                patterns.iter().all(Option::is_some),
                "{} has a pattern that does not compile",
                provider.id
            );
        }
        assert!(TOOL_TOKEN.is_some());
    }

    #[test]
    fn the_required_providers_are_registered() {
        for id in [
            "openai",
            "anthropic",
            "google",
            "elevenlabs",
            "stripe",
            "twilio",
            "resend",
            "vultr",
            "railway",
        ] {
            assert!(lookup(id).is_some(), "{id}");
        }
        assert!(lookup("OpenAI").is_none());
    }

    #[test]
    fn well_formed_keys_are_accepted() {
        let ok = [
            ("openai", format!("sk-{}", "a1B2".repeat(12))),
            ("openai", format!("sk-proj-{}", "Ab_9-".repeat(30))),
            ("openai", format!("sk-svcacct-{}", "x".repeat(40))),
            ("openai", format!("sk-admin-{}", "y".repeat(40))),
            (
                "anthropic",
                format!("sk-ant-api03-{}AA", "Zz09_-".repeat(15)),
            ),
            ("google", format!("AIza{}", "S".repeat(35))),
            ("elevenlabs", format!("sk_{}", "0f".repeat(24))),
            ("elevenlabs", "0123456789abcdef0123456789abcdef".to_owned()),
            ("stripe", format!("sk_live_{}", "51H".repeat(30))),
            ("stripe", format!("rk_test_{}", "a".repeat(24))),
            ("twilio", format!("AC{}:{}", "a".repeat(32), "b".repeat(32))),
            ("resend", "re_123456789_abcdefghijklmnopqrstuvwx".to_owned()),
            ("vultr", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".to_owned()),
            ("railway", uuid::Uuid::new_v4().to_string()),
        ];
        for (id, key) in ok {
            assert!(p(id).key_format_ok(&key), "{id} should accept its key");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let bad = [
            ("openai", "sk-short".to_owned()),
            ("openai", format!("sk-ant-api03-{}", "a".repeat(90))),
            ("openai", format!("pk-{}", "a".repeat(48))),
            ("anthropic", format!("sk-{}", "a".repeat(48))),
            ("google", format!("AIza{}", "S".repeat(34))),
            ("elevenlabs", format!("sk_{}", "G".repeat(48))),
            ("stripe", format!("pk_live_{}", "a".repeat(24))),
            ("twilio", "a".repeat(32)),
            ("twilio", format!("AC{}", "a".repeat(32))),
            ("resend", "re_short".to_owned()),
            ("vultr", "short".to_owned()),
            ("vultr", "has spaces in the middle of it".to_owned()),
            ("railway", format!("{}\n", "a".repeat(20))),
        ];
        for (id, key) in bad {
            assert!(!p(id).key_format_ok(&key), "{id} should refuse a bad key");
        }
    }

    /// Keys only the redactor's shapes take: proof that the check asks the redactor.
    #[test]
    fn shapes_the_redactor_knows_are_accepted_through_it() {
        let openai_long = format!("sk-proj-{}T3BlbkFJ{}", "a".repeat(150), "b".repeat(150));
        let anthropic_admin = format!("sk-ant-admin01-{}AA", "x".repeat(93));
        let stripe_short = format!("sk_test_{}", "a".repeat(12));
        let twilio_upper = format!("AC{}:{}", "A".repeat(32), "b".repeat(32));
        for (id, kind, key) in [
            ("openai", Kind::OpenAi, &openai_long),
            ("anthropic", Kind::Anthropic, &anthropic_admin),
            ("stripe", Kind::Stripe, &stripe_short),
        ] {
            assert!(redactor::matches_format(kind, key), "{id}: redactor shape");
            assert!(!p(id).own_format_ok(key), "{id}: not a registry pattern's");
            assert!(p(id).key_format_ok(key), "{id} should accept it");
        }
        assert!(p("twilio").key_format_ok(&twilio_upper));
        assert_eq!(
            p("anthropic").known_prefix(&anthropic_admin),
            Some("sk-ant-admin01-")
        );
    }

    #[test]
    fn shapes_the_redactor_takes_that_are_not_api_keys_are_refused() {
        let refused = [
            // A Stripe webhook signing secret.
            ("stripe", format!("whsec_{}", "A".repeat(32))),
            // Twilio: the user must be an account SID, not a bare hex token or an API key SID.
            ("twilio", format!("{}:{}", "a".repeat(32), "b".repeat(32))),
            ("twilio", format!("SK{}:{}", "a".repeat(32), "b".repeat(32))),
            ("twilio", format!("AC{}:{}", "a".repeat(32), "B".repeat(32))),
        ];
        for (id, key) in refused {
            assert!(!p(id).key_format_ok(&key), "{id} should refuse {key}");
        }
    }

    /// The shapes the proxy tests and older clients use keep working.
    #[test]
    fn keys_accepted_before_delegation_are_still_accepted() {
        let ok = [
            ("openai", "sk-proj-TESTabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH".to_owned()),
            ("anthropic", "sk-ant-api03-TESTabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx-AAAAAAAA".to_owned()),
            ("google", "AIzaSyTESTabcdefghijklmnopqrstuvwxyz012".to_owned()),
            ("openai", format!("sk-{}", "a".repeat(20))),
            ("anthropic", format!("sk-ant-api03-{}", "a".repeat(32))),
            ("elevenlabs", format!("sk_{}", "0".repeat(32))),
            ("elevenlabs", format!("sk_{}", "f".repeat(64))),
            ("stripe", format!("sk_live_{}", "a".repeat(247))),
            ("resend", format!("re_{}", "a".repeat(16))),
            ("resend", format!("re_{}", "_".repeat(100))),
        ];
        for (id, key) in ok {
            assert!(p(id).key_format_ok(&key), "{id} should still accept {key}");
        }
    }

    /// The registry's patterns before it delegated to the redactor, verbatim.
    const BEFORE_DELEGATION: &[(&str, &str)] = &[
        (
            "openai",
            r"sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,250}",
        ),
        ("anthropic", r"sk-ant-api03-[A-Za-z0-9_-]{32,200}"),
        ("google", r"AIza[0-9A-Za-z_-]{35}"),
        ("elevenlabs", r"sk_[0-9a-f]{32,64}"),
        ("elevenlabs", r"[0-9a-f]{32}"),
        ("stripe", r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,247}"),
        ("twilio", r"AC[0-9a-f]{32}:[0-9a-f]{32}"),
        ("resend", r"re_[A-Za-z0-9_]{16,100}"),
    ];

    proptest::proptest! {
        #[test]
        fn every_key_the_old_patterns_accepted_is_still_accepted(
            (i, key) in (0..BEFORE_DELEGATION.len()).prop_flat_map(|i| {
                let strategy = proptest::string::string_regex(BEFORE_DELEGATION[i].1).unwrap();
                (proptest::strategy::Just(i), strategy)
            })
        ) {
            let id = BEFORE_DELEGATION[i].0;
            // The old check refused Anthropic keys for OpenAI before any pattern.
            proptest::prop_assume!(!(id == "openai" && key.starts_with("sk-ant-")));
            proptest::prop_assert!(p(id).key_format_ok(&key), "{} refuses {}", id, key);
        }
    }

    #[test]
    fn credentials_are_recognised_only_with_a_distinctive_prefix() {
        assert!(looks_like_credential(&format!(
            "sk-proj-{}",
            "a".repeat(40)
        )));
        assert!(looks_like_credential(&format!("kb_{}", "A".repeat(43))));
        assert!(looks_like_credential(&format!(
            "AC{}:{}",
            "a".repeat(32),
            "b".repeat(32)
        )));
        // Bare hex, UUIDs, our own row ids and Twilio account SIDs appear in ordinary URLs.
        assert!(!looks_like_credential("0123456789abcdef0123456789abcdef"));
        assert!(!looks_like_credential(&uuid::Uuid::new_v4().to_string()));
        assert!(!looks_like_credential(&format!("key_{}", "a".repeat(32))));
        assert!(!looks_like_credential(&format!("AC{}", "a".repeat(32))));
    }

    #[test]
    fn the_operator_file_changes_and_adds_providers() {
        let r = Registry::load(
            r#"
            [providers.anthropic]
            base_url = "http://127.0.0.1:9000/"
            auth = "header:api-key"

            [providers.mistral]
            base_url = "https://api.mistral.ai"
            auth = "bearer"
            metering = "openai"
            "#,
        )
        .unwrap();
        let a = r.lookup("anthropic").unwrap();
        assert_eq!(a.base_url, "http://127.0.0.1:9000");
        assert_eq!(a.injection, Injection::Header("api-key"));
        assert_eq!(a.metering, Metering::Anthropic);
        // An overridden provider keeps its key format.
        assert!(!a.key_format_ok("not-an-anthropic-key-at-all-xxxxxxxxxxxx"));
        let m = r.lookup("mistral").unwrap();
        assert_eq!((m.display_name, m.metering), ("mistral", Metering::OpenAi));
        assert!(m.key_format_ok("abcdefghijklmnopqrstuvwxyz012345"));
        assert!(
            lookup("mistral").is_none(),
            "the built-in table is untouched"
        );
    }

    #[test]
    fn a_bad_operator_file_is_refused_with_a_reason() {
        for (toml, needle) in [
            ("[providers.new]\nauth = \"bearer\"", "needs base_url"),
            (
                "[providers.new]\nbase_url = \"https://x.example\"",
                "needs auth",
            ),
            (
                "[providers.openai]\nbase_url = \"https://u:p@x.example\"",
                "without credentials",
            ),
            ("[providers.openai]\nauth = \"magic\"", "auth is"),
            ("[providers.openai]\nmetering = \"tokens\"", "metering is"),
            ("[providers.Bad_Id]\nauth = \"bearer\"", "ids are"),
            ("[providers.openai]\nbase = \"x\"", "TOML"),
        ] {
            let err = Registry::load(toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }
}
