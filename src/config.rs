//! Typed settings for the server, and the server's secrets. Secrets come from the environment
//! only; for a first run with no configuration they are generated into the data directory
//! (mode 0600) with a loud warning that this is a development set-up. No secret is ever in source.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::accounts::oauth::OAuthSettings;
use crate::accounts::signup::SignupPolicy;
use crate::accounts::throttle::ThrottleSettings;
use crate::clock::{SharedClock, SystemClock};
use crate::env_var::env_var;
use crate::mail::MailSettings;
use crate::secret::ServerSecret;
use crate::vault::{Keyring, KeyringError, MasterKeyId};

/// Where each secret comes from: the values of the environment variables, if set.
#[derive(Default, Clone)]
pub struct SecretSources {
    /// `KEYBROKER_MASTER_KEY`: base64 of 32 bytes; its id is `default`.
    pub master_key: Option<SecretString>,
    /// `KEYBROKER_MASTER_KEYS`: `id1:base64,id2:base64`.
    pub master_keys: Option<SecretString>,
    /// `KEYBROKER_ACTIVE_MASTER_KEY`: the id that encrypts new data.
    pub active_master_key: Option<String>,
    /// `KEYBROKER_EMAIL_PEPPER`: base64, at least 32 bytes.
    pub email_pepper: Option<SecretString>,
    /// `KEYBROKER_SESSION_SECRET`: base64, at least 32 bytes.
    pub session_secret: Option<SecretString>,
    /// `KEYBROKER_FINGERPRINT_SECRET`: base64, at least 32 bytes.
    pub fingerprint_secret: Option<SecretString>,
}

impl fmt::Debug for SecretSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSources")
            .field("master_key", &self.master_key.is_some())
            .field("master_keys", &self.master_keys.is_some())
            .field("active_master_key", &self.active_master_key)
            .finish_non_exhaustive()
    }
}

