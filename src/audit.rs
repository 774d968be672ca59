//! The audit log: an append-only record of security-relevant events, hash-chained per account so
//! that an edited, removed or reordered entry is detected by [`verify`].

use crate::db::{Conn, Optional as _};
use crate::params;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The chain that holds events with no known account (e.g. a failed login for an unknown email).
pub const NO_ACCOUNT_CHAIN: i64 = 0;
/// The advisory-lock space of audit chains (see `db::Conn::lock`).
const LOCK_SPACE: i32 = 1;
const GENESIS: [u8; 32] = [0u8; 32];

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User,
    Token(String),
    System,
    Anonymous,
    /// The operator, through a `keybroker accounts ...` command on the data directory.
    Operator,
}

impl Actor {
    pub fn encode(&self) -> String {
        match self {
            Actor::User => "user".into(),
            Actor::Token(id) => format!("token:{id}"),
            Actor::System => "system".into(),
            Actor::Anonymous => "anonymous".into(),
            Actor::Operator => "operator".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// One event to append. Never put a secret in any field.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub account_id: Option<i64>,
    pub actor: Actor,
    pub action: &'a str,
    pub resource: &'a str,
    pub request_id: &'a str,
    pub client_addr: &'a str,
    pub outcome: Outcome,
    pub at: i64,
}

/// A stored entry, as the API and exports show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub request_id: String,
    pub client_addr: String,
    pub outcome: String,
    /// What changed, when the action has figures worth keeping (a ceiling's old and new limit).
    pub detail: String,
}

#[allow(clippy::too_many_arguments)]
fn entry_hash(
    chain: i64,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    resource: &str,
    request_id: &str,
    client_addr: &str,
    outcome: &str,
    detail: &str,
    prev: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keybroker-audit-v1");
    h.update(chain.to_be_bytes());
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [actor, action, resource, request_id, client_addr, outcome] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    // Only when present, so entries from before the column existed hash as they always did.
    if !detail.is_empty() {
        h.update(b"detail");
        h.update((detail.len() as u64).to_be_bytes());
        h.update(detail.as_bytes());
    }
    h.update(prev);
    h.finalize().into()
}

/// Appends an event to its account's chain. Call it inside the same write transaction as the
/// change it records, so the record and the change commit together.
pub fn append(conn: &Conn<'_>, event: &Event<'_>) -> crate::db::Result<()> {
    append_with_detail(conn, event, "")
}

/// [`append`], with the figures the change moved (`detail`, written by keybroker, never by a
/// client: it is shown and exported as it is).
pub fn append_with_detail(
    conn: &Conn<'_>,
    event: &Event<'_>,
    detail: &str,
) -> crate::db::Result<()> {
    let chain = event.account_id.unwrap_or(NO_ACCOUNT_CHAIN);
    // Instances sharing one database append to one chain in turn: the head read below and the
    // insert after it are one step (on SQLite the write transaction already is).
    conn.lock(LOCK_SPACE, chain)?;
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
            [chain],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_vec()),
    };
    let actor = event.actor.encode();
    let outcome = event.outcome.as_str();
    let hash = entry_hash(
        chain,
        seq,
        event.at,
        &actor,
        event.action,
        event.resource,
        event.request_id,
        event.client_addr,
        outcome,
        detail,
        &prev,
    );
    conn.execute(
        "INSERT INTO audit_log (chain, seq, at, actor, action, resource, request_id, client_addr, outcome, prev_hash, hash, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            chain,
            seq,
            event.at,
            actor,
            event.action,
            event.resource,
            event.request_id,
            event.client_addr,
            outcome,
            prev,
            hash.as_slice(),
            detail
        ],
    )?;
    Ok(())
}

/// The first place a chain does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    pub chain: i64,
    pub seq: i64,
    pub row_id: i64,
    pub reason: &'static str,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.chain == NO_ACCOUNT_CHAIN {
            f.write_str("chain 0 (no account)")?;
        } else {
            write!(f, "chain {} (account {})", self.chain, self.chain)?;
        }
        write!(
            f,
            ", entry seq {} (row id {}): {}",
            self.seq, self.row_id, self.reason
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub chains: u64,
    pub entries: u64,
    pub first_broken: Option<BrokenLink>,
}

