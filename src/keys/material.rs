//! A provider key as a user pasted it: parsed once at the edge into [`KeyMaterial`] (trimmed,
//! bounded, not a masked echo, in its provider's format), and the two public things derived from
//! it: the [`mask`] shown in lists and the keyed [`fingerprint`] that recognises it across
//! exports without being reversible.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::providers::Provider;
use crate::secret::ServerSecret;

/// Longest key accepted. Real keys are under 300 characters; 4 KiB leaves room for odd ones
/// while keeping a pasted document out of the vault.
pub const MAX_KEY_LEN: usize = 4096;

/// The ellipsis masks use. A key containing it is a mask sent back, never a key.
pub const ELLIPSIS: char = '…';

/// Why a pasted key was refused. Carries nothing of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than 4 KiB; no provider key is that long")]
    TooLong,
    #[error("that is a masked key as keybroker shows it, not a key; paste the full key")]
    Masked,
    #[error("the key does not have the format of this provider's keys")]
    BadFormat,
}

/// A key that passed [`KeyMaterial::parse`]. Zeroized on drop; `Debug` prints nothing of it.
pub struct KeyMaterial(Zeroizing<String>);

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

impl KeyMaterial {
    /// Trims surrounding whitespace (pasting adds newlines), then checks size, that it is not a
    /// mask, and the provider's format, in that order.
    pub fn parse(provider: &Provider, raw: &str) -> Result<Self, KeyError> {
        let key = raw.trim();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        if looks_masked(key) {
            return Err(KeyError::Masked);
        }
        if !provider.key_format_ok(key) {
            return Err(KeyError::BadFormat);
        }
        Ok(Self(Zeroizing::new(key.to_owned())))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Whether `value` is shaped like one of our masks (`sk-…Ab12`, or typed as `sk-...Ab12`).
pub fn looks_masked(value: &str) -> bool {
    value.contains(ELLIPSIS) || value.contains("...")
}

/// What lists show instead of the key: the provider's literal prefix (never a secret
/// character), `…`, and the last 4 characters; keys shorter than 12 show only `…` and the last 2.
pub fn mask(provider: &Provider, key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        let tail: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        return format!("{ELLIPSIS}{tail}");
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    let prefix = provider.known_prefix(key).unwrap_or("");
    format!("{prefix}{ELLIPSIS}{tail}")
}

/// `fp_` + the first 16 hex digits of HMAC-SHA256(fingerprint secret, key). The same key gets
/// the same fingerprint in every export of this server; without the secret it cannot be tested
/// against guesses, and 64 bits reveal nothing useful of a 128+ bit key.
pub fn fingerprint(secret: &ServerSecret, key: &str) -> String {
    type HmacSha256 = Hmac<Sha256>;
    let digest = HmacSha256::new_from_slice(secret.expose())
        .map(|mut m| {
            m.update(b"keybroker-key-fingerprint-v1:");
            m.update(key.as_bytes());
            m.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default();
    let hex = hex::encode(digest);
    format!("fp_{}", hex.get(..16).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::lookup;

    fn openai() -> &'static Provider {
        lookup("openai").unwrap()
    }

    #[test]
    fn masks_show_the_literal_prefix_and_the_last_four() {
        let key = format!("sk-proj-{}Ab12", "x".repeat(40));
        assert_eq!(mask(openai(), &key), "sk-proj-…Ab12");
        let key = format!("sk-{}Ab12", "x".repeat(40));
        assert_eq!(mask(openai(), &key), "sk-…Ab12");
        let vultr = lookup("vultr").unwrap();
        assert_eq!(mask(vultr, "ABCDEFGHIJKLMNOPWXYZ"), "…WXYZ");
        assert_eq!(mask(vultr, "ABCDEFGHIJK"), "…JK");
        let twilio = lookup("twilio").unwrap();
        let pair = format!("AC{}:{}9f9f", "a".repeat(32), "b".repeat(28));
        assert_eq!(mask(twilio, &pair), "AC…9f9f");
    }

    #[test]
    fn parsing_trims_and_refuses_in_order() {
        let key = format!("sk-{}", "a".repeat(48));
        let parsed = KeyMaterial::parse(openai(), &format!("  {key}\n")).unwrap();
        assert_eq!(parsed.expose(), key);
        assert_eq!(
            KeyMaterial::parse(openai(), " \n").unwrap_err(),
            KeyError::Empty
        );
        assert_eq!(
            KeyMaterial::parse(openai(), &"a".repeat(MAX_KEY_LEN + 1)).unwrap_err(),
            KeyError::TooLong
        );
        assert_eq!(
            KeyMaterial::parse(openai(), "sk-…Ab12").unwrap_err(),
            KeyError::Masked
        );
        assert_eq!(
            KeyMaterial::parse(openai(), "sk-...Ab12").unwrap_err(),
            KeyError::Masked
        );
        assert_eq!(
            KeyMaterial::parse(openai(), "not a key").unwrap_err(),
            KeyError::BadFormat
        );
        assert_eq!(format!("{parsed:?}"), "KeyMaterial(<redacted>)");
    }

    #[test]
    fn fingerprints_are_keyed_stable_and_short() {
        let a = ServerSecret::from_bytes(vec![1; 32]);
        let b = ServerSecret::from_bytes(vec![2; 32]);
        let fp = fingerprint(&a, "sk-secret");
        assert_eq!(fp, fingerprint(&a, "sk-secret"));
        assert_ne!(fp, fingerprint(&b, "sk-secret"));
        assert_ne!(fp, fingerprint(&a, "sk-secres"));
        assert_eq!(fp.len(), 3 + 16);
        assert!(fp.starts_with("fp_"));
    }
}
