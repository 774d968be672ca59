//! Sign-up invites for `KEYBROKER_SIGNUP=invite`: `kbi_` + 256 random bits (base64url), made by
//! the operator (`keybroker accounts invite EMAIL`), stored only as their SHA-256 beside the
//! peppered hash of the one address they admit, valid 7 days, redeemed once by a single atomic
//! `UPDATE` inside the sign-up's transaction.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const TOKEN_PREFIX: &str = "kbi_";
pub const TOKEN_TTL_SECS: i64 = 7 * 24 * 60 * 60;

/// A freshly made invite. Only the operator's terminal ever sees [`InviteToken::as_str`].
pub struct InviteToken(Zeroizing<String>);

impl std::fmt::Debug for InviteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InviteToken(<redacted>)")
    }
}

impl InviteToken {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            B64.encode(bytes.as_ref())
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// The stored hash of a presented invite, or `None` when it is not shaped like one of ours.
pub fn hash_presented(raw: &str) -> Option<[u8; 32]> {
    let raw = raw.trim();
    let body = raw.strip_prefix(TOKEN_PREFIX)?;
    let decoded = Zeroizing::new(B64.decode(body).ok()?);
    (decoded.len() == 32).then(|| Sha256::digest(raw.as_bytes()).into())
}

/// Stores an invite for the address whose peppered hash is `email_hash`, dropping expired ones.
pub fn issue(
    conn: &Connection,
    token_hash: &[u8; 32],
    email_hash: &[u8; 32],
    now: i64,
) -> rusqlite::Result<i64> {
    conn.execute("DELETE FROM signup_invites WHERE expires_at <= ?1", [now])?;
    let expires = now + TOKEN_TTL_SECS;
    conn.execute(
        "INSERT INTO signup_invites (token_hash, email_hash, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![token_hash.as_slice(), email_hash.as_slice(), now, expires],
    )?;
    Ok(expires)
}

/// Whether the invite could admit this address now (a cheap look before the password hash).
pub fn is_redeemable(
    conn: &Connection,
    token_hash: &[u8; 32],
    email_hash: &[u8; 32],
    now: i64,
) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM signup_invites
             WHERE token_hash = ?1 AND email_hash = ?2 AND used_at IS NULL AND expires_at > ?3",
            params![token_hash.as_slice(), email_hash.as_slice(), now],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Marks the invite used, in one statement: of two racing sign-ups with it, only the first
/// matches `used_at IS NULL`. False when it does not admit this address (any more).
pub fn redeem(
    conn: &Connection,
    token_hash: &[u8; 32],
    email_hash: &[u8; 32],
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE signup_invites SET used_at = ?3
         WHERE token_hash = ?1 AND email_hash = ?2 AND used_at IS NULL AND expires_at > ?3",
        params![token_hash.as_slice(), email_hash.as_slice(), now],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_admits_its_address_once_and_only_before_it_expires() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::migrate_for_tests(&mut conn);
        let t = InviteToken::generate();
        assert_eq!(hash_presented(t.as_str()), Some(t.hash()));
        assert_eq!(format!("{t:?}"), "InviteToken(<redacted>)");
        let (mine, other) = ([1u8; 32], [2u8; 32]);
        let expires = issue(&conn, &t.hash(), &mine, 100).unwrap();
        assert!(
            !redeem(&conn, &t.hash(), &other, 101).unwrap(),
            "another address"
        );
        assert!(
            !is_redeemable(&conn, &t.hash(), &mine, expires).unwrap(),
            "expired"
        );
        assert!(is_redeemable(&conn, &t.hash(), &mine, 101).unwrap());
        assert!(redeem(&conn, &t.hash(), &mine, 101).unwrap());
        assert!(!redeem(&conn, &t.hash(), &mine, 102).unwrap(), "used");
    }

    #[test]
    fn malformed_invites_have_no_hash() {
        for bad in [
            "",
            "kbi_",
            "kbi_short",
            "kbs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }
}
