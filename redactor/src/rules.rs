//! The built-in patterns: one regex per rule, the literal anchors that make a rule worth running,
//! and the value checks that keep placeholders and ordinary words out.
//!
//! A rule redacts its capture group `s` (and `t`/`u`, for the other alternatives of a few rules),
//! or, for shape rules, its match minus the left boundary. Names, delimiters and quotes stay outside those groups, so
//! `api_key: "sk-…"` becomes `api_key: "[REDACTED:openai]"`.

use crate::kind::Kind;
use base64::Engine as _;

/// Left boundary: start of text, a non-word byte, or a JSON/C escape (`\n`, `\r`, `\t`), since
/// keys in logged JSON strings often follow a literal `\n`. Consumed, hence the `s` group.
const LB: &str = r"(?:\b{start-half}|\\[nrt])";
/// Right boundary for fixed-length shapes: the next byte is not a word byte.
const RB: &str = r"\b{end-half}";

// Key shapes shared by the scanning rules and by `matches_format`: one source of truth.
pub(crate) const OPENAI: &str =
    r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]*T3BlbkFJ[A-Za-z0-9_\-]+|sk-[A-Za-z0-9]{48}";
pub(crate) const ANTHROPIC: &str = r"sk-ant-(?:api|admin)[0-9]{2,3}-[A-Za-z0-9_\-]{93}AA";
pub(crate) const GOOGLE: &str = r"AIza[0-9A-Za-z_\-]{35}";
pub(crate) const GITHUB: &str = r"gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}";
pub(crate) const STRIPE: &str =
    r"(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,255}|whsec_[A-Za-z0-9+/]{20,}={0,2}";
pub(crate) const TWILIO_SID: &str = r"(?:SK|AC)[0-9a-fA-F]{32}";
pub(crate) const AWS_KEY_ID: &str = r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}";
pub(crate) const SLACK: &str = concat!(
    r"xox[pe](?:-[0-9]{10,13}){3}-[A-Za-z0-9\-]{28,34}",
    r"|xoxb-[0-9]{10,13}-[0-9]{10,13}[A-Za-z0-9\-]*",
    r"|xoxb-[0-9]{8,14}-[A-Za-z0-9]{18,26}",
    r"|xox[ar]-(?:[0-9]-)?[0-9A-Za-z]{8,48}",
    r"|xox[os]-[0-9]+-[0-9]+-[0-9]+-[A-Fa-f0-9]+",
    r"|xoxe\.xox[bp]-[0-9]-[A-Za-z0-9]{163,166}",
    r"|xoxe-[0-9]-[A-Za-z0-9]{146}",
    r"|xapp-[0-9]-[A-Za-z0-9]+-[0-9]+-[A-Za-z0-9]+",
);
pub(crate) const SLACK_WEBHOOK: &str =
    r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_\-/+]{16,}";
pub(crate) const ELEVENLABS: &str = r"sk_[0-9a-f]{32,64}";
pub(crate) const RESEND: &str = r"re_[A-Za-z0-9]{6,12}_[A-Za-z0-9]{16,40}";
// Looser shapes keybroker's registry accepted before its key check delegated here, and that it
// still accepts (stored keys, scripts and tests use them). Scanned too, so a key the API takes is
// a key the redactor finds, but only through [`Check::Legacy`]: two of lower case, upper case and
// digits (so `sk-learn-compatible-estimators` and `re_compile_pattern_for_x` stay), not another
// provider's start (`sk-ant-` is Anthropic's, `sk-or-` OpenRouter's), and for OpenAI without a
// marker other than `T3BlbkFJ` (`…T4BlbkFJ…` is a damaged or made-up key, and a key with the real
// marker is taken by `OPENAI` already).
pub(crate) const OPENAI_LEGACY: &str = r"sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_\-]{20,250}";
pub(crate) const OPENAI_LEGACY_EXCEPT: &[&str] = &["sk-ant-", "sk-or-"];
pub(crate) const OPENAI_LEGACY_WITHOUT: &[&str] = &["BlbkFJ"];
pub(crate) const OPENAI_LEGACY_STRIP: &[&str] = &["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-"];
pub(crate) const ANTHROPIC_LEGACY_STRIP: &[&str] = &["sk-ant-api03-"];
pub(crate) const RESEND_LEGACY_STRIP: &[&str] = &["re_"];
pub(crate) const ANTHROPIC_LEGACY: &str = r"sk-ant-api03-[A-Za-z0-9_\-]{32,200}";
pub(crate) const RESEND_LEGACY: &str = r"re_[A-Za-z0-9_]{16,100}";
// OpenAI-compatible inference providers with a distinctive key start. Lengths as the public
// scanners' rules have them (gitleaks, trufflehog, kingfisher: gsk_ + 52, xai- + 80, sk-or-v1- +
// 64 hex, pplx- + 48, csk- + 48), with slack where the scanners disagree or a provider may lengthen
// its keys (a key refused at the API is worse than a generous shape with a distinctive start).
pub(crate) const GROQ: &str = r"gsk_[A-Za-z0-9]{52}";
pub(crate) const XAI: &str = r"xai-[A-Za-z0-9_]{70,90}";
pub(crate) const OPENROUTER: &str = r"sk-or-v1-[0-9a-f]{64}";
pub(crate) const PERPLEXITY: &str = r"pplx-[A-Za-z0-9]{40,56}";
pub(crate) const CEREBRAS: &str = r"csk-[a-z0-9]{40,64}";
pub(crate) const JWT: &str =
    r"ey[A-Za-z0-9_\-]{10,}\.ey[A-Za-z0-9_\-/\\]{10,}\.[A-Za-z0-9_\-/\\+]*={0,2}";
