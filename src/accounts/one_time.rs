//! The one-time secrets keybroker hands a person out of band (a mailed sign-up confirmation or
//! reset link, an operator's printed invite): a fixed prefix naming the kind, then 256 random
//! bits in base64url. Only their SHA-256 is stored; the value lives in a zeroizing buffer and
//! `Debug` prints nothing of it. Each kind is a marker type, so a reset token can never be
//! passed where an invite is expected.

use std::marker::PhantomData;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What sets one kind of one-time token apart.
pub trait Kind {
    /// The literal start of every token of this kind (`kbs_`, `kbr_`, `kbi_`).
    const PREFIX: &'static str;
    /// Its type name, for `Debug`.
    const NAME: &'static str;
}

/// A freshly issued token of kind `K`. Only its recipient ever sees [`OneTimeToken::as_str`].
pub struct OneTimeToken<K: Kind> {
    value: Zeroizing<String>,
    kind: PhantomData<K>,
}

impl<K: Kind> std::fmt::Debug for OneTimeToken<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(<redacted>)", K::NAME)
    }
}

impl<K: Kind> OneTimeToken<K> {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self {
            value: Zeroizing::new(format!("{}{}", K::PREFIX, B64.encode(bytes.as_ref()))),
            kind: PhantomData,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.value.as_bytes()).into()
    }
}

/// The stored hash of a presented token of kind `K` (surrounding white space ignored), or `None`
/// when it is not shaped like one.
pub fn hash_presented<K: Kind>(raw: &str) -> Option<[u8; 32]> {
    let raw = raw.trim();
    let body = raw.strip_prefix(K::PREFIX)?;
    let decoded = Zeroizing::new(B64.decode(body).ok()?);
    (decoded.len() == 32).then(|| Sha256::digest(raw.as_bytes()).into())
}
