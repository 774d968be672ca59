//! Reading and writing provider-key rows. The plaintext enters only through `insert`/`replace`
//! and leaves only through `open`, as a zeroizing [`Plaintext`].

use rusqlite::{params, Connection, OptionalExtension};

use crate::db::DbError;
use crate::vault::{Binding, Plaintext, Purpose, Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("this account already has a key for that provider")]
    Exists,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(DbError::from(e))
    }
}

/// The binding of a provider-key blob: account, provider and key id.
pub fn binding<'a>(account_id: i64, provider: &'a str, key_id: &'a str) -> Binding<'a> {
    Binding {
        purpose: Purpose::ProviderKey,
        account_id,
        provider,
        row_id: key_id,
    }
}

/// A fresh, unguessable public id for a key row.
pub fn new_key_id() -> String {
    format!("key_{}", uuid::Uuid::new_v4().simple())
}

/// The non-secret columns written beside the blob.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub id: &'a str,
    pub account_id: i64,
    pub provider: &'a str,
    pub label: &'a str,
    pub masked: &'a str,
    pub fingerprint: &'a str,
    pub now: i64,
}

pub fn insert(
    conn: &Connection,
    vault: &Vault,
    key: &NewKey<'_>,
    plaintext: &[u8],
) -> Result<(), StoreError> {
    let blob = vault.seal(plaintext, &binding(key.account_id, key.provider, key.id))?;
    let inserted = conn.execute(
        "INSERT INTO provider_keys (id, account_id, provider, label, blob, master_key_id, masked, fingerprint, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (account_id, provider) DO NOTHING",
        params![
            key.id,
            key.account_id,
            key.provider,
            key.label,
            blob,
            vault.keyring().active_id().as_str(),
            key.masked,
            key.fingerprint,
            key.now
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::Exists);
    }
    Ok(())
}

/// Decrypts the account's key for `provider`, if it has one.
pub fn open(
    conn: &Connection,
    vault: &Vault,
    account_id: i64,
    provider: &str,
) -> Result<Option<(String, Plaintext)>, StoreError> {
    let row: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT id, blob FROM provider_keys WHERE account_id = ?1 AND provider = ?2",
            params![account_id, provider],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((id, blob)) = row else {
        return Ok(None);
    };
    let plain = vault.open(&blob, &binding(account_id, provider, &id))?;
    Ok(Some((id, plain)))
}
