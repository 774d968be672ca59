//! `<VAR>_FILE`: each secret variable may instead name a file holding the value, the convention
//! of Docker and Kubernetes secrets (`/run/secrets/...`), so a secret need not sit in the
//! process environment. Setting both forms is an error, as is a file that cannot be read or is
//! empty; the error names the variable and the path, never the contents.

use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::config::{ConfigError, SecretSources};

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

/// The names of the secret variables that have a `_FILE` form.
pub fn secret_vars() -> impl Iterator<Item = &'static str> {
    SECRETS.iter().map(|(var, _)| *var)
}

fn set(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn read(var: &str, path: &str) -> Result<SecretString, ConfigError> {
    let contents = Zeroizing::new(std::fs::read_to_string(Path::new(path)).map_err(|source| {
        ConfigError::SecretFile {
            path: format!("{var}_FILE={path}"),
            source,
        }
    })?);
    let value = contents.trim();
    if value.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{var}_FILE names an empty file ({path})"
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
            return Err(ConfigError::Invalid(format!(
                "set either {var} or {var}_FILE, not both"
            )));
        }
        *field(sources) = Some(read(var, path.trim())?);
    }
    Ok(())
}
