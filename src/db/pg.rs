//! The PostgreSQL backend: an r2d2 pool of blocking rust-postgres clients (each with its own
//! prepared-statement cache), migrations from `migrations/postgres/` applied under an advisory
//! lock so instances starting together take turns, and one listener connection per instance for
//! `LISTEN`/`NOTIFY`. Every connection (pool, first connect, listener, `inspect`) goes through the
//! one TLS connector built from the URL's `sslmode` (`pg_tls`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, Statement};
use secrecy::{ExposeSecret as _, SecretString};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pg_tls::{self, TlsOptions};
use super::value::{type_error, FromValue, Value};
use super::{Conn, DbError, PoolState, Result, Row, RowIndex, RowInner};

/// The schema, one numbered file per change, in order. Never edit a file once it has shipped.
const MIGRATION_SQL: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_shared_ceilings.sql"),
    include_str!("../../migrations/postgres/0003_mail_queue.sql"),
    include_str!("../../migrations/postgres/0004_webhooks.sql"),
    include_str!("../../migrations/postgres/0005_token_budgets.sql"),
    include_str!("../../migrations/postgres/0006_scopes_attribution.sql"),
];

/// The advisory lock key migrations run under (any constant: "kb" + "migr").
const MIGRATION_LOCK: i64 = 0x6b62_6d69_6772;
/// Prepared statements kept per connection before the cache starts over (domain SQL is a
/// fixed set of a few hundred strings, so this is only a bound).
const STATEMENT_CACHE: usize = 1024;

/// `KEYBROKER_DATABASE_URL` and how to pool it.
#[derive(Clone)]
pub struct PgSettings {
    /// The URL without `sslmode` and `sslrootcert`, which tokio-postgres does not know.
    url: SecretString,
    shown: String,
    tls: TlsOptions,
    /// Most connections this instance opens.
    pub pool_max: u32,
    /// How long a request waits for a connection (or a connection for the server) before it is
    /// answered `503 store_unavailable`.
    pub wait: Duration,
}

impl PgSettings {
    /// Checks the URL's form (nothing is connected or read): `postgres://` or `postgresql://`,
    /// libpq's `sslmode` and `sslrootcert` (see `pg_tls`), every other parameter one that
    /// tokio-postgres knows.
    pub fn parse(url: SecretString) -> Result<Self> {
        Self::parse_as(url, "KEYBROKER_DATABASE_URL")
    }