pub(crate) const PEM_BEGIN: &str = r"-----BEGIN[ A-Z0-9_\-]{0,100}PRIVATE KEY(?: BLOCK)?-----";
pub(crate) const PEM_END: &str = r"-----END[ A-Z0-9_\-]{0,100}PRIVATE KEY(?: BLOCK)?-----";
pub(crate) const KEYBROKER: &str = r"kb_[A-Za-z0-9_\-]{43,}";
pub(crate) const ADMIN: &str = r"admin-[A-Za-z0-9_\-]{32,}";
pub(crate) const VULTR: &str = r"[A-Z0-9]{36}";
pub(crate) const UUID: &str = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";

/// `name … = … value` separators seen in env files, JSON, YAML, Go, Ruby, Makefiles, XML and
/// Debug output. The optional closing quote of the name comes first.
const SEP: &str = r#"(?:["']?[ \t]*(?:=>|:=|\?=|=|:|,)[ \t]*|["']?[ \t]+|>\s*)["'`]?"#;

/// Extra validation a rule's captured value must pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The shape is distinctive enough on its own.
    None,
    /// The value must look like a credential, not a word or a placeholder.
    Value,
    /// Generic `name = value`: the name must say secret and the value must look like one.
    NameValue,
    /// `Basic …`: decodes to `user:pass`, or looks like a credential.
    Basic,
    /// `curl -u user:pass`: a colon and a password that is not a template variable.
    CurlUser,
    /// `scheme://userinfo@`: a non-placeholder password, or a token-looking user.
    UrlUserinfo,
    /// A private-key body: at least 64 bytes besides any markers already in it.
    PemBody,
    /// A legacy key shape (see [`OPENAI_LEGACY`]): after the first of `strip` it starts with,
    /// two of lower case, upper case and digits; no start in `except`; none of `without`.
    Legacy {
        strip: &'static [&'static str],
        except: &'static [&'static str],
        without: &'static [&'static str],
    },
}

pub(crate) struct RuleSpec {
    pub kind: Kind,
    /// The generic `name = value` rule: skipped unless some anchor hit passes [`could_be_pair`].
    pub gated: bool,
    /// A shape rule: `{LB}(?P<s>shape)`, where the match minus a leading `\n`-style escape is the
    /// secret, so no capture groups need resolving (much faster).
    pub shape: bool,
    pub pattern: String,
    pub check: Check,
    /// Literal strings at least one of which occurs in any text this rule can match; empty for
    /// rules that run on every text.
    pub anchors: Vec<String>,
}

