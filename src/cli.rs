//! The command line: `serve`, `rewrap`, `master-key generate|retire`, `audit verify`, `redact`,
//! `backup`, `restore`, `check`, `copy-db`, `healthcheck`, `accounts ...` (`accounts_cmd`). Each command's result goes
//! to stdout; diagnostics go through the redacting logger; a failure is one line and a non-zero
//! exit status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::accounts::signup::SignupPolicy;
use crate::config::{Missing, Settings};
use crate::startup::{self, Application};
use crate::telemetry::{self, LogFormat};
use crate::vault_store;

#[derive(Debug, Parser)]
#[command(
    name = "keybroker",
    version,
    about = "Self-hosted BYOK key broker",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(Box<ServeArgs>),
    /// Re-encrypt every stored value under the active master key (resumable; safe beside a running server).
    Rewrap(RewrapArgs),
    /// Master key utilities.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
    /// Audit log utilities.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Copy stdin to stdout with API keys and credentials replaced by [REDACTED:kind] markers.
    Redact {
        /// Print how many secrets of each kind were found to stderr at the end.
        #[arg(long)]
        stats: bool,
    },
    /// Write a consistent copy of the database to PATH (safe beside a running server; keys stay sealed).
    Backup {
        /// Where to write the backup (mode 0600).
        path: PathBuf,
        /// Replace PATH if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        data: DataDir,
    },
    /// Replace the database with a backup, after checking it with the configured secrets (refused while a server runs).
    Restore {
        /// The backup file (from `keybroker backup`).
        path: PathBuf,
        #[command(flatten)]
        data: DataDir,
    },
    /// Check the database: integrity, schema, master keys, every stored value, audit chains (read-only).
    Check {
        #[command(flatten)]
        data: DataDir,
    },
    /// Copy the SQLite database of --data-dir into an empty PostgreSQL database, sealed values as they are, then check the copy (refused while a server runs on the data dir).
    CopyDb(CopyDbArgs),
    /// Operate on accounts: list, confirm, invite, disable, enable, reset-password (audited).
    Accounts {
        #[command(subcommand)]
        command: crate::accounts_cmd::AccountsCommand,
        #[command(flatten)]
        data: DataDir,
    },
    /// GET /healthz of the local server and exit 0 on a 2xx answer (for container health checks).
    Healthcheck {
        /// The address `serve` binds (an unspecified address is probed on loopback).
        #[arg(long, env = "KEYBROKER_BIND", default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// Probe this URL instead.
        #[arg(long)]
        url: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk every account's hash chain and report the first broken link (exit status 1 if any).
    Verify {
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(Debug, Args)]
struct DataDir {
    /// Directory holding the database, logs and (for development only) generated secrets.
    #[arg(
        long,
        env = "KEYBROKER_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    data_dir: PathBuf,
    /// PostgreSQL for the whole store, shared by several instances (postgres://user@host/db).
    /// Also KEYBROKER_DATABASE_URL, or KEYBROKER_DATABASE_URL_FILE naming a file that holds it
    /// (better: a password on the command line is visible to other users). TLS as libpq's
    /// `?sslmode=` (disable, prefer: the default, require, verify-ca, verify-full) and
    /// `&sslrootcert=/path/ca.pem`. Unset: the SQLite file in the data directory.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
}

impl DataDir {
    /// `--database-url`, else `KEYBROKER_DATABASE_URL` or its `_FILE` form; checked for form.
    fn database(&self) -> anyhow::Result<Option<crate::db::PgSettings>> {
        let url = match &self.database_url {
            Some(u) => Some(secrecy::SecretString::from(u.clone())),
            None => crate::secret_files::value("KEYBROKER_DATABASE_URL")?,
        };
        Ok(url.map(crate::db::PgSettings::parse).transpose()?)
    }

    fn location(&self) -> anyhow::Result<crate::db::Location> {
        Ok(match self.database()? {
            Some(pg) => crate::db::Location::Postgres(pg),
            None => crate::db::Location::Sqlite(self.data_dir.join(crate::backup::DB_FILE)),
        })
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYBROKER_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    #[command(flatten)]
    data: DataDir,
    /// Log line format.
    #[arg(long, env = "KEYBROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Worker threads (default: one per CPU core).
    #[arg(long, env = "KEYBROKER_WORKERS")]
    workers: Option<usize>,
    /// Who may sign up: open (default; warned about off loopback), invite, closed.
    #[arg(long, env = "KEYBROKER_SIGNUP", value_enum, default_value_t = SignupPolicy::Open)]
    signup: SignupPolicy,
    #[command(flatten)]
    transport: crate::transport::TransportArgs,
    #[command(flatten)]
    ops: crate::ops::OpsArgs,
}

#[derive(Debug, Args)]
struct CopyDbArgs {
    /// The data directory whose SQLite database (keybroker.db) is copied.
    #[arg(long, env = "KEYBROKER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// The PostgreSQL database to fill (postgres://user@host/db); it must be empty. A password
    /// here is visible to other users: prefer --to-file, or KEYBROKER_DATABASE_URL_FILE (the
    /// target when neither flag is given, as for `serve`).
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// A file holding the PostgreSQL URL (mode 0600, say), instead of --to.
    #[arg(long, value_name = "PATH")]
    to_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RewrapArgs {
    #[command(flatten)]
    data: DataDir,
    /// Rows re-encrypted per transaction.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

#[derive(Debug, Subcommand)]
enum MasterKeyCommand {
    /// Print a fresh random master key (base64 of 32 bytes).
    Generate,
    /// Check that no stored value still uses a master key id, so it can be removed from KEYBROKER_MASTER_KEYS.
    Retire {
        /// The master key id to retire.
        id: String,
        #[command(flatten)]
        data: DataDir,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Rewrap(args) => {
            telemetry::init_cli();
            rewrap(args)
        }
        Command::MasterKey(MasterKeyCommand::Generate) => {
            println!("{}", crate::vault::generate_master_key_b64().as_str());
            Ok(())
        }
        Command::MasterKey(MasterKeyCommand::Retire { id, data }) => {
            telemetry::init_cli();
            retire(&id, data)
        }
        Command::Audit(AuditCommand::Verify { data }) => {
            telemetry::init_cli();
            audit_verify(data)
        }
        Command::Redact { stats } => {
            telemetry::init_cli();
            crate::redact_cmd::run(stats)
        }
        Command::Backup { path, force, data } => {
            telemetry::init_cli();
            not_on_postgres(&data, "backup")
                .and_then(|()| crate::backup::backup_command(&data.data_dir, &path, force))
        }
        Command::Restore { path, data } => {
            telemetry::init_cli();
            not_on_postgres(&data, "restore")
                .and_then(|()| offline_settings(data))
                .and_then(|s| crate::backup::restore_command(&path, &s.data_dir, &s.secrets))
        }
        Command::Check { data } => {
            telemetry::init_cli();
            offline_settings(data).and_then(|s| {
                crate::check::check_command(&s.database_location(), &s.data_dir, &s.secrets)
            })
        }
        Command::CopyDb(args) => {
            telemetry::init_cli();
            copy_db(args)
        }
        Command::Accounts { command, data } => {
            telemetry::init_cli();
            offline_settings(data).and_then(|s| crate::accounts_cmd::run(command, s))
        }
        Command::Healthcheck { bind, url, timeout } => {
            let url = url.unwrap_or_else(|| crate::healthcheck::local_url(bind));
            runtime()
                .and_then(|rt| {
                    rt.block_on(crate::healthcheck::probe(
                        &url,
                        std::time::Duration::from_secs(timeout.max(1)),
                    ))
                })
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("error: {e}");
            eprintln!("{}", telemetry::redactor().redact(&line));
            ExitCode::FAILURE
        }
    }
}

/// `backup` and `restore` copy the SQLite file; a PostgreSQL store is backed up with
/// PostgreSQL's own tools, which see a consistent snapshot while every instance keeps writing.
fn not_on_postgres(data: &DataDir, command: &str) -> anyhow::Result<()> {
    match data.database()? {
        None => Ok(()),
        Some(pg) => anyhow::bail!(
            "`keybroker {command}` copies the SQLite file, and this store is PostgreSQL ({}). \
             Use PostgreSQL's tools: `pg_dump --format=custom --file=keybroker.dump <url>` to back \
             up (sealed values stay sealed; keep the master keys apart from the dump) and \
             `pg_restore --clean --dbname=<url> keybroker.dump` into a database no instance is \
             using, then `keybroker check`.",
            pg.shown()
        ),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before the runtime and its workers start: growing the table later stalls the thread that
    // needed it (only jemalloc's background thread exists by now; see `threads`).
    crate::threads::presize_descriptor_table(crate::threads::PRESIZED_DESCRIPTORS);
    // The logs directory lives in the data dir; create it before logging starts so a bad data
    // dir is reported as such, not as a logging failure.
    crate::config::prepare_data_dir(&args.data.data_dir)?;
    let _lock = crate::data_lock::DataDirLock::acquire(&args.data.data_dir)?;
    let _guard = telemetry::init(args.log_format, Some(&args.data.data_dir))?;
    let database = args.data.database()?;
    let mut settings = Settings::new(args.bind, args.data.data_dir);
    settings.database = database;
    crate::secret_files::apply(&mut settings.secrets)?;
    crate::secret_files::apply_services(&mut settings)?;
    settings.workers = args.workers;
    settings.signup = args.signup;
    args.transport.apply(&mut settings);
    settings.proxy_from_env()?;
    args.ops.apply(&mut settings)?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await?;
        tracing::info!("keybroker stopped");
        Ok(())
    })
}

fn offline_settings(data: DataDir) -> anyhow::Result<Settings> {
    let database = data.database()?;
    let mut settings = Settings::new(SocketAddr::from(([127, 0, 0, 1], 0)), data.data_dir);
    settings.database = database;
    crate::secret_files::apply(&mut settings.secrets)?;
    crate::secret_files::apply_services(&mut settings)?;
    settings.missing_secrets = Missing::Refuse;
    Ok(settings)
}

fn copy_db(args: CopyDbArgs) -> anyhow::Result<()> {
    let target = crate::copy_db::target(args.to, args.to_file)?;
    let mut sources = crate::config::SecretSources::from_env();
    crate::secret_files::apply(&mut sources)?;
    crate::copy_db::copy_db_command(&args.data_dir, &target, &sources)
}

fn rewrap(args: RewrapArgs) -> anyhow::Result<()> {
    let settings = offline_settings(args.data)?;
    runtime()?.block_on(async move {
        let (db, vault) = startup::open_storage(&settings).await?;
        let batch = args.batch_size;
        let report = tokio::task::spawn_blocking(move || {
            db.write_blocking(|conn| vault_store::rewrap_all(conn, &vault, batch))
        })
        .await??;
        for (table, n) in &report.rewrapped {
            println!("rewrapped {n} value(s) in {table}");
        }
        println!(
            "total: {} rewrapped, {} failed, {} changed concurrently (run again to pick them up)",
            report.total_rewrapped(),
            report.total_failed(),
            report.skipped
        );
        if report.total_failed() > 0 {
            anyhow::bail!(
                "{} value(s) did not decrypt and were left unchanged",
                report.total_failed()
            );
        }
        Ok(())
    })
}

fn retire(id: &str, data: DataDir) -> anyhow::Result<()> {
    let settings = offline_settings(data)?;
    runtime()?.block_on(async move {
        let location = settings.database_location();
        let key_id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::db::Db::at(&location)?
                .read_blocking(|conn| vault_store::check_retirable(conn, &key_id))
        })
        .await??;
        println!(
            "no stored value uses master key {id:?}; it can be removed from KEYBROKER_MASTER_KEYS"
        );
        Ok(())
    })
}

/// Opens the database read-only (no migration, no secrets needed; safe beside a running server)
/// and verifies the audit chains.
fn audit_verify(data: DataDir) -> anyhow::Result<()> {
    let report = crate::db::inspect(&data.location()?, crate::audit::verify)??;
    println!(
        "audit log: {} chain(s), {} entr{} checked",
        report.chains,
        report.entries,
        if report.entries == 1 { "y" } else { "ies" }
    );
    match report.first_broken {
        None => {
            println!("ok: every chain verifies");
            Ok(())
        }
        Some(b) => {
            println!("BROKEN: {b}");
            anyhow::bail!("the audit log has been tampered with or damaged")
        }
    }
}
