//! Properties over generated keys and surroundings: no supported key survives, registered values
//! never survive, redaction is idempotent, and nothing panics.
//!
//! "Arbitrary surroundings" end (before the key) and start (after it) with a delimiter, as keys
//! are in real text: a key glued to letters (`xAKIA…`) is deliberately not a match, since that is
//! what keeps `TODAYINASIAASACK…` and `task_test_…` from being redacted.

use proptest::prelude::*;
use redactor::Redactor;
use std::sync::OnceLock;

fn redactor() -> &'static Redactor {
    static R: OnceLock<Redactor> = OnceLock::new();
    R.get_or_init(Redactor::new)
}

fn s(charset: &str, len: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
    let chars: Vec<char> = charset.chars().collect();
    proptest::collection::vec(proptest::sample::select(chars), len)
        .prop_map(|v| v.into_iter().collect())
        .boxed()
}

const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const URLSAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const HEX: &str = "0123456789abcdef";
const UPPER32: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// One generated key of every shape the pattern rules promise to catch on their own.
fn any_key() -> BoxedStrategy<String> {
    prop_oneof![
        (s(URLSAFE, 20..=70), s(URLSAFE, 20..=70))
            .prop_map(|(a, b)| format!("sk-proj-{a}T3BlbkFJ{b}")),
        s(ALNUM, 48..=48).prop_map(|a| format!("sk-{a}")),
        s(URLSAFE, 93..=93).prop_map(|a| format!("sk-ant-api03-{a}AA")),
        s(URLSAFE, 35..=35).prop_map(|a| format!("AIza{a}")),
        s(ALNUM, 36..=36).prop_map(|a| format!("ghp_{a}")),
        s(ALNUM, 60..=82).prop_map(|a| format!("github_pat_{a}")),
        s(ALNUM, 24..=99).prop_map(|a| format!("sk_live_{a}")),
        s(ALNUM, 24..=99).prop_map(|a| format!("rk_test_{a}")),
        s(HEX, 32..=32).prop_map(|a| format!("SK{a}")),
        s(HEX, 32..=32).prop_map(|a| format!("AC{a}")),
        s(UPPER32, 16..=16).prop_map(|a| format!("AKIA{a}")),
        s(UPPER32, 16..=16).prop_map(|a| format!("ASIA{a}")),
        (
            s("0123456789", 10..=13),
            s("0123456789", 10..=13),
            s(ALNUM, 24..=24)
        )
            .prop_map(|(a, b, c)| format!("xoxb-{a}-{b}-{c}")),
        s(ALNUM, 8..=8)
            .prop_flat_map(|a| s(ALNUM, 24..=24).prop_map(move |b| format!("re_{a}_{b}"))),
        s(HEX, 48..=48).prop_map(|a| format!("sk_{a}")),
        (
            s(URLSAFE, 10..=60),
            s(URLSAFE, 10..=200),
            s(URLSAFE, 0..=86)
        )
            .prop_map(|(a, b, c)| format!("eyJ{a}.eyJ{b}.{c}")),
        s(URLSAFE, 43..=60).prop_map(|a| format!("kb_{a}")),
    ]
    .boxed()
}

/// Text before a key: anything, then a delimiter.
fn before() -> BoxedStrategy<String> {
    (
        ".{0,40}",
        proptest::sample::select(vec![
            " ", "=", ":", "\"", "'", "\n", "(", ",", "\t", "\\n", "Bearer ", "api_key=", "?key=",
        ]),
    )
        .prop_map(|(a, d)| format!("{a}{d}"))
        .boxed()
}

/// Text after a key: a delimiter, then anything.
fn after() -> BoxedStrategy<String> {
    (
        proptest::sample::select(vec![" ", "\"", "'", "\n", ")", ",", ";", "&", "\\n", "}"]),
        ".{0,40}",
    )
        .prop_map(|(d, a)| format!("{d}{a}"))
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_generated_key_survives(a in before(), key in any_key(), b in after()) {
        let text = format!("{a}{key}{b}");
        let out = redactor().redact(&text);
        prop_assert!(!out.contains(&key), "key survived: {text:?} -> {out:?}");
    }

    #[test]
    fn registered_values_and_encodings_never_survive(
        a in ".{0,40}",
        secret in "[ -Z^-~]{8,60}",
        b in ".{0,40}",
        enc in 0u8..4,
    ) {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        // Brackets are left out: a value that straddles a marker's `[` could be rebuilt by it.
        // A Redactor of its own, so registrations do not leak into the other tests' threads.
        static OWN: OnceLock<Redactor> = OnceLock::new();
        let r = OWN.get_or_init(Redactor::new);
        let form = match enc {
            0 => secret.clone(),
            1 => STANDARD.encode(&secret),
            2 => URL_SAFE.encode(&secret),
            _ => URL_SAFE_NO_PAD.encode(&secret),
        };
        let _g = r.register(secret.as_bytes());
        let text = format!("{a}{form}{b}");
        let out = r.redact(&text);
        prop_assert!(!out.contains(&form), "form survived: {text:?} -> {out:?}");
    }

    #[test]
    fn redaction_is_idempotent(text in "(.|\\PC|sk-|AKIA|eyJ|token=|Bearer |-----BEGIN PRIVATE KEY-----| ){0,200}") {
        let r = redactor();
        let once = r.redact(&text).into_owned();
        let twice = r.redact(&once).into_owned();
        prop_assert_eq!(&once, &twice);
    }

    #[test]
    fn redaction_of_keys_in_context_is_idempotent(a in before(), key in any_key(), b in after()) {
        let r = redactor();
        let once = r.redact(&format!("{a}{key}{b}")).into_owned();
        prop_assert_eq!(r.redact(&once).into_owned(), once);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let r = redactor();
        let out = r.redact_bytes(&bytes);
        let mut counts = redactor::Counts::new();
        let _ = r.redact_counting(&bytes, &mut counts);
        let again = r.redact_bytes(&out).into_owned();
        prop_assert_eq!(again, out.into_owned());
    }

    #[test]
    fn arbitrary_strings_never_panic(text in "\\PC{0,300}") {
        let r = redactor();
        let out = r.redact(&text);
        prop_assert_eq!(r.contains_secret(&text), out != text);
    }
}
