//! Whole-string key format checks, for validating keys users paste in. They are built from the
//! same shape constants as the scanning rules, so the two cannot drift apart.

use crate::kind::Kind;
use crate::rules;
use regex::Regex;
use std::sync::OnceLock;

/// True when `candidate` is, in its entirety, a key of `kind` (no surrounding whitespace: trim
/// first).
///
/// Shapes checked:
///
/// | kind | accepted |
/// |---|---|
/// | `OpenAi` | `sk-proj-…`/`sk-svcacct-…`/`sk-admin-…` containing `T3BlbkFJ`; legacy `sk-` + 48 alphanumerics |
/// | `Anthropic` | `sk-ant-api03-…` / `sk-ant-admin01-…`: 93 characters then `AA` |
/// | `Google` | `AIza` + 35 |
/// | `GitHub` | `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + 36+, `github_pat_` + 22+ |
/// | `Stripe` | `sk_`/`rk_` + `live`/`test` + `_…`, `whsec_…` |
/// | `Twilio` | `SK`/`AC` + 32 hex, or a bare 32-hex auth token |
/// | `Aws` | an access key id (`AKIA…`, `ASIA…`, …) or a 40-character secret access key |
/// | `Slack` | bot/user/app/config tokens and `https://hooks.slack.com/…` webhook URLs |
/// | `ElevenLabs` | `sk_` + 48 hex, or a bare 32-hex v1 key |
/// | `Resend` | `re_` + 8 + `_` + 24 (lengths allowed to vary a little) |
/// | `Vultr` | 36 upper-case letters and digits |
/// | `Railway` | a lower-case UUID |
/// | `Jwt` | `eyJ….eyJ….signature` |
/// | `PrivateKey` | a PEM block from `-----BEGIN … PRIVATE KEY-----` to its END line |
/// | `KeybrokerToken` | `kb_` + 43+ base64url |
/// | `AdminToken` | `admin-` + 32+ base64url |
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
        .find(|(k, _)| *k == kind)
        .is_some_and(|(_, re)| re.is_match(candidate))
}

// Compiled on first use and never changed afterwards: a cache, not mutable state.
static TABLE: OnceLock<Vec<(Kind, Regex)>> = OnceLock::new();

fn build() -> Vec<(Kind, Regex)> {
    let hex32 = "[0-9a-f]{32}";
    let pem = format!(r"(?s){}.{{64,}}?{}\s*", rules::PEM_BEGIN, rules::PEM_END);
    let shapes: Vec<(Kind, String)> = vec![
        (Kind::OpenAi, rules::OPENAI.into()),
        (Kind::Anthropic, rules::ANTHROPIC.into()),
        (Kind::Google, rules::GOOGLE.into()),
        (Kind::GitHub, rules::GITHUB.into()),
        (
            Kind::Stripe,
            r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,255}|whsec_[A-Za-z0-9+/]{20,}={0,2}".into(),
        ),
        (Kind::Twilio, format!("{}|{hex32}", rules::TWILIO_SID)),
        (
            Kind::Aws,
            format!("{}|[A-Za-z0-9/+]{{40}}", rules::AWS_KEY_ID),
        ),
        (
            Kind::Slack,
            format!("{}|{}", rules::SLACK, rules::SLACK_WEBHOOK),
        ),
        (Kind::ElevenLabs, format!("sk_[0-9a-f]{{48}}|{hex32}")),
        (Kind::Resend, rules::RESEND.into()),
        (Kind::Vultr, rules::VULTR.into()),
        (Kind::Railway, rules::UUID.into()),
        (Kind::Jwt, rules::JWT.into()),
        (Kind::PrivateKey, pem),
        (Kind::KeybrokerToken, rules::KEYBROKER.into()),
        (Kind::AdminToken, rules::ADMIN.into()),
    ];
    shapes
        .into_iter()
        .filter_map(|(k, s)| Regex::new(&format!("^(?:{s})$")).ok().map(|re| (k, re)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_compiles() {
        assert_eq!(build().len(), 16);
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
