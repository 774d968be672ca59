//! The vault: seals provider keys (and the few other values we must be able to read back, like an
//! account's email) with AES-256-GCM under a master key from the runtime environment, bound to the
//! row they are stored in.
//!
//! # Blob layout, version 1
//!
//! | offset     | size        | field                                              |
//! |------------|-------------|----------------------------------------------------|
//! | 0          | 1           | format version, `0x01`                             |
//! | 1          | 1           | length `n` of the master key id (1..=32)           |
//! | 2          | n           | master key id, ASCII `[A-Za-z0-9_-]`               |
//! | 2 + n      | 12          | nonce, fresh from the OS RNG for every encryption   |
//! | 14 + n     | rest (≥ 16) | ciphertext followed by the 16-byte GCM tag          |
//!
//! The associated data is the header (bytes `0 .. 2 + n`) followed by the [`Binding`] of the row,
//! so a blob copied onto another row, account, provider or purpose, or with its header edited,
//! fails authentication and never decrypts to anything.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore;
use zeroize::Zeroizing;

/// Current blob format version.
pub const BLOB_VERSION: u8 = 1;
/// Master keys are AES-256 keys.
pub const MASTER_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const MAX_KEY_ID_LEN: usize = 32;

/// The name a master key goes by in the keyring and in every blob it sealed.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct MasterKeyId(String);

impl MasterKeyId {
    /// The id given to a key configured alone through `KEYBROKER_MASTER_KEY` or `master.key`.
    pub const DEFAULT: &'static str = "default";

    pub fn parse(raw: &str) -> Result<Self, KeyringError> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_KEY_ID_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(KeyringError::BadId(raw.chars().take(40).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a keyring could not be built. Never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("master key id {0:?} is not valid: use 1-32 characters of A-Z a-z 0-9 _ -")]
    BadId(String),
    #[error("master key {id:?} is not valid base64")]
    NotBase64 { id: String },
    #[error("master key {id:?} decodes to {len} bytes; a master key is exactly 32 bytes (make one with `keybroker master-key generate`)")]
    WrongLength { id: String, len: usize },
    #[error("master key id {0:?} appears twice in the keyring")]
    DuplicateId(String),
    #[error("KEYBROKER_MASTER_KEYS entries look like `id:base64`, separated by commas")]
    BadEntry,
    #[error("the active master key {0:?} is not in the keyring")]
    UnknownActive(String),
    #[error("several master keys are configured: say which one encrypts new data with KEYBROKER_ACTIVE_MASTER_KEY")]
    NoActive,
    #[error("set either KEYBROKER_MASTER_KEY or KEYBROKER_MASTER_KEYS, not both")]
    BothForms,
    #[error("the keyring is empty")]
    Empty,
}

struct MasterKey {
    cipher: Aes256Gcm,
}

/// A master key id with its 32 raw key bytes, as configured.
pub type RawMasterKey = (MasterKeyId, Zeroizing<Vec<u8>>);

/// Every master key the service can decrypt with, and the one it encrypts with.
pub struct Keyring {
    keys: HashMap<MasterKeyId, MasterKey>,
    active: MasterKeyId,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().map(MasterKeyId::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("Keyring")
            .field("ids", &ids)
            .field("active", &self.active.as_str())
            .finish()
    }
}

impl Keyring {
    /// Builds a keyring from raw 32-byte keys.
    pub fn new(keys: Vec<RawMasterKey>, active: Option<MasterKeyId>) -> Result<Self, KeyringError> {
        let active = match (active, keys.as_slice()) {
            (Some(active), _) => active,
            (None, [(only, _)]) => only.clone(),
            (None, []) => return Err(KeyringError::Empty),
            (None, _) => return Err(KeyringError::NoActive),
        };
        let mut map = HashMap::with_capacity(keys.len());
        for (id, bytes) in keys {
            if bytes.len() != MASTER_KEY_LEN {
                return Err(KeyringError::WrongLength {
                    id: id.0,
                    len: bytes.len(),
                });
            }
            let cipher =
                Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyringError::WrongLength {
                    id: id.0.clone(),
                    len: bytes.len(),
                })?;
            if map.insert(id.clone(), MasterKey { cipher }).is_some() {
                return Err(KeyringError::DuplicateId(id.0));
            }
        }
        if !map.contains_key(&active) {
            return Err(KeyringError::UnknownActive(active.0));
        }
        Ok(Self { keys: map, active })
    }

