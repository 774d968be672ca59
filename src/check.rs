//! `keybroker check`: is this database sound and does the configured keyring open it? Each check
//! prints one line; any failure makes the command exit non-zero. The same checks vet a backup in
//! `keybroker restore` before the live database is touched. Read-only, so it is safe beside a
//! running server.

use std::fmt;
use std::path::Path;

use crate::db::{Conn, Location};

use crate::accounts::{Email, EmailHasher};
use crate::config::{self, Missing, SecretSources, ServerSecrets};
use crate::vault::Vault;
use crate::vault_store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    /// Could not be run (a secret it needs is not configured); not a failure.
    Skipped,
}

/// One check's outcome: a name and a line of detail that never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub status: Status,
    pub name: &'static str,
    pub detail: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok  ",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        };
        write!(f, "{status} {}: {}", self.name, self.detail)
    }
}

fn line(name: &'static str, result: Result<String, String>) -> Line {
    match result {
        Ok(detail) => Line {
            status: Status::Ok,
            name,
            detail,
        },
        Err(detail) => Line {
            status: Status::Fail,
            name,
            detail,
        },
    }
}

/// What the checks need beside the database: the keyring and (if configured) the email pepper.
pub struct Secrets {
    pub vault: Result<Vault, String>,
    pub emails: Result<EmailHasher, String>,
}

impl Secrets {
    /// From the environment or the data directory's development files; nothing is generated.
    pub fn resolve(sources: &SecretSources, data_dir: &Path) -> Self {
        Self {
            vault: config::resolve_keyring(sources, data_dir, Missing::Refuse)
                .map(Vault::new)
                .map_err(|e| e.to_string()),
            emails: ServerSecrets::resolve(sources, data_dir, Missing::Refuse)
                .map(|s| EmailHasher::new(s.email_pepper))
                .map_err(|e| e.to_string()),
        }
    }
}

/// Runs every check on `conn`, in order, and returns one line each.
pub fn run(conn: &Conn<'_>, secrets: &Secrets) -> Vec<Line> {
    let mut lines = vec![
        line("integrity", integrity(conn)),
        line("schema", schema(conn)),
    ];
    match &secrets.vault {
        Ok(vault) => {
            lines.push(line("canary", canary(conn, vault)));
            lines.push(line("master key ids", key_ids(conn, vault)));
            lines.push(line("stored values", stored_values(conn, vault)));
            lines.push(match &secrets.emails {
                Ok(hasher) => line("email pepper", email_pepper(conn, vault, hasher)),
                Err(e) => Line {
                    status: Status::Skipped,
                    name: "email pepper",
                    detail: e.clone(),
                },
            });
        }
        Err(e) => lines.push(Line {
            status: Status::Fail,
            name: "master key",
            detail: e.clone(),
        }),
    }
    lines.push(line("audit chain", audit(conn)));
    lines
}

pub fn all_ok(lines: &[Line]) -> bool {
    lines.iter().all(|l| l.status != Status::Fail)
}

fn integrity(conn: &Conn<'_>) -> Result<String, String> {
    let (what, problems) = conn.integrity_problems().map_err(|e| e.to_string())?;
    match problems.as_slice() {
        [] => Ok(format!("{what}: ok")),
        [first, ..] => Err(format!("{} problem(s), first: {first}", problems.len())),
    }
}

fn schema(conn: &Conn<'_>) -> Result<String, String> {
    let (version, known) = conn.schema_version().map_err(|e| e.to_string())?;
    if version > known {
        Err(format!(
            "schema version {version} is newer than this binary's {known}"
        ))
    } else if version == 0 {
        Err("schema version 0: not a keybroker database".into())
    } else if version < known {
        Ok(format!(
            "schema version {version} (this binary migrates it to {known} at the next start)"
        ))
    } else {
        Ok(format!("schema version {version}"))
    }
}

fn canary(conn: &Conn<'_>, vault: &Vault) -> Result<String, String> {
    if vault_store::canary_ok(conn, vault) {
        Ok("decrypts with the configured master key".into())
    } else {
        Err("the vault canary does not decrypt with the configured master key(s)".into())
    }
}

fn key_ids(conn: &Conn<'_>, vault: &Vault) -> Result<String, String> {
    vault_store::check_key_ids_present(conn, vault).map_err(|e| e.to_string())?;
    let usage = vault_store::key_id_usage(conn).map_err(|e| e.to_string())?;
    let listed: Vec<String> = usage.iter().map(|(id, n)| format!("{id}: {n}")).collect();
    Ok(format!("all configured ({})", listed.join(", ")))
}

fn stored_values(conn: &Conn<'_>, vault: &Vault) -> Result<String, String> {
    let tables = vault_store::open_all(conn, vault).map_err(|e| e.to_string())?;
    let opened: u64 = tables.iter().map(|t| t.opened).sum();
    let failed: Vec<String> = tables
        .iter()
        .filter(|t| t.failed > 0)
        .map(|t| {
            format!(
                "{}: {} (first: {})",
                t.table,
                t.failed,
                t.first_failed.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(format!("{opened} value(s) open with their row binding"))
    } else {
        Err(format!(
            "{opened} open, these do not: {}",
            failed.join("; ")
        ))
    }
}

/// The newest account's email, decrypted and hashed with the configured pepper, must give the
/// hash its row is keyed by; with another pepper nobody could sign in.
fn email_pepper(conn: &Conn<'_>, vault: &Vault, hasher: &EmailHasher) -> Result<String, String> {
    let newest: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT id, email_hash FROM accounts ORDER BY id DESC LIMIT 1",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            crate::db::DbError::NoRows => Ok(None),
            e => Err(e),
        })
        .map_err(|e| e.to_string())?;
    let Some((id, stored_hash)) = newest else {
        return Ok("no accounts yet".into());
    };
    let email = crate::accounts::email_of(conn, vault, id)
        .map_err(|e| e.to_string())?
        .and_then(|e| Email::parse(&e).ok())
        .ok_or_else(|| format!("account {id}: its email does not decrypt"))?;
    if hasher.hash(&email).as_slice() == stored_hash.as_slice() {
        Ok("matches the accounts' keys".into())
    } else {
        Err("KEYBROKER_EMAIL_PEPPER does not match this database: nobody could sign in".into())
    }
}

fn audit(conn: &Conn<'_>) -> Result<String, String> {
    let report = crate::audit::verify(conn).map_err(|e| e.to_string())?;
    match report.first_broken {
        None => Ok(format!(
            "{} chain(s), {} entries verify",
            report.chains, report.entries
        )),
        Some(b) => Err(format!("BROKEN: {b}")),
    }
}

/// `keybroker check`: one line per check on stdout; an error when any failed.
pub fn check_command(
    location: &Location,
    data_dir: &Path,
    sources: &SecretSources,
) -> anyhow::Result<()> {
    let secrets = Secrets::resolve(sources, data_dir);
    let lines = crate::db::inspect(location, |conn| run(conn, &secrets))?;
    for line in &lines {
        println!("{line}");
    }
    let failed = lines.iter().filter(|l| l.status == Status::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}
