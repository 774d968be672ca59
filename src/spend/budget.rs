//! Token budgets: a tool token's own spend limit beside the account's provider ceilings, and
//! child tokens whose limit is carved out of their parent's.
//!
//! A token's limit is a ledger entry like a provider ceiling, keyed `token:<id>`
//! ([`token_key`]), so it is reserved, settled, persisted, recovered after a crash and leased
//! across instances by the same code. A call reserves against the provider's ceiling and the
//! token's limit together ([`reserve_call`]): both holds or neither.
//!
//! A child's limit is charged to its parent's budget when the child is minted (a carve), so the
//! parent's remaining budget already excludes everything the child may spend. When the child
//! has ended (revoked, or expired) and no call of its own is still in flight, what it did not
//! spend goes back to the parent, once ([`return_carves`]): claimed by one instance in the
//! transaction that writes the credit. A child's own calls count against its carve, and so,
//! through the carve, against its parent.

use time::OffsetDateTime;

use crate::alerts::SpendSubject;
use crate::db::{Conn, DbError, Optional as _};
use crate::money::Money;
use crate::params;
use crate::proxy::forward::Proxy;
use crate::spend::{Refused, Reservation, ReserveError};

/// How deep tokens nest: a token (depth 0) mints children (1), which mint grandchildren (2),
/// which mint none. Deep enough for an orchestrator → agent → sub-task; a limit keeps the
/// cascades of revocation and carve returns short.
pub const MAX_DEPTH: i64 = 2;

/// How long after a child's end its carve waits before going back, so a call it had in flight
/// on any instance has reached the database as a hold (the spend writers commit within
/// milliseconds) and is seen.
pub const RETURN_GRACE_SECS: i64 = 5;

/// The ledger key of a token's own limit.
pub fn token_key(id: &str) -> String {
    format!("{}{id}", SpendSubject::TOKEN_PREFIX)
}

/// Whether a ledger key is a token's limit (not a provider's ceiling).
pub fn is_token_key(key: &str) -> bool {
    matches!(SpendSubject::of(key), SpendSubject::Token(_))
}

/// Why a call's holds were not made.
#[derive(Debug)]
pub enum Denied {
    /// The account's ceiling for the provider would be broken.
    Ceiling(Refused),
    /// The token's own limit would be broken.
    Token(Refused),
    /// A hold could not be recorded durably.
    Unrecorded,
    Db(DbError),
}

/// Holds `amount` on one ledger key, leasing budget from the database first when several
/// instances share the ceilings. A refusal is [`ReserveError::Ceiling`] whatever the mode.
pub async fn reserve(
    proxy: &Proxy,
    account: i64,
    key: &str,
    amount: Money,
) -> Result<Reservation, Result<ReserveError, DbError>> {
    let mut leases = 0;
    loop {
        match proxy.ledger.reserve(account, key, amount) {
            Ok(r) => return Ok(r),
            // Shared ceilings: this instance's lease is short; lease more and try again (a few
            // times, since concurrent calls here may use what was just leased).
            Err(ReserveError::NeedsLease { want }) if leases < 4 => {
                leases += 1;
                let Some(shared) = proxy.shared.as_ref() else {
                    return Err(Ok(ReserveError::Unrecorded));
                };
                match shared.lease(account, key, want).await {
                    Ok(None) => continue,
                    Ok(Some(refusal)) => return Err(Ok(ReserveError::Ceiling(refusal))),
                    Err(e) => return Err(Err(e)),
                }
            }
            Err(ReserveError::NeedsLease { want }) => {
                let snap = proxy.ledger.snapshot(account, key);
                return Err(Ok(ReserveError::Ceiling(Refused {
                    limit: snap.limit.unwrap_or(Money::ZERO),
                    spent: snap.spent,
                    reserved: snap.reserved,
                    requested: want,
                })));
            }
            Err(other) => return Err(Ok(other)),
        }
    }
}

/// Whether the token has a limit of its own. `budgeted` is what the token's row said when it was
/// loaded (≤ 1 s old); with several instances a limit another instance set a moment ago may not
/// have been announced here yet, so the database is asked once.
pub async fn has_limit(
    proxy: &Proxy,
    account: i64,
    key: &str,
    budgeted: bool,
) -> Result<bool, DbError> {
    if proxy.ledger.has_limit(account, key) {
        return Ok(true);
    }
    match (&proxy.shared, budgeted) {
        (Some(shared), true) => {
            shared.sync(account, key).await?;
            Ok(proxy.ledger.has_limit(account, key))
        }
        _ => Ok(false),
    }
}

