//! Email addresses: parsed and normalised at the edge, and hashed with a server pepper to key
//! account rows.
//!
//! Why HMAC and not SHA-256: a plain hash of an email can be recomputed by anyone holding a list
//! of emails, so a copy of the database would tell who has an account. HMAC-SHA256 under a pepper
//! that lives only in the environment (never in the database or its backups) cannot be recomputed
//! without that pepper.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::ServerSecret;

const MAX_LEN: usize = 254;

/// A syntactically valid, normalised (trimmed, lower-cased) email address.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the email address is not valid")]
pub struct EmailError;

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let normalised = raw.trim().to_lowercase();
        if normalised.is_empty()
            || normalised.len() > MAX_LEN
            || !email_address::EmailAddress::is_valid(&normalised)
        {
            return Err(EmailError);
        }
        // Display names (`Name <a@b>`) are valid RFC 5322 but not an address we can key on.
        if normalised.contains(['<', '>', ' ']) {
            return Err(EmailError);
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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

    pub fn hash(&self, email: &Email) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an all-zero tag
        // rather than panic if that ever changes.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.pepper.expose()) else {
            return [0u8; 32];
        };
        mac.update(b"keybroker-email-v1:");
        mac.update(email.as_str().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_whitespace_variants_normalise_to_one_address() {
        let a = Email::parse("  Alice@Example.COM\t").unwrap();
        let b = Email::parse("alice@example.com").unwrap();
        assert_eq!(a, b);
        let h = EmailHasher::new(ServerSecret::from_bytes(vec![1; 32]));
        assert_eq!(h.hash(&a), h.hash(&b));
    }

    #[test]
    fn different_peppers_give_different_hashes() {
        let e = Email::parse("a@example.com").unwrap();
        let h1 = EmailHasher::new(ServerSecret::from_bytes(vec![1; 32]));
        let h2 = EmailHasher::new(ServerSecret::from_bytes(vec![2; 32]));
        assert_ne!(h1.hash(&e), h2.hash(&e));
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
            &format!("{}@x.com", "a".repeat(260)),
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError), "{bad:?}");
        }
    }

    #[test]
    fn debug_does_not_print_the_address() {
        assert_eq!(
            format!("{:?}", Email::parse("a@example.com").unwrap()),
            "Email(<redacted>)"
        );
    }
}
