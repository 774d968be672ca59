//! Recently read key ciphertexts, so the proxy does not go to SQLite (and a blocking thread) on
//! every call. Only sealed blobs are kept, never plaintext: each call still opens its own copy
//! with the vault and drops it when done. An entry lives at most one second, so a change made by
//! another process is seen within a second; rotating or deleting a key through any instance evicts
//! the account's entries at once (`invalidate`). Missing keys are not cached, so a key added is usable at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Cheap to clone: clones share the entries (the invalidation listener holds one).
#[derive(Clone, Default)]
pub struct KeyCache {
    entries: Arc<Mutex<HashMap<(i64, String), Cached>>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache")
    }
}

struct Cached {
    key_id: String,
    blob: Arc<[u8]>,
    loaded: Instant,
}

impl KeyCache {
    pub const TTL: Duration = Duration::from_secs(1);
    const MAX_ENTRIES: usize = 10_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, String), Cached>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sealed key of (`account`, `provider`) if loaded within the last second.
    pub fn get(&self, account: i64, provider: &str) -> Option<(String, Arc<[u8]>)> {
        let entries = self.lock();
        let c = entries.get(&(account, provider.to_owned()))?;
        (c.loaded.elapsed() < Self::TTL).then(|| (c.key_id.clone(), Arc::clone(&c.blob)))
    }

    pub fn put(&self, account: i64, provider: &str, key_id: String, blob: Arc<[u8]>) {
        let mut entries = self.lock();
        if entries.len() >= Self::MAX_ENTRIES {
            entries.retain(|_, c| c.loaded.elapsed() < Self::TTL);
        }
        entries.insert(
            (account, provider.to_owned()),
            Cached {
                key_id,
                blob,
                loaded: Instant::now(),
            },
        );
    }

    /// Forgets every key of `account` (after a rotation or deletion commits).
    pub fn invalidate_account(&self, account: i64) {
        self.lock().retain(|(a, _), _| *a != account);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}
