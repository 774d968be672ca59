//! Tool tokens: the credentials tools and agents present to the proxy instead of provider keys.
//!
//! A token is `kb_` + base64url(32 random bytes): 256 bits from the OS RNG, 46 characters. It is
//! shown once, at creation; only its SHA-256 is stored. A token belongs to one account, may be
//! limited to some providers ([`ProviderScope`]; no provider rows = all) and to some methods and
//! paths ([`Scope`]), may expire, and is revoked at once.
//!
//! Lookup is one SHA-256 and an indexed equality query, not argon2: a password needs a slow hash
//! because it is guessable, a 256-bit random token is not, and the proxy checks a token on every
//! call. No constant-time comparison is needed either: the database compares *hashes* of what
//! the caller sent, and learning how many leading bytes of a SHA-256 matched tells an attacker
//! nothing about a preimage. [`TokenCache`] keeps recent lookups for at most a second.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::db::{Conn, Optional as _};
use crate::params;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::db::{Db, DbError};
use crate::keys::cache::KeyCache;
use crate::keys::store::{self, StoreError};
use crate::vault::{Plaintext, Vault};

pub const PREFIX: &str = "kb_";
/// Characters after the prefix: 32 bytes in unpadded base64url.
const BODY_LEN: usize = 43;

/// A token as issued, shown to the user once. Zeroized on drop; `Debug` prints nothing of it.
pub struct IssuedToken(Zeroizing<String>);

impl IssuedToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuedToken(<redacted>)")
    }
}

fn generate() -> IssuedToken {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    IssuedToken(Zeroizing::new(format!(
        "{PREFIX}{}",
        B64.encode(bytes.as_ref())
    )))
}