/// Holds a call's worst case on the provider's ceiling and, when the token has a limit, on that
/// too: both or neither.
pub async fn reserve_call(
    proxy: &Proxy,
    account: i64,
    provider: &str,
    token_id: &str,
    budgeted: bool,
    amount: Money,
) -> Result<Reservation, Denied> {
    let ceiling = match reserve(proxy, account, provider, amount).await {
        Ok(r) => r,
        Err(Ok(ReserveError::Ceiling(r))) => return Err(Denied::Ceiling(r)),
        Err(Ok(_)) => return Err(Denied::Unrecorded),
        Err(Err(e)) => return Err(Denied::Db(e)),
    };
    let key = token_key(token_id);
    let limited = match has_limit(proxy, account, &key, budgeted).await {
        Ok(limited) => limited,
        Err(e) => {
            ceiling.release();
            return Err(Denied::Db(e));
        }
    };
    if !limited {
        return Ok(ceiling);
    }
    match reserve(proxy, account, &key, amount).await {
        Ok(own) => Ok(ceiling.join(own)),
        Err(e) => {
            ceiling.release();
            Err(match e {
                Ok(ReserveError::Ceiling(r)) => Denied::Token(r),
                Ok(_) => Denied::Unrecorded,
                Err(e) => Denied::Db(e),
            })
        }
    }
}

/// What is left for a call of `token_id` at `provider` now: the tighter of the provider's
/// ceiling and the token's own limit (`None` when neither has a limit), and which one it is.
pub fn remaining(
    proxy: &Proxy,
    account: i64,
    provider: &str,
    token_id: &str,
) -> Option<(Money, LimitedBy)> {
    remaining_in(&proxy.ledger, account, provider, token_id)
}

/// [`remaining`] from a ledger handle (what a stream's trailer keeps).
pub fn remaining_in(
    ledger: &crate::spend::Ledger,
    account: i64,
    provider: &str,
    token_id: &str,
) -> Option<(Money, LimitedBy)> {
    let ceiling = ledger
        .snapshot(account, provider)
        .remaining
        .map(|m| (m, LimitedBy::Ceiling));
    let key = token_key(token_id);
    let own = if ledger.has_limit(account, &key) {
        ledger
            .snapshot(account, &key)
            .remaining
            .map(|m| (m, LimitedBy::Token))
    } else {
        None
    };
    match (ceiling, own) {
        (Some(c), Some(t)) => Some(if t.0 < c.0 { t } else { c }),
        (c, t) => c.or(t),
    }
}

/// Which limit is the tighter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    Ceiling,
    Token,
}

impl LimitedBy {
    pub fn name(self) -> &'static str {
        match self {
            LimitedBy::Ceiling => "spend_ceiling",
            LimitedBy::Token => "token_spend_limit",
        }
    }
}

/// A carve whose child has ended and whose return is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCarve {
    pub child: String,
    pub account: i64,
    pub parent: String,
    pub carve: Money,
    pub period_start: i64,
}

/// Carves of children that ended at least [`RETURN_GRACE_SECS`] before `now` and have not
/// gone back yet, and that no hold of the child's is still stored for.
pub fn due_carves(conn: &Conn<'_>, now: i64, limit: i64) -> crate::db::Result<Vec<DueCarve>> {
    let ended_by = now - RETURN_GRACE_SECS;
    conn.prepare_cached(
        "SELECT t.id, t.account_id, t.parent_id, t.carve_micros, t.carve_period_start
         FROM tool_tokens t
         WHERE t.carve_micros IS NOT NULL AND t.carve_returned_at IS NULL
           AND t.parent_id IS NOT NULL
           AND ((t.revoked_at IS NOT NULL AND t.revoked_at <= ?1)
                OR (t.expires_at IS NOT NULL AND t.expires_at <= ?1))
           AND NOT EXISTS (SELECT 1 FROM spend_holds h
                           WHERE h.account_id = t.account_id AND h.provider = 'token:' || t.id)
         ORDER BY t.id LIMIT ?2",
    )?
    .query_map(params![ended_by, limit], |r| {
        Ok(DueCarve {
            child: r.get(0)?,
            account: r.get(1)?,
            parent: r.get(2)?,
            carve: Money::from_micros(r.get(3)?),
            period_start: r.get(4)?,
        })
    })?
    .collect()
}

/// Takes back up to `amount` of a spend row's spend of the period starting `period_start`;
/// what was taken back (nothing when the row has moved to another period).
pub fn credit(
    conn: &Conn<'_>,
    account: i64,
    key: &str,
    amount: Money,
    period_start: i64,
) -> crate::db::Result<Money> {
    let spent: Option<i64> = conn
        .query_row(
            "SELECT spent_micros FROM spend
             WHERE account_id = ?1 AND provider = ?2 AND period_start = ?3",
            params![account, key, period_start],
            |r| r.get(0),
        )
        .optional()?;
    let Some(spent) = spent else {
        return Ok(Money::ZERO);
    };
    let credited = amount.max(Money::ZERO).min(Money::from_micros(spent));
    conn.execute(
        "UPDATE spend SET spent_micros = CASE WHEN spent_micros > ?3 THEN spent_micros - ?3 ELSE 0 END
         WHERE account_id = ?1 AND provider = ?2 AND period_start = ?4",
        params![account, key, credited.micros(), period_start],
    )?;
    Ok(credited)
}

