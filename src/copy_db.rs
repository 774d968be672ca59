//! `keybroker copy-db`: moves a SQLite data directory's database into an empty PostgreSQL
//! database, every row as it is, then runs `check` on the copy. Sealed values are copied
//! byte for byte, never opened: each is bound to its row id by the AEAD's associated data
//! (`vault_store`), so every id, rowid included, is kept.
//!
//! Refused, with nothing written anywhere: while a server runs on the data directory (its lock,
//! `data_lock`, is held for the whole copy, so none can start either); when the SQLite database
//! is not at this binary's schema, has a table this binary does not know, holds spend holds not
//! yet settled, or does not pass `check` with the configured secrets; and when the target is not
//! empty. The source is read in one transaction (one snapshot), the target written in one (all
//! or nothing).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

use crate::check::{self, Secrets};
use crate::config::SecretSources;
use crate::db::{self, Conn, Db, Location, Owned, PgSettings};

/// One table to copy: what to read from SQLite and write to PostgreSQL (the same columns on
/// both, named in the macro below so no SQL is assembled at run time).
struct Table {
    name: &'static str,
    select: &'static str,
    insert: &'static str,
    count: &'static str,
    columns: usize,
    /// Moves an identity column's sequence past the copied ids, so the next row PostgreSQL
    /// numbers does not collide with one copied.
    reseed: Option<&'static str>,
}

/// One `, ?` per column after the first.
macro_rules! placeholder {
    ($col:ident) => {
        ", ?"
    };
}

/// `table!(name: col, …)`, with `; reseed col` for an identity column whose sequence must move
/// past the copied ids, and `; overriding reseed col` when that column is `GENERATED ALWAYS` on
/// PostgreSQL (the copied values must override the sequence).
macro_rules! table {
    ($name:ident: $($col:ident),+ ; overriding reseed $seq:ident) => {
        table!(@make $name, " OVERRIDING SYSTEM VALUE", Some(table!(@reseed $name $seq)), $($col),+)
    };
    ($name:ident: $($col:ident),+ ; reseed $seq:ident) => {
        table!(@make $name, "", Some(table!(@reseed $name $seq)), $($col),+)
    };
    ($name:ident: $($col:ident),+) => {
        table!(@make $name, "", None, $($col),+)
    };
    (@make $name:ident, $overriding:literal, $reseed:expr, $first:ident $(, $col:ident)*) => {
        Table {
            name: stringify!($name),
            select: concat!(
                "SELECT ", stringify!($first), $(", ", stringify!($col),)* " FROM ", stringify!($name)
            ),
            insert: concat!(
                "INSERT INTO ", stringify!($name), " (", stringify!($first), $(", ", stringify!($col),)* ")",
                $overriding, " VALUES (?", $(placeholder!($col),)* ")"
            ),
            count: concat!("SELECT COUNT(*) FROM ", stringify!($name)),
            columns: [stringify!($first), $(stringify!($col)),*].len(),
            reseed: $reseed,
        }
    };
    (@reseed $name:ident $seq:ident) => {
        concat!(
            "SELECT setval(pg_get_serial_sequence('", stringify!($name), "', '", stringify!($seq),
            "'), COALESCE(MAX(", stringify!($seq), "), 0) + 1, false) FROM ", stringify!($name)
        )
    };
}

