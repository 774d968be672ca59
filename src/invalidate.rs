//! Telling every instance that a token or a key changed, so none of them answers from its
//! caches with what was revoked, deleted or rotated. The change is announced inside the write
//! transaction that makes it ([`Conn::notify`]: PostgreSQL `NOTIFY`, delivered when the
//! transaction commits, before the API answers), and each instance's listener ([`subscribe`])
//! evicts its own entries within milliseconds. On SQLite there is one instance per file and the
//! handler evicts locally, so nothing is sent.
//!
//! A listener that lost its connection cannot know what it missed: when it is back, every cache
//! is emptied (`*`). The caches' one-second lifetime is the bound either way.

use std::sync::Arc;

use crate::db::{Conn, Db, DbError};
use crate::keys::cache::KeyCache;
use crate::tokens::TokenCache;

/// The `LISTEN`/`NOTIFY` channel.
pub const CHANNEL: &str = "keybroker_invalidate";

/// Announces that tool token `id` was revoked (or its account changed).
pub fn token_changed(conn: &Conn<'_>, id: &str) -> Result<(), DbError> {
    conn.notify(CHANNEL, &format!("token:{id}"))
}

/// Announces that the keys of `account` changed (deleted, rotated).
pub fn keys_changed(conn: &Conn<'_>, account: i64) -> Result<(), DbError> {
    conn.notify(CHANNEL, &format!("keys:{account}"))
}

/// Announces that `account` changed as a whole (disabled): every token and key of it.
pub fn account_changed(conn: &Conn<'_>, account: i64) -> Result<(), DbError> {
    conn.notify(CHANNEL, &format!("account:{account}"))
}

/// Evicts from this instance's caches what any instance announces.
pub fn subscribe(db: &Db, tokens: TokenCache, keys: KeyCache) -> Result<(), DbError> {
    db.listen(
        CHANNEL,
        Arc::new(move |payload: &str| apply(payload, &tokens, &keys)),
    )
}

fn apply(payload: &str, tokens: &TokenCache, keys: &KeyCache) {
    match payload.split_once(':') {
        Some(("token", id)) => tokens.invalidate(id),
        Some(("keys", account)) => {
            if let Ok(a) = account.parse() {
                keys.invalidate_account(a);
            }
        }
        Some(("account", account)) => {
            if let Ok(a) = account.parse() {
                keys.invalidate_account(a);
                tokens.invalidate_account(a);
            }
        }
        // `*` (the listener reconnected) and anything not understood: drop everything.
        _ => {
            tokens.clear();
            keys.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_announcement_empties_every_cache() {
        let (tokens, keys) = (TokenCache::default(), KeyCache::default());
        keys.put(1, "openai", "k".into(), Arc::from(&b"blob"[..]));
        apply("keys:2", &tokens, &keys);
        assert!(keys.get(1, "openai").is_some());
        apply("keys:1", &tokens, &keys);
        assert!(keys.get(1, "openai").is_none());
        keys.put(1, "openai", "k".into(), Arc::from(&b"blob"[..]));
        apply("*", &tokens, &keys);
        assert!(keys.get(1, "openai").is_none());
    }
}
