//! Email addresses: parsed and normalised at the edge, and hashed with a server pepper to key
//! account rows.
//!
//! Normalisation, in order: trim, Unicode NFKC (fullwidth `ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ` becomes
//! ASCII), lower-case, a quoted local part unquoted (`"alice"@example.com` is
//! `alice@example.com`; a quoted part that is not a valid unquoted one is refused), and the domain
//! in its IDNA ASCII form (`exämple.com` and `xn--exmple-cua.com` are one domain). Two spellings of
//! one mailbox therefore give one account.
//!
//! Different mailboxes that *look* alike are a separate question: [`Email::skeleton`] is the UTS
//! #39 confusable skeleton, stored as [`EmailHasher::skeleton_hash`], so sign-up can tell that a
//! new address imitates an existing one; [`Email::mixes_scripts`] says whether an address mixes
//! scripts inside one part (`аlice` with a Cyrillic `а`), which only an imitation does.
//!
//! Why HMAC and not SHA-256: a plain hash of an email can be recomputed by anyone holding a list
//! of emails, so a copy of the database would tell who has an account. HMAC-SHA256 under a pepper
//! that lives only in the environment (never in the database or its backups) cannot be recomputed
//! without that pepper.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;
use unicode_security::MixedScript;

use crate::secret::ServerSecret;

const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;
/// Raw input longer than this is refused before any normalisation work (NFKC can grow a string).
const MAX_RAW_LEN: usize = 4 * MAX_LEN;

/// A syntactically valid, normalised address: `local@domain`, the local part lower-case NFKC and
/// unquoted, the domain lower-case IDNA ASCII.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the email address is not valid")]
pub struct EmailError;

/// RFC 5322 `atext`, plus any non-ASCII character (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// A dot-atom: atext runs separated by single dots.
fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|run| !run.is_empty() && run.chars().all(is_atext))
}