/// Every table of the schema (SQLite's migrations 0001–0011 and 0014, PostgreSQL's 0001–0003 and 0006), parents before
/// the tables whose foreign keys point at them.
const TABLES: &[Table] = &[
    table!(vault_canary: id, master_key_id, blob),
    table!(accounts: id, email_hash, email_blob, master_key_id, password_hash, created_at,
        confirmed_at, email_skeleton_hash, disabled_at, last_login_at, is_operator; reseed id),
    table!(sessions: id_hash, public_id, account_id, created_at, last_seen_at, reauth_until,
        user_agent, client_addr),
    table!(provider_keys: id, account_id, provider, label, blob, master_key_id, masked,
        fingerprint, created_at, rotated_at, last_used_at, generation, rowid;
        overriding reseed rowid),
    table!(audit_log: id, chain, seq, at, actor, action, resource, request_id, client_addr,
        outcome, prev_hash, hash, detail; reseed id),
    table!(password_reset_tokens: token_hash, account_id, created_at, expires_at, used_at),
    table!(oauth_identities: provider, subject, account_id, created_at, last_login_at),
    table!(oauth_states: state_hash, provider, prelogin_hash, created_at, expires_at),
    // A child token comes after its parent (rowid order), so `parent_id` always finds its row.
    table!(tool_tokens: id, account_id, name, token_hash, created_at, expires_at, revoked_at,
        last_used_at, parent_id, depth, carve_micros, carve_period_start, carve_returned_at,
        rowid, methods, paths; overriding reseed rowid),
    table!(tool_token_providers: token_id, provider),
    table!(spend: account_id, provider, limit_micros, period, period_start, spent_micros,
        alert_percents, alerted_percent, alerted_period_start),
    table!(spend_holds: instance_id, id, account_id, provider, amount_micros, period_start, created_at),
    table!(usage_hourly: account_id, provider, hour, calls, refused, failed, input_tokens,
        cached_input_tokens, output_tokens, reasoning_tokens, spend_micros, fallback_priced),
    table!(usage_hourly_by_token: account_id, hour, provider, token_id, agent, calls, refused,
        failed, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, spend_micros,
        fallback_priced),
    table!(recent_calls: id, account_id, provider, at, method, route, status, outcome, model,
        input_tokens, output_tokens, cost_micros, request_id, token_id, latency_ms, agent; reseed id),
    table!(spend_journal_state: id, epoch, committed_seq),
    table!(signup_tokens: token_hash, account_id, created_at, expires_at, used_at),
    table!(signup_invites: token_hash, email_hash, created_at, expires_at, used_at),
    // Mail not yet sent: copied sealed, so the PostgreSQL instances send it. A claim left by a
    // server that was killed mid-send expires as it would have on SQLite.
    table!(mail_queue: id, kind, subject, to_blob, to_master_key_id, body_blob,
        body_master_key_id, created_at, attempts, next_attempt_at, claimed_by, claimed_until),
    // The secret is copied sealed (bound to the account id, which is kept).
    table!(webhooks: account_id, url, secret_blob, secret_master_key_id, created_at, updated_at),
    table!(webhook_deliveries: id, account_id, event, body, created_at, status, attempts,
        next_attempt_at, claimed_by, claimed_until, last_attempt_at, last_status_code, last_error),
];

/// Runtime state of several instances sharing PostgreSQL (which instance is active, ceiling
/// leases): meaningless in a SQLite file, rebuilt by the instances themselves. Not copied.
const INSTANCE_STATE: &[&str] = &["keybroker_instances", "spend_leases"];

/// The hold journal's folder in a data directory (`Settings::spend_journal_dir`).
const JOURNAL_DIR: &str = "spend-journal";

/// What was copied: rows per table, in copy order.
#[derive(Debug, Default)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
}

/// `keybroker copy-db`: copies `<data_dir>/keybroker.db` into `target`, prints a line per table
/// and the copy's `check`, and fails when anything was refused or a check failed.
pub fn copy_db_command(
    data_dir: &Path,
    target: &PgSettings,
    sources: &SecretSources,
) -> anyhow::Result<()> {
    let source = data_dir.join(crate::backup::DB_FILE);
    if !source.is_file() {
        bail!(
            "no SQLite database at {} (set --data-dir to the directory `serve` used)",
            source.display()
        );
    }
    let _lock = crate::data_lock::DataDirLock::acquire(data_dir)?;
    let secrets = Secrets::resolve(sources, data_dir);
    let copied = copy(&source, data_dir, target, &secrets)?;
    for (table, n) in &copied.tables {
        println!("copied {n} row(s) of {table}");
    }
    println!("checking the copy at {}:", target.shown());
    let lines = db::inspect(&Location::Postgres(target.clone()), |conn| {
        check::run(conn, &secrets)
    })?;
    for line in &lines {
        println!("{line}");
    }
    if !check::all_ok(&lines) {
        bail!(
            "the copy at {} was written but does not pass `keybroker check` (see above); do not \
             serve from it",
            target.shown()
        );
    }
    println!(
        "done: serve from {} with KEYBROKER_DATABASE_URL and the same secrets; stop using {}",
        target.shown(),
        source.display()
    );
    Ok(())
}

