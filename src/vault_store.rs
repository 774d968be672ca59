//! Where the vault meets the database: the start-up canary, which master key ids rows are sealed
//! with, and `rewrap`, which moves every row to the active master key.

use crate::db::{Conn, Optional as _};
use crate::params;
use serde::Serialize;

use crate::db::DbError;
use crate::vault::{Binding, Purpose, Vault, VaultError};

const CANARY_PLAINTEXT: &[u8] = b"keybroker vault canary v1";
const CANARY_BINDING: Binding<'static> = Binding {
    purpose: Purpose::Canary,
    account_id: 0,
    provider: "",
    row_id: "canary",
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the master key does not match this database: the vault canary failed to decrypt ({0}). Refusing to start rather than serve garbage; check KEYBROKER_MASTER_KEY(S)")]
    CanaryFailed(VaultError),
    #[error("{count} stored value(s) are sealed with master key id {id:?}, which is not configured. Keep it in KEYBROKER_MASTER_KEYS until `keybroker rewrap` has moved them")]
    MissingKeyId { id: String, count: u64 },
    #[error("{count} stored value(s) still use master key id {id:?}; run `keybroker rewrap` before retiring it")]
    StillInUse { id: String, count: u64 },
}

/// Writes the canary on a fresh database; on an existing one, decrypts it. A wrong master key
/// makes this fail, so the service refuses to start.
pub fn check_or_create_canary(conn: &Conn<'_>, vault: &Vault) -> Result<(), StoreError> {
    let blob: Option<Vec<u8>> = conn
        .query_row("SELECT blob FROM vault_canary WHERE id = 1", (), |r| {
            r.get(0)
        })
        .optional()?;
    match blob {
        Some(blob) => {
            let plain = vault
                .open(&blob, &CANARY_BINDING)
                .map_err(StoreError::CanaryFailed)?;
            if plain.expose() != CANARY_PLAINTEXT {
                return Err(StoreError::CanaryFailed(VaultError::Unauthentic));
            }
            Ok(())
        }
        None => {
            let blob = vault
                .seal(CANARY_PLAINTEXT, &CANARY_BINDING)
                .map_err(StoreError::CanaryFailed)?;
            conn.execute(
                "INSERT INTO vault_canary (id, master_key_id, blob) VALUES (1, ?1, ?2)",
                params![vault.keyring().active_id().as_str(), blob],
            )?;
            Ok(())
        }
    }
}

/// Decrypts the canary (for `/readyz` and `keybroker check`).
pub fn canary_ok(conn: &Conn<'_>, vault: &Vault) -> bool {
    let blob: Option<Vec<u8>> = conn
        .query_row("SELECT blob FROM vault_canary WHERE id = 1", (), |r| {
            r.get(0)
        })
        .optional()
        .ok()
        .flatten();
    blob.and_then(|b| vault.open(&b, &CANARY_BINDING).ok())
        .is_some_and(|p| p.expose() == CANARY_PLAINTEXT)
}

/// Every table that holds vault blobs, with the SQL to read and update them.
struct BlobTable {
    name: &'static str,
    /// Selects `(rowid key as text, account_id, provider, blob)` of rows not under `?1`, after `?2`.
    select: &'static str,
    update: &'static str,
    purpose: Purpose,
}

