//! The SQLite backend: one writer connection and a few readers on one WAL-mode database file,
//! with schema migrations (`migrations/sqlite/`) applied at open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;

use super::value::{type_error, FromValue, Value};
use super::{Conn, DbError, Result, RowIndex};
use rusqlite_migration::{Migrations, M};

/// The schema, one numbered file per change, in order. Never edit a file once it has shipped:
/// add a new one.
const MIGRATION_SQL: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_accounts.sql"),
    include_str!("../../migrations/sqlite/0003_keys_tokens.sql"),
    include_str!("../../migrations/sqlite/0004_spend.sql"),
    include_str!("../../migrations/sqlite/0005_spend_journal.sql"),
    include_str!("../../migrations/sqlite/0006_signup_confirmation.sql"),
    include_str!("../../migrations/sqlite/0007_operator_accounts.sql"),
    include_str!("../../migrations/sqlite/0008_audit_detail.sql"),
    include_str!("../../migrations/sqlite/0009_recent_calls_token_latency.sql"),
    include_str!("../../migrations/sqlite/0010_shared_ceilings.sql"),
    include_str!("../../migrations/sqlite/0011_mail_queue.sql"),
    include_str!("../../migrations/sqlite/0012_webhooks.sql"),
    include_str!("../../migrations/sqlite/0013_token_budgets.sql"),
    include_str!("../../migrations/sqlite/0014_scopes_attribution.sql"),
];

static MIGRATIONS: LazyLock<Migrations<'static>> =
    LazyLock::new(|| Migrations::new(MIGRATION_SQL.iter().map(|sql| M::up(sql)).collect()));

/// How many schema versions this binary knows (a database's `user_version` may not exceed it).
pub const MIGRATIONS_COUNT: usize = MIGRATION_SQL.len();

const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    path: PathBuf,
}

pub(super) struct Sqlite {
    inner: Inner,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // journal_size_limit: a WAL file started over after a checkpoint is trimmed to 64 MiB, so a
    // burst does not leave a large file behind for ever.
    // FULL: each commit is fsynced. Writes that matter for money go through a batching writer,
    // so this costs one fsync per batch, and a committed key or settled spend survives power loss.
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    Ok(())
}

/// Creates the database file readable by its owner only (0600), or narrows an existing one to
/// that. SQLite gives the `-wal` and `-shm` files it creates beside it the same mode. A file
/// that cannot be narrowed (owned by another user, say) is reported and left as it is: SQLite
/// decides whether it can use it.
fn owner_only(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // An existing database, and its WAL and shared-memory files, perhaps left 0644 by an older
    // version.
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Err(e) = narrow(Path::new(&file)) {
            tracing::warn!(path = %Path::new(&file).display(), error = %e,
                "could not make a database file private to its owner");
        }
    }
    Ok(())
}

fn narrow(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

impl Sqlite {
    /// A separate read-write connection to the same file, for a writer thread that owns its
    /// connection (the spend writer). `synchronous` is the caller's choice and reason.
    pub fn dedicated_writer(&self, synchronous: &str) -> Result<Connection> {
        let mut conn = Connection::open(&self.inner.path)?;
        configure(&conn)?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        Ok(conn)
    }

    /// Opens (creating if needed) the database file, switches it to WAL, and migrates it.
    /// A database whose schema is newer than this binary is refused untouched.
    pub fn open(path: &Path) -> Result<Self> {
        owner_only(path).map_err(|e| DbError::Create(path.display().to_string(), e))?;
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        let found: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if found > MIGRATIONS_COUNT as i64 {
            return Err(DbError::TooNew {
                path: path.display().to_string(),
                found,
                known: MIGRATIONS_COUNT,
            });
        }
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Sqlite(rusqlite::Error::InvalidParameterName(
                format!("journal_mode is {mode}, expected wal"),
            )));
        }
        MIGRATIONS.to_latest(&mut writer)?;
        // Two connections write to this file (this one and the spend writer). A deferred
        // transaction that reads and then writes would fail at once (SQLITE_BUSY_SNAPSHOT) if the
        // other committed in between; IMMEDIATE takes the write lock at BEGIN, waiting up to the
        // busy timeout instead.
        writer.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open(path)?;
            configure(&conn)?;
            conn.pragma_update(None, "query_only", true)?;
            readers.push(Mutex::new(conn));
        }
        Ok(Self {
            inner: Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                path: path.to_path_buf(),
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A reader connection nobody holds, trying each once from a rotating start; when all are
    /// busy, `Err` with that start (the one to wait for).
    pub(super) fn free_reader(&self) -> Result<std::sync::MutexGuard<'_, Connection>, usize> {
        let readers = &self.inner.readers;
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..readers.len() {
            if let Some(Ok(conn)) = readers
                .get((start + i) % readers.len())
                .map(Mutex::try_lock)
            {
                return Ok(conn);
            }
        }
        Err(start)
    }

    /// `f` in an IMMEDIATE transaction on the writer connection.
    pub(super) fn write<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        // A panic while holding the lock leaves an ordinary connection behind (any open
        // transaction was rolled back when it dropped), so poisoning is not a reason to stop.
        let mut conn = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        in_transaction(&mut conn, f)
    }

    /// `f` on a reader.
    pub(super) fn read<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E> {
        let start = match self.free_reader() {
            Ok(conn) => return f(&Conn::sqlite(&conn)),
            Err(start) => start,
        };
        let readers = &self.inner.readers;
        match readers.get(start % readers.len().max(1)) {
            Some(slot) => f(&Conn::sqlite(
                &slot.lock().unwrap_or_else(PoisonError::into_inner),
            )),
            None => f(&Conn::sqlite(
                &self
                    .inner
                    .writer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            )),
        }
    }

    /// `PRAGMA integrity_check`'s complaints (none when it says `ok`).
    pub(super) fn integrity_problems(&self) -> Result<Vec<String>> {
        self.read(|c| {
            c.query_all("PRAGMA integrity_check", (), |r| r.get::<_, String>(0))
                .map(|rows| rows.into_iter().filter(|r| r != "ok").collect())
        })
    }
}

