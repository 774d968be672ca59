//! Accounts: rows keyed by the peppered hash of the owner's email, the email kept only as a
//! vault blob so the service can write to it. A sign-up's account is unconfirmed (cannot sign
//! in) until the owner of the address confirms it.

pub mod email;
pub mod invite;
pub mod oauth;
pub mod one_time;
pub mod operator;
pub mod password;
pub mod reset;
pub mod session;
pub mod signup;
pub mod throttle;

use crate::db::{Conn, Optional as _};
use crate::params;

use crate::vault::Vault;
use crate::vault_store::email_binding;
pub use email::{Email, EmailError, EmailHasher};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an account with this email exists")]
    Exists,
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

/// What sign-in and sign-up need to know about an account.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: i64,
    /// The password hash, only once the account is confirmed: an unconfirmed account's password
    /// was chosen by whoever signed the address up, and nobody signs in with it.
    pub password_hash: Option<String>,
    pub confirmed: bool,
    /// Disabled by the operator (`keybroker accounts disable`): no password, no sign-in.
    pub disabled: bool,
}

/// Creates an account that cannot sign in until it is confirmed (`signup::redeem` with the
/// password, a password reset, or an OAuth sign-in with the same address). The email blob is bound
/// to the new row's id, so the row is inserted first and sealed second, in the caller's
/// transaction.
pub fn create_unconfirmed_in(
    tx: &Conn<'_>,
    vault: &Vault,
    hasher: &EmailHasher,
    email: &Email,
    password_hash: &str,
    now: i64,
) -> Result<i64, AccountError> {
    insert(tx, vault, hasher, email, Some(password_hash), now, None)
}

/// Creates an account whose address is already proven (an OAuth provider's verified email).
pub fn create_confirmed_in(
    tx: &Conn<'_>,
    vault: &Vault,
    hasher: &EmailHasher,
    email: &Email,
    password_hash: Option<&str>,
    now: i64,
) -> Result<i64, AccountError> {
    insert(tx, vault, hasher, email, password_hash, now, Some(now))
}

fn insert(
    tx: &Conn<'_>,
    vault: &Vault,
    hasher: &EmailHasher,
    email: &Email,
    password_hash: Option<&str>,
    now: i64,
    confirmed_at: Option<i64>,
) -> Result<i64, AccountError> {
    let inserted: Option<i64> = tx
        .query_row(
            // The first account of a fresh database is marked as the operator's (shown by
            // `accounts list`; it grants nothing).
            "INSERT INTO accounts (email_hash, email_skeleton_hash, email_blob, master_key_id,
                               password_hash, created_at, confirmed_at, is_operator)
         VALUES (?1, ?2, ?7, ?3, ?4, ?5, ?6,
                 CASE WHEN EXISTS (SELECT 1 FROM accounts) THEN 0 ELSE 1 END)
         ON CONFLICT (email_hash) DO NOTHING
         RETURNING id",
            params![
                hasher.hash(email).as_slice(),
                hasher.skeleton_hash(email).as_slice(),
                vault.keyring().active_id().as_str(),
                password_hash,
                now,
                confirmed_at,
                // The email is sealed once the row's id is known (it is the associated data).
                [0u8; 0],
            ],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = inserted else {
        return Err(AccountError::Exists);
    };
    let blob = vault.seal(email.as_str().as_bytes(), &email_binding(id))?;
    tx.execute(
        "UPDATE accounts SET email_blob = ?1 WHERE id = ?2",
        params![blob, id],
    )?;
    Ok(id)
}

/// Whether another account's address has the same confusable skeleton as `email` (and is not
/// `email` itself).
pub fn lookalike_exists(
    conn: &Conn<'_>,
    hasher: &EmailHasher,
    email: &Email,
) -> crate::db::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM accounts WHERE email_skeleton_hash = ?1 AND email_hash <> ?2 LIMIT 1",
            params![
                hasher.skeleton_hash(email).as_slice(),
                hasher.hash(email).as_slice()
            ],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Marks an account confirmed after its owner proved the mailbox with a reset link, and voids its