const TABLES: &[BlobTable] = &[
    BlobTable {
        name: "vault_canary",
        select: "SELECT 'canary', 0, '', blob FROM vault_canary WHERE master_key_id != ?1 AND 'canary' > ?2 LIMIT ?3",
        update: "UPDATE vault_canary SET blob = ?1, master_key_id = ?2 WHERE id = 1 AND blob = ?3",
        purpose: Purpose::Canary,
    },
    // The row key is the id zero-padded to 20 digits (text order = id order), written so that
    // SQLite and PostgreSQL both run it.
    BlobTable {
        name: "accounts",
        select: "SELECT substr('00000000000000000000' || CAST(id AS TEXT), length(CAST(id AS TEXT)) + 1), id, '', email_blob FROM accounts
                 WHERE master_key_id != ?1 AND substr('00000000000000000000' || CAST(id AS TEXT), length(CAST(id AS TEXT)) + 1) > ?2 ORDER BY id LIMIT ?3",
        update: "UPDATE accounts SET email_blob = ?1, master_key_id = ?2 WHERE substr('00000000000000000000' || CAST(id AS TEXT), length(CAST(id AS TEXT)) + 1) = ?4 AND email_blob = ?3",
        purpose: Purpose::AccountEmail,
    },
    BlobTable {
        name: "provider_keys",
        select: "SELECT id, account_id, provider, blob FROM provider_keys
                 WHERE master_key_id != ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        update: "UPDATE provider_keys SET blob = ?1, master_key_id = ?2 WHERE id = ?4 AND blob = ?3",
        purpose: Purpose::ProviderKey,
    },
    // A queued mail has two blobs, each with its own key id column, so each is moved on its own.
    BlobTable {
        name: "mail_queue (recipient)",
        select: "SELECT id, 0, '', to_blob FROM mail_queue
                 WHERE to_master_key_id != ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        update: "UPDATE mail_queue SET to_blob = ?1, to_master_key_id = ?2 WHERE id = ?4 AND to_blob = ?3",
        purpose: Purpose::MailTo,
    },
    BlobTable {
        name: "mail_queue (body)",
        select: "SELECT id, 0, '', body_blob FROM mail_queue
                 WHERE body_master_key_id != ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        update: "UPDATE mail_queue SET body_blob = ?1, body_master_key_id = ?2 WHERE id = ?4 AND body_blob = ?3",
        purpose: Purpose::MailBody,
    },
    BlobTable {
        name: "webhooks",
        select: "SELECT substr('00000000000000000000' || CAST(account_id AS TEXT), length(CAST(account_id AS TEXT)) + 1), account_id, '', secret_blob FROM webhooks
                 WHERE secret_master_key_id != ?1 AND substr('00000000000000000000' || CAST(account_id AS TEXT), length(CAST(account_id AS TEXT)) + 1) > ?2 ORDER BY account_id LIMIT ?3",
        update: "UPDATE webhooks SET secret_blob = ?1, secret_master_key_id = ?2 WHERE substr('00000000000000000000' || CAST(account_id AS TEXT), length(CAST(account_id AS TEXT)) + 1) = ?4 AND secret_blob = ?3",
        purpose: Purpose::WebhookSecret,
    },
];

/// The binding a row of `table` was sealed with.
fn binding<'a>(
    purpose: Purpose,
    row_id: &'a str,
    account_id: i64,
    provider: &'a str,
) -> Binding<'a> {
    match purpose {
        Purpose::Canary => CANARY_BINDING,
        Purpose::AccountEmail => Binding {
            purpose,
            account_id,
            provider: "",
            row_id: "email",
        },
        Purpose::ProviderKey => Binding {
            purpose,
            account_id,
            provider,
            row_id,
        },
        Purpose::MailTo | Purpose::MailBody => mail_binding(purpose, row_id),
        Purpose::WebhookSecret => webhook_binding(account_id),
    }
}

/// The binding of a queued mail's recipient ([`Purpose::MailTo`]) or body
/// ([`Purpose::MailBody`]): the row's id, so neither opens on another row or in the other column.
pub fn mail_binding(purpose: Purpose, mail_id: &str) -> Binding<'_> {
    Binding {
        purpose,
        account_id: 0,
        provider: "",
        row_id: mail_id,
    }
}

/// The binding of an account's webhook secret: the account (one webhook each), so a secret
/// copied onto another account's row does not open.
pub fn webhook_binding(account_id: i64) -> Binding<'static> {
    Binding {
        purpose: Purpose::WebhookSecret,
        account_id,
        provider: "",
        row_id: "webhook",
    }
}

/// The binding for an account's email blob.
pub fn email_binding(account_id: i64) -> Binding<'static> {
    Binding {
        purpose: Purpose::AccountEmail,
        account_id,
        provider: "",
        row_id: "email",
    }
}