/// What a child has spent of its carve, as the database has it.
fn spent_of(conn: &Conn<'_>, account: i64, key: &str) -> crate::db::Result<Money> {
    let spent: Option<i64> = conn
        .query_row(
            "SELECT spent_micros FROM spend WHERE account_id = ?1 AND provider = ?2",
            params![account, key],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Money::from_micros(spent.unwrap_or(0)))
}

/// A carve gone back: how much, to which parent entry, for which period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    pub account: i64,
    pub parent_key: String,
    pub amount: Money,
    pub period_start: i64,
}

/// Claims one due carve and credits its parent with what the child did not spend, in one
/// transaction; `None` when another instance claimed it first. With several instances the
/// change is announced in the same transaction, so every instance takes the parent's new spend.
pub fn claim_return(
    conn: &Conn<'_>,
    due: &DueCarve,
    now: i64,
    shared: bool,
) -> crate::db::Result<Option<Returned>> {
    let claimed = conn.execute(
        "UPDATE tool_tokens SET carve_returned_at = ?1 WHERE id = ?2 AND carve_returned_at IS NULL",
        params![now, due.child],
    )?;
    if claimed != 1 {
        return Ok(None);
    }
    let spent = spent_of(conn, due.account, &token_key(&due.child))?;
    let unspent = due.carve.saturating_sub(spent).max(Money::ZERO);
    let parent_key = token_key(&due.parent);
    let amount = credit(conn, due.account, &parent_key, unspent, due.period_start)?;
    if shared && amount > Money::ZERO {
        crate::spend::shared::announce_in(conn, due.account, &parent_key)?;
    }
    Ok(Some(Returned {
        account: due.account,
        parent_key,
        amount,
        period_start: due.period_start,
    }))
}

/// Applies a committed return to this instance's ledger (one instance on SQLite; with several,
/// the announcement does it on each).
pub fn apply_returned(proxy: &Proxy, returned: &Returned) {
    if proxy.shared.is_some() {
        return;
    }
    let start = OffsetDateTime::from_unix_timestamp(returned.period_start)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    proxy.ledger.credit_local(
        returned.account,
        &returned.parent_key,
        returned.amount,
        start,
    );
}

/// Gives back every carve that is due (the sweeper, every second). Spend this instance's writer
/// still holds is written first, so the child's spend and the parent's carve are both in the
/// database when the return is computed.
pub async fn return_carves(db: &crate::db::Db, proxy: &Proxy, now: i64) -> Result<usize, DbError> {
    let due = db.read(move |c| due_carves(c, now, 100)).await?;
    if due.is_empty() {
        return Ok(0);
    }
    proxy.writer.flush().await;
    let shared = proxy.shared.is_some();
    let mut returned = 0;
    for carve in due {
        // A call of the child's still in flight here holds part of its carve: wait for it.
        let key = token_key(&carve.child);
        if proxy.ledger.snapshot(carve.account, &key).reserved > Money::ZERO {
            continue;
        }
        let done = db
            .write(move |c| claim_return(c, &carve, now, shared))
            .await?;
        if let Some(done) = done {
            apply_returned(proxy, &done);
            returned += 1;
        }
    }
    Ok(returned)
}

/// Gives `amount` straight back to `key`'s spend of `period_start` (a carve charged for a child
/// that could then not be stored).
pub async fn refund(
    db: &crate::db::Db,
    proxy: &Proxy,
    account: i64,
    key: &str,
    amount: Money,
    period_start: i64,
) -> Result<(), DbError> {
    proxy.writer.flush().await;
    let shared = proxy.shared.is_some();
    let owned = key.to_owned();
    let credited = db
        .write(move |c| {
            let credited = credit(c, account, &owned, amount, period_start)?;
            if shared {
                crate::spend::shared::announce_in(c, account, &owned)?;
            }
            Ok::<_, DbError>(credited)
        })
        .await?;
    apply_returned(
        proxy,
        &Returned {
            account,
            parent_key: key.to_owned(),
            amount: credited,
            period_start,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_keys_are_told_from_provider_ids() {
        assert_eq!(token_key("tok_1"), "token:tok_1");
        assert!(is_token_key("token:tok_1"));
        assert!(!is_token_key("openai"));
    }
}
