//! `keybroker backup` and `keybroker restore`.
//!
//! A backup is `VACUUM INTO` a temporary file beside the destination, run on a read-only
//! connection: one read transaction, so the copy is a consistent snapshot, and in WAL mode a
//! reader never blocks the server's writers (they keep committing to the WAL while it runs). The
//! SQLite online-backup API was the other candidate; stepped in small slices with pauses, it
//! restarts from the first page whenever another connection commits between two steps, which on
//! a busy server (the spend writer commits every few milliseconds) can mean it never finishes, and
//! in one step it is the same single read transaction as `VACUUM INTO`. `VACUUM INTO` also leaves
//! out free pages, so stale bytes of deleted rows do not travel with the backup. The copy holds
//! only what the database holds: values sealed by the vault, never a plaintext key; the backup
//! needs no secret at all.
//!
//! A restore copies the backup into the data directory, runs every `keybroker check` on that copy
//! with the configured secrets (integrity, schema version, canary, key ids, every stored value,
//! the email pepper, the audit chains), and only then swaps it in under the data directory's lock
//! (which a running `serve` holds, so a restore beside a live server is refused). The database it
//! replaces is kept, with its WAL and hold journal, in `pre-restore-<time>/`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::check::{self, Line, Secrets};
use crate::config::{self, SecretSources};
use crate::data_lock::{DataDirLock, LockError};

/// The database's file name inside the data directory.
pub const DB_FILE: &str = "keybroker.db";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no database at {0}")]
    NoDatabase(String),
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(String),
    #[error("the folder {0} does not exist; create it first")]
    NoFolder(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the copy failed its integrity check: {0}")]
    Corrupt(String),
    #[error("{0} is not valid UTF-8; use another path")]
    NotUtf8(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("the backup did not pass its checks (see above); the live database was not touched")]
    Refused { lines: Vec<Line> },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A file that is removed on drop unless [`TempFile::keep`] was called.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates an empty file, mode 0600, in `dir`.
    fn create(dir: &Path, stem: &str) -> Result<Self, BackupError> {
        let path = dir.join(format!(".{stem}.tmp-{}", uuid::Uuid::new_v4().simple()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Self { path, armed: true })
    }

    fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let _ = fs::remove_file(sqlite_sibling(&self.path, suffix));
            }
        }
    }
}

fn sqlite_sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens the SQLite file at `path` read-only (a backup's source; safe beside a running server).
fn open_read_only(path: &Path) -> Result<Connection, BackupError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| BackupError::NoDatabase(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn fsync(path: &Path) -> Result<(), BackupError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn utf8(path: &Path) -> Result<&str, BackupError> {
    path.to_str()
        .ok_or_else(|| BackupError::NotUtf8(path.display().to_string()))
}

/// Makes `path` a standalone file in rollback-journal mode (no `-wal` beside it), runs
/// `PRAGMA integrity_check` on it, and returns its row counts per table.
fn seal_copy(path: &Path) -> Result<Vec<(String, i64)>, BackupError> {
    let conn = Connection::open(path)?;
    let _: String = conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if problems != ["ok"] {
        return Err(BackupError::Corrupt(problems.join("; ")));
    }
    let counts = table_counts(&conn)?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(counts)
}

/// Rows per table, in name order (tables SQLite made for itself excluded).
pub fn table_counts(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    names
        .into_iter()
        .map(|name| {
            // The name comes from sqlite_master, quoted as an identifier; it cannot be bound.
            let sql = format!("SELECT COUNT(*) FROM \"{}\"", name.replace('"', "\"\""));
            let n: i64 = conn.query_row(&sql, [], |r| r.get(0))?;
            Ok((name, n))
        })
        .collect()
}

#[derive(Debug)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    /// How long the read transaction on the live database lasted (`VACUUM INTO`).
    pub snapshot: Duration,
    pub total: Duration,
    pub tables: Vec<(String, i64)>,
}

/// Writes a consistent copy of the database at `db` to `dest` (mode 0600): into a temporary
/// file beside `dest`, fsynced, integrity-checked, then moved into place. An existing `dest` is
/// refused unless `force`.
pub fn backup(db: &Path, dest: &Path, force: bool) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    if !db.is_file() {
        return Err(BackupError::NoDatabase(db.display().to_string()));
    }
    if !force && dest.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(dest.display().to_string()));
    }
    let dir = parent_dir(dest);
    if !dir.is_dir() {
        return Err(BackupError::NoFolder(dir.display().to_string()));
    }
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keybroker-backup".into());
    let tmp = TempFile::create(dir, &stem)?;

    let source = open_read_only(db)?;
    let snapshot_started = Instant::now();
    // VACUUM INTO writes into an existing file only when it is empty, which ours is; its mode
    // (0600) is kept.
    source.execute("VACUUM INTO ?1", [utf8(&tmp.path)?])?;
    let snapshot = snapshot_started.elapsed();
    drop(source);

    let tables = seal_copy(&tmp.path)?;
    fsync(&tmp.path)?;
    let bytes = fs::metadata(&tmp.path).map_err(io_err(&tmp.path))?.len();
    let tmp_path = tmp.keep();
    place(&tmp_path, dest, force)?;
    fsync(dir)?;
    Ok(BackupReport {
        path: dest.to_path_buf(),
        bytes,
        snapshot,
        total: started.elapsed(),
        tables,
    })
}

