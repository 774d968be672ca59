//! Accounts: rows keyed by the peppered hash of the owner's email, the email kept only as a
//! vault blob so the service can write to it.

pub mod email;
pub mod oauth;
pub mod password;
pub mod reset;
pub mod session;
pub mod throttle;

use rusqlite::{params, Connection, OptionalExtension};

use crate::vault::Vault;
use crate::vault_store::email_binding;
pub use email::{Email, EmailError, EmailHasher};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an account with this email exists")]
    Exists,
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

/// What sign-in needs to know about an account.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: i64,
    pub password_hash: Option<String>,
}

/// Creates an account. The email blob is bound to the new row's id, so the row is inserted first
/// and sealed second, inside one transaction.
pub fn create(
    conn: &mut Connection,
    vault: &Vault,
    hasher: &EmailHasher,
    email: &Email,
    password_hash: Option<&str>,
    now: i64,
) -> Result<i64, AccountError> {
    let tx = conn.transaction()?;
    let id = create_in(&tx, vault, hasher, email, password_hash, now)?;
    tx.commit()?;
    Ok(id)
}

/// [`create`] inside a transaction the caller holds (and commits).
pub fn create_in(
    tx: &Connection,
    vault: &Vault,
    hasher: &EmailHasher,
    email: &Email,
    password_hash: Option<&str>,
    now: i64,
) -> Result<i64, AccountError> {
    let inserted = tx.execute(
        "INSERT INTO accounts (email_hash, email_blob, master_key_id, password_hash, created_at)
         VALUES (?1, x'', ?2, ?3, ?4) ON CONFLICT (email_hash) DO NOTHING",
        params![
            hasher.hash(email).as_slice(),
            vault.keyring().active_id().as_str(),
            password_hash,
            now
        ],
    )?;
    if inserted == 0 {
        return Err(AccountError::Exists);
    }
    let id = tx.last_insert_rowid();
    let blob = vault.seal(email.as_str().as_bytes(), &email_binding(id))?;
    tx.execute(
        "UPDATE accounts SET email_blob = ?1 WHERE id = ?2",
        params![blob, id],
    )?;
    Ok(id)
}

pub fn find_by_email(
    conn: &Connection,
    hasher: &EmailHasher,
    email: &Email,
) -> rusqlite::Result<Option<AccountRow>> {
    conn.query_row(
        "SELECT id, password_hash FROM accounts WHERE email_hash = ?1",
        [hasher.hash(email).as_slice()],
        |r| {
            Ok(AccountRow {
                id: r.get(0)?,
                password_hash: r.get(1)?,
            })
        },
    )
    .optional()
}

/// What a signed-in account's password check needs: its password hash (none for an account that
/// signs in only through OAuth) and its email hash (the throttling key).
pub fn credentials_of(
    conn: &Connection,
    account_id: i64,
) -> rusqlite::Result<Option<(Option<String>, [u8; 32])>> {
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
    conn: &Connection,
    account_id: i64,
    password_hash: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE accounts SET password_hash = ?1 WHERE id = ?2",
        params![password_hash, account_id],
    )?;
    Ok(())
}

/// The account's email, decrypted (for sending mail and showing the signed-in user).
pub fn email_of(
    conn: &Connection,
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