fn lit(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Anchors for secret-looking names, as stems that cover the usual spellings: `oken` finds
/// `token` and `Token`, `OKEN` finds `TOKEN`. Fewer, longer anchors keep the SIMD prefilter fast.
fn name_anchors() -> Vec<String> {
    lit(&[
        "pass",
        "Pass",
        "PASS",
        "pwd",
        "Pwd",
        "PWD",
        "ecret",
        "ECRET",
        "oken",
        "OKEN",
        "uth",
        "UTH",
        "cred",
        "Cred",
        "CRED",
        "ession",
        "ESSION",
        "ookie",
        "OOKIE",
        "ignature",
        "IGNATURE",
        "pikey",
        "piKey",
        "pi_key",
        "pi-key",
        "pi_Key",
        "pi-Key",
        "PIKEY",
        "PI_KEY",
        "PI-KEY",
        "ccesskey",
        "ccessKey",
        "ccess_key",
        "ccess-key",
        "ccess_Key",
        "ccess-Key",
        "CCESSKEY",
        "CCESS_KEY",
        "CCESS-KEY",
        "rivate",
        "RIVATE",
    ])
}

pub(crate) fn specs() -> Vec<RuleSpec> {
    let mut v = Vec::new();
    let mut add = |kind: Kind, pattern: String, check: Check, anchors: Vec<String>| {
        let shape = pattern.starts_with(LB)
            && pattern
                .get(LB.len()..)
                .is_some_and(|p| p.starts_with("(?P<s>"))
            && (pattern.ends_with(')') || pattern.ends_with(RB));
        v.push(RuleSpec {
            kind,
            gated: check == Check::NameValue,
            shape,
            pattern,
            check,
            anchors,
        })
    };
    add(
        Kind::OpenAi,
        format!(r"{LB}(?P<s>(?:{OPENAI}){RB})"),
        Check::None,
        lit(&["sk-"]),
    );
    add(
        Kind::OpenAi,
        format!(r"{LB}(?P<s>{OPENAI_LEGACY}){RB}"),
        Check::Legacy {
            strip: OPENAI_LEGACY_STRIP,
            except: OPENAI_LEGACY_EXCEPT,
            without: OPENAI_LEGACY_WITHOUT,
        },
        lit(&["sk-"]),
    );
    add(
        Kind::Anthropic,
        format!(r"{LB}(?P<s>{ANTHROPIC}){RB}"),
        Check::None,
        lit(&["sk-ant-"]),
    );
    add(
        Kind::Anthropic,
        format!(r"{LB}(?P<s>{ANTHROPIC_LEGACY}){RB}"),
        Check::Legacy {
            strip: ANTHROPIC_LEGACY_STRIP,
            except: &[],
            without: &[],
        },
        lit(&["sk-ant-api03-"]),
    );
    for (kind, shape, anchor) in [
        (Kind::Groq, GROQ, "gsk_"),
        (Kind::Xai, XAI, "xai-"),
        (Kind::OpenRouter, OPENROUTER, "sk-or-v1-"),
        (Kind::Perplexity, PERPLEXITY, "pplx-"),
        (Kind::Cerebras, CEREBRAS, "csk-"),
    ] {
        add(
            kind,
            format!(r"{LB}(?P<s>{shape}){RB}"),
            Check::None,
            lit(&[anchor]),
        );
    }
    add(
        Kind::Google,
        format!(r"{LB}(?P<s>{GOOGLE}){RB}"),
        Check::None,
        lit(&["AIza"]),
    );
    add(
        Kind::GitHub,
        format!(r"{LB}(?P<s>(?:{GITHUB})){RB}"),
        Check::None,
        lit(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]),
    );
    add(
        Kind::Stripe,
        format!(r"{LB}(?P<s>(?:{STRIPE}))"),
        Check::None,
        lit(&["sk_", "rk_", "whsec_"]),
    );
    add(
        Kind::ElevenLabs,
        format!(r"{LB}(?P<s>{ELEVENLABS}){RB}"),
        Check::None,
        lit(&["sk_"]),
    );
    add(
        Kind::ElevenLabs,
        format!(r#"(?i:xi[_\-]api[_\-]key){SEP}(?P<s>[A-Za-z0-9_\-]{{16,}})"#),
        Check::None,
        lit(&["pi-key", "pi-Key", "PI-KEY", "pi_key", "PI_KEY"]),
    );
    add(
        Kind::Resend,
        format!(r"{LB}(?P<s>{RESEND}){RB}"),
        Check::None,
        lit(&["re_"]),
    );
    add(
        Kind::Resend,
        format!(r"{LB}(?P<s>{RESEND_LEGACY}){RB}"),
        Check::Legacy {
            strip: RESEND_LEGACY_STRIP,
            except: &[],
            without: &[],
        },
        lit(&["re_"]),
    );
    add(
        Kind::Twilio,
        format!(r"{LB}(?P<s>{TWILIO_SID}){RB}"),
        Check::None,
        // No anchors: `SK`/`AC` are too short for the shared prefilter; this regex's own literal
        // prefilter finds them quickly, so the rule simply always runs.
        Vec::new(),
    );
    // Auth tokens are bare 32-hex strings: only taken beside a Twilio name or right after an
    // account SID (`AC…:token`, the Basic-auth pair, which is also how keybroker stores a
    // Twilio key). Two rules, because the pair has no literal long enough for the shared
    // prefilter (as for the SIDs above, its own regex's prefilter finds `AC` quickly).
    add(
        Kind::Twilio,
        format!(r#"(?i:twilio)[A-Za-z0-9_.\-]*{SEP}(?P<s>[0-9a-fA-F]{{32}}){RB}"#),
        Check::None,
        lit(&["wilio", "WILIO"]),
    );
    add(
        Kind::Twilio,
        format!(r#"AC[0-9a-fA-F]{{32}}["']?[ \t]*[:,][ \t]*["']?(?P<s>[0-9a-fA-F]{{32}}){RB}"#),
        Check::None,
        Vec::new(),
    );
    add(
        Kind::Aws,
        format!(r"{LB}(?P<s>{AWS_KEY_ID}){RB}"),
        Check::None,
        lit(&["AKIA", "ASIA", "ABIA", "ACCA", "A3T"]),
    );
    add(
        Kind::Aws,
        format!(
            r#"(?i:aws)[A-Za-z0-9_.\-]*(?i:secret)[A-Za-z0-9_.\-]*{SEP}(?P<s>[A-Za-z0-9/+]{{40}})(?:[^A-Za-z0-9/+=]|$)"#
        ),
        Check::None,
        lit(&["aws", "Aws", "AWS"]),
    );
    add(
        Kind::Slack,
        format!(r"{LB}(?P<s>(?:{SLACK}))"),
        Check::None,
        lit(&["xox", "xapp-"]),
    );
    add(
        Kind::Slack,
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>[A-Za-z0-9_\-/+]{16,})".into(),
        Check::None,
        lit(&["hooks.slack.com"]),
    );
    add(
        Kind::Vultr,
        format!(r"(?i:vultr)[A-Za-z0-9_.\-]*{SEP}(?P<s>{VULTR}){RB}"),
        Check::None,
        lit(&["ultr", "ULTR"]),
    );
    add(
        Kind::Railway,
        format!(r"(?i:railway)[A-Za-z0-9_.\-]*{SEP}(?P<s>{UUID}){RB}"),
        Check::None,
        lit(&["ailway", "AILWAY"]),
    );
    add(
        Kind::Jwt,
        format!(r"{LB}(?P<s>{JWT})"),
        Check::None,
        lit(&["eyJ", ".ey"]),
    );
    // A JWT that was base64-encoded once more: `eyJ` becomes `ZXlK`.
    add(
        Kind::Jwt,
        format!(r"{LB}(?P<s>ZXlK[A-Za-z0-9+/_\-]{{20,}}={{0,2}})"),
        Check::None,
        lit(&["ZXlK"]),
    );
    // The body between BEGIN and END lines (also JSON-escaped or string-concatenated); a block
    // cut off before its END line loses its base64 run. 64 bytes of body at least, as gitleaks.
    // The body never contains `--`, so a match cannot run from one block's BEGIN over an already
    // redacted body into the next block's END (which would make redaction non-idempotent).
    add(
        Kind::PrivateKey,
        format!(
            r"{PEM_BEGIN}(?:(?P<s>(?:[^\-]|-[^\-]){{64,}}?){PEM_END}|(?P<t>(?:[A-Za-z0-9+/=\r\n]|\\[rn]){{64,}}))"
        ),
        Check::PemBody,
        lit(&["-----BEGIN"]),
    );
    add(
        Kind::KeybrokerToken,
        format!(r"{LB}(?P<s>{KEYBROKER})"),
        Check::None,
        lit(&["kb_"]),
    );
    add(
        Kind::AdminToken,
        format!(r"{LB}(?P<s>{ADMIN})"),
        Check::Value,
        lit(&["admin-"]),
    );
    add(
        Kind::Bearer,
        r"(?i:\bbearer)[ \t]+(?P<s>[A-Za-z0-9\-._~+/]+=*)".into(),
        Check::Value,
        lit(&["earer", "EARER"]),
    );
    add(
        Kind::BasicAuth,
        format!(r"(?i:\bbasic)[ \t]+(?P<s>[A-Za-z0-9+/]{{8,}}={{0,2}}){RB}"),
        Check::Basic,
        lit(&["asic", "ASIC"]),
    );
    // Other Authorization schemes (`Token …`, `Api-Token …`, bare values).
    add(
        Kind::Bearer,
        r#"(?i:authorization)["']?[ \t]*[:=][ \t]*["']?(?:[A-Za-z][A-Za-z0-9\-]{1,20}[ \t]+)?(?P<s>[A-Za-z0-9\-._~+/@=!#%^*|]{8,})"#.into(),
        Check::Value,
        lit(&["uth", "UTH"]),
    );
    add(
        Kind::BasicAuth,
        // Values never contain `[` or `]` and an unquoted one must end at a delimiter, so a value
        // is never cut short by (or made of) a marker from an earlier pass.
        concat!(
            r#"\B(?:-u|--user)(?:[ \t]+|=)(?:"#,
            r#"(?P<s>"[^"\n\[\]]*"(?::"[^"\n\[\]]*")?|'[^'\n\[\]]*')(?:$|[^\[\]])"#,
            r#"|(?P<t>[^\s"'\[\]]+(?:'[^'\n\[\]]*'|"[^"\n\[\]]*"))(?:$|[^\[\]])"#,
            r#"|(?P<u>[^\s"'\[\]]+)(?:$|[\s"']))"#,
        )
        .into(),
        Check::CurlUser,
        // No anchors, as for Twilio SIDs: `-u` is too short to share the prefilter.
        Vec::new(),
    );
    add(
        Kind::UrlCredentials,
        r#"(?i:[a-z][a-z0-9+.\-]{0,15})://(?P<s>[^\s/@:"'<>?#\[\]]+:[^\s/@"'<>?#\[\]]*|[^\s/@:"'<>?#\[\]]{8,})@"#.into(),
        Check::UrlUserinfo,
        lit(&["://"]),
    );
    add(
        Kind::QuerySecret,
        r#"[?&;](?i:[a-z0-9_.\-]*(?:key|token|secret|password|passwd|pwd|sig|signature|credential|auth|session|sessionid|jwt|assertion)|x-amz-(?:signature|credential|security-token))=(?P<s>[^&\s#"'<>\[\]]{6,})"#.into(),
        Check::Value,
        {
            let mut a = name_anchors();
            a.extend(lit(&["ey=", "EY=", "sig=", "SIG=", "jwt=", "JWT=", "ssertion=", "amz-", "Amz-", "AMZ-"]));
            a
        },
    );
    add(
        Kind::GenericSecret,
        format!(
            r"(?P<name>(?i:[a-z0-9_.\-]*(?:pass|pwd|secret|token|auth|cred|session|cookie|signature|api[_.\-]?key|access[_.\-]?key|private[_.\-]?key)[a-z0-9_.\-]*)){SEP}(?P<s>[A-Za-z0-9_\-+/=.~!@#$%^*|?]{{8,}})"
        ),
        Check::NameValue,
        name_anchors(),
    );
    v
}

/// Cheap necessary condition for the generic rule around an anchor hit at `at`: after the
/// identifier containing the hit and any separator bytes come at least 8 value bytes. It accepts
/// every separator form the regex does (and more), so it never hides a match; it exists because
/// `prompt_tokens=812`, on every metered call, would otherwise run the regex for nothing.
pub(crate) fn could_be_pair(text: &[u8], at: usize) -> bool {
    let is_name = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    let is_sep = |b: &u8| {
        matches!(
            b,
            b' ' | b'\t' | b'\r' | b'\n' | b'"' | b'\'' | b'`' | b':' | b'>' | b',' | b'=' | b'?'
        )
    };
    let is_value = |b: &u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'_' | b'-'
                    | b'+'
                    | b'/'
                    | b'='
                    | b'.'
                    | b'~'
                    | b'!'
                    | b'@'
                    | b'#'
                    | b'$'
                    | b'%'
                    | b'^'
                    | b'*'
                    | b'|'
                    | b'?'
            )
    };
    let rest = text.get(at..).unwrap_or_default();
    let after_name = rest.iter().position(|b| !is_name(b)).unwrap_or(rest.len());
    let rest = rest.get(after_name..).unwrap_or_default();
    let after_sep = rest.iter().position(|b| !is_sep(b)).unwrap_or(rest.len());
    // `=` and `?` are separators and value bytes at once: each skipped one is credited to the
    // value, which keeps this a necessary condition.
    let credit = rest
        .iter()
        .take(after_sep)
        .filter(|b| matches!(b, b'=' | b'?'))
        .count();
    let need = 8usize.saturating_sub(credit);
    let rest = rest.get(after_sep..).unwrap_or_default();
    rest.iter().take(need).take_while(|b| is_value(b)).count() >= need
}