/// Moves `tmp` to `dest`: replacing it only when `force`; otherwise a hard link, which fails
/// atomically if `dest` appeared meanwhile. `tmp` is gone afterwards either way.
fn place(tmp: &Path, dest: &Path, force: bool) -> Result<(), BackupError> {
    let result = if force {
        fs::rename(tmp, dest).map_err(io_err(dest))
    } else {
        match fs::hard_link(tmp, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(BackupError::Exists(dest.display().to_string()))
            }
            // A file system without hard links: check, then rename (a narrow race, no worse).
            Err(_) if dest.symlink_metadata().is_err() => {
                fs::rename(tmp, dest).map_err(io_err(dest))
            }
            Err(_) => Err(BackupError::Exists(dest.display().to_string())),
        }
    };
    let _ = fs::remove_file(tmp);
    result
}

#[derive(Debug)]
pub struct RestoreReport {
    pub lines: Vec<Line>,
    pub tables: Vec<(String, i64)>,
    /// Where the replaced database (and its WAL) was kept, if there was one.
    pub previous: Option<PathBuf>,
}

/// Replaces the database in `data_dir` with the backup at `backup`, after checking the backup
/// with the configured secrets. Refused, with nothing changed, while a server holds the data
/// directory or when any check fails.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    sources: &SecretSources,
) -> Result<RestoreReport, BackupError> {
    if !backup.is_file() {
        return Err(BackupError::NoDatabase(backup.display().to_string()));
    }
    config::prepare_data_dir(data_dir)?;
    let _lock = DataDirLock::acquire(data_dir)?;

    let tmp = TempFile::create(data_dir, "keybroker.db.restore")?;
    {
        let mut from = File::open(backup).map_err(io_err(backup))?;
        let mut to = OpenOptions::new()
            .write(true)
            .open(&tmp.path)
            .map_err(io_err(&tmp.path))?;
        io::copy(&mut from, &mut to).map_err(io_err(&tmp.path))?;
        to.sync_all().map_err(io_err(&tmp.path))?;
    }
    let tables = seal_copy(&tmp.path)?;
    let lines = {
        let secrets = Secrets::resolve(sources, data_dir);
        crate::db::inspect(&crate::db::Location::Sqlite(tmp.path.clone()), |c| {
            check::run(c, &secrets)
        })
        .map_err(|e| BackupError::NoDatabase(e.to_string()))?
    };
    if !check::all_ok(&lines) {
        return Err(BackupError::Refused { lines });
    }
    fsync(&tmp.path)?;

    let live = data_dir.join(DB_FILE);
    let previous = if live.exists() {
        Some(set_aside(&live, data_dir)?)
    } else {
        None
    };
    // The old WAL was moved aside and the shared-memory index is derived from it: neither may
    // meet the new file, or SQLite would replay stale frames into it.
    for suffix in ["-wal", "-shm"] {
        let stale = sqlite_sibling(&live, suffix);
        match fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&stale)(e)),
        }
    }
    // The hold journal belongs to the database it was written beside: replayed against the
    // restored one it would charge calls that database never saw (see `spend::journal`).
    let journal = data_dir.join(JOURNAL_DIR);
    if journal.exists() {
        match &previous {
            Some(aside) => fs::rename(&journal, aside.join(JOURNAL_DIR)),
            None => fs::remove_dir_all(&journal),
        }
        .map_err(io_err(&journal))?;
    }
    let tmp_path = tmp.keep();
    fs::rename(&tmp_path, &live).map_err(io_err(&live))?;
    fsync(data_dir)?;
    Ok(RestoreReport {
        lines,
        tables,
        previous,
    })
}

