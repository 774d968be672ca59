//! What a redaction was for: the [`Kind`] named in each marker, and per-kind [`Counts`].

use std::fmt;

/// The kind of secret a redaction removed. Each kind has one fixed marker, see [`marker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// OpenAI API keys (`sk-proj-…`, `sk-svcacct-…`, `sk-admin-…`, legacy `sk-…T3BlbkFJ…`).
    OpenAi,
    /// Anthropic API and admin keys (`sk-ant-api03-…`, `sk-ant-admin01-…`).
    Anthropic,
    /// Google API keys (`AIza…`).
    Google,
    /// GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`, `github_pat_`).
    GitHub,
    /// Stripe secret and restricted keys and webhook secrets.
    Stripe,
    /// Twilio API key SIDs, account SIDs and auth tokens beside a Twilio keyword.
    Twilio,
    /// AWS access key ids and secret access keys beside an AWS keyword.
    Aws,
    /// Slack tokens and webhook URLs.
    Slack,
    /// ElevenLabs keys (`sk_` + hex, `xi-api-key` values).
    ElevenLabs,
    /// Resend keys (`re_…`).
    Resend,
    /// Vultr API keys beside a Vultr keyword.
    Vultr,
    /// Railway tokens beside a Railway keyword.
    Railway,
    /// Groq API keys (`gsk_…`).
    Groq,
    /// xAI API keys (`xai-…`).
    Xai,
    /// OpenRouter API keys (`sk-or-v1-…`).
    OpenRouter,
    /// Perplexity API keys (`pplx-…`).
    Perplexity,
    /// Cerebras API keys (`csk-…`).
    Cerebras,
    /// JSON Web Tokens, also base64-wrapped.
    Jwt,
    /// PEM / OpenSSH / PGP private-key blocks.
    PrivateKey,
    /// `Bearer …` and other `Authorization` header credentials.
    Bearer,
    /// `Basic …` credentials and `curl -u user:pass`.
    BasicAuth,
    /// `scheme://user:pass@host` userinfo.
    UrlCredentials,
    /// Values of secret-named query parameters (`?key=`, `access_token=`, `sig=`…).
    QuerySecret,
    /// Values of `name = value` pairs whose name says secret.
    GenericSecret,
    /// keybroker's own tool tokens (`kb_…`).
    KeybrokerToken,
    /// keybroker admin tokens (`admin-…`).
    AdminToken,
    /// A value registered with [`crate::Redactor::register`] or passed to
    /// [`crate::Redactor::redact_with`], or one of its encodings.
    Exact,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 27] = [
        Kind::OpenAi,
        Kind::Anthropic,
        Kind::Google,
        Kind::GitHub,
        Kind::Stripe,
        Kind::Twilio,
        Kind::Aws,
        Kind::Slack,
        Kind::ElevenLabs,
        Kind::Resend,
        Kind::Vultr,
        Kind::Railway,
        Kind::Groq,
        Kind::Xai,
        Kind::OpenRouter,
        Kind::Perplexity,
        Kind::Cerebras,
        Kind::Jwt,
        Kind::PrivateKey,
        Kind::Bearer,
        Kind::BasicAuth,
        Kind::UrlCredentials,
        Kind::QuerySecret,
        Kind::GenericSecret,
        Kind::KeybrokerToken,
        Kind::AdminToken,
        Kind::Exact,
    ];

    /// Stable lower-case name, as used in markers and `--stats` output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Anthropic => "anthropic",
            Kind::Google => "google",
            Kind::GitHub => "github",
            Kind::Stripe => "stripe",
            Kind::Twilio => "twilio",
            Kind::Aws => "aws",
            Kind::Slack => "slack",
            Kind::ElevenLabs => "elevenlabs",
            Kind::Resend => "resend",
            Kind::Vultr => "vultr",
            Kind::Railway => "railway",
            Kind::Groq => "groq",
            Kind::Xai => "xai",
            Kind::OpenRouter => "openrouter",
            Kind::Perplexity => "perplexity",
            Kind::Cerebras => "cerebras",
            Kind::Jwt => "jwt",
            Kind::PrivateKey => "private-key",
            Kind::Bearer => "bearer",
            Kind::BasicAuth => "basic-auth",
            Kind::UrlCredentials => "url-credentials",
            Kind::QuerySecret => "query-secret",
            Kind::GenericSecret => "generic-secret",
            Kind::KeybrokerToken => "keybroker-token",
            Kind::AdminToken => "admin-token",
            Kind::Exact => "exact",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// When two redactions overlap they are merged into one marker; the more specific kind names
    /// it, so a `Bearer sk-ant-…` header reads `Bearer [REDACTED:anthropic]`.
    pub(crate) fn specificity(self) -> u8 {
        match self {
            Kind::Bearer
            | Kind::BasicAuth
            | Kind::UrlCredentials
            | Kind::QuerySecret
            | Kind::GenericSecret => 0,
            Kind::Exact => 1,
            Kind::Jwt | Kind::PrivateKey => 2,
            _ => 3,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text that replaces a secret of this kind, e.g. `[REDACTED:openai]`.
///
/// Markers start with `[` and contain no character that any pattern accepts at the start of a
/// secret value, which is what makes redaction idempotent.
pub fn marker(kind: Kind) -> &'static str {
    match kind {
        Kind::OpenAi => "[REDACTED:openai]",
        Kind::Anthropic => "[REDACTED:anthropic]",
        Kind::Google => "[REDACTED:google]",
        Kind::GitHub => "[REDACTED:github]",
        Kind::Stripe => "[REDACTED:stripe]",
        Kind::Twilio => "[REDACTED:twilio]",
        Kind::Aws => "[REDACTED:aws]",
        Kind::Slack => "[REDACTED:slack]",
        Kind::ElevenLabs => "[REDACTED:elevenlabs]",
        Kind::Resend => "[REDACTED:resend]",
        Kind::Vultr => "[REDACTED:vultr]",
        Kind::Railway => "[REDACTED:railway]",
        Kind::Groq => "[REDACTED:groq]",
        Kind::Xai => "[REDACTED:xai]",
        Kind::OpenRouter => "[REDACTED:openrouter]",
        Kind::Perplexity => "[REDACTED:perplexity]",
        Kind::Cerebras => "[REDACTED:cerebras]",
        Kind::Jwt => "[REDACTED:jwt]",
        Kind::PrivateKey => "[REDACTED:private-key]",
        Kind::Bearer => "[REDACTED:bearer]",
        Kind::BasicAuth => "[REDACTED:basic-auth]",
        Kind::UrlCredentials => "[REDACTED:url-credentials]",
        Kind::QuerySecret => "[REDACTED:query-secret]",
        Kind::GenericSecret => "[REDACTED:generic-secret]",
        Kind::KeybrokerToken => "[REDACTED:keybroker-token]",
        Kind::AdminToken => "[REDACTED:admin-token]",
        Kind::Exact => "[REDACTED:exact]",
    }
}

/// How many redactions of each kind [`crate::Redactor::redact_counting`] made, for `--stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    by_kind: [u64; Kind::ALL.len()],
}

impl Counts {
    /// An all-zero tally.
    pub fn new() -> Counts {
        Counts::default()
    }

    /// Redactions of `kind` so far.
    pub fn get(&self, kind: Kind) -> u64 {
        self.by_kind.get(kind.index()).copied().unwrap_or(0)
    }

    /// Redactions of every kind together.
    pub fn total(&self) -> u64 {
        self.by_kind.iter().sum()
    }

    /// `(kind, count)` for every kind with a non-zero count, in [`Kind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, u64)> + '_ {
        Kind::ALL
            .iter()
            .zip(self.by_kind.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
    }

    pub(crate) fn add(&mut self, kind: Kind) {
        if let Some(n) = self.by_kind.get_mut(kind.index()) {
            *n = n.saturating_add(1);
        }
    }
}

impl<'a> IntoIterator for &'a Counts {
    type Item = (Kind, u64);
    type IntoIter = Box<dyn Iterator<Item = (Kind, u64)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