/// Walks every chain from its start and reports the first broken link.
pub fn verify(conn: &Conn<'_>) -> crate::db::Result<VerifyReport> {
    let mut report = VerifyReport {
        chains: 0,
        entries: 0,
        first_broken: None,
    };
    let mut current: Option<(i64, i64, Vec<u8>)> = None; // chain, last seq, last hash
    conn.for_each(
        "SELECT id, chain, seq, at, actor, action, resource, request_id, client_addr, outcome, prev_hash, hash, detail
         FROM audit_log ORDER BY chain, seq",
        (),
        |r| {
        let (id, chain, seq): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let prev_hash: Vec<u8> = r.get(10)?;
        let hash: Vec<u8> = r.get(11)?;
        report.entries += 1;
        let (expected_seq, expected_prev) = match &current {
            Some((c, s, h)) if *c == chain => (s + 1, h.clone()),
            _ => {
                report.chains += 1;
                (1, GENESIS.to_vec())
            }
        };
        let broken = |reason| BrokenLink {
            chain,
            seq,
            row_id: id,
            reason,
        };
        let computed = entry_hash(
            chain,
            seq,
            r.get(3)?,
            &r.get::<_, String>(4)?,
            &r.get::<_, String>(5)?,
            &r.get::<_, String>(6)?,
            &r.get::<_, String>(7)?,
            &r.get::<_, String>(8)?,
            &r.get::<_, String>(9)?,
            &r.get::<_, String>(12)?,
            &prev_hash,
        );
        let problem = if seq != expected_seq {
            Some("an entry is missing or out of order")
        } else if prev_hash != expected_prev {
            Some("prev_hash does not match the previous entry")
        } else if hash != computed {
            Some("entry contents do not match its hash")
        } else {
            None
        };
        if let Some(reason) = problem {
            if report.first_broken.is_none() {
                report.first_broken = Some(broken(reason));
            }
        }
        current = Some((chain, seq, hash));
        Ok(())
    })?;
    Ok(report)
}

/// Filters for listing one account's entries, newest first, with cursor pagination.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub action: Option<&'a str>,
    /// Only entries with `id` below this (the cursor of the previous page).
    pub before_id: Option<i64>,
    pub limit: u32,
}

pub fn list(conn: &Conn<'_>, account_id: i64, q: &Query<'_>) -> crate::db::Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, seq, at, actor, action, resource, request_id, client_addr, outcome, detail FROM audit_log
         WHERE chain = ?1
           AND (at >= ?2 OR ?2 IS NULL) AND (at < ?3 OR ?3 IS NULL)
           AND (action = ?4 OR ?4 IS NULL) AND (id < ?5 OR ?5 IS NULL)
         ORDER BY id DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![account_id, q.since, q.until, q.action, q.before_id, q.limit],
        |r| {
            Ok(Entry {
                id: r.get(0)?,
                seq: r.get(1)?,
                at: r.get(2)?,
                actor: r.get(3)?,
                action: r.get(4)?,
                resource: r.get(5)?,
                request_id: r.get(6)?,
                client_addr: r.get(7)?,
                outcome: r.get(8)?,
                detail: r.get(9)?,
            })
        },
    )?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Conn<'static> {
        Conn::memory()
    }

    fn event(account: Option<i64>, action: &str) -> Event<'_> {
        Event {
            account_id: account,
            actor: Actor::User,
            action,
            resource: "key_1",
            request_id: "req",
            client_addr: "127.0.0.1",
            outcome: Outcome::Success,
            at: 1_700_000_000,
        }
    }

    #[test]
    fn a_detail_is_covered_by_the_hash() {
        let conn = db();
        append_with_detail(&conn, &event(Some(1), "ceiling.set"), "limit none -> 5.00").unwrap();
        append(&conn, &event(Some(1), "login")).unwrap();
        assert!(verify(&conn).unwrap().first_broken.is_none());
        conn.execute_batch("DROP TRIGGER IF EXISTS audit_log_no_update;")
            .unwrap();
        conn.execute(
            "UPDATE audit_log SET detail = 'limit none -> 500.00' WHERE action = 'ceiling.set'",
            (),
        )
        .unwrap();
        let broken = verify(&conn).unwrap().first_broken.unwrap();
        assert_eq!(broken.reason, "entry contents do not match its hash");
    }

    #[test]
    fn appended_chains_verify() {
        let conn = db();
        for a in ["login", "key.add", "key.reveal"] {
            append(&conn, &event(Some(1), a)).unwrap();
            append(&conn, &event(Some(2), a)).unwrap();
        }
        append(&conn, &event(None, "login")).unwrap();
        let report = verify(&conn).unwrap();
        assert_eq!(report.chains, 3);
        assert_eq!(report.entries, 7);
        assert_eq!(report.first_broken, None);
    }

    #[test]
    fn an_edited_entry_is_the_first_broken_link() {
        let conn = db();
        for a in ["login", "key.add", "key.reveal"] {
            append(&conn, &event(Some(1), a)).unwrap();
        }
        assert!(conn
            .execute("UPDATE audit_log SET action = 'x' WHERE seq = 2", ())
            .is_err());
        conn.execute_batch("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET action = 'login' WHERE seq = 2;")
            .unwrap();
        let broken = verify(&conn).unwrap().first_broken.unwrap();
        assert_eq!((broken.chain, broken.seq), (1, 2));
        assert_eq!(broken.reason, "entry contents do not match its hash");
    }

    #[test]
    fn a_removed_entry_is_detected() {
        let conn = db();
        for a in ["login", "key.add", "key.reveal"] {
            append(&conn, &event(Some(1), a)).unwrap();
        }
        conn.execute_batch(
            "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq = 2;",
        )
        .unwrap();
        let broken = verify(&conn).unwrap().first_broken.unwrap();
        assert_eq!(broken.seq, 3);
    }
}