/// What the database stores for a token string.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `presented` is shaped like one of our tokens; anything else is refused unhashed.
fn well_formed(presented: &str) -> bool {
    presented.len() == PREFIX.len() + BODY_LEN
        && presented.starts_with(PREFIX)
        && presented[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A live token, as the proxy and the API see it. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolToken {
    pub id: String,
    pub account_id: i64,
    pub name: String,
    /// Provider ids the token may use; empty means every provider.
    pub providers: Vec<String>,
    /// The methods and upstream paths the token may call.
    pub scope: Scope,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// The token that minted this one (a child token), if any.
    pub parent_id: Option<String>,
    /// 0 for a token made by its account's owner, 1 for a child, 2 for a grandchild.
    pub depth: i64,
    /// Whether the token had a spend limit of its own when it was loaded (`spend::budget`).
    pub budgeted: bool,
}

impl ToolToken {
    pub fn allows(&self, provider: &str) -> bool {
        self.providers.is_empty() || self.providers.iter().any(|p| p == provider)
    }

    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Which providers a token may call. "Every provider" is said with [`ProviderScope::All`],
/// never with an empty list: an empty list that arrives from a client is a mistake (a filter
/// that matched nothing, a bug in a script), and reading it as "all" would turn that mistake into
/// the widest token there is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderScope {
    All,
    /// Registry provider ids, at least one, without duplicates.
    Only(Vec<&'static str>),
}

impl ProviderScope {
    /// A scope limited to `ids`; `None` when `ids` is empty.
    pub fn only(ids: impl IntoIterator<Item = &'static str>) -> Option<Self> {
        let mut out: Vec<&'static str> = Vec::new();
        for id in ids {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        (!out.is_empty()).then_some(Self::Only(out))
    }

    /// The ids stored as the token's provider rows (none for [`ProviderScope::All`]).
    fn listed(&self) -> &[&'static str] {
        match self {
            Self::All => &[],
            Self::Only(ids) => ids,
        }
    }
}

/// Methods a scope may list.
pub const SCOPE_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Most path patterns a scope may list, and the longest pattern.
pub const MAX_PATH_PATTERNS: usize = 32;
pub const MAX_PATH_PATTERN_LEN: usize = 256;

/// Which calls a token may make at its providers, by method and by upstream path. `None` in
/// either part means unrestricted; a list is never empty (an empty list from a client is refused,
/// like an empty provider list: see [`ProviderScope`]).
///
/// A path pattern is an exact path (`/v1/balance`) or a prefix ending in `/*` (`/v1/chat/*`),
/// which matches every path below it. Patterns are matched, in ASCII lower case, against the
/// checked, normalised path as the provider routes it (`proxy::path::UpstreamPath::folded`), so
/// no spelling of a path (escapes, case, dot segments, `;params`) reaches outside a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Upper-case methods from [`SCOPE_METHODS`], without duplicates.
    pub methods: Option<Vec<String>>,
    /// Patterns as [`Scope::parse_paths`] accepted them.
    pub paths: Option<Vec<String>>,
}

/// Why a list of methods or paths was refused; `Display` says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("methods must list at least one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; leave the field out for every method")]
    Methods,
    #[error("paths must list 1-32 patterns of at most 256 characters, each an exact path starting with / or a prefix ending in /* (no other *, no ?, #, %, spaces, empty or dot segments); leave the field out for every path")]
    Paths,
}

/// How a pattern matches, its `*` taken off and in lower case.
enum Pattern {
    Exact(String),
    /// Ends with `/`.
    Under(String),
}

impl Pattern {
    fn of(raw: &str) -> Self {
        let lower = raw.to_ascii_lowercase();
        match lower.strip_suffix('*') {
            Some(prefix) => Pattern::Under(prefix.to_owned()),
            None => Pattern::Exact(lower),
        }
    }

    fn matches(&self, folded: &str) -> bool {
        match self {
            Pattern::Exact(p) => folded == p,
            Pattern::Under(prefix) => folded.starts_with(prefix.as_str()),
        }
    }

    /// Whether every path `self` matches, `parent` matches too.
    fn within(&self, parent: &Pattern) -> bool {
        match (self, parent) {
            (Pattern::Exact(p), parent) => parent.matches(p),
            (Pattern::Under(p), Pattern::Under(q)) => p.starts_with(q.as_str()),
            (Pattern::Under(_), Pattern::Exact(_)) => false,
        }
    }
}

fn valid_pattern(raw: &str) -> bool {
    let prefix = raw.ends_with("/*");
    let body = raw.strip_suffix("/*").unwrap_or(raw);
    raw.starts_with('/')
        && raw.len() <= MAX_PATH_PATTERN_LEN
        && !body.contains(['*', '?', '#', '%'])
        && !raw.chars().any(|c| c.is_control() || c.is_whitespace())
        // Segments between the slashes (none after the prefix's slash, none at all in `/`).
        && ((body.is_empty() && prefix)
            || (body == "/" && !prefix)
            || body
                .split('/')
                .skip(1)
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".."))
}

impl Scope {
    /// Every method and every path.
    pub const ALL: Scope = Scope {
        methods: None,
        paths: None,
    };

    /// `raw` in upper case, duplicates dropped; refused when empty or naming another method.
    pub fn parse_methods(raw: &[String]) -> Result<Vec<String>, ScopeError> {
        let mut out: Vec<String> = Vec::new();
        for m in raw {
            let upper = m.trim().to_ascii_uppercase();
            if !SCOPE_METHODS.contains(&upper.as_str()) {
                return Err(ScopeError::Methods);
            }
            if !out.contains(&upper) {
                out.push(upper);
            }
        }
        if out.is_empty() {
            return Err(ScopeError::Methods);
        }
        Ok(out)
    }

    /// `raw` as given, duplicates dropped; refused when empty, too long, or a pattern is not one.
    pub fn parse_paths(raw: &[String]) -> Result<Vec<String>, ScopeError> {
        if raw.is_empty() || raw.len() > MAX_PATH_PATTERNS || !raw.iter().all(|p| valid_pattern(p))
        {
            return Err(ScopeError::Paths);
        }
        let mut out: Vec<String> = Vec::new();
        for p in raw {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    /// Whether a call with `method` (upper case, as HTTP sends it) to `folded` (the normalised
    /// upstream path in lower case) is inside this scope.
    pub fn permits(&self, method: &str, folded_path: &str) -> bool {
        self.permits_method(method) && self.permits_path(folded_path)
    }

    pub fn permits_method(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == method))
    }

    pub fn permits_path(&self, folded_path: &str) -> bool {
        self.paths
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| Pattern::of(p).matches(folded_path)))
    }

    /// Whether every call this scope permits, `parent` permits too: its methods are a subset of
    /// the parent's, and each of its path patterns lies inside one of the parent's (an exact path
    /// the parent matches, or a prefix under one of the parent's prefixes). An unrestricted part
    /// narrows only an unrestricted parent.
    pub fn narrows(&self, parent: &Scope) -> bool {
        let methods = match (&self.methods, &parent.methods) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(mine), Some(theirs)) => mine.iter().all(|m| theirs.contains(m)),
        };
        let paths = match (&self.paths, &parent.paths) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(mine), Some(theirs)) => {
                let theirs: Vec<Pattern> = theirs.iter().map(|p| Pattern::of(p)).collect();
                mine.iter()
                    .all(|p| theirs.iter().any(|q| Pattern::of(p).within(q)))
            }
        };
        methods && paths
    }
}