// ---------------------------------------------------------------------------------------------
// Value checks
// ---------------------------------------------------------------------------------------------

/// Template variables and documentation placeholders: `$API_KEY`, `${x}`, `<token>`, `[PASSWORD]`,
/// `xxxx`, `****`, `re_REDACTED_API_KEY`, `1234567890`. Real keys have none of these.
pub(crate) fn is_placeholder(v: &[u8]) -> bool {
    match v.first() {
        None => return true,
        Some(b'$' | b'%' | b'{' | b'<' | b'[' | b'(' | b'*') => return true,
        _ => {}
    }
    let lower = v.to_ascii_lowercase();
    const WORDS: &[&[u8]] = &[
        b"xxxx",
        b"****",
        b"####",
        b"....",
        b"redacted",
        b"example",
        b"changeme",
        b"placeholder",
        b"your_",
        b"your-",
        b"123456",
        b"abcdef",
    ];
    if WORDS
        .iter()
        .any(|w| memchr::memmem::find(&lower, w).is_some())
    {
        return true;
    }
    // A run of five identical bytes: `aaaaa`, `00000`, `-----`.
    let mut run = 1;
    for pair in v.windows(2) {
        if let [a, b] = pair {
            if a == b {
                run += 1;
                if run >= 5 {
                    return true;
                }
            } else {
                run = 1;
            }
        }
    }
    false
}