/// sign-up links. A no-op for a confirmed account.
pub fn confirm(conn: &Conn<'_>, account_id: i64, now: i64) -> crate::db::Result<()> {
    conn.execute(
        "UPDATE accounts SET confirmed_at = ?2 WHERE id = ?1 AND confirmed_at IS NULL",
        params![account_id, now],
    )?;
    signup::revoke_all(conn, account_id)?;
    Ok(())
}

/// Confirms an unconfirmed account through an OAuth sign-in with its address, dropping the
/// password it was signed up with: that password was never proven to be the owner's.
pub fn confirm_without_password(
    conn: &Conn<'_>,
    account_id: i64,
    now: i64,
) -> crate::db::Result<()> {
    conn.execute(
        "UPDATE accounts SET confirmed_at = ?2, password_hash = NULL
         WHERE id = ?1 AND confirmed_at IS NULL",
        params![account_id, now],
    )?;
    signup::revoke_all(conn, account_id)?;
    Ok(())
}

/// What [`backfill`] did at start-up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backfill {
    /// Rows that got their skeleton hash.
    pub filled: usize,
    /// Rows whose address normalises differently now and were re-keyed to the new form.
    pub rekeyed: usize,
    /// Rows whose new form is already another account's: left under the old key.
    pub collisions: usize,
    /// Rows whose stored address no longer parses (or does not open): left as they are.
    pub unparsable: usize,
}

/// Fills in the skeleton hash of accounts created before it existed, from their sealed email
/// (the server holds the master key; a copy of the database alone could not do this). An address
/// that normalises differently since (a Unicode domain, a quoted local part) is re-keyed and
/// resealed in its new form, unless that form is another account's already.
pub fn backfill(
    conn: &Conn<'_>,
    vault: &Vault,
    hasher: &EmailHasher,
) -> Result<Backfill, AccountError> {
    let tx = conn;
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt =
            tx.prepare("SELECT id, email_blob FROM accounts WHERE email_skeleton_hash IS NULL")?;
        let rows = stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<crate::db::Result<_>>()?
    };
    let mut done = Backfill::default();
    for (id, blob) in rows {
        // A blob that does not open is `check`'s business; it must not stop the server starting.
        let Ok(plain) = vault.open(&blob, &email_binding(id)) else {
            done.unparsable += 1;
            continue;
        };
        let parsed = plain
            .expose_str()
            .and_then(|s| Email::parse(s).ok().map(|e| (e.as_str() == s, e)));
        let Some((same, email)) = parsed else {
            done.unparsable += 1;
            continue;
        };
        if !same {
            let sealed = vault.seal(email.as_str().as_bytes(), &email_binding(id))?;
            let changed = tx.execute(
                "UPDATE OR IGNORE accounts SET email_hash = ?2, email_blob = ?3, master_key_id = ?4
                 WHERE id = ?1",
                params![
                    id,
                    hasher.hash(&email).as_slice(),
                    sealed,
                    vault.keyring().active_id().as_str()
                ],
            )?;
            if changed == 1 {
                done.rekeyed += 1;
            } else {
                done.collisions += 1;
            }
        }
        tx.execute(
            "UPDATE accounts SET email_skeleton_hash = ?2 WHERE id = ?1",
            params![id, hasher.skeleton_hash(&email).as_slice()],
        )?;
        done.filled += 1;
    }
    Ok(done)
}

pub fn find_by_email(
    conn: &Conn<'_>,
    hasher: &EmailHasher,
    email: &Email,
) -> crate::db::Result<Option<AccountRow>> {
    conn.query_row(
        "SELECT id,
                CASE WHEN confirmed_at IS NULL OR disabled_at IS NOT NULL THEN NULL
                     ELSE password_hash END,
                confirmed_at IS NOT NULL, disabled_at IS NOT NULL
         FROM accounts WHERE email_hash = ?1",
        [hasher.hash(email).as_slice()],
        |r| {
            Ok(AccountRow {
                id: r.get(0)?,
                password_hash: r.get(1)?,
                confirmed: r.get(2)?,
                disabled: r.get(3)?,
            })
        },
    )
    .optional()
}