/// How many stored values each master key id seals.
pub fn key_id_usage(conn: &Conn<'_>) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT master_key_id, CAST(SUM(n) AS BIGINT) FROM (
            SELECT master_key_id, COUNT(*) AS n FROM vault_canary GROUP BY master_key_id
            UNION ALL SELECT master_key_id, COUNT(*) FROM accounts GROUP BY master_key_id
            UNION ALL SELECT master_key_id, COUNT(*) FROM provider_keys GROUP BY master_key_id
            UNION ALL SELECT to_master_key_id, COUNT(*) FROM mail_queue GROUP BY to_master_key_id
            UNION ALL SELECT body_master_key_id, COUNT(*) FROM mail_queue GROUP BY body_master_key_id
            UNION ALL SELECT secret_master_key_id, COUNT(*) FROM webhooks GROUP BY secret_master_key_id
         ) AS used GROUP BY master_key_id ORDER BY master_key_id",
    )?;
    let rows = stmt.query_map((), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Refuses to run when rows are sealed under a master key id the keyring does not have.
pub fn check_key_ids_present(conn: &Conn<'_>, vault: &Vault) -> Result<(), StoreError> {
    for (id, count) in key_id_usage(conn)? {
        let known =
            crate::vault::MasterKeyId::parse(&id).is_ok_and(|id| vault.keyring().contains(&id));
        if !known {
            return Err(StoreError::MissingKeyId { id, count });
        }
    }
    Ok(())
}

/// Succeeds only when no stored value uses `id`, so it can be removed from the keyring.
pub fn check_retirable(conn: &Conn<'_>, id: &str) -> Result<(), StoreError> {
    let count = key_id_usage(conn)?
        .into_iter()
        .find(|(k, _)| k == id)
        .map_or(0, |(_, n)| n);
    if count > 0 {
        return Err(StoreError::StillInUse {
            id: id.to_owned(),
            count,
        });
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RewrapReport {
    /// Values re-encrypted under the active key, per table.
    pub rewrapped: Vec<(String, u64)>,
    /// Values that did not decrypt (left as they were), per table.
    pub failed: Vec<(String, u64)>,
    /// Values that changed while we worked on them; a later run picks them up.
    pub skipped: u64,
}

impl RewrapReport {
    pub fn total_rewrapped(&self) -> u64 {
        self.rewrapped.iter().map(|(_, n)| n).sum()
    }

    pub fn total_failed(&self) -> u64 {
        self.failed.iter().map(|(_, n)| n).sum()
    }
}

/// Re-encrypts every value not under the active master key, `batch` rows per transaction, so an
/// interrupted run keeps what it did and the next run carries on. Runs beside a live server:
/// each update is conditional on the blob being unchanged, so a concurrent rotation wins.
pub fn rewrap_all(conn: &Conn<'_>, vault: &Vault, batch: u32) -> Result<RewrapReport, StoreError> {
    let active = vault.keyring().active_id().as_str().to_owned();
    let mut report = RewrapReport::default();
    for table in TABLES {
        let (mut done, mut failed) = (0u64, 0u64);
        let mut after = String::new();
        loop {
            let tx = conn;
            let rows: Vec<(String, i64, String, Vec<u8>)> = {
                let mut stmt = tx.prepare(table.select)?;
                let rows = stmt.query_map(params![active, after, batch], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let Some(last) = rows.last() else { break };
            after = last.0.clone();
            for (row_id, account_id, provider, blob) in &rows {
                let b = binding(table.purpose, row_id, *account_id, provider);
                match vault.rewrap(blob, &b) {
                    Ok(new_blob) => {
                        let changed = if table.purpose == Purpose::Canary {
                            tx.execute(table.update, params![new_blob, active, blob])?
                        } else {
                            tx.execute(table.update, params![new_blob, active, blob, row_id])?
                        };
                        if changed == 1 {
                            done += 1;
                        } else {
                            report.skipped += 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!(table = table.name, row = %row_id, error = %e, "rewrap: value did not decrypt; left unchanged");
                        failed += 1;
                    }
                }
            }
        }
        report.rewrapped.push((table.name.to_owned(), done));
        report.failed.push((table.name.to_owned(), failed));
    }
    Ok(report)
}

/// How the stored values of one table opened, for `keybroker check` and `restore`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOpened {
    pub table: &'static str,
    pub opened: u64,
    pub failed: u64,
    /// The row key of the first value that did not open (never its contents).
    pub first_failed: Option<String>,
}

/// Opens every stored value with its row binding and drops the plaintext at once (a
/// [`crate::vault::Plaintext`] is zeroized on drop and nothing here reads it). Only an
/// authenticated decryption proves that a value is recoverable: a header names a key id, but a
/// flipped bit, a blob moved to another row or a key configured under the wrong id shows only here.
/// Read-only; pages through each table so memory stays small.
pub fn open_all(conn: &Conn<'_>, vault: &Vault) -> Result<Vec<TableOpened>, StoreError> {
    const PAGE: u32 = 500;
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let mut report = TableOpened {
            table: table.name,
            opened: 0,
            failed: 0,
            first_failed: None,
        };
        let mut after = String::new();
        let mut stmt = conn.prepare(table.select)?;
        loop {
            // No master key id is empty, so `!= ''` selects every row.
            let rows: Vec<(String, i64, String, Vec<u8>)> = stmt
                .query_map(params!["", after, PAGE], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last() else { break };
            after = last.0.clone();
            for (row_id, account_id, provider, blob) in &rows {
                let b = binding(table.purpose, row_id, *account_id, provider);
                if vault.open(blob, &b).is_ok() {
                    report.opened += 1;
                } else {
                    report.failed += 1;
                    report.first_failed.get_or_insert_with(|| row_id.clone());
                }
            }
        }
        out.push(report);
    }
    Ok(out)
}