/// Looks like a credential rather than a word: at least 8 bytes, not a placeholder, and at least
/// two of lower case, upper case and digits (`Zf3D0LX…`, hex digests, UUIDs), so `Bearer token`
/// and `password: required` survive.
/// Whether a would-be value is the next `name=value` field of a logfmt line, as in
/// `route=/api/v1/auth/reauth status=401`: an identifier, `=`, and more that is not padding. A
/// base64 value ends in its `=` padding, so it never looks like this.
fn is_next_field(v: &[u8]) -> bool {
    let Some(eq) = v.iter().position(|&b| b == b'=') else {
        return false;
    };
    let (name, rest) = v.split_at(eq);
    name.first()
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && rest.get(1).is_some_and(|&b| b != b'=')
}

pub(crate) fn looks_secret(v: &[u8]) -> bool {
    if v.len() < 8 || is_placeholder(v) {
        return false;
    }
    let lower = v.iter().any(u8::is_ascii_lowercase);
    let upper = v.iter().any(u8::is_ascii_uppercase);
    let digit = v.iter().any(u8::is_ascii_digit);
    usize::from(lower) + usize::from(upper) + usize::from(digit) >= 2
}

/// Splits an identifier into lower-case words: `openaiApiKey_TOKEN` → `openai api key token`.
fn words(name: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev: u8 = 0;
    for (i, &b) in name.iter().enumerate() {
        if !b.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev = b;
            continue;
        }
        let next = name.get(i + 1).copied().unwrap_or(0);
        let boundary = b.is_ascii_uppercase()
            && (prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next.is_ascii_lowercase()));
        if boundary && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(char::from(b.to_ascii_lowercase()));
        prev = b;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Words after the secret word that turn the name into metadata about a secret:
/// `access_token_url`, `UserSecretsId`, `CREDENTIALS_ID`, `token_type`, `secret_length`.
const METADATA_SUFFIXES: &[&str] = &[
    "id",
    "ids",
    "url",
    "urls",
    "uri",
    "file",
    "files",
    "path",
    "dir",
    "name",
    "names",
    "size",
    "length",
    "len",
    "type",
    "types",
    "count",
    "format",
    "version",
    "mode",
    "endpoint",
    "host",
    "ttl",
    "expiry",
    "expires",
    "expiration",
    "timeout",
    "header",
    "field",
    "param",
    "label",
    "env",
    "source",
    "location",
    "enabled",
    "required",
    "policy",
    "provider",
    "store",
    "vault",
    "kind",
    "template",
    "method",
    "scheme",
    "algorithm",
    "alg",
    "usage",
    "limit",
];

fn is_secret_word(w: &str, next: Option<&str>) -> bool {
    const EXACT: &[&str] = &["pass", "pwd", "cred", "creds", "secrets", "sig"];
    const SUFFIX: &[&str] = &[
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "accesskey",
        "privatekey",
        "secretkey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "cookie",
        "signature",
        "session",
        "sessionid",
    ];
    if EXACT.contains(&w) || SUFFIX.iter().any(|s| w.ends_with(s)) {
        return true;
    }
    matches!(
        (w, next),
        (
            "api" | "access" | "private" | "secret" | "client" | "signing" | "master",
            Some("key")
        )
    )
}

