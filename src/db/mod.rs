//! The storage seam. Domain code (accounts, keys, tokens, audit, spend) writes portable SQL
//! against [`Conn`] and reads columns through [`Row`]; it never names a backend's types. Two
//! backends live behind it:
//!
//! - `sqlite` (the embedded default): one WAL-mode file, one writer connection and a few
//!   read-only ones, migrations in `migrations/sqlite/`.
//! - `pg` (`KEYBROKER_DATABASE_URL=postgres://…`, for several instances sharing one database):
//!   a pool of connections, migrations in `migrations/postgres/`.
//!
//! The SQL both run is the common part of the two dialects: `?N` placeholders (rewritten to
//! `$N` for PostgreSQL), `INSERT … ON CONFLICT`, `RETURNING`, `CAST(SUM(x) AS BIGINT)` where a
//! sum is read, `COALESCE`, `CASE` instead of two-argument `MAX`. Every integer column is 64-bit
//! on both; flags are integers (0/1) on both. The conformance tests (`db::tests` and the
//! PostgreSQL arm of `tests/api`) run the same code on each.
//!
//! Queries run on a blocking thread, never on an async worker, with one exception: the proxy's two
//! indexed point reads on SQLite (a token, a sealed key) when its caches miss, which
//! [`Db::read_inline`] runs in place because handing them to a blocking thread costs far more than
//! the read itself. A write closure runs inside one transaction; an `Err` rolls it back.

mod pg;
mod pg_tls;
mod sqlite;
mod value;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use pg::{redacted_url, PgSettings};
pub use sqlite::MIGRATIONS_COUNT;
pub use value::{FromValue, Owned, Params, ToValue, Value};

pub type Result<T, E = DbError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", pg::describe(.0))]
    Postgres(#[from] postgres::Error),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("no row was found")]
    NoRows,
    #[error("column {column} holds {found}, not {wanted}")]
    Type {
        column: String,
        wanted: &'static str,
        found: &'static str,
    },
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("the database at {path} has schema version {found}, newer than this binary's {known}; run a newer keybroker (nothing was changed)")]
    TooNew {
        path: String,
        found: i64,
        known: usize,
    },
    #[error("cannot create the database file {0}: {1}")]
    Create(String, std::io::Error),
    #[error("{0}")]
    Config(String),
    #[error("database task was cancelled")]
    Cancelled,
    #[error("could not start a database thread: {0}")]
    Thread(String),
    /// A transaction the caller chose to roll back (part of it failed and was only logged).
    #[error("rolled back: {0}")]
    RolledBack(&'static str),
}

impl From<rusqlite_migration::Error> for DbError {
    fn from(e: rusqlite_migration::Error) -> Self {
        DbError::Migration(e.to_string())
    }
}

impl DbError {
    /// A UNIQUE or PRIMARY KEY constraint refused the row.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            DbError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }

    /// The database could not be reached (down, restarting, the pool exhausted): the request
    /// is answered `503 store_unavailable` and may be tried again.
    /// Two transactions got in each other's way (a deadlock, a serialization failure): the
    /// database rolled this one back, and the same work may simply be done again.
    pub fn is_conflict(&self) -> bool {
        match self {
            DbError::Postgres(e) => e
                .code()
                .is_some_and(|c| matches!(c.code(), "40P01" | "40001")),
            _ => false,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Postgres(e) => pg::is_unavailable(e),
            _ => false,
        }
    }
}

/// `Ok(None)` for a query that found no row.
pub trait Optional<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> Optional<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(DbError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Which backend a [`Db`] runs on. Only operator commands that are honestly different on each
/// (backup, integrity checks) look at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// Where the store lives: the settings `serve` and the commands take.
#[derive(Clone)]
pub enum Location {
    /// The embedded default: this file (`<data-dir>/keybroker.db`).
    Sqlite(PathBuf),
    /// `KEYBROKER_DATABASE_URL`.
    Postgres(PgSettings),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
            Location::Postgres(s) => write!(f, "Postgres({})", s.shown()),
        }
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::Sqlite>),
    Postgres(Arc<pg::Postgres>),
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Db {
    backend: Backend,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("at", &self.describe()).finish()
    }
}