/// Opens `path` read-only (no migration, nothing created), as `check` and `audit verify` do.
pub(super) fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(DbError::Config(format!(
            "no database at {}",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// `f` in a transaction on `conn` (IMMEDIATE, as set at open), committed when it returns `Ok`.
pub(super) fn in_transaction<T, E>(
    conn: &mut Connection,
    f: impl FnOnce(&Conn<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    let tx = conn.transaction().map_err(|e| E::from(e.into()))?;
    let out = f(&Conn::sqlite(&tx))?;
    tx.commit().map_err(|e| E::from(e.into()))?;
    Ok(out)
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(f) => ValueRef::Real(f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

pub(super) fn execute(conn: &Connection, sql: &str, values: &[Value<'_>]) -> Result<usize> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(values))?)
}

pub(super) fn query_row<T>(
    conn: &Connection,
    sql: &str,
    values: &[Value<'_>],
    f: impl FnOnce(&super::Row<'_>) -> Result<T>,
) -> Result<T> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    match rows.next()? {
        Some(row) => f(&super::Row {
            inner: super::RowInner::Sqlite(row),
        }),
        None => Err(DbError::NoRows),
    }
}

pub(super) fn query_all<T>(
    conn: &Connection,
    sql: &str,
    values: &[Value<'_>],
    f: &mut dyn FnMut(&super::Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(f(&super::Row {
            inner: super::RowInner::Sqlite(row),
        })?);
    }
    Ok(out)
}

pub(super) fn for_each(
    conn: &Connection,
    sql: &str,
    values: &[Value<'_>],
    f: &mut dyn FnMut(&super::Row<'_>) -> Result<()>,
) -> Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    while let Some(row) = rows.next()? {
        f(&super::Row {
            inner: super::RowInner::Sqlite(row),
        })?;
    }
    Ok(())
}

pub(super) fn get<I: RowIndex, T: FromValue>(row: &rusqlite::Row<'_>, idx: I) -> Result<T> {
    use rusqlite::types::ValueRef;
    let at = idx.sqlite(row)?;
    let value = match row.get_ref(at)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t).map_err(|_| type_error(idx, "text", Value::Blob(t)))?,
        ),
        ValueRef::Blob(b) => Value::Blob(b),
    };
    T::from_value(value).map_err(|wanted| type_error(idx, wanted, value))
}

/// Brings an in-memory connection to the latest schema, for other modules' unit tests.
#[cfg(test)]
pub(crate) fn migrate_for_tests(conn: &mut Connection) {
    MIGRATIONS.to_latest(conn).unwrap();
}

#[cfg(test)]
impl Sqlite {
    pub(super) fn hold_every_reader(&self) -> Vec<std::sync::MutexGuard<'_, Connection>> {
        self.inner
            .readers
            .iter()
            .map(|r| r.lock().unwrap())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_7_marks_the_oldest_existing_account_as_the_operators() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 6).unwrap();
        for (hash, at) in [([2u8], 20), ([1u8], 10)] {
            conn.execute(
                "INSERT INTO accounts (email_hash, email_blob, master_key_id, created_at, confirmed_at)
                 VALUES (?1, x'', 'k', ?2, ?2)",
                rusqlite::params![hash.as_slice(), at],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO sessions (id_hash, public_id, account_id, created_at, last_seen_at,
                                   user_agent, client_addr)
             VALUES (x'aa', 'p', 2, 30, 30, '', '')",
        )
        .unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let rows: Vec<(i64, bool, Option<i64>)> = conn
            .prepare("SELECT id, is_operator, last_login_at FROM accounts ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        // The lowest id is the first row made, whatever its created_at says.
        assert_eq!(rows, vec![(1, true, None), (2, false, Some(30))]);
    }

    #[test]
    fn migration_count_matches_the_list() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS_COUNT as i64);
        MIGRATIONS.validate().unwrap();
    }

    #[test]
    fn the_database_and_its_wal_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = Sqlite::open(&path).unwrap();
        db.write(|c| c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);"))
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("k.db-wal")), 0o600);
        drop(db);

        // Files left world-readable by an older version are narrowed at the next open.
        let wal = dir.path().join("k.db-wal");
        std::fs::write(&wal, b"").unwrap();
        for p in [&path, &wal] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let db = Sqlite::open(&path).unwrap();
        assert_eq!((mode(&path), mode(&wal)), (0o600, 0o600));
        let n: i64 = db
            .read(|c| c.query_row("SELECT x FROM t", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 1);
    }
}