/// The name of a `name = value` pair says secret: it contains a secret word, is not public, and
/// no metadata word follows the secret word (`session_id` is still a secret).
pub(crate) fn is_secret_name(name: &[u8]) -> bool {
    let ws = words(name);
    let mut last = None;
    for (i, w) in ws.iter().enumerate() {
        if is_secret_word(w, ws.get(i + 1).map(String::as_str)) {
            last = Some(i);
        }
    }
    let Some(i) = last else { return false };
    if ws.iter().take(i).any(|w| w == "public") {
        return false;
    }
    let secret = ws.get(i).map(String::as_str).unwrap_or("");
    let rest: Vec<&str> = ws.iter().skip(i + 1).map(String::as_str).collect();
    let rest = match (secret, rest.first()) {
        // `api key id` is metadata but `api key` with the key as next word is the secret word.
        (_, Some(&"key")) => rest.get(1..).unwrap_or_default(),
        _ => rest.as_slice(),
    };
    if secret.ends_with("session") && rest == ["id"] {
        return true;
    }
    !rest.iter().any(|w| METADATA_SUFFIXES.contains(w))
}

fn lenient_b64() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

fn basic_ok(v: &[u8]) -> bool {
    if is_placeholder(v) {
        return false;
    }
    let decoded_pair = lenient_b64()
        .decode(v)
        .map(|d| d.len() >= 2 && d.contains(&b':') && d.iter().all(|b| (0x20..0x7f).contains(b)))
        .unwrap_or(false);
    decoded_pair || looks_secret(v)
}

fn strip_quotes(v: &[u8]) -> Vec<u8> {
    v.iter()
        .copied()
        .filter(|b| *b != b'"' && *b != b'\'')
        .collect()
}

/// `$1`, `${user}`, `$(cat f)`, `<user>`, `[PASSWORD]`, `{{ x }}`.
fn is_template(part: &[u8]) -> bool {
    matches!(part.first(), Some(b'$' | b'<' | b'[' | b'%'))
        || part.starts_with(b"{{")
        || part.ends_with(b">")
        || part.ends_with(b"]")
}

fn curl_user_ok(v: &[u8]) -> bool {
    let cred = strip_quotes(v);
    let Some(colon) = memchr::memchr(b':', &cred) else {
        return false;
    };
    let user = cred.get(..colon).unwrap_or_default();
    let pass = cred.get(colon + 1..).unwrap_or_default();
    if is_template(&cred) {
        return false;
    }
    if pass.is_empty() {
        return !user.is_empty() && !is_template(user);
    }
    !is_template(pass)
}

fn url_userinfo_ok(v: &[u8]) -> bool {
    match memchr::memchr(b':', v) {
        Some(colon) => {
            let user = v.get(..colon).unwrap_or_default();
            let pass = v.get(colon + 1..).unwrap_or_default();
            if pass.is_empty() {
                looks_secret(user)
            } else {
                !is_template(pass) && !is_placeholder(pass)
            }
        }
        None => looks_secret(v),
    }
}