impl Db {
    /// Opens (creating if needed) a SQLite database file, switches it to WAL, and migrates it.
    /// A database whose schema is newer than this binary is refused untouched.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(sqlite::Sqlite::open(path)?)),
        })
    }

    /// Connects to PostgreSQL and migrates it (one instance at a time, under an advisory lock).
    /// A database whose schema is newer than this binary is refused untouched.
    pub fn connect_postgres(settings: &PgSettings) -> Result<Self> {
        Ok(Self {
            backend: Backend::Postgres(Arc::new(pg::Postgres::connect(settings)?)),
        })
    }

    pub fn at(location: &Location) -> Result<Self> {
        match location {
            Location::Sqlite(path) => Self::open(path),
            Location::Postgres(settings) => Self::connect_postgres(settings),
        }
    }

    pub fn kind(&self) -> Kind {
        match &self.backend {
            Backend::Sqlite(_) => Kind::Sqlite,
            Backend::Postgres(_) => Kind::Postgres,
        }
    }

    /// The SQLite file, when the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// Where the store is, for messages: a path, or the URL without its password.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.path().display().to_string(),
            Backend::Postgres(p) => p.shown().to_owned(),
        }
    }

    /// Runs `f` in a write transaction, on a blocking thread.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.write_blocking(f))
            .await
            .map_err(|_| E::from(DbError::Cancelled))?
    }

    /// Runs `f` on a connection that reads, on a blocking thread.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read_blocking(f))
            .await
            .map_err(|_| E::from(DbError::Cancelled))?
    }

    /// Runs `f` right here, on the calling async worker, when SQLite has a reader free; else as
    /// [`Db::read`] does (always on PostgreSQL, where a read is a network round trip). Only for
    /// indexed point reads on the proxy's hot path (a token or a sealed key after its cache entry
    /// expired): such a read takes about 10 µs on a warm SQLite database, and a reader in WAL
    /// mode never waits for the writer or a checkpoint, while the hand-off to a blocking thread
    /// and back added about 0.35 ms to a call.
    pub async fn read_inline<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        if let Backend::Sqlite(s) = &self.backend {
            if let Ok(conn) = s.free_reader() {
                return f(&Conn::sqlite(&conn));
            }
        }
        self.read(f).await
    }

    /// A write transaction from a thread that may block (CLI commands, the batching writer).
    pub fn write_blocking<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.write(f),
            Backend::Postgres(p) => p.write(f),
        }
    }

    /// A read from a thread that may block.
    pub fn read_blocking<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.read(f),
            Backend::Postgres(p) => p.read(f),
        }
    }

    /// A writer of its own for a thread that batches (the spend writer): on SQLite a separate
    /// connection with `synchronous = NORMAL` (see `spend::writer`), on PostgreSQL the pool.
    pub fn dedicated_writer(&self) -> Result<DedicatedWriter> {
        match &self.backend {
            Backend::Sqlite(s) => {
                let conn = s.dedicated_writer("NORMAL")?;
                // Its checkpoints are the checkpointer's (see `Db::checkpointer`).
                conn.pragma_update(None, "wal_autocheckpoint", 0)?;
                Ok(DedicatedWriter::Sqlite(Box::new(conn)))
            }
            Backend::Postgres(_) => Ok(DedicatedWriter::Shared(self.clone())),
        }
    }

    /// Copies the SQLite WAL back into the database file (see `spend::writer`); nothing on
    /// PostgreSQL, which checkpoints itself.
    pub fn checkpointer(&self) -> Result<Option<Checkpointer>> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(Some(Checkpointer(s.dedicated_writer("NORMAL")?))),
            Backend::Postgres(_) => Ok(None),
        }
    }

    /// The backend's own integrity check: `Ok(vec![])` when it found nothing wrong.
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Sqlite(s) => s.integrity_problems(),
            Backend::Postgres(_) => Ok(Vec::new()),
        }
    }

    /// The PostgreSQL side, for what only it has (notifications, pool metrics).
    pub(crate) fn postgres(&self) -> Option<&Arc<pg::Postgres>> {
        match &self.backend {
            Backend::Postgres(p) => Some(p),
            Backend::Sqlite(_) => None,
        }
    }

    /// How the pool is doing, for `/metrics` and `/readyz`: `None` on SQLite.
    pub fn pool_state(&self) -> Option<PoolState> {
        self.postgres().map(|p| p.pool_state())
    }

    /// One cheap round trip, for `/readyz`.
    pub fn ping(&self) -> Result<()> {
        self.read_blocking(|c| {
            c.query_row("SELECT 1", (), |r| r.get::<_, i64>(0))
                .map(|_| ())
        })
    }

    /// Registers `on_message` for notifications on `channel`, sent by any instance's
    /// [`Conn::notify`]. On SQLite (one instance per file) nothing arrives from elsewhere, so this
    /// does nothing.
    pub fn listen(
        &self,
        channel: &'static str,
        on_message: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<()> {
        match &self.backend {
            Backend::Postgres(p) => p.listen(channel, on_message),
            Backend::Sqlite(_) => Ok(()),
        }
    }
}