    /// Parses the environment forms: `single` is `KEYBROKER_MASTER_KEY` (base64, id `default`),
    /// `list` is `KEYBROKER_MASTER_KEYS` (`id1:base64,id2:base64`), `active` is
    /// `KEYBROKER_ACTIVE_MASTER_KEY`. Returns `Ok(None)` when neither form is set.
    pub fn from_config(
        single: Option<&str>,
        list: Option<&str>,
        active: Option<&str>,
    ) -> Result<Option<Self>, KeyringError> {
        let keys = match (single, list) {
            (Some(_), Some(_)) => return Err(KeyringError::BothForms),
            (None, None) => return Ok(None),
            (Some(single), None) => {
                let id = MasterKeyId::parse(MasterKeyId::DEFAULT)?;
                let bytes = decode_key(&id, single)?;
                vec![(id, bytes)]
            }
            (None, Some(list)) => parse_key_list(list)?,
        };
        let active = active.map(MasterKeyId::parse).transpose()?;
        Self::new(keys, active).map(Some)
    }

    pub fn active_id(&self) -> &MasterKeyId {
        &self.active
    }

    pub fn contains(&self, id: &MasterKeyId) -> bool {
        self.keys.contains_key(id)
    }

    pub fn ids(&self) -> Vec<MasterKeyId> {
        let mut ids: Vec<_> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }
}

fn parse_key_list(list: &str) -> Result<Vec<RawMasterKey>, KeyringError> {
    let mut keys = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, b64) = entry.split_once(':').ok_or(KeyringError::BadEntry)?;
        let id = MasterKeyId::parse(id.trim())?;
        let bytes = decode_key(&id, b64)?;
        keys.push((id, bytes));
    }
    Ok(keys)
}

fn decode_key(id: &MasterKeyId, b64: &str) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map(Zeroizing::new)
        .map_err(|_| KeyringError::NotBase64 { id: id.0.clone() })?;
    if bytes.len() != MASTER_KEY_LEN {
        return Err(KeyringError::WrongLength {
            id: id.0.clone(),
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// A fresh random master key, base64-encoded, for `keybroker master-key generate`.
pub fn generate_master_key_b64() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()))
}

/// What a sealed value is for; part of the associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    ProviderKey,
    AccountEmail,
    Canary,
    /// A queued mail's recipient (`mail_queue.to_blob`).
    MailTo,
    /// A queued mail's body (`mail_queue.body_blob`): it may carry a live reset link.
    MailBody,
    /// An account's webhook signing secret (`webhooks.secret_blob`).
    WebhookSecret,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::ProviderKey => "provider_key",
            Purpose::AccountEmail => "account_email",
            Purpose::Canary => "canary",
            Purpose::MailTo => "mail_to",
            Purpose::MailBody => "mail_body",
            Purpose::WebhookSecret => "webhook_secret",
        }
    }
}

/// The row a blob belongs to. A blob only opens with the exact binding it was sealed with.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub purpose: Purpose,
    pub account_id: i64,
    pub provider: &'a str,
    pub row_id: &'a str,
}

impl Binding<'_> {
    /// Length-prefixed, so no two different bindings encode to the same bytes.
    fn encode_into(&self, out: &mut Vec<u8>) {
        for field in [
            self.purpose.as_str().as_bytes(),
            &self.account_id.to_be_bytes(),
            self.provider.as_bytes(),
            self.row_id.as_bytes(),
        ] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
    }
}

/// Why a blob could not be opened (or sealed). Carries no plaintext and no key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("encrypted value is truncated")]
    Truncated,
    #[error("encrypted value has unknown format version {0}")]
    UnknownVersion(u8),
    #[error("encrypted value names master key {0:?}, which is not in the keyring")]
    UnknownMasterKey(String),
    #[error("encrypted value failed authentication (wrong master key, wrong row, or tampered)")]
    Unauthentic,
    #[error("encryption failed")]
    Encrypt,
}