/// `value` without the markers an earlier redaction left in it. Checks judge what is left, so a
/// marker's own bytes (its `:`, its length) cannot make a value acceptable on a second pass.
fn strip_markers(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const OPEN: &[u8] = b"[REDACTED:";
    if memchr::memmem::find(value, OPEN).is_none() {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = memchr::memmem::find(rest, OPEN) {
        out.extend_from_slice(rest.get(..i).unwrap_or_default());
        let after = rest.get(i..).unwrap_or_default();
        rest = match memchr::memchr(b']', after) {
            Some(j) => after.get(j + 1..).unwrap_or_default(),
            None => &[],
        };
    }
    out.extend_from_slice(rest);
    std::borrow::Cow::Owned(out)
}

pub(crate) fn check(check: Check, name: Option<&[u8]>, value: &[u8]) -> bool {
    let stripped = strip_markers(value);
    let value: &[u8] = &stripped;
    match check {
        Check::None => true,
        Check::Value => looks_secret(value),
        Check::NameValue => {
            name.is_some_and(is_secret_name) && looks_secret(value) && !is_next_field(value)
        }
        Check::Basic => basic_ok(value),
        Check::CurlUser => curl_user_ok(value),
        Check::UrlUserinfo => url_userinfo_ok(value),
        Check::PemBody => value.len() >= 64,
        Check::Legacy {
            strip,
            except,
            without,
        } => legacy_ok(value, strip, except, without),
    }
}

/// See [`Check::Legacy`].
fn legacy_ok(value: &[u8], strip: &[&str], except: &[&str], without: &[&str]) -> bool {
    let body = strip
        .iter()
        .find_map(|p| value.strip_prefix(p.as_bytes()))
        .unwrap_or(value);
    let lower = body.iter().any(u8::is_ascii_lowercase);
    let upper = body.iter().any(u8::is_ascii_uppercase);
    let digit = body.iter().any(u8::is_ascii_digit);
    usize::from(lower) + usize::from(upper) + usize::from(digit) >= 2
        && !except.iter().any(|e| value.starts_with(e.as_bytes()))
        && !without
            .iter()
            .any(|w| memchr::memmem::find(value, w.as_bytes()).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_words() {
        assert_eq!(
            words(b"openaiApiKey_TOKEN"),
            ["openai", "api", "key", "token"]
        );
        assert_eq!(words(b"UserSecretsId"), ["user", "secrets", "id"]);
        assert_eq!(words(b"X-Octopus-ApiKey"), ["x", "octopus", "api", "key"]);
        assert_eq!(words(b"APIKey"), ["api", "key"]);
    }

    #[test]
    fn secret_names_are_recognised() {
        for n in [
            "password",
            "openaiApiKeyToken",
            "mySecretString",
            "todo_secret_do_not_commit",
            "some_api_token_123",
            "private-key",
            "client_secret",
            "user_auth",
            "X-Octopus-ApiKey",
            "kb_session",
            "session_id",
            "STRIPE_SECRET_KEY",
            "GITHUBTOKEN",
        ] {
            assert!(is_secret_name(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn metadata_names_are_not_secret() {
        for n in [
            "author",
            "access_token_url",
            "UserSecretsId",
            "CREDENTIALS_ID",
            "dev.credentials.url",
            "max_tokens",
            "prompt_tokens",
            "token_type",
            "public_key",
            "sequenceKey",
        ] {
            assert!(!is_secret_name(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn pair_gate_opens_for_every_separator_form() {
        for (text, kw) in [
            ("DB_PASSWORD := \"hunter2-Is-Not-Enough\"", "PASS"),
            (
                "<genericToken>\n    Zf3D0LXCM3EIMbgJ\n</genericToken>",
                "oken",
            ),
            ("(\"api_token\", \"dafa7817-e246\")", "oken"),
            ("token=?abcdefg", "oken"),
            ("vultr_SECRET_ACCESS_KEY ABCDEFGHIJ", "ECRET"),
        ] {
            let at = text.find(kw).unwrap();
            assert!(could_be_pair(text.as_bytes(), at), "{text}");
        }
    }

    #[test]
    fn pair_gate_stays_shut_for_token_counts() {
        let text = b"prompt_tokens=812 completion_tokens=120";
        assert!(!could_be_pair(text, 8));
        assert!(!could_be_pair(text, 30));
    }

    #[test]
    fn the_next_logfmt_field_is_not_a_value() {
        assert!(is_next_field(b"status=401"));
        assert!(is_next_field(b"client_addr=127.0.0.1"));
        assert!(!is_next_field(b"dXNlcjpwYXNzd29yZA=="));
        assert!(!is_next_field(b"dXNlcjpwYXNz="));
        assert!(!is_next_field(b"Zf3D0LXCM3EIMbgJ"));
        assert!(!is_next_field(b"?abc=defghij"));
    }

    #[test]
    fn placeholders_are_not_secrets() {
        for v in [
            "$API_KEY",
            "re_REDACTED_API_KEY",
            "XXXXXXXXXXXX",
            "**********",
            "aaaaaaaaaaaaend",
        ] {
            assert!(!looks_secret(v.as_bytes()), "{v}");
        }
        assert!(looks_secret(b"Zf3D0LXCM3EIMbgJpUNnkRtOfOueHznB"));
    }
}