/// Opens `location` to read without creating or migrating anything (`check`, `audit verify`, a
/// backup's source: safe beside running servers) and runs `f` on it.
pub fn inspect<T>(location: &Location, f: impl FnOnce(&Conn<'_>) -> T) -> Result<T> {
    match location {
        Location::Sqlite(path) => {
            let conn = sqlite::open_read_only(path)?;
            let out = f(&Conn::sqlite(&conn));
            Ok(out)
        }
        Location::Postgres(settings) => pg::inspect(settings, f),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
    pub max: u32,
    pub waits: u64,
    pub failures: u64,
}

/// See [`Db::dedicated_writer`].
pub enum DedicatedWriter {
    Sqlite(Box<rusqlite::Connection>),
    Shared(Db),
}

impl DedicatedWriter {
    /// Runs `f` in one transaction.
    pub fn write<T, E>(&mut self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        match self {
            DedicatedWriter::Sqlite(conn) => sqlite::in_transaction(conn, f),
            DedicatedWriter::Shared(db) => db.write_blocking(f),
        }
    }
}

/// See [`Db::checkpointer`].
pub struct Checkpointer(rusqlite::Connection);

impl Checkpointer {
    pub fn checkpoint(&self) -> Result<()> {
        self.0
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .map_err(DbError::from)
    }
}

/// One connection, or one transaction on it, of either backend.
pub struct Conn<'a> {
    inner: ConnInner<'a>,
    /// PostgreSQL: a statement of this transaction failed on the server, which aborts the
    /// transaction (everything after it fails too, and its COMMIT quietly rolls back). A write
    /// whose closure still returns `Ok` is then refused, never reported as committed.
    pg_failed: std::cell::Cell<bool>,
}

enum ConnInner<'a> {
    Sqlite(&'a rusqlite::Connection),
    /// A connection of its own (tests, tools poking a file directly).
    SqliteOwned(Box<rusqlite::Connection>),
    Pg(RefCell<pg::Session<'a>>),
}

/// What a [`Conn`] is underneath, borrowed.
enum View<'s, 'a> {
    Sqlite(&'s rusqlite::Connection),
    Pg(&'s RefCell<pg::Session<'a>>),
}

impl<'a> Conn<'a> {
    fn sqlite(conn: &'a rusqlite::Connection) -> Self {
        Self {
            inner: ConnInner::Sqlite(conn),
            pg_failed: std::cell::Cell::new(false),
        }
    }

    /// Wraps a SQLite connection opened elsewhere (tests; tools that open a file themselves).
    pub fn from_sqlite(conn: rusqlite::Connection) -> Conn<'static> {
        Conn {
            inner: ConnInner::SqliteOwned(Box::new(conn)),
            pg_failed: std::cell::Cell::new(false),
        }
    }

    /// A migrated in-memory SQLite database, for unit tests.
    #[cfg(test)]
    pub(crate) fn memory() -> Conn<'static> {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        sqlite::migrate_for_tests(&mut conn);
        Conn::from_sqlite(conn)
    }

    fn view(&self) -> View<'_, 'a> {
        match &self.inner {
            ConnInner::Sqlite(c) => View::Sqlite(c),
            ConnInner::SqliteOwned(c) => View::Sqlite(c),
            ConnInner::Pg(s) => View::Pg(s),
        }
    }

    fn pg(session: pg::Session<'a>) -> Self {
        Self {
            inner: ConnInner::Pg(RefCell::new(session)),
            pg_failed: std::cell::Cell::new(false),
        }
    }

    /// Notes a server-side failure of a PostgreSQL statement (see `pg_failed`).
    fn tracked<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(DbError::Postgres(e)) = &r {
            if e.as_db_error().is_some() {
                self.pg_failed.set(true);
            }
        }
        r
    }

    /// Whether a statement of this PostgreSQL transaction failed and was not rolled back to a
    /// savepoint.
    pub(crate) fn aborted(&self) -> bool {
        self.pg_failed.get()
    }

    fn into_pg(self) -> Option<pg::Session<'a>> {
        match self.inner {
            ConnInner::Pg(s) => Some(s.into_inner()),
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self.inner {
            ConnInner::Pg(_) => Kind::Postgres,
            _ => Kind::Sqlite,
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        let values = params.values();
        match self.view() {
            View::Sqlite(c) => sqlite::execute(c, sql, &values),
            View::Pg(s) => self.tracked(s.borrow_mut().execute(sql, &values)),
        }
    }

    /// The first row of a query through `f`; [`DbError::NoRows`] when there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let values = params.values();
        match self.view() {
            View::Sqlite(c) => sqlite::query_row(c, sql, &values, f),
            View::Pg(s) => self.tracked(s.borrow_mut().query_row(sql, &values, f)),
        }
    }

    /// Every row of a query through `f`.
    pub fn query_all<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let values = params.values();
        match self.view() {
            View::Sqlite(c) => sqlite::query_all(c, sql, &values, &mut f),
            View::Pg(s) => self.tracked(s.borrow_mut().query_all(sql, &values, &mut f)),
        }
    }

    /// Every row of a query through `f`, one at a time, without holding them all (`audit
    /// verify` walks every chain this way).
    pub fn for_each(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<()>,
    ) -> Result<()> {
        let values = params.values();
        match self.view() {
            View::Sqlite(c) => sqlite::for_each(c, sql, &values, &mut f),
            View::Pg(s) => self.tracked(s.borrow_mut().for_each(sql, &values, &mut f)),
        }
    }

    /// A statement to run more than once (prepared once per connection on either backend).
    pub fn prepare_cached<'c>(&'c self, sql: &'c str) -> Result<Stmt<'c, 'a>> {
        Ok(Stmt { conn: self, sql })
    }

    /// The same as [`Conn::prepare_cached`]: every statement is cached per connection.
    pub fn prepare<'c>(&'c self, sql: &'c str) -> Result<Stmt<'c, 'a>> {
        self.prepare_cached(sql)
    }

    /// Runs `f` inside a savepoint of this transaction: when it fails, what it did is rolled
    /// back and the transaction goes on. Needed on PostgreSQL, where a failed statement aborts
    /// the whole transaction; on SQLite it is the same nested-transaction semantics.
    pub fn savepoint<T>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T>) -> Result<T> {
        let failed_before = self.pg_failed.get();
        self.execute_batch("SAVEPOINT kb_record")?;
        // A release that fails means a statement inside failed without `f` saying so (its error
        // was handled): the transaction is aborted until the savepoint is rolled back.
        match f(self).and_then(|v| {
            self.execute_batch("RELEASE SAVEPOINT kb_record")
                .map(|()| v)
        }) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.execute_batch("ROLLBACK TO SAVEPOINT kb_record; RELEASE SAVEPOINT kb_record")?;
                // Back to where the transaction was when the savepoint was taken.
                self.pg_failed.set(failed_before);
                Err(e)
            }
        }
    }

    /// Statements without parameters, separated by `;` (schema set-up, tests).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match self.view() {
            View::Sqlite(c) => c.execute_batch(sql).map_err(DbError::from),
            View::Pg(s) => self.tracked(s.borrow_mut().execute_batch(sql)),
        }
    }

    /// Tells every instance's listeners on `channel` (see [`Db::listen`]) once this transaction
    /// commits. Nothing on SQLite, where no other instance shares the file.
    pub fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        match self.view() {
            View::Sqlite(_) => Ok(()),
            View::Pg(s) => self.tracked(s.borrow_mut().notify(channel, payload)),
        }
    }

    /// The schema version the database is at, and the newest this binary knows.
    pub fn schema_version(&self) -> Result<(i64, i64)> {
        match self.view() {
            View::Sqlite(c) => Ok((
                c.pragma_query_value(None, "user_version", |r| r.get(0))?,
                MIGRATIONS_COUNT as i64,
            )),
            View::Pg(s) => Ok((
                s.borrow_mut().schema_version()?,
                pg::PG_MIGRATIONS_COUNT as i64,
            )),
        }
    }

    /// What the backend's own integrity check found wrong (SQLite's `PRAGMA integrity_check`;
    /// PostgreSQL checks its pages itself and reports nothing here), and what it ran.
    pub fn integrity_problems(&self) -> Result<(&'static str, Vec<String>)> {
        match self.view() {
            View::Sqlite(c) => {
                let mut stmt = c.prepare("PRAGMA integrity_check")?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let problems = rows.into_iter().filter(|r| r != "ok").collect();
                Ok(("PRAGMA integrity_check", problems))
            }
            View::Pg(_) => Ok(("PostgreSQL (checks its own pages)", Vec::new())),
        }
    }

    /// Serialises writers of one thing across instances for the rest of this transaction (an
    /// account's audit chain, say): on PostgreSQL a transaction-level advisory lock on
    /// (`space`, `key`); on SQLite nothing, since a write transaction already holds the file.
    pub fn lock(&self, space: i32, key: i64) -> Result<()> {
        match self.view() {
            View::Sqlite(_) => Ok(()),
            View::Pg(s) => self.tracked(s.borrow_mut().lock(space, key)),
        }
    }
}