/// Reads the SQLite file at `source` in one transaction and writes it into `target` in one.
pub fn copy(
    source: &Path,
    data_dir: &Path,
    target: &PgSettings,
    secrets: &Secrets,
) -> anyhow::Result<Copied> {
    db::inspect(&Location::Sqlite(source.to_owned()), |src| {
        // One snapshot for every read below, even if something wrote the file meanwhile.
        src.execute_batch("BEGIN")?;
        let copied = copy_from(src, data_dir, target, secrets);
        // Read-only: nothing to undo, only the snapshot to let go of.
        let ended = src.execute_batch("ROLLBACK");
        let copied = copied?;
        ended?;
        Ok(copied)
    })?
}

fn copy_from(
    src: &Conn<'_>,
    data_dir: &Path,
    target: &PgSettings,
    secrets: &Secrets,
) -> anyhow::Result<Copied> {
    source_is_copyable(src, &data_dir.join(JOURNAL_DIR))?;
    let lines = check::run(src, secrets);
    if !check::all_ok(&lines) {
        let failed: Vec<String> = lines
            .iter()
            .filter(|l| l.status == check::Status::Fail)
            .map(ToString::to_string)
            .collect();
        bail!(
            "the SQLite database does not pass `keybroker check` with the configured secrets, so \
             nothing was copied: {}",
            failed.join("; ")
        );
    }
    db::inspect(&Location::Postgres(target.clone()), |conn| {
        target_is_empty_before_migration(conn, target)
    })??;
    let dst = Db::connect_postgres(target)?;
    dst.write_blocking(|dst| -> anyhow::Result<Copied> {
        target_is_empty(dst, target)?;
        // The migration seeds the journal's state row; the source's replaces it.
        dst.execute("DELETE FROM spend_journal_state", ())?;
        let mut copied = Copied::default();
        for table in TABLES {
            let n =
                copy_table(src, dst, table).map_err(|e| anyhow!("copying {}: {e}", table.name))?;
            copied.tables.push((table.name, n));
        }
        Ok(copied)
    })
}

/// Copies every row of `table`; how many.
fn copy_table(src: &Conn<'_>, dst: &Conn<'_>, table: &Table) -> db::Result<u64> {
    let mut n = 0u64;
    let mut insert = dst.prepare_cached(table.insert)?;
    src.for_each(table.select, (), |row| {
        let values = (0..table.columns)
            .map(|i| row.get::<_, Owned>(i))
            .collect::<db::Result<Vec<Owned>>>()?;
        insert.execute(values)?;
        n += 1;
        Ok(())
    })?;
    if let Some(reseed) = table.reseed {
        dst.query_row(reseed, (), |r| r.get::<_, i64>(0))?;
    }
    Ok(n)
}

/// The source is this binary's schema, holds only tables it knows, and has no spend hold that a
/// start of `serve` would still have to charge.
fn source_is_copyable(src: &Conn<'_>, journal_dir: &Path) -> anyhow::Result<()> {
    let (version, known) = src.schema_version()?;
    if version != known {
        bail!(
            "the SQLite database is at schema version {version} and this binary's is {known}: {}",
            if version < known {
                "start and stop `keybroker serve` on it once to migrate it, then copy again"
            } else {
                "use the keybroker that wrote it"
            }
        );
    }
    let names: Vec<String> = src.query_all(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
        (),
        |r| r.get(0),
    )?;
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !TABLES.iter().any(|t| t.name == *n) && !INSTANCE_STATE.contains(n))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "the SQLite database has table(s) this binary does not copy ({}), so nothing was \
             copied",
            unknown.join(", ")
        );
    }
    let unsettled = unsettled_holds(src, journal_dir)?;
    if unsettled > 0 {
        bail!(
            "the SQLite database has {unsettled} spend hold(s) left by a server that did not \
             stop cleanly; start and stop `keybroker serve` on this data directory once (it \
             charges them), then copy again"
        );
    }
    Ok(())
}