    /// [`PgSettings::parse`], naming the URL `name` in errors (`copy-db --to`).
    pub fn parse_as(url: SecretString, name: &str) -> Result<Self> {
        let raw = url.expose_secret();
        if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
            let unset = if name == "KEYBROKER_DATABASE_URL" {
                " (an unset URL means the embedded SQLite database)"
            } else {
                ""
            };
            return Err(DbError::Config(format!(
                "{name} must start with postgres:// or postgresql://{unset}"
            )));
        }
        let (stripped, tls) = pg_tls::split_url(raw, name).map_err(DbError::Config)?;
        stripped.parse::<postgres::Config>().map_err(|e| {
            DbError::Config(format!(
                "{name} is not a valid PostgreSQL URL ({})",
                first_line(&e.to_string())
            ))
        })?;
        let shown = redacted_url(raw);
        Ok(Self {
            url: SecretString::from(stripped),
            shown,
            tls,
            pool_max: 16,
            wait: Duration::from_secs(2),
        })
    }

    /// The URL without its password, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The TLS connector every connection uses (reads `sslrootcert`).
    fn connector(&self) -> Result<MakeRustlsConnect> {
        self.tls.connector().map_err(DbError::Config)
    }

    /// Why a connection failed: TLS failures in operator terms, anything else as `describe`.
    fn explain(&self, e: &postgres::Error) -> String {
        self.tls.explain(e).unwrap_or_else(|| describe(e))
    }

    /// The one error of a connection that failed at start.
    fn cannot_connect(&self, e: &postgres::Error) -> DbError {
        DbError::Config(format!(
            "cannot connect to PostgreSQL at {}: {}",
            self.shown(),
            self.explain(e)
        ))
    }

    fn config(&self) -> Result<postgres::Config> {
        let mut config = self
            .url
            .expose_secret()
            .parse::<postgres::Config>()
            .map_err(|e| DbError::Config(first_line(&e.to_string())))?;
        config.ssl_mode(self.tls.tokio_mode());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("keybroker");
        }
        Ok(config)
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`; anything unparsable is
/// shown as just its scheme.
pub fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // Query parameters may carry a password too (`?password=`).
            if u.query().is_some() {
                u.set_query(Some("..."));
            }
            u.to_string()
        }
        Err(_) => "postgres://…".to_owned(),
    }
}

pub(super) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        // tokio-postgres's Display is only the kind ("error connecting to server"): the cause
        // (an IO error, a TLS failure; never the URL) says what happened.
        None => match std::error::Error::source(e) {
            Some(cause) => format!(
                "{}: {}",
                first_line(&e.to_string()),
                first_line(&cause.to_string())
            ),
            None => first_line(&e.to_string()),
        },
    }
}

pub(super) fn is_unavailable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Class 08: connection exceptions; 57P01..03: the server is shutting down or starting.
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300")
        }
        // No SQLSTATE: the error came from the connection (IO, a timeout), not from a statement.
        None => e.as_db_error().is_none(),
    }
}

pub(super) struct PgConn {
    client: Client,
    stmts: HashMap<String, Statement>,
}

struct Manager {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    failures: Arc<AtomicU64>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<PgConn, postgres::Error> {
        match self.config.connect(self.tls.clone()) {
            Ok(client) => Ok(PgConn {
                client,
                stmts: HashMap::new(),
            }),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn is_valid(&self, conn: &mut PgConn) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

type Callback = Arc<dyn Fn(&str) + Send + Sync>;

pub(crate) struct Postgres {
    /// `Some` until dropped (see the `Drop` impl).
    pool: Option<r2d2::Pool<Manager>>,
    settings: PgSettings,
    waits: AtomicU64,
    failures: Arc<AtomicU64>,
    listeners: Arc<Mutex<HashMap<&'static str, Vec<Callback>>>>,
    listening: Mutex<bool>,
    /// The pool's connector, for the listener's connection too.
    tls: MakeRustlsConnect,
    /// Set when this handle is dropped: the listener thread ends.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Postgres {
    pub(super) fn connect(settings: &PgSettings) -> Result<Self> {
        let config = settings.config()?;
        let tls = settings.connector()?;
        // One direct connection first, so a wrong password, an unreachable server or an untrusted
        // certificate is one clear error at start, and the schema is checked before the pool
        // opens anything.
        let mut first = config
            .connect(tls.clone())
            .map_err(|e| settings.cannot_connect(&e))?;
        migrate(&mut first, settings.shown())?;
        drop(first);
        let failures = Arc::new(AtomicU64::new(0));
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_max)
            .min_idle(Some(1))
            .connection_timeout(settings.wait)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(Manager {
                config,
                tls: tls.clone(),
                failures: failures.clone(),
            });
        Ok(Self {
            pool: Some(pool),
            settings: settings.clone(),
            waits: AtomicU64::new(0),
            failures,
            listeners: Arc::default(),
            listening: Mutex::new(false),
            tls,
            closed: Arc::default(),
        })
    }

    pub(super) fn shown(&self) -> &str {
        self.settings.shown()
    }

    fn pool(&self) -> Result<&r2d2::Pool<Manager>> {
        self.pool
            .as_ref()
            .ok_or_else(|| DbError::Unavailable("the pool is closed".into()))
    }

    fn get(&self) -> Result<r2d2::PooledConnection<Manager>> {
        let pool = self.pool()?;
        if pool.state().idle_connections == 0 {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        pool.get().map_err(|e| {
            DbError::Unavailable(format!(
                "no PostgreSQL connection within {} ms ({})",
                self.settings.wait.as_millis(),
                first_line(&e.to_string())
            ))
        })
    }

    pub(super) fn write<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let mut conn = self.get().map_err(E::from)?;
        let PgConn { client, stmts } = &mut *conn;
        let tx = client
            .transaction()
            .map_err(|e| E::from(DbError::from(e)))?;
        let c = Conn::pg(Session {
            handle: Handle::Tx(tx),
            stmts,
        });
        let out = f(&c)?;
        if c.aborted() {
            // A failure the closure handled (a unique violation it answered, say) aborted the
            // transaction on the server: COMMIT would roll it back without a word.
            return Err(E::from(DbError::RolledBack(
                "a statement failed inside the transaction, which PostgreSQL then aborted",
            )));
        }
        if let Some(session) = c.into_pg() {
            session.commit().map_err(E::from)?;
        }
        Ok(out)
    }

    pub(super) fn read<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let mut conn = self.get().map_err(E::from)?;
        let PgConn { client, stmts } = &mut *conn;
        let c = Conn::pg(Session {
            handle: Handle::Client(client),
            stmts,
        });
        f(&c)
    }

    pub(super) fn pool_state(&self) -> PoolState {
        let (connections, idle, max) = self.pool.as_ref().map_or((0, 0, 0), |p| {
            let state = p.state();
            (state.connections, state.idle_connections, p.max_size())
        });
        PoolState {
            connections,
            idle,
            max,
            waits: self.waits.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Adds `on_message` for `channel`; the first call starts this instance's listener thread.
    /// After the listener's connection was lost and made again, every callback gets `"*"`:
    /// whatever was sent meanwhile was missed, so caches must drop everything.
    pub(super) fn listen(&self, channel: &'static str, on_message: Callback) -> Result<()> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(channel)
            .or_default()
            .push(on_message);
        let mut started = self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*started {
            let config = self.settings.config()?;
            let settings = self.settings.clone();
            let tls = self.tls.clone();
            let listeners = self.listeners.clone();
            let closed = self.closed.clone();
            std::thread::Builder::new()
                .name("pg-listen".into())
                .spawn(move || listen_until(&config, &settings, &tls, &listeners, &closed))
                .map_err(|e| DbError::Thread(e.to_string()))?;
            *started = true;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    /// A blocking client closes its connection with a runtime of its own, which must not start on
    /// an async worker (where the last handle is often dropped): the pool is dropped on a thread
    /// of its own.
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(pool))
                .map(|t| t.join());
        }
    }
}

fn listen_until(
    config: &postgres::Config,
    settings: &PgSettings,
    tls: &MakeRustlsConnect,
    listeners: &Mutex<HashMap<&'static str, Vec<Callback>>>,
    closed: &std::sync::atomic::AtomicBool,
) {
    let mut first = true;
    while !closed.load(Ordering::Relaxed) {
        match config.connect(tls.clone()) {
            Ok(mut client) => {
                let mut subscribed: Vec<&'static str> = Vec::new();
                if !first {
                    tracing::info!("the PostgreSQL listener is connected again; caches start over");
                    broadcast_all(listeners, "*");
                }
                first = false;
                if let Err(e) = listen_on(&mut client, listeners, &mut subscribed, closed) {
                    tracing::warn!(error = %describe(&e), "the PostgreSQL listener lost its connection; connecting again");
                    // Calls may have been missed while this was down.
                    broadcast_all(listeners, "*");
                }
            }
            Err(e) => {
                tracing::warn!(error = %settings.explain(&e), "the PostgreSQL listener cannot connect; trying again");
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn listen_on(
    client: &mut Client,
    listeners: &Mutex<HashMap<&'static str, Vec<Callback>>>,
    subscribed: &mut Vec<&'static str>,
    closed: &std::sync::atomic::AtomicBool,
) -> std::result::Result<(), postgres::Error> {
    while !closed.load(Ordering::Relaxed) {
        let channels: Vec<&'static str> = listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        for ch in channels {
            if !subscribed.contains(&ch) {
                client.batch_execute(&format!("LISTEN {ch}"))?;
                subscribed.push(ch);
            }
        }
        {
            let mut notifications = client.notifications();
            let mut messages = notifications.timeout_iter(Duration::from_millis(200));
            while let Some(n) = messages.next()? {
                let callbacks: Vec<Callback> = listeners
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(n.channel())
                    .cloned()
                    .unwrap_or_default();
                for cb in callbacks {
                    cb(n.payload());
                }
            }
        }
        // A cheap round trip notices a server that went away without closing the socket.
        client.simple_query("")?;
    }
    Ok(())
}

fn broadcast_all(listeners: &Mutex<HashMap<&'static str, Vec<Callback>>>, payload: &str) {
    let callbacks: Vec<Callback> = listeners
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .flatten()
        .cloned()
        .collect();
    for cb in callbacks {
        cb(payload);
    }
}

/// Applies the migrations this binary has and the database lacks, in one transaction under an
/// advisory lock. A database with a newer schema is refused before anything is written.
fn migrate(client: &mut Client, shown: &str) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('keybroker_schema') IS NOT NULL", &[])?
        .get(0);
    let found: i64 = if exists {
        tx.query_one(
            "SELECT COALESCE(MAX(version), 0) FROM keybroker_schema",
            &[],
        )?
        .get(0)
    } else {
        0
    };
    if found > MIGRATION_SQL.len() as i64 {
        return Err(DbError::TooNew {
            path: shown.to_owned(),
            found,
            known: MIGRATION_SQL.len(),
        });
    }
    if !exists {
        tx.batch_execute(
            "CREATE TABLE keybroker_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )?;
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (i, sql) in MIGRATION_SQL
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql)
            .map_err(|e| DbError::Migration(format!("postgres/{:04}: {}", i + 1, describe(&e))))?;
        tx.execute(
            "INSERT INTO keybroker_schema (version, applied_at) VALUES ($1, $2)",
            &[&(i as i64 + 1), &now],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// How many schema versions this binary knows on PostgreSQL.
pub const PG_MIGRATIONS_COUNT: usize = MIGRATION_SQL.len();

/// One connection of its own (no pool, no migration) for `check` and `audit verify`.
pub(super) fn inspect<T>(settings: &PgSettings, f: impl FnOnce(&Conn<'_>) -> T) -> Result<T> {
    let mut client = settings
        .config()?
        .connect(settings.connector()?)
        .map_err(|e| settings.cannot_connect(&e))?;
    let mut stmts = HashMap::new();
    let conn = Conn::pg(Session {
        handle: Handle::Client(&mut client),
        stmts: &mut stmts,
    });
    Ok(f(&conn))
}

enum Handle<'a> {
    Client(&'a mut Client),
    Tx(postgres::Transaction<'a>),
}

/// One connection (autocommit) or one transaction on it, with the connection's statements.
pub(super) struct Session<'a> {
    handle: Handle<'a>,
    stmts: &'a mut HashMap<String, Statement>,
}

impl Session<'_> {
    fn commit(self) -> Result<()> {
        if let Handle::Tx(tx) = self.handle {
            tx.commit()?;
        }
        Ok(())
    }

    pub(super) fn schema_version(&mut self) -> Result<i64> {
        let exists = self.query_row(
            "SELECT to_regclass('keybroker_schema') IS NOT NULL",
            &[],
            |r| r.get::<_, bool>(0),
        )?;
        if !exists {
            return Ok(0);
        }
        self.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM keybroker_schema",
            &[],
            |r| r.get(0),
        )
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let translated = placeholders(sql);
        let stmt = match &mut self.handle {
            Handle::Client(c) => c.prepare(&translated)?,
            Handle::Tx(t) => t.prepare(&translated)?,
        };
        if self.stmts.len() >= STATEMENT_CACHE {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    fn rows(&mut self, sql: &str, values: &[Value<'_>]) -> Result<Vec<postgres::Row>> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        Ok(match &mut self.handle {
            Handle::Client(c) => c.query(&stmt, &params)?,
            Handle::Tx(t) => t.query(&stmt, &params)?,
        })
    }

    pub(super) fn execute(&mut self, sql: &str, values: &[Value<'_>]) -> Result<usize> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let n = match &mut self.handle {
            Handle::Client(c) => c.execute(&stmt, &params)?,
            Handle::Tx(t) => t.execute(&stmt, &params)?,
        };
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(super) fn query_row<T>(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let rows = self.rows(sql, values)?;
        match rows.first() {
            Some(row) => f(&Row {
                inner: RowInner::Pg(row),
            }),
            None => Err(DbError::NoRows),
        }
    }

    pub(super) fn query_all<T>(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        f: &mut dyn FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.rows(sql, values)?
            .iter()
            .map(|row| {
                f(&Row {
                    inner: RowInner::Pg(row),
                })
            })
            .collect()
    }

    pub(super) fn for_each(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        f: &mut dyn FnMut(&Row<'_>) -> Result<()>,
    ) -> Result<()> {
        let stmt = self.statement(sql)?;
        let params = values.iter().map(|v| v as &(dyn ToSql + Sync));
        let mut rows = match &mut self.handle {
            Handle::Client(c) => c.query_raw(&stmt, params)?,
            Handle::Tx(t) => t.query_raw(&stmt, params)?,
        };
        while let Some(row) = rows.next()? {
            f(&Row {
                inner: RowInner::Pg(&row),
            })?;
        }
        Ok(())
    }

    pub(super) fn execute_batch(&mut self, sql: &str) -> Result<()> {
        match &mut self.handle {
            Handle::Client(c) => c.batch_execute(sql)?,
            Handle::Tx(t) => t.batch_execute(sql)?,
        }
        Ok(())
    }

    pub(super) fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        self.execute(
            "SELECT pg_notify(?1, ?2)",
            &[Value::Text(channel), Value::Text(payload)],
        )
        .map(|_| ())
    }

    pub(super) fn lock(&mut self, space: i32, key: i64) -> Result<()> {
        let k = (i64::from(space) << 48) ^ key;
        self.execute("SELECT pg_advisory_xact_lock(?1)", &[Value::Int(k)])
            .map(|_| ())
    }
}

/// `?N` → `$N` and a bare `?` → the next number, outside quotes and comments.
pub(crate) fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 0u32;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    next += 1;
                    out.push_str(&next.to_string());
                } else {
                    out.push_str(&digits);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, BoxError> {
        match *self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                #[allow(clippy::cast_precision_loss)]
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to a {ty} parameter").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                #[allow(clippy::cast_possible_truncation)]
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                _ => Err(format!("a real cannot be bound to a {ty} parameter").into()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    s.to_sql(ty, out)
                }
                _ => Err(format!("text cannot be bound to a {ty} parameter").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.to_sql(ty, out),
                _ => Err(format!("bytes cannot be bound to a {ty} parameter").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

pub(super) fn get<I: RowIndex, T: FromValue>(row: &postgres::Row, idx: I) -> Result<T> {
    let Some(at) = idx.pg(row) else {
        return Err(type_error(idx, "a column", Value::Null));
    };
    let ty = row.columns().get(at).map(|c| c.type_().clone());
    let value = match ty {
        Some(Type::INT8) => row
            .try_get::<_, Option<i64>>(at)?
            .map_or(Value::Null, Value::Int),
        Some(Type::INT4) => row
            .try_get::<_, Option<i32>>(at)?
            .map_or(Value::Null, |i| Value::Int(i64::from(i))),
        Some(Type::INT2) => row
            .try_get::<_, Option<i16>>(at)?
            .map_or(Value::Null, |i| Value::Int(i64::from(i))),
        Some(Type::BOOL) => row
            .try_get::<_, Option<bool>>(at)?
            .map_or(Value::Null, |b| Value::Int(i64::from(b))),
        Some(Type::FLOAT8) => row
            .try_get::<_, Option<f64>>(at)?
            .map_or(Value::Null, Value::Real),
        Some(Type::FLOAT4) => row
            .try_get::<_, Option<f32>>(at)?
            .map_or(Value::Null, |f| Value::Real(f64::from(f))),
        Some(Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME) => row
            .try_get::<_, Option<&str>>(at)?
            .map_or(Value::Null, Value::Text),
        Some(Type::BYTEA) => row
            .try_get::<_, Option<&[u8]>>(at)?
            .map_or(Value::Null, Value::Blob),
        Some(other) => {
            return Err(DbError::Type {
                column: idx.to_string(),
                wanted: "a column of a type keybroker stores (cast it to BIGINT?)",
                found: if other == Type::NUMERIC {
                    "a numeric"
                } else {
                    "another type"
                },
            })
        }
        None => return Err(type_error(idx, "a column", Value::Null)),
    };
    T::from_value(value).map_err(|wanted| type_error(idx, wanted, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_quotes() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?2"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
        assert_eq!(placeholders("VALUES (?, ?, '?')"), "VALUES ($1, $2, '?')");
        assert_eq!(placeholders("-- what?\nSELECT ?3"), "-- what?\nSELECT $3");
    }

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redacted_url("postgres://kb:s3cret@db:5432/kb"),
            "postgres://kb:***@db:5432/kb"
        );
        assert_eq!(
            redacted_url("postgres://db/kb?password=s3cret"),
            "postgres://db/kb?..."
        );
        assert!(PgSettings::parse(SecretString::from("mysql://x")).is_err());
        assert!(PgSettings::parse(SecretString::from("postgres://kb@db/kb")).is_ok());
    }
}
