//! Sign-up invites for `KEYBROKER_SIGNUP=invite`: `kbi_` + 256 random bits (base64url), made by
//! the operator (`keybroker accounts invite EMAIL`), stored only as their SHA-256 beside the
//! peppered hash of the one address they admit, valid 7 days, redeemed once by a single atomic
//! `UPDATE` inside the sign-up's transaction.

use crate::db::{Conn, Optional as _};
use crate::params;

use super::one_time;

pub const TOKEN_PREFIX: &str = "kbi_";
pub const TOKEN_TTL_SECS: i64 = 7 * 24 * 60 * 60;

/// Marks invite tokens (`kbi_`).
pub struct Invite;

impl one_time::Kind for Invite {
    const PREFIX: &'static str = TOKEN_PREFIX;
    const NAME: &'static str = "InviteToken";
}

/// A freshly issued invite token.
pub type InviteToken = one_time::OneTimeToken<Invite>;

/// The stored hash of a presented token, or `None` when it is not shaped like one of ours.
pub fn hash_presented(raw: &str) -> Option<[u8; 32]> {
    one_time::hash_presented::<Invite>(raw)
}

/// Stores an invite for the address whose peppered hash is `email_hash`, dropping expired ones.
pub fn issue(
    conn: &Conn<'_>,
    token_hash: &[u8; 32],
    email_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<i64> {
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
    conn: &Conn<'_>,
    token_hash: &[u8; 32],
    email_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<bool> {
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
    conn: &Conn<'_>,
    token_hash: &[u8; 32],
    email_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<bool> {
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
        let conn = Conn::memory();
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
