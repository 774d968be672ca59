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

use crate::clock::{SharedClock, SystemClock};
use crate::vault::{Keyring, KeyringError, MasterKeyId};

/// A server-side secret (pepper, session key). `Debug` prints nothing of it.
#[derive(Clone)]
pub struct ServerSecret(Arc<Zeroizing<Vec<u8>>>);

impl ServerSecret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Arc::new(Zeroizing::new(bytes)))
    }
}

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}

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

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
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

const DEV_WARNING: &str = "DEVELOPMENT SET-UP: a secret was generated into the data directory. Anyone who can read \
    that directory can decrypt every stored key. For production set KEYBROKER_MASTER_KEY, KEYBROKER_EMAIL_PEPPER, \
    KEYBROKER_SESSION_SECRET and KEYBROKER_FINGERPRINT_SECRET from a secret store";

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
    if generated {
        tracing::warn!(file = %data_dir.join("master.key").display(), "{DEV_WARNING}");
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
                    if generated {
                        tracing::warn!(file = %data_dir.join(file).display(), "{DEV_WARNING}");
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

/// An operator's upstream override: an `http(s)://host[:port][/path]` URL with no credentials,
/// query or fragment. Returned without a trailing slash.
fn check_upstream_url(var: &str, url: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::Invalid(format!("{var} must be an http:// or https:// URL without credentials, query or fragment"));
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || url.contains(['?', '#', ' ']) {
        return Err(bad());
    }
    Ok(url.trim_end_matches('/').to_owned())
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
    /// The URL users reach keybroker at (links in mail, the allowed `Origin`). Never taken from
    /// a request's Host header.
    pub public_url: Option<String>,
    pub workers: Option<usize>,
    pub secrets: SecretSources,
    pub missing_secrets: Missing,
    pub clock: SharedClock,
    pub proxy: crate::proxy::ProxySettings,
    /// `KEYBROKER_PRICES`: a TOML file whose entries add to or replace the built-in prices.
    pub prices_file: Option<PathBuf>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field("public_url", &self.public_url)
            .field("workers", &self.workers)
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
        }
    }

    /// Reads the proxy's settings from the environment (see the README's table).
    pub fn proxy_from_env(&mut self) -> Result<(), ConfigError> {
        for provider in crate::providers::ids() {
            let var = format!("KEYBROKER_UPSTREAM_{}", provider.to_ascii_uppercase());
            if let Some(url) = env_var(&var) {
                self.proxy.upstreams.insert(provider.to_owned(), check_upstream_url(&var, &url)?);
            }
        }
        let num = |var: &str| -> Result<Option<u64>, ConfigError> {
            env_var(var)
                .map(|v| v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid(format!("{var} must be a whole number"))))
                .transpose()
        };
        if let Some(v) = num("KEYBROKER_PROXY_MAX_BODY_BYTES")? {
            self.proxy.max_body_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = num("KEYBROKER_PROXY_CONNECT_TIMEOUT_SECS")? {
            self.proxy.connect_timeout = std::time::Duration::from_secs(v.max(1));
        }
        if let Some(v) = num("KEYBROKER_PROXY_READ_TIMEOUT_SECS")? {
            self.proxy.read_timeout = std::time::Duration::from_secs(v.max(1));
        }
        if let Some(v) = num("KEYBROKER_PROXY_MAX_IN_FLIGHT")? {
            self.proxy.max_in_flight_per_account = u32::try_from(v).unwrap_or(u32::MAX).max(1);
        }
        if let Some(v) = num("KEYBROKER_PROXY_RATE_PER_MINUTE")? {
            self.proxy.requests_per_minute_per_token = u32::try_from(v).unwrap_or(u32::MAX).max(1);
        }
        Ok(())
    }

    /// The database file inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("keybroker.db")
    }
}