/// The local part as it would be written unquoted, or an error when the quotes hide something an
/// unquoted local part cannot say (spaces, `@`, a second dot in a row...).
fn unquote(local: &str) -> Result<String, EmailError> {
    let Some(inner) = local
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return Ok(local.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or(EmailError)?),
            '"' => return Err(EmailError),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        if raw.len() > MAX_RAW_LEN {
            return Err(EmailError);
        }
        let folded: String = raw.trim().nfkc().collect::<String>().to_lowercase();
        let folded = folded.trim();
        let (local, domain) = folded.rsplit_once('@').ok_or(EmailError)?;
        let local = unquote(local)?;
        if local.len() > MAX_LOCAL_LEN || !is_dot_atom(&local) {
            return Err(EmailError);
        }
        // Domain literals (`a@[192.0.2.1]`) are valid RFC 5322 but nobody's sign-in address.
        if domain.is_empty() || domain.starts_with('[') {
            return Err(EmailError);
        }
        let domain = idna::domain_to_ascii_strict(domain).map_err(|_| EmailError)?;
        let normalised = format!("{local}@{domain}");
        if normalised.len() > MAX_LEN || !email_address::EmailAddress::is_valid(&normalised) {
            return Err(EmailError);
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> (&str, &str) {
        // `parse` only builds `local@domain`, and a local part never holds an `@` once unquoted.
        self.0.rsplit_once('@').unwrap_or((&self.0, ""))
    }

    /// The domain as people read it (IDNA Unicode form), which is what confusables are judged on:
    /// `xn--...` hides nothing from a skeleton comparison only because we decode it first.
    fn unicode_domain(&self) -> String {
        idna::domain_to_unicode(self.parts().1).0
    }

    /// Whether the address has anything beyond ASCII, domain judged in its Unicode form.
    pub fn is_ascii(&self) -> bool {
        let (local, _) = self.parts();
        local.is_ascii() && self.unicode_domain().is_ascii()
    }

    /// The UTS #39 skeleton of the address (local part and Unicode domain), lower-cased because a
    /// prototype can be upper-case (`0` → `O`) while addresses compare case-insensitively. Two
    /// addresses with one skeleton look alike.
    pub fn skeleton(&self) -> String {
        let (local, _) = self.parts();
        let domain = self.unicode_domain();
        let mut s: String = unicode_security::skeleton(local).collect();
        s.push('@');
        s.extend(unicode_security::skeleton(&domain));
        s.to_lowercase()
    }

    /// Whether the local part or a domain label mixes scripts (in the UTS #39 sense: Latin with
    /// Cyrillic, say; Latin with digits or Japanese kana with kanji are single-script). Genuine
    /// addresses do not; imitations (`pаypal` with a Cyrillic `а`) do.
    pub fn mixes_scripts(&self) -> bool {
        let (local, _) = self.parts();
        let domain = self.unicode_domain();
        std::iter::once(local)
            .chain(domain.split('.'))
            .any(|part| !part.is_single_script())
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(<redacted>)")
    }
}

/// Computes the account key of an email.
#[derive(Clone, Debug)]
pub struct EmailHasher {
    pepper: ServerSecret,
}

impl EmailHasher {
    pub fn new(pepper: ServerSecret) -> Self {
        Self { pepper }
    }

    fn mac(&self, label: &[u8], value: &str) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an all-zero tag
        // rather than panic if that ever changes.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.pepper.expose()) else {
            return [0u8; 32];
        };
        mac.update(label);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The account key: HMAC of the normalised address.
    pub fn hash(&self, email: &Email) -> [u8; 32] {
        self.mac(b"keybroker-email-v1:", email.as_str())
    }

    /// The account key a row made under an older normalisation would have.
    #[cfg(test)]
    pub(crate) fn hash_verbatim(&self, stored: &str) -> [u8; 32] {
        self.mac(b"keybroker-email-v1:", stored)
    }

    /// HMAC of the address's confusable skeleton, under its own label so it never equals an
    /// account key.
    pub fn skeleton_hash(&self, email: &Email) -> [u8; 32] {
        self.mac(b"keybroker-email-skeleton-v1:", &email.skeleton())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn case_and_whitespace_variants_normalise_to_one_address() {
        let a = parse("  Alice@Example.COM\t");
        let b = parse("alice@example.com");
        assert_eq!(a, b);
        let h = EmailHasher::new(ServerSecret::from_bytes(vec![1; 32]));
        assert_eq!(h.hash(&a), h.hash(&b));
    }

    #[test]
    fn fullwidth_characters_normalise_to_ascii() {
        assert_eq!(
            parse("ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ").as_str(),
            "alice@example.com"
        );
    }

    #[test]
    fn an_idn_domain_and_its_punycode_are_one_address() {
        let unicode = parse("bob@exämple.com");
        assert_eq!(unicode.as_str(), "bob@xn--exmple-cua.com");
        assert_eq!(unicode, parse("bob@XN--EXMPLE-CUA.com"));
        assert_eq!(unicode, parse("bob@EXÄMPLE.com"));
    }

    #[test]
    fn a_quoted_local_part_is_unquoted_when_it_needs_no_quotes() {
        assert_eq!(parse("\"alice\"@example.com"), parse("alice@example.com"));
        assert_eq!(parse("\"a\\lice\"@example.com"), parse("alice@example.com"));
        assert_eq!(parse("\"a.b\"@example.com"), parse("a.b@example.com"));
    }

    #[test]
    fn a_quoted_local_part_that_needs_its_quotes_is_refused() {
        for bad in [
            "\"a b\"@example.com",
            "\"a@b\"@example.com",
            "\"a..b\"@example.com",
            "\"\"@example.com",
            "\"a\\\"@example.com",
            "\"a\"b\"@example.com",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError), "{bad:?}");
        }
    }

    #[test]
    fn different_peppers_give_different_hashes() {
        let e = parse("a@example.com");
        let h1 = EmailHasher::new(ServerSecret::from_bytes(vec![1; 32]));
        let h2 = EmailHasher::new(ServerSecret::from_bytes(vec![2; 32]));
        assert_ne!(h1.hash(&e), h2.hash(&e));
    }

    #[test]
    fn the_skeleton_hash_is_not_the_account_key() {
        let e = parse("a@example.com");
        let h = EmailHasher::new(ServerSecret::from_bytes(vec![1; 32]));
        assert_ne!(h.hash(&e), h.skeleton_hash(&e));
    }

    #[test]
    fn invalid_addresses_are_refused() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "a@",
            "@b.com",
            "a b@c.com",
            "Name <a@b.com>",
            "a..b@example.com",
            ".a@example.com",
            "a@[192.0.2.1]",
            "a@exa mple.com",
            "a@-example.com",
            &format!("{}@x.com", "a".repeat(65)),
            &format!("a@{}.com", "b".repeat(260)),
            &"a".repeat(2000),
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError), "{bad:?}");
        }
    }

    #[test]
    fn a_cyrillic_letter_in_a_latin_address_has_the_latin_skeleton_and_mixes_scripts() {
        let latin = parse("alice@example.com");
        let cyrillic_a = parse("\u{430}lice@example.com");
        assert_ne!(latin, cyrillic_a);
        assert_eq!(latin.skeleton(), cyrillic_a.skeleton());
        assert!(cyrillic_a.mixes_scripts());
        assert!(!latin.mixes_scripts());
    }

    #[test]
    fn a_whole_script_cyrillic_lookalike_is_single_script_but_shares_the_skeleton() {
        // "аре" is Cyrillic а, р, е: single-script, yet it reads as Latin "ape".
        let latin = parse("ape@example.com");
        let cyrillic = parse("\u{430}\u{440}\u{435}@example.com");
        assert!(!cyrillic.mixes_scripts());
        assert!(!cyrillic.is_ascii());
        assert_eq!(latin.skeleton(), cyrillic.skeleton());
    }

    #[test]
    fn a_lookalike_domain_is_judged_in_its_unicode_form() {
        // Cyrillic е in the domain, given as punycode: the skeleton still sees "example".
        let spoof = parse(&format!(
            "bob@{}",
            idna::domain_to_ascii("\u{435}xample.com").unwrap()
        ));
        assert!(spoof.as_str().contains("xn--"));
        assert_eq!(spoof.skeleton(), parse("bob@example.com").skeleton());
        assert!(spoof.mixes_scripts());
    }

    #[test]
    fn genuine_non_latin_addresses_are_single_script() {
        for ok in [
            "иван@пример.рф",
            "δοκιμή@παράδειγμα.δοκιμή",
            "用户@例子.广告",
        ] {
            assert!(!parse(ok).mixes_scripts(), "{ok}");
        }
    }

    #[test]
    fn debug_does_not_print_the_address() {
        assert_eq!(format!("{:?}", parse("a@example.com")), "Email(<redacted>)");
    }
}
