//! Whole-string key format checks, for validating keys users paste in. They are built from the
//! same shape constants as the scanning rules, so the two cannot drift apart.

use crate::kind::Kind;
use crate::rules;
use regex::Regex;
use std::sync::OnceLock;

/// True when `candidate` is, in its entirety, a key of `kind` (no surrounding whitespace: trim
/// first).
///
/// Shapes checked (each is also a scanning rule of that kind, with the same check, so a string
/// this accepts is one [`crate::Redactor::redact`] finds, and the other way round):
///
/// | kind | accepted |
/// |---|---|
/// | `OpenAi` | `sk-proj-…`/`sk-svcacct-…`/`sk-admin-…` containing `T3BlbkFJ`; legacy `sk-` + 48 alphanumerics; legacy\* `sk-[proj-|svcacct-|admin-]` + 20–250 of `[A-Za-z0-9_-]`, not `sk-ant-`/`sk-or-`, no marker but `T3BlbkFJ` |
/// | `Anthropic` | `sk-ant-api03-…` / `sk-ant-admin01-…`: 93 characters then `AA`; legacy\* `sk-ant-api03-` + 32–200 |
/// | `Google` | `AIza` + 35 |
/// | `GitHub` | `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + 36+, `github_pat_` + 22+ |
/// | `Stripe` | `sk_`/`rk_` + `live`/`test`/`prod` + `_…`, `whsec_…` |
/// | `Twilio` | `SK`/`AC` + 32 hex, or a bare 32-hex auth token |
/// | `Aws` | an access key id (`AKIA…`, `ASIA…`, …) or a 40-character secret access key |
/// | `Slack` | bot/user/app/config tokens and `https://hooks.slack.com/…` webhook URLs |
/// | `ElevenLabs` | `sk_` + 32–64 hex, or a bare 32-hex v1 key |
/// | `Resend` | `re_` + 6–12 + `_` + 16–40; legacy\* `re_` + 16–100 of `[A-Za-z0-9_]` |
/// | `Vultr` | 36 upper-case letters and digits |
/// | `Railway` | a lower-case UUID |
/// | `Groq` | `gsk_` + 52 alphanumerics |
/// | `Xai` | `xai-` + 70–90 of `[A-Za-z0-9_]` |
/// | `OpenRouter` | `sk-or-v1-` + 64 hex |
/// | `Perplexity` | `pplx-` + 40–56 alphanumerics |
/// | `Cerebras` | `csk-` + 40–64 lower-case letters and digits |
/// | `Jwt` | `eyJ….eyJ….signature` |
/// | `PrivateKey` | a PEM block from `-----BEGIN … PRIVATE KEY-----` to its END line |
/// | `KeybrokerToken` | `kb_` + 43+ base64url |
/// | `AdminToken` | `admin-` + 32+ base64url |
///
/// \* Legacy shapes: what keybroker's provider registry accepted before it delegated its key
/// check here. They count only with two of lower case, upper case and digits (so
/// `sk-aaaaaaaaaaaaaaaaaaaa` is not a key, nor is `re_REDACTED_API_KEY`).
///
/// Honest limits: Vultr keys, Railway tokens (UUIDs), ElevenLabs v1 keys and Twilio auth tokens
/// (32 hex) have no distinctive prefix, so for those kinds this only checks the character set
/// and length; many non-keys pass, and the check cannot tell a Twilio token from an ElevenLabs v1
/// key. AWS secret access keys likewise are just 40 base64 characters. The contextual kinds
/// (`Bearer`, `BasicAuth`, `UrlCredentials`, `QuerySecret`, `GenericSecret`, `Exact`) have no
/// standalone shape and always return false.
pub fn matches_format(kind: Kind, candidate: &str) -> bool {
    let table = TABLE.get_or_init(build);
    table
        .iter()
        .filter(|shape| shape.kind == kind)
        .any(|shape| {
            shape.regex.is_match(candidate)
                && shape
                    .check
                    .is_none_or(|c| rules::check(c, None, candidate.as_bytes()))
        })
}

