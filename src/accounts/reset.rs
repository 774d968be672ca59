//! Password-reset tokens: `kbr_` + 256 random bits (base64url), stored only as their SHA-256,
//! bound to one account, valid 24 hours, redeemed once by a single atomic `UPDATE`.

use crate::db::{Conn, Optional as _};
use crate::params;

use super::one_time;

pub const TOKEN_PREFIX: &str = "kbr_";
pub const TOKEN_TTL_SECS: i64 = 24 * 60 * 60;

/// Marks reset tokens (`kbr_`).
pub struct Reset;

impl one_time::Kind for Reset {
    const PREFIX: &'static str = TOKEN_PREFIX;
    const NAME: &'static str = "ResetToken";
}

/// A freshly issued reset token.
pub type ResetToken = one_time::OneTimeToken<Reset>;

/// The stored hash of a presented token, or `None` when it is not shaped like one of ours.
pub fn hash_presented(raw: &str) -> Option<[u8; 32]> {
    one_time::hash_presented::<Reset>(raw)
}

/// Stores a new token for the account, voiding any older one.
pub fn issue(
    conn: &Conn<'_>,
    account_id: i64,
    token_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<()> {
    revoke_all(conn, account_id)?;
    conn.execute(
        "INSERT INTO password_reset_tokens (token_hash, account_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![token_hash.as_slice(), account_id, now, now + TOKEN_TTL_SECS],
    )?;
    Ok(())
}

/// Whether the token could be redeemed now (a cheap check before hashing the new password).
pub fn is_redeemable(conn: &Conn<'_>, token_hash: &[u8; 32], now: i64) -> crate::db::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM password_reset_tokens
             WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2",
            params![token_hash.as_slice(), now],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Marks the token used and returns its account, in one statement: of two racing redemptions,
/// only the first matches `used_at IS NULL`.
pub fn redeem(conn: &Conn<'_>, token_hash: &[u8; 32], now: i64) -> crate::db::Result<Option<i64>> {
    conn.query_row(
        "UPDATE password_reset_tokens SET used_at = ?2
         WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2
         RETURNING account_id",
        params![token_hash.as_slice(), now],
        |r| r.get(0),
    )
    .optional()
}

/// Voids every token of the account (after a reset or a password change).
pub fn revoke_all(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<usize> {
    conn.execute(
        "DELETE FROM password_reset_tokens WHERE account_id = ?1",
        [account_id],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_high_entropy_and_hash_as_presented() {
        let t = ResetToken::generate();
        assert!(t.as_str().starts_with(TOKEN_PREFIX));
        assert_eq!(t.as_str().len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(hash_presented(t.as_str()), Some(t.hash()));
        assert_ne!(ResetToken::generate().as_str(), t.as_str());
        assert_eq!(format!("{t:?}"), "ResetToken(<redacted>)");
    }

    #[test]
    fn malformed_tokens_have_no_hash() {
        for bad in [
            "",
            "kbr_",
            "kbr_short",
            "xyz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }
}
