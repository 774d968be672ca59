//! Server-side sessions. The cookie carries a 256-bit random id signed with HMAC-SHA256; the
//! database stores only the SHA-256 of the id, so a copy of the database cannot be replayed as a
//! cookie. Idle (30 min) and absolute (12 h) timeouts are enforced here, against the injected clock.

use crate::db::{Conn, Optional as _};
use crate::params;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::ServerSecret;

/// `__Host-` makes the browser insist on `Secure`, `Path=/` and no `Domain`.
pub const COOKIE_NAME: &str = "__Host-kb_session";
pub const IDLE_TIMEOUT_SECS: i64 = 30 * 60;
pub const ABSOLUTE_TIMEOUT_SECS: i64 = 12 * 60 * 60;
pub const REAUTH_WINDOW_SECS: i64 = 10 * 60;
/// `last_seen_at` is written at most this often per session, so reads stay reads.
const TOUCH_EVERY_SECS: i64 = 60;

type HmacSha256 = Hmac<Sha256>;

/// A session id: 256 random bits. Never logged, never stored.
pub struct SessionId([u8; 32]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

impl SessionId {
    pub fn generate() -> Self {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self(id)
    }

    /// What the database stores.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

fn mac(secret: &ServerSecret, label: &[u8], id: &[u8; 32]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(secret.expose()).ok()?;
    m.update(label);
    m.update(id);
    Some(m)
}

/// The cookie value: `base64url(id) "." base64url(hmac(secret, id))`.
pub fn cookie_value(secret: &ServerSecret, id: &SessionId) -> String {
    let tag = mac(secret, b"keybroker-session-v1:", &id.0)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default();
    format!("{}.{}", B64.encode(id.0), B64.encode(tag))
}

/// Verifies a cookie's signature and returns the id it carries.
pub fn parse_cookie(secret: &ServerSecret, value: &str) -> Option<SessionId> {
    let (id_b64, tag_b64) = value.split_once('.')?;
    if id_b64.len() != 43 || tag_b64.len() != 43 {
        return None;
    }
    let id: [u8; 32] = B64.decode(id_b64).ok()?.try_into().ok()?;
    let tag = B64.decode(tag_b64).ok()?;
    mac(secret, b"keybroker-session-v1:", &id)?
        .verify_slice(&tag)
        .ok()?;
    Some(SessionId(id))
}

/// The CSRF token of a session: derived from its id, so nothing more is stored.
pub fn csrf_token(secret: &ServerSecret, id: &SessionId) -> String {
    let tag = mac(secret, b"keybroker-csrf-v1:", &id.0)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default();
    B64.encode(tag)
}

pub fn csrf_matches(secret: &ServerSecret, id: &SessionId, presented: &str) -> bool {
    let expected = csrf_token(secret, id);
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// A live session, as loaded for a request.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub public_id: String,
    pub account_id: i64,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub reauth_until: i64,
}

impl SessionRow {
    pub fn expired(&self, now: i64) -> bool {
        now >= self.last_seen_at + IDLE_TIMEOUT_SECS
            || now >= self.created_at + ABSOLUTE_TIMEOUT_SECS
    }

    pub fn needs_touch(&self, now: i64) -> bool {
        now - self.last_seen_at >= TOUCH_EVERY_SECS
    }
}

/// Stores a new session for `account_id` and returns its id (for the cookie).
pub fn create(
    conn: &Conn<'_>,
    account_id: i64,
    now: i64,
    user_agent: &str,
    client_addr: &str,
) -> crate::db::Result<(SessionId, String)> {
    let id = SessionId::generate();
    let public_id = format!("ses_{}", uuid::Uuid::new_v4().simple());
    let user_agent: String = user_agent.chars().take(200).collect();
    conn.execute(
        "INSERT INTO sessions (id_hash, public_id, account_id, created_at, last_seen_at, user_agent, client_addr)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)",
        params![id.hash().as_slice(), public_id, account_id, now, user_agent, client_addr],
    )?;
    Ok((id, public_id))
}

pub fn load(conn: &Conn<'_>, id_hash: &[u8; 32]) -> crate::db::Result<Option<SessionRow>> {
    conn.prepare_cached(
        // A disabled account's sessions are deleted when it is disabled; the join also covers a
        // session started in the moment between.
        "SELECT s.public_id, s.account_id, s.created_at, s.last_seen_at, s.reauth_until
         FROM sessions s JOIN accounts a ON a.id = s.account_id
         WHERE s.id_hash = ?1 AND a.disabled_at IS NULL",
    )?
    .query_row([id_hash.as_slice()], |r| {
        Ok(SessionRow {
            public_id: r.get(0)?,
            account_id: r.get(1)?,
            created_at: r.get(2)?,
            last_seen_at: r.get(3)?,
            reauth_until: r.get(4)?,
        })
    })
    .optional()
}

pub fn touch(conn: &Conn<'_>, id_hash: &[u8; 32], now: i64) -> crate::db::Result<()> {
    conn.execute(
        "UPDATE sessions SET last_seen_at = ?2 WHERE id_hash = ?1 AND last_seen_at < ?2",
        params![id_hash.as_slice(), now],
    )?;
    Ok(())
}

pub fn revoke(conn: &Conn<'_>, id_hash: &[u8; 32]) -> crate::db::Result<bool> {
    Ok(conn.execute(
        "DELETE FROM sessions WHERE id_hash = ?1",
        [id_hash.as_slice()],
    )? > 0)
}

pub fn revoke_all(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<usize> {
    conn.execute("DELETE FROM sessions WHERE account_id = ?1", [account_id])
}

/// Revokes every session of the account but `keep` (after a password change).
pub fn revoke_others(
    conn: &Conn<'_>,
    account_id: i64,
    keep: &[u8; 32],
) -> crate::db::Result<usize> {
    conn.execute(
        "DELETE FROM sessions WHERE account_id = ?1 AND id_hash != ?2",
        params![account_id, keep.as_slice()],
    )
}

/// Revokes one of the account's sessions by its public id; returns its id hash, or `None` when
/// the account has no such session (another account's id included).
pub fn revoke_public(
    conn: &Conn<'_>,
    account_id: i64,
    public_id: &str,
) -> crate::db::Result<Option<[u8; 32]>> {
    let hash: Option<Vec<u8>> = conn
        .query_row(
            "DELETE FROM sessions WHERE account_id = ?1 AND public_id = ?2 RETURNING id_hash",
            params![account_id, public_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(hash.map(|h| h.try_into().unwrap_or([0u8; 32])))
}

/// A session as its owner sees it in the list.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id_hash: [u8; 32],
    pub public_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub user_agent: String,
    pub client_addr: String,
}

/// The account's live sessions (timed-out ones are left out), most recently used first.
pub fn list(conn: &Conn<'_>, account_id: i64, now: i64) -> crate::db::Result<Vec<SessionInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id_hash, public_id, created_at, last_seen_at, user_agent, client_addr FROM sessions
         WHERE account_id = ?1 AND last_seen_at > ?2 AND created_at > ?3
         ORDER BY last_seen_at DESC, created_at DESC",
    )?;
    let rows = stmt.query_map(
        params![
            account_id,
            now - IDLE_TIMEOUT_SECS,
            now - ABSOLUTE_TIMEOUT_SECS
        ],
        |r| {
            let hash: Vec<u8> = r.get(0)?;
            Ok(SessionInfo {
                id_hash: hash.try_into().unwrap_or([0u8; 32]),
                public_id: r.get(1)?,
                created_at: r.get(2)?,
                last_seen_at: r.get(3)?,
                user_agent: r.get(4)?,
                client_addr: r.get(5)?,
            })
        },
    )?;
    rows.collect()
}

pub fn set_reauth(conn: &Conn<'_>, id_hash: &[u8; 32], until: i64) -> crate::db::Result<()> {
    conn.execute(
        "UPDATE sessions SET reauth_until = ?2 WHERE id_hash = ?1",
        params![id_hash.as_slice(), until],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> ServerSecret {
        ServerSecret::from_bytes(vec![b; 32])
    }

    #[test]
    fn cookie_round_trips_and_rejects_tampering_and_foreign_keys() {
        let id = SessionId::generate();
        let value = cookie_value(&secret(1), &id);
        assert_eq!(parse_cookie(&secret(1), &value).unwrap().hash(), id.hash());
        assert!(parse_cookie(&secret(2), &value).is_none());
        let mut bytes = value.into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        assert!(parse_cookie(&secret(1), &String::from_utf8(bytes).unwrap()).is_none());
        assert!(parse_cookie(&secret(1), "garbage").is_none());
        assert!(parse_cookie(&secret(1), "").is_none());
    }

    #[test]
    fn csrf_token_is_bound_to_the_session() {
        let (a, b) = (SessionId::generate(), SessionId::generate());
        let token = csrf_token(&secret(1), &a);
        assert!(csrf_matches(&secret(1), &a, &token));
        assert!(!csrf_matches(&secret(1), &b, &token));
        assert!(!csrf_matches(&secret(1), &a, ""));
    }

    #[test]
    fn expiry_follows_idle_and_absolute_timeouts() {
        let row = SessionRow {
            public_id: String::new(),
            account_id: 1,
            created_at: 0,
            last_seen_at: 0,
            reauth_until: 0,
        };
        assert!(!row.expired(IDLE_TIMEOUT_SECS - 1));
        assert!(row.expired(IDLE_TIMEOUT_SECS));
        let busy = SessionRow {
            last_seen_at: ABSOLUTE_TIMEOUT_SECS - 10,
            ..row
        };
        assert!(!busy.expired(ABSOLUTE_TIMEOUT_SECS - 1));
        assert!(busy.expired(ABSOLUTE_TIMEOUT_SECS));
    }
}