/// A scope list as stored: one entry per line (entries never contain a newline).
fn stored_list(items: &[String]) -> String {
    items.join("\n")
}

fn loaded_list(stored: &str) -> Vec<String> {
    stored.split('\n').map(str::to_owned).collect()
}

/// A new token's settings, already validated.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub account_id: i64,
    pub name: &'a str,
    pub providers: &'a ProviderScope,
    pub scope: &'a Scope,
    pub expires_at: Option<i64>,
    pub now: i64,
    /// Set for a child token.
    pub parent: Option<Parent<'a>>,
}

/// Where a child token comes from.
#[derive(Debug, Clone)]
pub struct Parent<'a> {
    pub id: &'a str,
    /// The child's depth (its parent's + 1).
    pub depth: i64,
    /// The part of the parent's budget charged for the child, and the parent's period it was
    /// charged in; `None` when the parent has no limit to carve from.
    pub carve: Option<(crate::money::Money, i64)>,
}

/// Stores a new token and returns it with the secret to show once.
pub fn create(conn: &Conn<'_>, new: &NewToken<'_>) -> crate::db::Result<(ToolToken, IssuedToken)> {
    let issued = generate();
    let id = format!("tok_{}", uuid::Uuid::new_v4().simple());
    let parent = new.parent.as_ref();
    let carve = parent.and_then(|p| p.carve);
    conn.execute(
        "INSERT INTO tool_tokens (id, account_id, name, token_hash, created_at, expires_at,
                                  parent_id, depth, carve_micros, carve_period_start, methods, paths)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            id,
            new.account_id,
            new.name,
            hash(issued.expose()),
            new.now,
            new.expires_at,
            parent.map(|p| p.id),
            parent.map_or(0, |p| p.depth),
            carve.map(|(m, _)| m.micros()),
            carve.map(|(_, start)| start),
            new.scope.methods.as_deref().map(stored_list),
            new.scope.paths.as_deref().map(stored_list)
        ],
    )?;
    let listed = new.providers.listed();
    let mut providers: Vec<String> = Vec::with_capacity(listed.len());
    for provider in listed {
        conn.execute(
            "INSERT INTO tool_token_providers (token_id, provider) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
            params![id, provider],
        )?;
        if !providers.iter().any(|p| p == provider) {
            providers.push((*provider).to_owned());
        }
    }
    providers.sort();
    let token = ToolToken {
        id,
        account_id: new.account_id,
        name: new.name.to_owned(),
        providers,
        scope: new.scope.clone(),
        created_at: new.now,
        expires_at: new.expires_at,
        last_used_at: None,
        parent_id: parent.map(|p| p.id.to_owned()),
        depth: parent.map_or(0, |p| p.depth),
        budgeted: carve.is_some(),
    };
    Ok((token, issued))
}

