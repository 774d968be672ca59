//! Reading and writing provider-key rows. The plaintext enters only through `insert`/`replace`
//! and leaves only through `open`, as a zeroizing [`Plaintext`].

use crate::db::{Conn, Optional as _};
use crate::params;

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
    conn: &Conn<'_>,
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
    conn: &Conn<'_>,
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

/// A key row without its blob: everything the API may show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub provider: String,
    pub label: String,
    pub masked: String,
    pub fingerprint: String,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// Starts at 1, bumped by every rotation.
    pub generation: i64,
}

/// The columns of [`KeyRow`], in order; a macro so queries stay compile-time string literals.
macro_rules! row_columns {
    () => {
        "id, provider, label, masked, fingerprint, created_at, rotated_at, last_used_at, generation"
    };
}

fn key_row(r: &crate::db::Row<'_>) -> crate::db::Result<KeyRow> {
    Ok(KeyRow {
        id: r.get(0)?,
        provider: r.get(1)?,
        label: r.get(2)?,
        masked: r.get(3)?,
        fingerprint: r.get(4)?,
        created_at: r.get(5)?,
        rotated_at: r.get(6)?,
        last_used_at: r.get(7)?,
        generation: r.get(8)?,
    })
}

/// The account's keys, oldest first.
pub fn list(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<Vec<KeyRow>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        row_columns!(),
        " FROM provider_keys WHERE account_id = ?1 ORDER BY created_at, rowid"
    ))?;
    let rows = stmt.query_map([account_id], key_row)?;
    rows.collect()
}

/// The key `id` if it belongs to `account_id`. Another account's id is simply not found.
pub fn get(conn: &Conn<'_>, account_id: i64, id: &str) -> crate::db::Result<Option<KeyRow>> {
    conn.query_row(
        concat!(
            "SELECT ",
            row_columns!(),
            " FROM provider_keys WHERE id = ?1 AND account_id = ?2"
        ),
        params![id, account_id],
        key_row,
    )
    .optional()
}

/// The account's key for `provider`, if any (to point a duplicate add at it).
pub fn find_by_provider(
    conn: &Conn<'_>,
    account_id: i64,
    provider: &str,
) -> crate::db::Result<Option<KeyRow>> {
    conn.query_row(
        concat!(
            "SELECT ",
            row_columns!(),
            " FROM provider_keys WHERE account_id = ?1 AND provider = ?2"
        ),
        params![account_id, provider],
        key_row,
    )
    .optional()
}

/// The new public columns of a rotated key.
#[derive(Debug, Clone)]
pub struct Rotation<'a> {
    pub masked: &'a str,
    pub fingerprint: &'a str,
    pub now: i64,
}

/// Replaces the blob of `row` (already loaded for this account) in one UPDATE, so a reader sees
/// the old key or the new one, never a mix; bumps `generation` and sets `rotated_at`. The key
/// id, and so the blob's binding, stay the same.
pub fn rotate(
    conn: &Conn<'_>,
    vault: &Vault,
    account_id: i64,
    row: &KeyRow,
    rotation: &Rotation<'_>,
    plaintext: &[u8],
) -> Result<KeyRow, StoreError> {
    let blob = vault.seal(plaintext, &binding(account_id, &row.provider, &row.id))?;
    conn.execute(
        "UPDATE provider_keys SET blob = ?1, master_key_id = ?2, masked = ?3, fingerprint = ?4,
             rotated_at = ?5, generation = generation + 1
         WHERE id = ?6 AND account_id = ?7",
        params![
            blob,
            vault.keyring().active_id().as_str(),
            rotation.masked,
            rotation.fingerprint,
            rotation.now,
            row.id,
            account_id
        ],
    )?;
    crate::invalidate::keys_changed(conn, account_id)?;
    get(conn, account_id, &row.id)?.ok_or(StoreError::Db(DbError::NoRows))
}

/// Sets the label of the account's key `id`.
pub fn set_label(conn: &Conn<'_>, account_id: i64, id: &str, label: &str) -> crate::db::Result<()> {
    conn.execute(
        "UPDATE provider_keys SET label = ?1 WHERE id = ?2 AND account_id = ?3",
        params![label, id, account_id],
    )?;
    Ok(())
}

/// Deletes the account's key `id`; false when there was none.
pub fn delete(conn: &Conn<'_>, account_id: i64, id: &str) -> crate::db::Result<bool> {
    let n = conn.execute(
        "DELETE FROM provider_keys WHERE id = ?1 AND account_id = ?2",
        params![id, account_id],
    )?;
    if n == 1 {
        crate::invalidate::keys_changed(conn, account_id)?;
    }
    Ok(n == 1)
}

/// Decrypts the account's key `id`.
pub fn open_by_id(
    conn: &Conn<'_>,
    vault: &Vault,
    account_id: i64,
    id: &str,
) -> Result<Option<(KeyRow, Plaintext)>, StoreError> {
    let row: Option<(KeyRow, Vec<u8>)> = conn
        .query_row(
            concat!(
                "SELECT ",
                row_columns!(),
                ", blob FROM provider_keys WHERE id = ?1 AND account_id = ?2"
            ),
            params![id, account_id],
            |r| Ok((key_row(r)?, r.get(9)?)),
        )
        .optional()?;
    let Some((row, blob)) = row else {
        return Ok(None);
    };
    let plain = vault.open(&blob, &binding(account_id, &row.provider, &row.id))?;
    Ok(Some((row, plain)))
}

/// The sealed key of (`account_id`, `provider`) and its id, without opening it.
pub fn load_blob(
    conn: &Conn<'_>,
    account_id: i64,
    provider: &str,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, blob FROM provider_keys WHERE account_id = ?1 AND provider = ?2",
        )?
        .query_row(params![account_id, provider], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}
