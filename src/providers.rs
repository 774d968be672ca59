//! The provider registry: every upstream keybroker can hold a key for, in one table — its id, its
//! API's base URL, how a key is presented to it, and what its keys look like.
//!
//! # Key formats
//!
//! A key is checked against its provider's format before it is stored, so a key pasted into the
//! wrong provider (or a truncated one) is refused at once instead of failing on the first call.
//! Providers whose keys have no published shape (Vultr, Railway) accept any key of a plausible
//! charset and length. The check lives behind [`Provider::key_format_ok`] so it can later
//! delegate to the `redactor` crate's format table, keeping one source of truth.
//!
//! # Twilio
//!
//! Twilio authenticates with HTTP Basic: the account SID as user and the auth token as password.
//! keybroker stores the pair as one key string, `"AC<32 hex>:<32 hex auth token>"`, so every
//! provider has exactly one secret string and one code path; the proxy splits it at the `:` to
//! build the `Authorization: Basic` header.

use std::sync::LazyLock;

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

/// What a provider's keys look like.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// The whole key must match one of these anchored patterns. `prefixes` are the literal
    /// starts of those patterns: shown in masks and used to spot keys in URLs.
    Fixed {
        patterns: &'static [&'static str],
        prefixes: &'static [&'static str],
        /// Keys of another provider that would otherwise match (an Anthropic key starts `sk-`).
        not_prefixes: &'static [&'static str],
    },
    /// No published shape: printable, no whitespace, 16–512 characters.
    Free,
}

const FREE_PATTERN: &str = r"^[A-Za-z0-9._~+/=:-]{16,512}$";

/// One upstream provider.
#[derive(Debug)]
pub struct Provider {
    /// Stable id used in the API, the database and proxy paths.
    pub id: &'static str,
    pub display_name: &'static str,
    /// Scheme and host of the upstream API, no trailing slash.
    pub base_url: &'static str,
    pub injection: Injection,
    format: Format,
}

/// The registry. Order is the order providers are listed in.
pub static PROVIDERS: &[Provider] = &[
    Provider {
        id: "openai",
        display_name: "OpenAI",
        base_url: "https://api.openai.com",
        injection: Injection::Bearer,
        format: Format::Fixed {
            patterns: &[r"^sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{20,250}$"],
            prefixes: &["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-"],
            not_prefixes: &["sk-ant-"],
        },
    },
    Provider {
        id: "anthropic",
        display_name: "Anthropic",
        base_url: "https://api.anthropic.com",
        injection: Injection::Header("x-api-key"),
        format: Format::Fixed {
            patterns: &[r"^sk-ant-api03-[A-Za-z0-9_-]{32,200}$"],
            prefixes: &["sk-ant-api03-"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "google",
        display_name: "Google AI (Gemini)",
        base_url: "https://generativelanguage.googleapis.com",
        injection: Injection::Header("x-goog-api-key"),
        format: Format::Fixed {
            patterns: &[r"^AIza[0-9A-Za-z_-]{35}$"],
            prefixes: &["AIza"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "elevenlabs",
        display_name: "ElevenLabs",
        base_url: "https://api.elevenlabs.io",
        injection: Injection::Header("xi-api-key"),
        format: Format::Fixed {
            // Current keys are `sk_` + 48 hex; older ones are 32 bare hex digits.
            patterns: &[r"^sk_[0-9a-f]{32,64}$", r"^[0-9a-f]{32}$"],
            prefixes: &["sk_"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "stripe",
        display_name: "Stripe",
        base_url: "https://api.stripe.com",
        injection: Injection::Bearer,
        format: Format::Fixed {
            patterns: &[r"^(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,247}$"],
            prefixes: &["sk_live_", "sk_test_", "rk_live_", "rk_test_"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "twilio",
        display_name: "Twilio",
        base_url: "https://api.twilio.com",
        injection: Injection::Basic,
        format: Format::Fixed {
            patterns: &[r"^AC[0-9a-f]{32}:[0-9a-f]{32}$"],
            prefixes: &["AC"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "resend",
        display_name: "Resend",
        base_url: "https://api.resend.com",
        injection: Injection::Bearer,
        format: Format::Fixed {
            patterns: &[r"^re_[A-Za-z0-9_]{16,100}$"],
            prefixes: &["re_"],
            not_prefixes: &[],
        },
    },
    Provider {
        id: "vultr",
        display_name: "Vultr",
        base_url: "https://api.vultr.com",
        injection: Injection::Bearer,
        format: Format::Free,
    },
    Provider {
        id: "railway",
        display_name: "Railway",
        base_url: "https://backboard.railway.app",
        injection: Injection::Bearer,
        format: Format::Free,
    },
];

/// Every pattern of the registry, compiled once, in registry order. A pattern that failed to
/// compile is `None` and matches nothing (fail closed); a unit test keeps them all valid.
static COMPILED: LazyLock<Vec<Vec<Option<Regex>>>> = LazyLock::new(|| {
    PROVIDERS
        .iter()
        .map(|p| {
            let patterns: &[&str] = match &p.format {
                Format::Fixed { patterns, .. } => patterns,
                Format::Free => &[FREE_PATTERN],
            };
            patterns.iter().map(|s| Regex::new(s).ok()).collect()
        })
        .collect()
});

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

    /// Whether `key` (already trimmed) has this provider's key format.
    pub fn key_format_ok(&self, key: &str) -> bool {
        if let Format::Fixed { not_prefixes, .. } = &self.format {
            if not_prefixes.iter().any(|p| key.starts_with(p)) {
                return false;
            }
        }
        self.index()
            .and_then(|i| COMPILED.get(i))
            .is_some_and(|patterns| patterns.iter().flatten().any(|re| re.is_match(key)))
    }

    /// The fixed, public start of `key` for this provider (`sk-proj-`, `AIza`, ...), if any.
    /// Never derived from the secret part: only literal prefixes from the registry.
    pub fn known_prefix(&self, key: &str) -> Option<&'static str> {
        match &self.format {
            Format::Fixed { prefixes, .. } => prefixes.iter().copied().find(|p| key.starts_with(p)),
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

/// Whether `candidate` is unmistakably a credential: a provider key with a distinctive prefix, or
/// a keybroker tool token. Used to refuse keys in URLs.
pub fn looks_like_credential(candidate: &str) -> bool {
    TOOL_TOKEN.as_ref().is_some_and(|re| re.is_match(candidate))
        || PROVIDERS.iter().any(|p| p.distinctive_key(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