/// A statement bound to its connection, from [`Conn::prepare_cached`].
pub struct Stmt<'c, 'a> {
    conn: &'c Conn<'a>,
    sql: &'c str,
}

impl Stmt<'_, '_> {
    pub fn execute(&mut self, params: impl Params) -> Result<usize> {
        self.conn.execute(self.sql, params)
    }

    pub fn query_row<T>(
        &mut self,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.conn.query_row(self.sql, params, f)
    }

    /// Every row through `f`, as an iterator of results (collect it into `Result<Vec<_>>`).
    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.conn.query_all(self.sql, params, f)?;
        Ok(rows.into_iter().map(Ok).collect::<Vec<_>>().into_iter())
    }

    pub fn exists(&mut self, params: impl Params) -> Result<bool> {
        self.conn
            .query_row(self.sql, params, |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
    }
}

/// One row of a result.
pub struct Row<'r> {
    inner: RowInner<'r>,
}

enum RowInner<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Pg(&'r postgres::Row),
}

/// A column by position (from 0) or by name.
pub trait RowIndex: std::fmt::Display + Copy {
    fn sqlite(self, row: &rusqlite::Row<'_>) -> rusqlite::Result<usize>;
    fn pg(self, row: &postgres::Row) -> Option<usize>;
}

impl RowIndex for usize {
    fn sqlite(self, _: &rusqlite::Row<'_>) -> rusqlite::Result<usize> {
        Ok(self)
    }
    fn pg(self, row: &postgres::Row) -> Option<usize> {
        (self < row.len()).then_some(self)
    }
}

impl RowIndex for &str {
    fn sqlite(self, row: &rusqlite::Row<'_>) -> rusqlite::Result<usize> {
        row.as_ref().column_index(self)
    }
    fn pg(self, row: &postgres::Row) -> Option<usize> {
        row.columns().iter().position(|c| c.name() == self)
    }
}

impl Row<'_> {
    /// Column `idx` as `T`.
    pub fn get<I: RowIndex, T: FromValue>(&self, idx: I) -> Result<T> {
        match &self.inner {
            RowInner::Sqlite(r) => sqlite::get(r, idx),
            RowInner::Pg(r) => pg::get(r, idx),
        }
    }

    /// How many columns the row has.
    pub fn len(&self) -> usize {
        match &self.inner {
            RowInner::Sqlite(r) => r.as_ref().column_count(),
            RowInner::Pg(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