/// A decrypted secret. Zeroized on drop; `Debug` prints nothing of it.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, when it is UTF-8 (provider keys always are: we only store text).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plaintext(<redacted>)")
    }
}

/// Seals and opens row-bound blobs with the keyring.
#[derive(Debug)]
pub struct Vault {
    keyring: Keyring,
}

struct Header<'a> {
    key_id: &'a str,
    /// The bytes of the header itself, authenticated as associated data.
    raw: &'a [u8],
    nonce: &'a [u8],
    sealed: &'a [u8],
}

fn parse_header(blob: &[u8]) -> Result<Header<'_>, VaultError> {
    let (&version, rest) = blob.split_first().ok_or(VaultError::Truncated)?;
    if version != BLOB_VERSION {
        return Err(VaultError::UnknownVersion(version));
    }
    let (&id_len, rest) = rest.split_first().ok_or(VaultError::Truncated)?;
    let id_len = usize::from(id_len);
    if id_len == 0 || id_len > MAX_KEY_ID_LEN {
        return Err(VaultError::Truncated);
    }
    if rest.len() < id_len + NONCE_LEN + TAG_LEN {
        return Err(VaultError::Truncated);
    }
    let (id, rest) = rest.split_at(id_len);
    let key_id = std::str::from_utf8(id).map_err(|_| VaultError::Unauthentic)?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let raw = blob.get(..2 + id_len).ok_or(VaultError::Truncated)?;
    Ok(Header {
        key_id,
        raw,
        nonce,
        sealed,
    })
}