/// What a signed-in account's password check needs: its password hash (none for an account that
/// signs in only through OAuth) and its email hash (the throttling key).
pub fn credentials_of(
    conn: &Conn<'_>,
    account_id: i64,
) -> crate::db::Result<Option<(Option<String>, [u8; 32])>> {
    conn.query_row(
        "SELECT password_hash, email_hash FROM accounts WHERE id = ?1",
        [account_id],
        |r| {
            let hash: Vec<u8> = r.get(1)?;
            Ok((r.get(0)?, hash.try_into().unwrap_or([0u8; 32])))
        },
    )
    .optional()
}

pub fn set_password(
    conn: &Conn<'_>,
    account_id: i64,
    password_hash: &str,
) -> crate::db::Result<()> {
    conn.execute(
        "UPDATE accounts SET password_hash = ?1 WHERE id = ?2",
        params![password_hash, account_id],
    )?;
    Ok(())
}

/// The account's email, decrypted (for sending mail and showing the signed-in user).
pub fn email_of(
    conn: &Conn<'_>,
    vault: &Vault,
    account_id: i64,
) -> Result<Option<String>, AccountError> {
    let blob: Option<Vec<u8>> = conn
        .query_row(
            "SELECT email_blob FROM accounts WHERE id = ?1",
            [account_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(blob) = blob else { return Ok(None) };
    let plain = vault.open(&blob, &email_binding(account_id))?;
    Ok(plain.expose_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ServerSecret;
    use crate::vault::{Keyring, MasterKeyId};

    fn setup() -> (Conn<'static>, Vault, EmailHasher) {
        let conn = Conn::memory();
        let keyring = Keyring::new(
            vec![(
                MasterKeyId::parse("k1").unwrap(),
                zeroize::Zeroizing::new(vec![7; 32]),
            )],
            None,
        )
        .unwrap();
        let hasher = EmailHasher::new(ServerSecret::from_bytes(vec![1; 32]));
        (conn, Vault::new(keyring), hasher)
    }

    /// A row as an older build wrote it: keyed and sealed under `stored` verbatim, no skeleton.
    fn old_row(conn: &Conn<'_>, vault: &Vault, hasher: &EmailHasher, stored: &str) -> i64 {
        conn.execute(
            "INSERT INTO accounts (email_hash, email_blob, master_key_id, created_at, confirmed_at)
             VALUES (?1, x'', 'k1', 0, 0)",
            [hasher.hash_verbatim(stored).as_slice()],
        )
        .unwrap();
        let id: i64 = conn
            .query_row("SELECT MAX(id) FROM accounts", (), |r| r.get(0))
            .unwrap();
        let blob = vault.seal(stored.as_bytes(), &email_binding(id)).unwrap();
        conn.execute(
            "UPDATE accounts SET email_blob = ?1 WHERE id = ?2",
            params![blob, id],
        )
        .unwrap();
        id
    }

    fn skeleton_of(conn: &Conn<'_>, id: i64) -> Option<Vec<u8>> {
        conn.query_row(
            "SELECT email_skeleton_hash FROM accounts WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn backfill_rekeys_an_address_that_normalises_differently_now() {
        let (conn, vault, hasher) = setup();
        let id = old_row(&conn, &vault, &hasher, "bob@exämple.com");
        let done = backfill(&conn, &vault, &hasher).unwrap();
        assert_eq!(
            done,
            Backfill {
                filled: 1,
                rekeyed: 1,
                ..Backfill::default()
            }
        );
        let email = Email::parse("bob@xn--exmple-cua.com").unwrap();
        assert_eq!(
            find_by_email(&conn, &hasher, &email).unwrap().unwrap().id,
            id
        );
        assert_eq!(
            email_of(&conn, &vault, id).unwrap().as_deref(),
            Some("bob@xn--exmple-cua.com")
        );
        assert_eq!(
            skeleton_of(&conn, id),
            Some(hasher.skeleton_hash(&email).to_vec())
        );
        assert_eq!(
            backfill(&conn, &vault, &hasher).unwrap(),
            Backfill::default()
        );
    }

    #[test]
    fn backfill_keeps_the_old_key_when_the_new_form_is_another_accounts() {
        let (conn, vault, hasher) = setup();
        let email = Email::parse("bob@xn--exmple-cua.com").unwrap();
        let current = create_confirmed_in(&conn, &vault, &hasher, &email, None, 0).unwrap();
        let old = old_row(&conn, &vault, &hasher, "bob@exämple.com");
        let done = backfill(&conn, &vault, &hasher).unwrap();
        assert_eq!(
            done,
            Backfill {
                filled: 1,
                collisions: 1,
                ..Backfill::default()
            }
        );
        assert_eq!(
            find_by_email(&conn, &hasher, &email).unwrap().unwrap().id,
            current
        );
        assert_eq!(
            email_of(&conn, &vault, old).unwrap().as_deref(),
            Some("bob@exämple.com")
        );
    }

    #[test]
    fn backfill_leaves_an_address_that_no_longer_parses() {
        let (conn, vault, hasher) = setup();
        let id = old_row(&conn, &vault, &hasher, "\"a b\"@example.com");
        let done = backfill(&conn, &vault, &hasher).unwrap();
        assert_eq!(
            done,
            Backfill {
                unparsable: 1,
                ..Backfill::default()
            }
        );
        assert_eq!(skeleton_of(&conn, id), None);
    }

    #[test]
    fn backfill_skips_a_blob_that_does_not_open_instead_of_failing() {
        let (conn, vault, hasher) = setup();
        let broken = old_row(&conn, &vault, &hasher, "a@example.com");
        conn.execute(
            "UPDATE accounts SET email_blob = x'00' WHERE id = ?1",
            [broken],
        )
        .unwrap();
        let fine = old_row(&conn, &vault, &hasher, "b@example.com");
        let done = backfill(&conn, &vault, &hasher).unwrap();
        assert_eq!(
            done,
            Backfill {
                filled: 1,
                unparsable: 1,
                ..Backfill::default()
            }
        );
        assert_eq!(skeleton_of(&conn, broken), None);
        assert!(skeleton_of(&conn, fine).is_some());
    }

    #[test]
    fn an_unconfirmed_account_has_no_password_until_confirmed() {
        let (conn, vault, hasher) = setup();
        let email = Email::parse("new@example.com").unwrap();
        let id = create_unconfirmed_in(&conn, &vault, &hasher, &email, "$argon2id$x", 5).unwrap();
        let row = find_by_email(&conn, &hasher, &email).unwrap().unwrap();
        assert!(!row.confirmed);
        assert_eq!(row.password_hash, None);
        confirm(&conn, id, 6).unwrap();
        let row = find_by_email(&conn, &hasher, &email).unwrap().unwrap();
        assert!(row.confirmed);
        assert_eq!(row.password_hash.as_deref(), Some("$argon2id$x"));
    }

    #[test]
    fn an_oauth_confirmation_drops_the_sign_up_password() {
        let (conn, vault, hasher) = setup();
        let email = Email::parse("new@example.com").unwrap();
        let id = create_unconfirmed_in(&conn, &vault, &hasher, &email, "$argon2id$x", 5).unwrap();
        confirm_without_password(&conn, id, 6).unwrap();
        let row = find_by_email(&conn, &hasher, &email).unwrap().unwrap();
        assert!(row.confirmed);
        assert_eq!(row.password_hash, None);
    }

    #[test]
    fn a_lookalike_is_another_address_with_the_same_skeleton() {
        let (conn, vault, hasher) = setup();
        let ape = Email::parse("ape@example.com").unwrap();
        create_confirmed_in(&conn, &vault, &hasher, &ape, None, 0).unwrap();
        let cyrillic = Email::parse("\u{430}\u{440}\u{435}@example.com").unwrap();
        assert!(lookalike_exists(&conn, &hasher, &cyrillic).unwrap());
        assert!(!lookalike_exists(&conn, &hasher, &ape).unwrap(), "itself");
        let other = Email::parse("\u{430}\u{440}@example.com").unwrap();
        assert!(!lookalike_exists(&conn, &hasher, &other).unwrap());
    }
}