/// Holds a start of `serve` would charge (`spend::store::recover_and_load`): those still open
/// in `spend_holds`, and those in the hold journal above the last committed sequence number.
fn unsettled_holds(src: &Conn<'_>, journal_dir: &Path) -> anyhow::Result<u64> {
    let open: i64 = src.query_row("SELECT COUNT(*) FROM spend_holds", (), |r| r.get(0))?;
    let (epoch, committed): (i64, i64) = src
        .query_row(
            "SELECT epoch, committed_seq FROM spend_journal_state WHERE id = 1",
            (),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .or_else(|e| match e {
            db::DbError::NoRows => Ok((0, 0)),
            e => Err(e),
        })?;
    let (epoch, committed) = (
        u64::try_from(epoch).unwrap_or(0),
        u64::try_from(committed).unwrap_or(0),
    );
    // Torn lines are skipped by the start-up recovery too: they hold nothing to charge.
    let (journaled, _torn) =
        crate::spend::journal::read_epoch(journal_dir, epoch).map_err(|e| {
            anyhow!(
                "cannot read the hold journal in {}: {e}",
                journal_dir.display()
            )
        })?;
    let journaled = journaled.iter().filter(|h| h.seq > committed).count();
    Ok(u64::try_from(open).unwrap_or(0) + journaled as u64)
}

/// Before anything is created: the target is either a database with no tables at all, or a
/// keybroker database at this binary's schema with no rows.
fn target_is_empty_before_migration(conn: &Conn<'_>, target: &PgSettings) -> anyhow::Result<()> {
    let has_schema: bool = conn.query_row(
        "SELECT to_regclass('keybroker_schema') IS NOT NULL",
        (),
        |r| r.get(0),
    )?;
    if !has_schema {
        let tables: Vec<String> = conn.query_all(
            "SELECT CAST(tablename AS TEXT) FROM pg_tables WHERE schemaname = current_schema() \
             ORDER BY 1",
            (),
            |r| r.get(0),
        )?;
        if let Some(first) = tables.first() {
            bail!(
                "{} is not empty ({} table(s), first {first}, and no keybroker schema); copy-db \
                 fills only an empty database, and nothing was changed",
                target.shown(),
                tables.len()
            );
        }
        return Ok(());
    }
    let (version, known) = conn.schema_version()?;
    if version != known {
        bail!(
            "{} already has keybroker schema version {version} (this binary's is {known}); \
             copy-db fills only an empty database, and nothing was changed",
            target.shown()
        );
    }
    target_is_empty(conn, target)
}

/// No keybroker table holds a row, except the journal state row the migration seeds.
fn target_is_empty(conn: &Conn<'_>, target: &PgSettings) -> anyhow::Result<()> {
    for table in TABLES {
        let rows: i64 = if table.name == "spend_journal_state" {
            conn.query_row(
                "SELECT COUNT(*) FROM spend_journal_state \
                 WHERE NOT (id = 1 AND epoch = 0 AND committed_seq = 0)",
                (),
                |r| r.get(0),
            )?
        } else {
            conn.query_row(table.count, (), |r| r.get(0))?
        };
        if rows > 0 {
            bail!(
                "{} already holds data ({rows} row(s) in {}); copy-db fills only an empty \
                 database, and nothing was changed",
                target.shown(),
                table.name
            );
        }
    }
    Ok(())
}

/// Where `copy-db` writes: `--to`, else `--to-file`, else `KEYBROKER_DATABASE_URL` (or its
/// `_FILE` form), checked for form.
pub fn target(to: Option<String>, to_file: Option<PathBuf>) -> anyhow::Result<PgSettings> {
    let (url, name) = match (to, to_file) {
        (Some(_), Some(_)) => bail!("give either --to or --to-file, not both"),
        (Some(url), None) => (secrecy::SecretString::from(url), "--to"),
        (None, Some(path)) => (
            crate::secret_files::read_path("--to-file", &path)?,
            "the URL in --to-file",
        ),
        (None, None) => match crate::secret_files::value("KEYBROKER_DATABASE_URL")? {
            Some(url) => (url, "KEYBROKER_DATABASE_URL"),
            None => bail!(
                "copy-db needs the PostgreSQL database to fill: --to-file PATH (a file holding \
                 the URL), KEYBROKER_DATABASE_URL_FILE, KEYBROKER_DATABASE_URL, or --to URL"
            ),
        },
    };
    Ok(PgSettings::parse_as(url, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_every_column_once_with_one_placeholder_each() {
        for t in TABLES {
            let placeholders = t.insert.matches('?').count();
            assert_eq!(placeholders, t.columns, "{}", t.insert);
            let select_cols = t.select.matches(", ").count() + 1;
            assert_eq!(select_cols, t.columns, "{}", t.select);
        }
        let keys = TABLES.iter().find(|t| t.name == "provider_keys").unwrap();
        assert!(
            keys.insert.contains(") OVERRIDING SYSTEM VALUE VALUES (?"),
            "{}",
            keys.insert
        );
        assert_eq!(
            keys.reseed,
            Some(
                "SELECT setval(pg_get_serial_sequence('provider_keys', 'rowid'), \
                 COALESCE(MAX(rowid), 0) + 1, false) FROM provider_keys"
            )
        );
        let accounts = TABLES.iter().find(|t| t.name == "accounts").unwrap();
        assert!(
            !accounts.insert.contains("OVERRIDING"),
            "{}",
            accounts.insert
        );
        assert!(accounts.reseed.is_some());
    }

    /// Every table the SQLite migrations make is copied, with every column they give it.
    #[test]
    fn every_table_and_column_of_the_sqlite_schema_is_copied() {
        let conn = Conn::memory();
        let names: Vec<String> = conn
            .query_all(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                 ORDER BY name",
                (),
                |r| r.get(0),
            )
            .unwrap();
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| !INSTANCE_STATE.contains(&n.as_str()))
            .collect();
        let mut ours: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        ours.sort_unstable();
        assert_eq!(names, ours);
        for t in TABLES {
            let columns: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info(?1)",
                    [t.name],
                    |r| r.get(0),
                )
                .unwrap();
            // provider_keys and tool_tokens add SQLite's implicit rowid, which table_info omits.
            let implicit = i64::from(t.select.contains("rowid"));
            assert_eq!(
                columns + implicit,
                i64::try_from(t.columns).unwrap(),
                "{}",
                t.name
            );
            conn.query_all(t.select, (), |_| Ok(())).unwrap();
        }
    }

    fn refusal(r: anyhow::Result<PgSettings>) -> String {
        match r {
            Ok(pg) => panic!("accepted {}", pg.shown()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_target_is_given_once_and_checked_for_form() {
        let err = refusal(target(Some("mysql://x".into()), None));
        assert!(err.starts_with("--to must start with postgres://"), "{err}");
        let err = refusal(target(Some("postgres://a".into()), Some("f".into())));
        assert_eq!(err, "give either --to or --to-file, not both");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://kb:pw@db/kb\n").unwrap();
        let pg = target(None, Some(file)).unwrap();
        assert_eq!(pg.shown(), "postgres://kb:***@db/kb");
        let err = refusal(target(None, Some(dir.path().join("missing"))));
        assert!(err.contains("--to-file="), "{err}");
    }
}