impl Vault {
    pub fn new(keyring: Keyring) -> Self {
        Self { keyring }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Encrypts `plaintext` under the active master key, bound to `binding`.
    pub fn seal(&self, plaintext: &[u8], binding: &Binding<'_>) -> Result<Vec<u8>, VaultError> {
        let id = self.keyring.active_id();
        let key = self.keyring.keys.get(id).ok_or(VaultError::Encrypt)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);

        let id_bytes = id.as_str().as_bytes();
        let mut blob =
            Vec::with_capacity(2 + id_bytes.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.push(BLOB_VERSION);
        blob.push(u8::try_from(id_bytes.len()).map_err(|_| VaultError::Encrypt)?);
        blob.extend_from_slice(id_bytes);
        let aad = associated_data(&blob, binding);
        blob.extend_from_slice(&nonce);
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Encrypt)?;
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Decrypts a blob sealed for exactly this `binding`.
    pub fn open(&self, blob: &[u8], binding: &Binding<'_>) -> Result<Plaintext, VaultError> {
        let header = parse_header(blob)?;
        let id = MasterKeyId::parse(header.key_id)
            .map_err(|_| VaultError::UnknownMasterKey(header.key_id.chars().take(32).collect()))?;
        let key = self
            .keyring
            .keys
            .get(&id)
            .ok_or_else(|| VaultError::UnknownMasterKey(id.0.clone()))?;
        let aad = associated_data(header.raw, binding);
        key.cipher
            .decrypt(
                Nonce::from_slice(header.nonce),
                Payload {
                    msg: header.sealed,
                    aad: &aad,
                },
            )
            .map(|plain| Plaintext(Zeroizing::new(plain)))
            .map_err(|_| VaultError::Unauthentic)
    }

    /// Re-encrypts a blob under the active key (same binding). The plaintext lives only inside.
    pub fn rewrap(&self, blob: &[u8], binding: &Binding<'_>) -> Result<Vec<u8>, VaultError> {
        let plain = self.open(blob, binding)?;
        self.seal(plain.expose(), binding)
    }
}

/// The master key id a blob names, without decrypting it.
pub fn blob_key_id(blob: &[u8]) -> Result<&str, VaultError> {
    parse_header(blob).map(|h| h.key_id)
}

fn associated_data(header: &[u8], binding: &Binding<'_>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 64);
    aad.extend_from_slice(header);
    binding.encode_into(&mut aad);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![byte; MASTER_KEY_LEN])
    }

    fn id(s: &str) -> MasterKeyId {
        MasterKeyId::parse(s).unwrap()
    }

    fn vault() -> Vault {
        Vault::new(Keyring::new(vec![(id("k1"), key(7))], None).unwrap())
    }

    const ROW: Binding<'static> = Binding {
        purpose: Purpose::ProviderKey,
        account_id: 1,
        provider: "openai",
        row_id: "key_1",
    };

    #[test]
    fn round_trip_returns_the_plaintext() {
        let v = vault();
        let blob = v.seal(b"sk-test-value", &ROW).unwrap();
        assert_eq!(v.open(&blob, &ROW).unwrap().expose(), b"sk-test-value");
    }

    #[test]
    fn layout_is_version_id_nonce_ciphertext_tag() {
        let blob = vault().seal(b"abc", &ROW).unwrap();
        assert_eq!(blob[0], 1);
        assert_eq!(blob[1], 2);
        assert_eq!(&blob[2..4], b"k1");
        assert_eq!(blob.len(), 4 + 12 + 3 + 16);
        assert_eq!(blob_key_id(&blob).unwrap(), "k1");
    }

    #[test]
    fn same_plaintext_twice_gives_different_blobs() {
        let v = vault();
        assert_ne!(
            v.seal(b"same", &ROW).unwrap(),
            v.seal(b"same", &ROW).unwrap()
        );
    }

    #[test]
    fn blob_moved_to_another_row_or_account_fails() {
        let v = vault();
        let blob = v.seal(b"secret", &ROW).unwrap();
        for other in [
            Binding {
                account_id: 2,
                ..ROW
            },
            Binding {
                provider: "anthropic",
                ..ROW
            },
            Binding {
                row_id: "key_2",
                ..ROW
            },
            Binding {
                purpose: Purpose::AccountEmail,
                ..ROW
            },
        ] {
            assert_eq!(v.open(&blob, &other).unwrap_err(), VaultError::Unauthentic);
        }
    }

    #[test]
    fn truncated_and_unknown_version_blobs_give_typed_errors() {
        let v = vault();
        let blob = v.seal(b"secret", &ROW).unwrap();
        for len in 0..(4 + 12 + 16) {
            assert_eq!(
                v.open(&blob[..len], &ROW).unwrap_err(),
                VaultError::Truncated,
                "len {len}"
            );
        }
        let mut future = blob.clone();
        future[0] = 2;
        assert_eq!(
            v.open(&future, &ROW).unwrap_err(),
            VaultError::UnknownVersion(2)
        );
    }

    #[test]
    fn a_blob_under_an_unknown_key_id_says_so() {
        let blob = vault().seal(b"secret", &ROW).unwrap();
        let other = Vault::new(Keyring::new(vec![(id("k2"), key(7))], None).unwrap());
        assert_eq!(
            other.open(&blob, &ROW).unwrap_err(),
            VaultError::UnknownMasterKey("k2".replace('2', "1"))
        );
    }

    #[test]
    fn wrong_master_key_with_same_id_fails_authentication() {
        let blob = vault().seal(b"secret", &ROW).unwrap();
        let other = Vault::new(Keyring::new(vec![(id("k1"), key(8))], None).unwrap());
        assert_eq!(
            other.open(&blob, &ROW).unwrap_err(),
            VaultError::Unauthentic
        );
    }

    #[test]
    fn keyring_decrypts_old_ids_and_seals_with_the_active_one() {
        let old = vault();
        let blob = old.seal(b"secret", &ROW).unwrap();
        let ring =
            Keyring::new(vec![(id("k1"), key(7)), (id("k2"), key(9))], Some(id("k2"))).unwrap();
        let v = Vault::new(ring);
        assert_eq!(v.open(&blob, &ROW).unwrap().expose(), b"secret");
        let rewrapped = v.rewrap(&blob, &ROW).unwrap();
        assert_eq!(blob_key_id(&rewrapped).unwrap(), "k2");
        assert_eq!(v.open(&rewrapped, &ROW).unwrap().expose(), b"secret");
    }

    #[test]
    fn keyring_config_is_validated_without_echoing_keys() {
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![1u8; n]);
        assert_eq!(
            Keyring::from_config(Some(&b64(31)), None, None).unwrap_err(),
            KeyringError::WrongLength {
                id: "default".into(),
                len: 31
            }
        );
        assert_eq!(
            Keyring::from_config(Some("not base64!"), None, None).unwrap_err(),
            KeyringError::NotBase64 {
                id: "default".into()
            }
        );
        assert_eq!(
            Keyring::from_config(Some(&b64(32)), Some("a:x"), None).unwrap_err(),
            KeyringError::BothForms
        );
        let two = format!("a:{},b:{}", b64(32), b64(32));
        assert_eq!(
            Keyring::from_config(None, Some(&two), None).unwrap_err(),
            KeyringError::NoActive
        );
        assert_eq!(
            Keyring::from_config(None, Some(&two), Some("c")).unwrap_err(),
            KeyringError::UnknownActive("c".into())
        );
        let dup = format!("a:{},a:{}", b64(32), b64(32));
        assert_eq!(
            Keyring::from_config(None, Some(&dup), Some("a")).unwrap_err(),
            KeyringError::DuplicateId("a".into())
        );
        let ring = Keyring::from_config(None, Some(&two), Some("b"))
            .unwrap()
            .unwrap();
        assert_eq!(ring.active_id().as_str(), "b");
        assert!(Keyring::from_config(None, None, None).unwrap().is_none());
        assert!(!format!("{ring:?}").contains(&b64(32)));
    }

    #[test]
    fn plaintext_debug_prints_nothing_secret() {
        let v = vault();
        let p = v
            .open(&v.seal(b"hunter2-secret", &ROW).unwrap(), &ROW)
            .unwrap();
        assert_eq!(format!("{p:?}"), "Plaintext(<redacted>)");
    }

    /// NIST GCM specification (McGrew & Viega) test cases 13-16, AES-256.
    #[test]
    fn aes_256_gcm_known_answer_vectors() {
        struct Kat {
            key: &'static str,
            iv: &'static str,
            pt: &'static str,
            aad: &'static str,
            ct: &'static str,
            tag: &'static str,
        }
        let k15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let p15 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
        let c15 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                   8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
        let vectors = [
            Kat {
                key: "00".repeat(32).leak(),
                iv: "000000000000000000000000",
                pt: "",
                aad: "",
                ct: "",
                tag: "530f8afbc74536b9a963b4f1c4cb738b",
            },
            Kat {
                key: "00".repeat(32).leak(),
                iv: "000000000000000000000000",
                pt: "00000000000000000000000000000000",
                aad: "",
                ct: "cea7403d4d606b6e074ec5d3baf39d18",
                tag: "d0d1c8a799996bf0265b98b5d48ab919",
            },
            Kat {
                key: k15,
                iv: "cafebabefacedbaddecaf888",
                pt: p15,
                aad: "",
                ct: c15,
                tag: "b094dac5d93471bdec1a502270e3cc6c",
            },
            Kat {
                key: k15,
                iv: "cafebabefacedbaddecaf888",
                pt: &p15[..120],
                aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                ct: &c15[..120],
                tag: "76fc6ece0f4e1768cddf8853bb2d551b",
            },
        ];
        for (i, v) in vectors.iter().enumerate() {
            let cipher = Aes256Gcm::new_from_slice(&hex::decode(v.key).unwrap()).unwrap();
            let iv = hex::decode(v.iv).unwrap();
            let pt = hex::decode(v.pt).unwrap();
            let aad = hex::decode(v.aad).unwrap();
            let sealed = cipher
                .encrypt(
                    Nonce::from_slice(&iv),
                    Payload {
                        msg: &pt,
                        aad: &aad,
                    },
                )
                .unwrap();
            assert_eq!(
                hex::encode(&sealed),
                format!("{}{}", v.ct, v.tag),
                "vector {i}"
            );
            let opened = cipher
                .decrypt(
                    Nonce::from_slice(&iv),
                    Payload {
                        msg: &sealed,
                        aad: &aad,
                    },
                )
                .unwrap();
            assert_eq!(opened, pt, "vector {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn flipping_any_single_bit_makes_decryption_fail(
            plaintext in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            position in proptest::num::usize::ANY,
            bit in 0u8..8,
        ) {
            let v = vault();
            let mut blob = v.seal(&plaintext, &ROW).unwrap();
            let at = position % blob.len();
            blob[at] ^= 1 << bit;
            proptest::prop_assert!(v.open(&blob, &ROW).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(blob in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = vault().open(&blob, &ROW);
            let _ = blob_key_id(&blob);
        }
    }
}