// Compiled on first use and never changed afterwards: a cache, not mutable state.
static TABLE: OnceLock<Vec<Shape>> = OnceLock::new();

struct Shape {
    kind: Kind,
    regex: Regex,
    /// The scanning rule's value check, where the shape has one.
    check: Option<rules::Check>,
}

fn build() -> Vec<Shape> {
    let hex32 = "[0-9a-f]{32}";
    let pem = format!(r"(?s){}.{{64,}}?{}\s*", rules::PEM_BEGIN, rules::PEM_END);
    let legacy = |strip, except, without| {
        Some(rules::Check::Legacy {
            strip,
            except,
            without,
        })
    };
    let shapes: Vec<(Kind, String, Option<rules::Check>)> = vec![
        (Kind::OpenAi, rules::OPENAI.into(), None),
        (
            Kind::OpenAi,
            rules::OPENAI_LEGACY.into(),
            legacy(
                rules::OPENAI_LEGACY_STRIP,
                rules::OPENAI_LEGACY_EXCEPT,
                rules::OPENAI_LEGACY_WITHOUT,
            ),
        ),
        (Kind::Anthropic, rules::ANTHROPIC.into(), None),
        (
            Kind::Anthropic,
            rules::ANTHROPIC_LEGACY.into(),
            legacy(rules::ANTHROPIC_LEGACY_STRIP, &[], &[]),
        ),
        (Kind::Google, rules::GOOGLE.into(), None),
        (Kind::GitHub, rules::GITHUB.into(), None),
        (Kind::Stripe, rules::STRIPE.into(), None),
        (Kind::Twilio, format!("{}|{hex32}", rules::TWILIO_SID), None),
        (
            Kind::Aws,
            format!("{}|[A-Za-z0-9/+]{{40}}", rules::AWS_KEY_ID),
            None,
        ),
        (
            Kind::Slack,
            format!("{}|{}", rules::SLACK, rules::SLACK_WEBHOOK),
            None,
        ),
        (
            Kind::ElevenLabs,
            format!("{}|{hex32}", rules::ELEVENLABS),
            None,
        ),
        (Kind::Resend, rules::RESEND.into(), None),
        (
            Kind::Resend,
            rules::RESEND_LEGACY.into(),
            legacy(rules::RESEND_LEGACY_STRIP, &[], &[]),
        ),
        (Kind::Vultr, rules::VULTR.into(), None),
        (Kind::Railway, rules::UUID.into(), None),
        (Kind::Groq, rules::GROQ.into(), None),
        (Kind::Xai, rules::XAI.into(), None),
        (Kind::OpenRouter, rules::OPENROUTER.into(), None),
        (Kind::Perplexity, rules::PERPLEXITY.into(), None),
        (Kind::Cerebras, rules::CEREBRAS.into(), None),
        (Kind::Jwt, rules::JWT.into(), None),
        (Kind::PrivateKey, pem, None),
        (Kind::KeybrokerToken, rules::KEYBROKER.into(), None),
        (Kind::AdminToken, rules::ADMIN.into(), None),
    ];
    shapes
        .into_iter()
        .filter_map(|(kind, s, check)| {
            Regex::new(&format!("^(?:{s})$"))
                .ok()
                .map(|regex| Shape { kind, regex, check })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_compiles() {
        assert_eq!(build().len(), 24);
    }

    #[test]
    fn whole_keys_match_and_fragments_do_not() {
        let key = "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";
        assert!(matches_format(Kind::OpenAi, key));
        assert!(!matches_format(Kind::OpenAi, &format!(" {key}")));
        assert!(!matches_format(Kind::Anthropic, key));
        assert!(matches_format(
            Kind::Google,
            "AIzaSyNHxIf32IQ1a1yjl3ZJIqKZqzLAK1XhDk-"
        ));
        assert!(!matches_format(Kind::Bearer, "anything"));
    }
}