fn providers_of(conn: &Conn<'_>, token_id: &str) -> crate::db::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT provider FROM tool_token_providers WHERE token_id = ?1 ORDER BY provider",
    )?;
    let rows = stmt.query_map([token_id], |r| r.get(0))?;
    rows.collect()
}

fn token_row(r: &crate::db::Row<'_>) -> crate::db::Result<ToolToken> {
    let methods: Option<String> = r.get(9)?;
    let paths: Option<String> = r.get(10)?;
    Ok(ToolToken {
        id: r.get(0)?,
        account_id: r.get(1)?,
        name: r.get(2)?,
        providers: Vec::new(),
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        last_used_at: r.get(5)?,
        parent_id: r.get(6)?,
        depth: r.get(7)?,
        budgeted: r.get::<_, i64>(8)? != 0,
        scope: Scope {
            methods: methods.as_deref().map(loaded_list),
            paths: paths.as_deref().map(loaded_list),
        },
    })
}

/// The columns [`token_row`] reads, from `tool_tokens t`; `s` is the token's own spend row.
macro_rules! token_columns {
    () => {
        "t.id, t.account_id, t.name, t.created_at, t.expires_at, t.last_used_at, t.parent_id,
         t.depth, CASE WHEN s.limit_micros IS NULL THEN 0 ELSE 1 END, t.methods, t.paths"
    };
}

/// The join that finds a token's own spend row (`spend::budget::token_key`).
macro_rules! token_spend_join {
    () => {
        "LEFT JOIN spend s ON s.account_id = t.account_id AND s.provider = 'token:' || t.id"
    };
}

/// The account's tokens that are not revoked (expired ones included, so they can be cleaned
/// up), oldest first.
pub fn list(conn: &Conn<'_>, account_id: i64) -> crate::db::Result<Vec<ToolToken>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        token_columns!(),
        " FROM tool_tokens t ",
        token_spend_join!(),
        " WHERE t.account_id = ?1 AND t.revoked_at IS NULL ORDER BY t.created_at, t.rowid"
    ))?;
    let mut tokens = stmt
        .query_map([account_id], token_row)?
        .collect::<crate::db::Result<Vec<_>>>()?;
    for token in &mut tokens {
        token.providers = providers_of(conn, &token.id)?;
    }
    Ok(tokens)
}

/// The account's live token `id`, if any (another account's id is none).
pub fn get(conn: &Conn<'_>, account_id: i64, id: &str) -> crate::db::Result<Option<ToolToken>> {
    let token = conn
        .prepare_cached(concat!(
            "SELECT ",
            token_columns!(),
            " FROM tool_tokens t ",
            token_spend_join!(),
            " WHERE t.id = ?1 AND t.account_id = ?2 AND t.revoked_at IS NULL"
        ))?
        .query_row(params![id, account_id], token_row)
        .optional()?;
    let Some(mut token) = token else {
        return Ok(None);
    };
    token.providers = providers_of(conn, &token.id)?;
    Ok(Some(token))
}