impl SecretSources {
    pub fn from_env() -> Self {
        let secret = |name| env_var(name).map(SecretString::from);
        Self {
            master_key: secret("KEYBROKER_MASTER_KEY"),
            master_keys: secret("KEYBROKER_MASTER_KEYS"),
            active_master_key: env_var("KEYBROKER_ACTIVE_MASTER_KEY"),
            email_pepper: secret("KEYBROKER_EMAIL_PEPPER"),
            session_secret: secret("KEYBROKER_SESSION_SECRET"),
            fingerprint_secret: secret("KEYBROKER_FINGERPRINT_SECRET"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("no master key configured: set KEYBROKER_MASTER_KEY (or KEYBROKER_MASTER_KEYS), or run `keybroker serve` once to create a development key in the data directory")]
    NoMasterKey,
    #[error("{what} must be base64 of at least 32 bytes")]
    WeakSecret { what: &'static str },
    #[error("{what} is not set and there is no generated one in the data directory")]
    MissingSecret { what: &'static str },
    #[error("{path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The HMAC keys the server uses beside the vault.
#[derive(Debug, Clone)]
pub struct ServerSecrets {
    /// Keys account rows: HMAC-SHA256(pepper, email).
    pub email_pepper: ServerSecret,
    /// Signs session cookies and derives CSRF tokens.
    pub session_secret: ServerSecret,
    /// Keys the fingerprints shown for stored provider keys.
    pub fingerprint_secret: ServerSecret,
}

/// Whether missing secrets may be created in the data directory (only `serve` does that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Generate,
    Refuse,
}

const MIN_SECRET_LEN: usize = 32;

const DEV_WARNING: &str = "DEVELOPMENT SET-UP: secrets are kept in the data directory. Anyone who can read \
    that directory can decrypt every stored key. For production set KEYBROKER_MASTER_KEY, KEYBROKER_EMAIL_PEPPER, \
    KEYBROKER_SESSION_SECRET and KEYBROKER_FINGERPRINT_SECRET from a secret store";

/// Says loudly, once per process and on every start (not only the first), that secrets come from
/// the data directory; later files get a short line when they were just generated.
fn dev_warning(file: &Path, generated: bool) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let mut first = false;
    WARNED.call_once(|| first = true);
    if first {
        let how = if generated { "generated" } else { "read" };
        tracing::warn!(file = %file.display(), secret = how, "{DEV_WARNING}");
    } else if generated {
        tracing::warn!(file = %file.display(), "development secret generated");
    }
}

/// The master keyring: from the environment, else `<data_dir>/master.key` (id `default`),
/// else (only when `missing` allows) a new development key written there.
pub fn resolve_keyring(
    sources: &SecretSources,
    data_dir: &Path,
    missing: Missing,
) -> Result<Keyring, ConfigError> {
    if let Some(ring) = Keyring::from_config(
        sources.master_key.as_ref().map(|s| s.expose_secret()),
        sources.master_keys.as_ref().map(|s| s.expose_secret()),
        sources.active_master_key.as_deref(),
    )? {
        return Ok(ring);
    }
    let (b64, generated) = file_secret(
        data_dir,
        "master.key",
        missing,
        crate::vault::generate_master_key_b64,
    )?
    .ok_or(ConfigError::NoMasterKey)?;
    if missing == Missing::Generate {
        dev_warning(&data_dir.join("master.key"), generated);
    }
    Keyring::from_config(Some(&b64), None, Some(MasterKeyId::DEFAULT))?
        .ok_or(ConfigError::NoMasterKey)
}

impl ServerSecrets {
    /// Each from its environment variable, else its file in the data directory, else generated
    /// there when `missing` allows.
    pub fn resolve(
        sources: &SecretSources,
        data_dir: &Path,
        missing: Missing,
    ) -> Result<Self, ConfigError> {
        let one = |env: &Option<SecretString>,
                   what: &'static str,
                   file: &str|
         -> Result<ServerSecret, ConfigError> {
            let b64 = match env {
                Some(v) => Zeroizing::new(v.expose_secret().to_owned()),
                None => {
                    let (b64, generated) = file_secret(data_dir, file, missing, random_secret_b64)?
                        .ok_or(ConfigError::MissingSecret { what })?;
                    if missing == Missing::Generate {
                        dev_warning(&data_dir.join(file), generated);
                    }
                    b64
                }
            };
            decode_secret(&b64, what)
        };
        Ok(Self {
            email_pepper: one(
                &sources.email_pepper,
                "KEYBROKER_EMAIL_PEPPER",
                "email_pepper.key",
            )?,
            session_secret: one(
                &sources.session_secret,
                "KEYBROKER_SESSION_SECRET",
                "session_secret.key",
            )?,
            fingerprint_secret: one(
                &sources.fingerprint_secret,
                "KEYBROKER_FINGERPRINT_SECRET",
                "fingerprint_secret.key",
            )?,
        })
    }
}

fn random_secret_b64() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()))
}

fn decode_secret(b64: &str, what: &'static str) -> Result<ServerSecret, ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ConfigError::WeakSecret { what })?;
    if bytes.len() < MIN_SECRET_LEN {
        return Err(ConfigError::WeakSecret { what });
    }
    Ok(ServerSecret::from_bytes(bytes))
}

/// Reads `<data_dir>/<name>`, or creates it (0600, never overwriting) when allowed.
/// Returns the contents and whether it was created now.
fn file_secret(
    data_dir: &Path,
    name: &str,
    missing: Missing,
    make: impl FnOnce() -> Zeroizing<String>,
) -> Result<Option<(Zeroizing<String>, bool)>, ConfigError> {
    let path = data_dir.join(name);
    let err = |source| ConfigError::SecretFile {
        path: path.display().to_string(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(contents) => {
            let mode = fs::metadata(&path).map_err(err)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "secret file is readable by group or others; chmod 600 it");
            }
            Ok(Some((Zeroizing::new(contents.trim().to_owned()), false)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if missing == Missing::Refuse {
                return Ok(None);
            }
            let value = make();
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(err)?;
            file.write_all(value.as_bytes())
                .and_then(|()| file.write_all(b"\n"))
                .and_then(|()| file.sync_all())
                .map_err(err)?;
            Ok(Some((value, true)))
        }
        Err(e) => Err(err(e)),
    }
}

fn check_upstream_url(var: &str, url: &str) -> Result<String, ConfigError> {
    crate::providers::checked_base_url(url).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "{var} must be an http:// or https:// URL without credentials, query or fragment"
        ))
    })
}

