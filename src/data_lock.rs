//! The data directory's lock: `serve` holds an exclusive advisory lock (`flock`) on
//! `<data-dir>/keybroker.lock` for as long as it runs, and `restore` takes the same lock before it
//! replaces the database. The kernel drops the lock when the process ends, SIGKILL included, so a
//! crash never leaves a stale lock behind; the file itself is empty and may stay.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "keybroker.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another keybroker process holds {path} (a server is running on this data directory); stop it first")]
    Held { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Held while it lives; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock without waiting: a second server on the same data directory would keep its
    /// own spend ledger in memory and the two could together spend past a ceiling.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held {
                path: path.display().to_string(),
            }),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