/// The ids of the live tokens `id` minted, and theirs (every depth), `id` not included.
pub fn descendants(conn: &Conn<'_>, account_id: i64, id: &str) -> crate::db::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut frontier = vec![id.to_owned()];
    // Depth is bounded (`spend::budget::MAX_DEPTH`); the bound here only guards a bad row.
    for _ in 0..8 {
        let mut next = Vec::new();
        for parent in &frontier {
            let children: Vec<String> = conn
                .prepare_cached(
                    "SELECT id FROM tool_tokens
                     WHERE parent_id = ?1 AND account_id = ?2 AND revoked_at IS NULL ORDER BY id",
                )?
                .query_map(params![parent, account_id], |r| r.get(0))?
                .collect::<crate::db::Result<_>>()?;
            next.extend(children);
        }
        if next.is_empty() {
            break;
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    Ok(out)
}

/// Revokes the account's token `id` and every token it minted (children, grandchildren);
/// the ids revoked, `id` first, or none when there is no such live token (another account's id
/// included).
pub fn revoke(
    conn: &Conn<'_>,
    account_id: i64,
    id: &str,
    now: i64,
) -> crate::db::Result<Vec<String>> {
    let n = conn.execute(
        "UPDATE tool_tokens SET revoked_at = ?1
         WHERE id = ?2 AND account_id = ?3 AND revoked_at IS NULL",
        params![now, id, account_id],
    )?;
    if n != 1 {
        return Ok(Vec::new());
    }
    let mut revoked = vec![id.to_owned()];
    for child in descendants(conn, account_id, id)? {
        conn.execute(
            "UPDATE tool_tokens SET revoked_at = ?1
             WHERE id = ?2 AND account_id = ?3 AND revoked_at IS NULL",
            params![now, child, account_id],
        )?;
        revoked.push(child);
    }
    for gone in &revoked {
        // Every other instance drops it from its cache when this commits.
        crate::invalidate::token_changed(conn, gone)?;
    }
    Ok(revoked)
}

/// The live, unexpired token `presented` is, if any: a SHA-256 lookup (see the module doc).
pub fn authenticate(
    conn: &Conn<'_>,
    presented: &str,
    now: i64,
) -> crate::db::Result<Option<ToolToken>> {
    if !well_formed(presented) {
        return Ok(None);
    }
    let token = conn
        .prepare_cached(concat!(
            // A disabled account's tokens are refused (the cache holds an answer ≤ 1 s).
            "SELECT ",
            token_columns!(),
            " FROM tool_tokens t JOIN accounts a ON a.id = t.account_id ",
            token_spend_join!(),
            " WHERE t.token_hash = ?1 AND t.revoked_at IS NULL AND a.disabled_at IS NULL"
        ))?
        .query_row([hash(presented)], token_row)
        .optional()?;
    let Some(mut token) = token else {
        return Ok(None);
    };
    if token.expired(now) {
        return Ok(None);
    }
    token.providers = providers_of(conn, &token.id)?;
    Ok(Some(token))
}

/// What a token may do with a provider.
#[derive(Debug)]
pub enum KeyAccess {
    /// The token is not scoped to this provider.
    NotInScope,
    /// The token's account has no key for this provider.
    NoKey,
    /// The token's account's key, decrypted for one call.
    Key {
        key_id: String,
        plaintext: Plaintext,
    },
}

/// The key a token may use for `provider`: only its own account's, only in scope. The proxy's
/// one way from a token to a key, so isolation holds by construction.
pub fn key_for(
    conn: &Conn<'_>,
    vault: &Vault,
    token: &ToolToken,
    provider: &str,
) -> Result<KeyAccess, StoreError> {
    if !token.allows(provider) {
        return Ok(KeyAccess::NotInScope);
    }
    Ok(
        match store::open(conn, vault, token.account_id, provider)? {
            Some((key_id, plaintext)) => KeyAccess::Key { key_id, plaintext },
            None => KeyAccess::NoKey,
        },
    )
}

/// [`key_for`] through a [`KeyCache`] of sealed keys: the proxy's hot path. The blob is opened
/// here, for this one call.
pub async fn key_for_cached(
    cache: &KeyCache,
    db: &Db,
    vault: &Vault,
    token: &ToolToken,
    provider: &'static str,
) -> Result<KeyAccess, StoreError> {
    if !token.allows(provider) {
        return Ok(KeyAccess::NotInScope);
    }
    let account = token.account_id;
    let sealed = match cache.get(account, provider) {
        Some(hit) => hit,
        None => {
            let loaded = db
                .read_inline(move |conn| store::load_blob(conn, account, provider))
                .await?;
            let Some((key_id, blob)) = loaded else {
                return Ok(KeyAccess::NoKey);
            };
            let blob: std::sync::Arc<[u8]> = blob.into();
            cache.put(
                account,
                provider,
                key_id.clone(),
                std::sync::Arc::clone(&blob),
            );
            (key_id, blob)
        }
    };
    let (key_id, blob) = sealed;
    let plaintext = vault.open(&blob, &store::binding(account, provider, &key_id))?;
    Ok(KeyAccess::Key { key_id, plaintext })
}

/// Recent token lookups, so the proxy does not query the database on every call.
///
/// An entry lives at most [`TokenCache::TTL`] (one second), so a revocation made anywhere, even
/// by another process, is seen within a second; a revocation through this server's API also
/// evicts the token at once ([`TokenCache::invalidate`]). Only successful lookups are cached:
/// a flood of made-up tokens cannot grow the cache, and a garbage token costs one hash and one
/// indexed read. Expiry is re-checked against the caller's clock on every hit.
#[derive(Clone, Default)]
pub struct TokenCache {
    entries: Arc<Mutex<HashMap<[u8; 32], Cached>>>,
}

struct Cached {
    token: ToolToken,
    loaded: Instant,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCache")
    }
}

impl TokenCache {
    pub const TTL: Duration = Duration::from_secs(1);
    /// Bound on live entries; past it the cache starts over (a second of extra reads at worst).
    const MAX_ENTRIES: usize = 10_000;

    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live token `presented` is, from the cache when fresh, else from the database.
    pub async fn authenticate(
        &self,
        db: &Db,
        presented: &str,
        now: i64,
    ) -> Result<Option<ToolToken>, DbError> {
        if !well_formed(presented) {
            return Ok(None);
        }
        let key = hash(presented);
        if let Some(hit) = self.lookup(&key) {
            return Ok((!hit.expired(now)).then_some(hit));
        }
        let presented = Zeroizing::new(presented.to_owned());
        let found = db
            .read_inline(move |conn| authenticate(conn, &presented, now))
            .await?;
        if let Some(token) = &found {
            self.insert(key, token.clone());
        }
        Ok(found)
    }

    fn lookup(&self, key: &[u8; 32]) -> Option<ToolToken> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(c) if c.loaded.elapsed() < Self::TTL => Some(c.token.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: [u8; 32], token: ToolToken) {
        let mut entries = self.lock();
        if entries.len() >= Self::MAX_ENTRIES {
            entries.retain(|_, c| c.loaded.elapsed() < Self::TTL);
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Cached {
                token,
                loaded: Instant::now(),
            },
        );
    }

    /// Forgets token `id` at once (called after a revocation commits).
    pub fn invalidate(&self, token_id: &str) {
        self.lock().retain(|_, c| c.token.id != token_id);
    }

    /// Forgets every token of `account` (disabled, say).
    pub fn invalidate_account(&self, account: i64) {
        self.lock().retain(|_, c| c.token.account_id != account);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Conn<'static> {
        let conn = Conn::memory();
        conn.execute(
            "INSERT INTO accounts (id, email_hash, email_blob, master_key_id, created_at)
             VALUES (1, x'01', x'01', 'default', 0)",
            (),
        )
        .unwrap();
        conn
    }

    static UNRESTRICTED: Scope = Scope::ALL;

    fn new(providers: &ProviderScope, expires_at: Option<i64>) -> NewToken<'_> {
        NewToken {
            account_id: 1,
            name: "ci",
            providers,
            scope: &UNRESTRICTED,
            expires_at,
            now: 100,
            parent: None,
        }
    }

    fn openai_only() -> ProviderScope {
        ProviderScope::only(["openai"]).unwrap()
    }

    #[test]
    fn an_empty_provider_list_is_no_scope_at_all() {
        assert_eq!(ProviderScope::only([]), None);
        assert_eq!(
            ProviderScope::only(["openai", "anthropic", "openai"]),
            Some(ProviderScope::Only(vec!["openai", "anthropic"]))
        );
    }

    #[test]
    fn tokens_are_prefixed_256_bit_and_distinct() {
        let a = generate();
        let b = generate();
        assert!(a.expose().starts_with("kb_"));
        assert_eq!(a.expose().len(), 46);
        assert_eq!(B64.decode(&a.expose()[3..]).unwrap().len(), 32);
        assert_ne!(a.expose(), b.expose());
        assert!(well_formed(a.expose()));
        assert_eq!(format!("{a:?}"), "IssuedToken(<redacted>)");
    }

    #[test]
    fn only_the_hash_is_stored_and_it_authenticates() {
        let conn = db();
        let (token, issued) = create(&conn, &new(&openai_only(), None)).unwrap();
        let stored: Vec<u8> = conn
            .query_row("SELECT token_hash FROM tool_tokens", (), |r| r.get(0))
            .unwrap();
        assert_eq!(stored, hash(issued.expose()).to_vec());
        let found = authenticate(&conn, issued.expose(), 100).unwrap().unwrap();
        assert_eq!(found, token);
        assert!(found.allows("openai"));
        assert!(!found.allows("anthropic"));
    }

    #[test]
    fn revoked_expired_and_malformed_tokens_do_not_authenticate() {
        let conn = db();
        let (token, issued) = create(&conn, &new(&ProviderScope::All, Some(200))).unwrap();
        assert!(authenticate(&conn, issued.expose(), 199).unwrap().is_some());
        assert!(authenticate(&conn, issued.expose(), 200).unwrap().is_none());
        assert_eq!(
            revoke(&conn, 1, &token.id, 150).unwrap(),
            vec![token.id.clone()]
        );
        assert!(authenticate(&conn, issued.expose(), 150).unwrap().is_none());
        assert!(revoke(&conn, 1, &token.id, 150).unwrap().is_empty());
        assert!(authenticate(&conn, "kb_short", 0).unwrap().is_none());
        assert!(authenticate(&conn, "", 0).unwrap().is_none());
    }

    #[test]
    fn an_unscoped_token_allows_every_provider() {
        let conn = db();
        let (token, _) = create(&conn, &new(&ProviderScope::All, None)).unwrap();
        assert!(token.allows("openai") && token.allows("twilio"));
    }

    fn scope(methods: Option<&[&str]>, paths: Option<&[&str]>) -> Scope {
        let owned = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        Scope {
            methods: methods.map(|m| Scope::parse_methods(&owned(m)).unwrap()),
            paths: paths.map(|p| Scope::parse_paths(&owned(p)).unwrap()),
        }
    }

    #[test]
    fn methods_are_upper_cased_deduplicated_and_never_empty() {
        let owned = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        assert_eq!(
            Scope::parse_methods(&owned(&["get", "GET", "Post"])),
            Ok(vec!["GET".to_owned(), "POST".to_owned()])
        );
        assert_eq!(Scope::parse_methods(&[]), Err(ScopeError::Methods));
        assert_eq!(
            Scope::parse_methods(&owned(&["TRACE"])),
            Err(ScopeError::Methods)
        );
        assert_eq!(
            Scope::parse_methods(&owned(&["CONNECT"])),
            Err(ScopeError::Methods)
        );
    }

    #[test]
    fn path_patterns_are_exact_paths_or_prefixes_ending_in_slash_star() {
        for good in [
            "/v1/balance",
            "/v1/chat/*",
            "/*",
            "/",
            "/v1beta/models/gemini:generateContent",
        ] {
            assert!(Scope::parse_paths(&[good.to_owned()]).is_ok(), "{good}");
        }
        let long = format!("/{}", "a".repeat(256));
        for bad in [
            "",
            "v1/chat",
            "/v1/*/x",
            "/v1*",
            "/v1/chat/**",
            "/v1?x=1",
            "/v1#f",
            "/v1/%2e%2e",
            "/v1/../x",
            "/v1/./x",
            "//x",
            "/v1/",
            "//*",
            "/v1 /x",
            "/v1\n",
            long.as_str(),
        ] {
            assert_eq!(
                Scope::parse_paths(&[bad.to_owned()]),
                Err(ScopeError::Paths),
                "{bad:?}"
            );
        }
        assert_eq!(Scope::parse_paths(&[]), Err(ScopeError::Paths));
        let many: Vec<String> = (0..33).map(|i| format!("/v{i}")).collect();
        assert_eq!(Scope::parse_paths(&many), Err(ScopeError::Paths));
        assert!(Scope::parse_paths(&many[..32]).is_ok());
    }

    #[test]
    fn a_scope_permits_only_its_methods_and_paths() {
        let s = scope(Some(&["get"]), Some(&["/v1/chat/*", "/v1/Balance"]));
        assert!(s.permits("GET", "/v1/chat/completions"));
        assert!(s.permits("GET", "/v1/chat/a/b"));
        assert!(s.permits("GET", "/v1/balance"));
        assert!(!s.permits("POST", "/v1/chat/completions"));
        assert!(!s.permits("GET", "/v1/chat"));
        assert!(!s.permits("GET", "/v1/chatter"));
        assert!(!s.permits("GET", "/v1/balance/x"));
        assert!(!s.permits("GET", "/v1/embeddings"));
        assert!(Scope::ALL.permits("DELETE", "/anything"));
        assert!(scope(None, Some(&["/*"])).permits("PATCH", "/x/y"));
    }

    #[test]
    fn a_scope_narrows_a_parent_that_permits_everything_it_does() {
        let parent = scope(Some(&["GET", "POST"]), Some(&["/v1/chat/*", "/v1/models"]));
        assert!(parent.narrows(&parent));
        assert!(scope(Some(&["GET"]), Some(&["/v1/chat/completions"])).narrows(&parent));
        assert!(scope(Some(&["POST"]), Some(&["/v1/chat/sub/*", "/v1/models"])).narrows(&parent));
        assert!(scope(Some(&["GET"]), Some(&["/V1/Chat/*"])).narrows(&parent));
        // Wider in one part is wider.
        assert!(!scope(Some(&["DELETE"]), Some(&["/v1/models"])).narrows(&parent));
        assert!(!scope(None, Some(&["/v1/models"])).narrows(&parent));
        assert!(!scope(Some(&["GET"]), None).narrows(&parent));
        assert!(!scope(Some(&["GET"]), Some(&["/v1/*"])).narrows(&parent));
        assert!(!scope(Some(&["GET"]), Some(&["/v1/models/*"])).narrows(&parent));
        assert!(!scope(Some(&["GET"]), Some(&["/v1/chatter"])).narrows(&parent));
        // Anything narrows an unrestricted parent; an unrestricted child narrows only that.
        assert!(parent.narrows(&Scope::ALL));
        assert!(Scope::ALL.narrows(&Scope::ALL));
        assert!(!Scope::ALL.narrows(&parent));
        assert!(scope(None, Some(&["/x"])).narrows(&scope(None, Some(&["/*"]))));
    }

    #[test]
    fn a_tokens_scope_is_stored_and_loaded_with_it() {
        let conn = db();
        let s = scope(Some(&["GET"]), Some(&["/v1/chat/*", "/v1/models"]));
        let providers = ProviderScope::All;
        let mut spec = new(&providers, None);
        spec.scope = &s;
        let (token, issued) = create(&conn, &spec).unwrap();
        assert_eq!(token.scope, s);
        let found = authenticate(&conn, issued.expose(), 100).unwrap().unwrap();
        assert_eq!(found.scope, s);
        assert_eq!(list(&conn, 1).unwrap()[0].scope, s);
        let (open, issued) = create(&conn, &new(&providers, None)).unwrap();
        assert_eq!(open.scope, Scope::ALL);
        assert_eq!(
            authenticate(&conn, issued.expose(), 100)
                .unwrap()
                .unwrap()
                .scope,
            Scope::ALL
        );
    }
}