/// Creates the data directory (0700) if needed and checks it is writable.
pub fn prepare_data_dir(dir: &Path) -> Result<(), ConfigError> {
    let err = |source| ConfigError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let probe = dir.join(".write-test");
    fs::write(&probe, b"").map_err(err)?;
    fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

/// Everything `Application::build` needs.
#[derive(Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    /// The URL users reach keybroker at (links in mail, the allowed `Origin`, OAuth redirect
    /// URIs). Never taken from a request's Host header. When unset, password-reset requests still
    /// answer 202 but mail nothing (a warning is logged, without any token), and OAuth sign-in
    /// answers 503.
    pub public_url: Option<String>,
    pub workers: Option<usize>,
    pub secrets: SecretSources,
    pub missing_secrets: Missing,
    pub clock: SharedClock,
    pub proxy: crate::proxy::ProxySettings,
    /// `KEYBROKER_PRICES`: a TOML file whose entries add to or replace the built-in prices.
    pub prices_file: Option<PathBuf>,
    /// `KEYBROKER_PROVIDERS`: a TOML file that changes or adds providers (`providers::Registry`).
    pub providers_file: Option<PathBuf>,
    pub mail: MailSettings,
    /// Webhooks: whether they may reach private addresses (`KEYBROKER_WEBHOOK_ALLOW_PRIVATE`).
    pub webhook: crate::webhooks::WebhookSettings,
    pub oauth: OAuthSettings,
    pub throttle: ThrottleSettings,
    /// HTTPS with this certificate and key; plain HTTP when `None` (`crate::transport`).
    pub tls: Option<crate::http::tls::TlsSettings>,
    /// A plain-HTTP listener that only redirects to HTTPS (needs `tls`).
    pub redirect_http: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `/.well-known/security.txt` (see `ops`); no contact by default, so it answers 404.
    pub security_txt: crate::ops::SecurityTxt,
    /// `KEYBROKER_METRICS_BIND`: serve `/metrics` on this address only.
    pub metrics_bind: Option<SocketAddr>,
    /// Longest time to receive a request body after its head (`KEYBROKER_BODY_TIMEOUT_SECS`).
    pub body_timeout: std::time::Duration,
    /// Password hashes computed at once (`KEYBROKER_PASSWORD_HASHERS`, default cores − 1).
    pub password_hashers: usize,
    /// Who may sign up (`KEYBROKER_SIGNUP`, `serve --signup`); default [`SignupPolicy::Open`].
    pub signup: SignupPolicy,
    /// `KEYBROKER_DATABASE_URL`: the whole store on PostgreSQL, shared by every instance given
    /// the same URL. `None`: the embedded SQLite file in the data directory.
    pub database: Option<crate::db::PgSettings>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field("public_url", &self.public_url)
            .field("workers", &self.workers)
            .field("mail", &self.mail)
            .field("webhook", &self.webhook)
            .field("oauth", &self.oauth)
            .field("throttle", &self.throttle)
            .field("tls", &self.tls)
            .field("redirect_http", &self.redirect_http)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("signup", &self.signup)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Defaults for `data_dir`, secrets from the environment, the system clock.
    pub fn new(bind: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            bind,
            data_dir,
            public_url: env_var("KEYBROKER_PUBLIC_URL"),
            workers: None,
            secrets: SecretSources::from_env(),
            missing_secrets: Missing::Generate,
            clock: Arc::new(SystemClock),
            proxy: crate::proxy::ProxySettings::default(),
            prices_file: env_var("KEYBROKER_PRICES").map(PathBuf::from),
            providers_file: env_var("KEYBROKER_PROVIDERS").map(PathBuf::from),
            mail: MailSettings::from_env(),
            webhook: crate::webhooks::WebhookSettings::from_env(),
            oauth: OAuthSettings::from_env(),
            throttle: ThrottleSettings::from_env(),
            tls: None,
            redirect_http: None,
            trusted_proxies: Vec::new(),
            security_txt: crate::ops::SecurityTxt::default(),
            metrics_bind: None,
            body_timeout: crate::http::body_deadline::DEFAULT,
            password_hashers: crate::accounts::password::HashingPool::default_size(),
            signup: SignupPolicy::default(),
            database: None,
        }
    }

    /// Reads the proxy's settings (and the request-body deadline) from the environment (see the
    /// README's table).
    pub fn proxy_from_env(&mut self) -> Result<(), ConfigError> {
        for provider in crate::providers::ids() {
            let var = crate::providers::upstream_env_var(provider);
            if let Some(url) = env_var(&var) {
                self.proxy
                    .upstreams
                    .insert(provider.to_owned(), check_upstream_url(&var, &url)?);
            }
        }
        let num = |var: &str| -> Result<Option<u64>, ConfigError> {
            env_var(var)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| ConfigError::Invalid(format!("{var} must be a whole number")))
                })
                .transpose()
        };
        if let Some(v) = num("KEYBROKER_BODY_TIMEOUT_SECS")? {
            self.body_timeout = std::time::Duration::from_secs(v.max(1));
        }
        if let Some(v) = num("KEYBROKER_PASSWORD_HASHERS")? {
            self.password_hashers = usize::try_from(v).unwrap_or(usize::MAX).max(1);
        }
        if let Some(v) = num("KEYBROKER_PROXY_MAX_BODY_BYTES")? {
            self.proxy.max_body_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = num("KEYBROKER_PROXY_CONNECT_TIMEOUT_SECS")? {
            self.proxy.connect_timeout = std::time::Duration::from_secs(v.max(1));
        }
        if let Some(v) = num("KEYBROKER_PROXY_READ_TIMEOUT_SECS")? {
            self.proxy.read_timeout = std::time::Duration::from_secs(v.max(1));
        }
        if let Some(v) = num("KEYBROKER_PROXY_UPSTREAM_IDLE_SECS")? {
            self.proxy.upstream_idle = std::time::Duration::from_secs(v.max(1));
        }
        if let Some(v) = num("KEYBROKER_PROXY_MAX_IN_FLIGHT")? {
            self.proxy.max_in_flight_per_account = u32::try_from(v).unwrap_or(u32::MAX).max(1);
        }
        if let Some(v) = num("KEYBROKER_PROXY_RATE_PER_MINUTE")? {
            self.proxy.requests_per_minute_per_token = u32::try_from(v).unwrap_or(u32::MAX).max(1);
        }
        if let Some(names) = env_var("KEYBROKER_PROXY_FORWARD_HEADERS") {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(ConfigError::Invalid(format!(
                        "KEYBROKER_PROXY_FORWARD_HEADERS: {name:?} is not a header name"
                    )));
                }
                self.proxy.forward_headers.push(name.to_ascii_lowercase());
            }
        }
        Ok(())
    }

    /// The database file inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("keybroker.db")
    }

    /// Where the store is: PostgreSQL when a database URL is set, else the SQLite file.
    pub fn database_location(&self) -> crate::db::Location {
        match &self.database {
            Some(pg) => crate::db::Location::Postgres(pg.clone()),
            None => crate::db::Location::Sqlite(self.database_path()),
        }
    }

    /// How a missing secret is met. With a shared database every instance must be given the
    /// same secrets, so none is ever generated (each instance would make its own): refuse.
    pub fn missing_secrets_policy(&self) -> Missing {
        match self.database {
            Some(_) => Missing::Refuse,
            None => self.missing_secrets,
        }
    }

    /// The hold journal's folder (see `spend::journal`). It belongs to the database file beside
    /// it: a restored database must start with it empty.
    pub fn spend_journal_dir(&self) -> PathBuf {
        self.data_dir.join("spend-journal")
    }
}
