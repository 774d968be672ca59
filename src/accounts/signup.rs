//! Sign-up confirmation tokens: `kbs_` + 256 random bits (base64url), mailed to the address a
//! sign-up gave, stored only as their SHA-256, bound to one unconfirmed account, valid 24 hours,
//! redeemed once by a single atomic `UPDATE`.
//!
//! Redeeming one also needs the password chosen at sign-up (checked by the caller against the
//! account's stored hash): a token alone proves the mailbox, not who chose the password. Without
//! that check, whoever signed an address up first could have its owner confirm *their* password
//! by clicking the mail (account pre-hijacking).

use crate::db::{Conn, Optional as _};
use crate::params;

use super::one_time;

pub const TOKEN_PREFIX: &str = "kbs_";
pub const TOKEN_TTL_SECS: i64 = 24 * 60 * 60;

/// Marks signup tokens (`kbs_`).
pub struct Signup;

impl one_time::Kind for Signup {
    const PREFIX: &'static str = TOKEN_PREFIX;
    const NAME: &'static str = "SignupToken";
}

/// A freshly issued signup token.
pub type SignupToken = one_time::OneTimeToken<Signup>;

/// The stored hash of a presented token, or `None` when it is not shaped like one of ours.
pub fn hash_presented(raw: &str) -> Option<[u8; 32]> {
    one_time::hash_presented::<Signup>(raw)
}

/// Stores a token for the (unconfirmed) account, dropping expired ones on the way.
pub fn issue(
    conn: &Conn<'_>,
    account_id: i64,
    token_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<()> {
    conn.execute("DELETE FROM signup_tokens WHERE expires_at <= ?1", [now])?;
    conn.execute(
        "INSERT INTO signup_tokens (token_hash, account_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![token_hash.as_slice(), account_id, now, now + TOKEN_TTL_SECS],
    )?;
    Ok(())
}

/// The account and the password hash a redeemable token would confirm (a read before the slow
/// password check; [`redeem`] decides).
pub fn pending(
    conn: &Conn<'_>,
    token_hash: &[u8; 32],
    now: i64,
) -> crate::db::Result<Option<(i64, Option<String>)>> {
    conn.query_row(
        "SELECT a.id, a.password_hash FROM signup_tokens t JOIN accounts a ON a.id = t.account_id
         WHERE t.token_hash = ?1 AND t.used_at IS NULL AND t.expires_at > ?2
           AND a.confirmed_at IS NULL AND a.disabled_at IS NULL",
        params![token_hash.as_slice(), now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Marks the token used and returns its account, in one statement: of two racing redemptions,
/// only the first matches `used_at IS NULL`.
pub fn redeem(conn: &Conn<'_>, token_hash: &[u8; 32], now: i64) -> crate::db::Result<Option<i64>> {
    conn.query_row(
        "UPDATE signup_tokens SET used_at = ?2
         WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2
         RETURNING account_id",
        params![token_hash.as_slice(), now],
        |r| r.get(0),
    )
    .optional()
}

/// Voids every token of the account (once it is confirmed, by any means).
pub fn revoke_all(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<usize> {
    conn.execute(
        "DELETE FROM signup_tokens WHERE account_id = ?1",
        [account_id],
    )
}

/// Who may create an account with a password (`KEYBROKER_SIGNUP`). Existing accounts sign in
/// whatever it says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SignupPolicy {
    /// Anyone who can reach the server (a loud start-up warning when bound off loopback).
    #[default]
    Open,
    /// Only an address the operator invited (`keybroker accounts invite EMAIL`).
    Invite,
    /// Nobody: every sign-up is refused with `signup_closed`.
    Closed,
}

impl SignupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SignupPolicy::Open => "open",
            SignupPolicy::Invite => "invite",
            SignupPolicy::Closed => "closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_high_entropy_and_hash_as_presented() {
        let t = SignupToken::generate();
        assert!(t.as_str().starts_with(TOKEN_PREFIX));
        assert_eq!(t.as_str().len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(hash_presented(t.as_str()), Some(t.hash()));
        assert_eq!(hash_presented(&format!(" {} ", t.as_str())), Some(t.hash()));
        assert_ne!(SignupToken::generate().as_str(), t.as_str());
        assert_eq!(format!("{t:?}"), "SignupToken(<redacted>)");
    }

    #[test]
    fn malformed_and_reset_tokens_have_no_hash() {
        for bad in [
            "",
            "kbs_",
            "kbs_short",
            "kbr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(hash_presented(bad), None, "{bad:?}");
        }
    }
}