/// The hold journal's folder in a data directory (`Settings::spend_journal_dir`).
const JOURNAL_DIR: &str = "spend-journal";

/// Keeps the current database and its WAL in `<data_dir>/pre-restore-<unix time>/`: a hard link
/// to the database (the rename that follows only drops its old name) and the WAL moved.
fn set_aside(live: &Path, data_dir: &Path) -> Result<PathBuf, BackupError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = data_dir.join(format!("pre-restore-{now}"));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&aside)
        .map_err(io_err(&aside))?;
    let kept = aside.join(DB_FILE);
    if fs::hard_link(live, &kept).is_err() {
        fs::copy(live, &kept).map_err(io_err(&kept))?;
    }
    let wal = sqlite_sibling(live, "-wal");
    if wal.exists() {
        let kept_wal = sqlite_sibling(&kept, "-wal");
        fs::rename(&wal, &kept_wal).map_err(io_err(&kept_wal))?;
    }
    fsync(&aside)?;
    Ok(aside)
}

/// `keybroker backup PATH`: prints what was written.
pub fn backup_command(data_dir: &Path, dest: &Path, force: bool) -> anyhow::Result<()> {
    let report = backup(&data_dir.join(DB_FILE), dest, force)?;
    for (table, rows) in &report.tables {
        println!("{table}: {rows} row(s)");
    }
    println!(
        "backup written to {} ({} bytes; snapshot {} ms, total {} ms); integrity_check: ok",
        report.path.display(),
        report.bytes,
        report.snapshot.as_millis(),
        report.total.as_millis()
    );
    Ok(())
}

/// `keybroker restore PATH`: prints each check on the backup, then what was replaced.
pub fn restore_command(
    backup_path: &Path,
    data_dir: &Path,
    sources: &SecretSources,
) -> anyhow::Result<()> {
    match restore(backup_path, data_dir, sources) {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            for (table, rows) in &report.tables {
                println!("{table}: {rows} row(s)");
            }
            if let Some(previous) = &report.previous {
                println!("the replaced database was kept in {}", previous.display());
            }
            println!(
                "restored {} into {}",
                backup_path.display(),
                data_dir.join(DB_FILE).display()
            );
            Ok(())
        }
        Err(BackupError::Refused { lines }) => {
            for line in &lines {
                println!("{line}");
            }
            Err(BackupError::Refused { lines }.into())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_into_a_missing_folder_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("keybroker.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER);")
            .unwrap();
        let missing = dir.path().join("no-such-folder");
        let err = backup(&db, &missing.join("copy.db"), false).unwrap_err();
        assert!(matches!(err, BackupError::NoFolder(_)), "{err}");
        assert!(err.to_string().contains("no-such-folder"), "{err}");
    }
}
