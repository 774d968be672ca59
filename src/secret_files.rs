//! `<VAR>_FILE`: each secret variable may instead name a file holding the value, the convention
//! of Docker and Kubernetes secrets (`/run/secrets/...`), so a secret need not sit in the
//! process environment. Setting both forms is an error, as is a file that cannot be read or is
//! empty; the error names the variable and the path, never the contents.

use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::accounts::oauth::OAuthSettings;
use crate::config::{ConfigError, SecretSources, Settings};

type Field = fn(&mut SecretSources) -> &mut Option<SecretString>;

/// The secret variables that have a `_FILE` form, and where each goes.
const SECRETS: &[(&str, Field)] = &[
    ("KEYBROKER_MASTER_KEY", |s| &mut s.master_key),
    ("KEYBROKER_MASTER_KEYS", |s| &mut s.master_keys),
    ("KEYBROKER_EMAIL_PEPPER", |s| &mut s.email_pepper),
    ("KEYBROKER_SESSION_SECRET", |s| &mut s.session_secret),
    ("KEYBROKER_FINGERPRINT_SECRET", |s| {
        &mut s.fingerprint_secret
    }),
];

/// Secrets outside [`SecretSources`] that also have a `_FILE` form: the SMTP URL (it may carry
/// the mail password) and the OAuth client secrets. [`apply_services`] reads them.
const SERVICE_SECRETS: &[&str] = &[
    "KEYBROKER_SMTP_URL",
    "KEYBROKER_OAUTH_GITHUB_CLIENT_SECRET",
    "KEYBROKER_OAUTH_GOOGLE_CLIENT_SECRET",
];

/// The names of the secret variables that have a `_FILE` form.
pub fn secret_vars() -> impl Iterator<Item = &'static str> {
    SECRETS
        .iter()
        .map(|(var, _)| *var)
        .chain(SERVICE_SECRETS.iter().copied())
}

fn both(var: &str) -> ConfigError {
    ConfigError::Invalid(format!("set either {var} or {var}_FILE, not both"))
}

/// Secret variable `var`: its value, or the contents of the file `<var>_FILE` names.
pub fn value(var: &str) -> Result<Option<SecretString>, ConfigError> {
    match (set(var), set(&format!("{var}_FILE"))) {
        (Some(_), Some(_)) => Err(both(var)),
        (Some(v), None) => Ok(Some(SecretString::from(v))),
        (None, Some(path)) => read(var, path.trim()).map(Some),
        (None, None) => Ok(None),
    }
}

/// Re-reads the mail and OAuth settings of `settings` with their secrets' `_FILE` forms
/// (`KEYBROKER_SMTP_URL_FILE`, `KEYBROKER_OAUTH_{GITHUB,GOOGLE}_CLIENT_SECRET_FILE`).
pub fn apply_services(settings: &mut Settings) -> Result<(), ConfigError> {
    settings.mail.smtp_url = value("KEYBROKER_SMTP_URL")?;
    settings.oauth = OAuthSettings::from_env_with(value)?;
    Ok(())
}

fn set(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn read(var: &str, path: &str) -> Result<SecretString, ConfigError> {
    read_path(&format!("{var}_FILE"), Path::new(path))
}

/// The trimmed contents of the secret file at `path` (`what` names where the path came from in
/// errors: a variable such as `KEYBROKER_DATABASE_URL_FILE`, or a flag such as `--to-file`).
/// An unreadable or empty file is an error that names the path, never the contents.
pub fn read_path(what: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let contents = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        ConfigError::SecretFile {
            path: format!("{what}={}", path.display()),
            source,
        }
    })?);
    let value = contents.trim();
    if value.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{what} names an empty file ({})",
            path.display()
        )));
    }
    Ok(SecretString::from(value.to_owned()))
}

/// Fills every secret of `sources` whose `<VAR>_FILE` is set from that file.
pub fn apply(sources: &mut SecretSources) -> Result<(), ConfigError> {
    for (var, field) in SECRETS {
        let Some(path) = set(&format!("{var}_FILE")) else {
            continue;
        };
        if set(var).is_some() {
            return Err(both(var));
        }
        *field(sources) = Some(read(var, path.trim())?);
    }
    Ok(())
}
