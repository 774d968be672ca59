//! Ceilings shared by several instances on one database (PostgreSQL): leases of a ceiling's
//! budget, so a proxied call is admitted against memory in the common case and the ceiling
//! still holds across every instance.
//!
//! The promise, in the database: for each (account, provider) and period,
//! `spent + Σ leases ≤ limit` whenever a lease is granted. A lease is granted in one transaction
//! under an advisory lock per account ([`grant`]); settled spend moves out of the lease into
//! `spent` in the spend writer's transaction, so the sum never shrinks by itself. An instance
//! admits a hold only while its holds fit in its lease (`Ledger::shared`).
//!
//! Fairness: a grant is at most an eighth of what is free (never less than the call needs), so
//! no instance takes the budget the others will ask for; near the cap that falls to exactly what
//! one call needs (a reservation per call). A lease no call has used for [`IDLE`] is handed back,
//! and a change of the ceiling makes every instance hand back what it does not hold.
//!
//! Failure: every instance says it is alive every [`HEARTBEAT`]. An instance not seen for
//! [`DEAD_AFTER_SECS`] is taken for dead by whichever instance notices first (`DELETE …
//! RETURNING`, so exactly one): its leases are charged in full (fail closed: its holds are in
//! them and cannot be told from the unused rest without a round trip per call), and so are its
//! open holds on pairs it had no lease for.

use crate::db::{Conn, DbError};
use crate::money::Money;
use crate::params;
use crate::spend::ledger::{LedgerRow, Period, Refused};
use crate::spend::writer::parse_period;
use std::time::Duration;
use time::OffsetDateTime;

/// How often an instance says it is alive and hands back idle leases.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance not seen for this long is taken for dead and what it held is charged.
pub const DEAD_AFTER_SECS: i64 = 10;
/// A lease no call reserved against for this long goes back to the database.
pub const IDLE: Duration = Duration::from_secs(2);
/// A grant is at most this part of what is free (see the module's fairness note).
const SLICE: i64 = 8;
/// The advisory-lock space of grants (per account); the audit chain uses 1.
const LOCK_SPACE: i32 = 2;
/// The channel on which ceiling changes are announced.
pub const CHANNEL: &str = "keybroker_ceiling";

/// What a grant found.
#[derive(Debug)]
pub enum Grant {
    /// No ceiling on the pair (any more): the caller refreshes its entry and reserves freely.
    NoCeiling(LedgerRow),
    /// `amount` more leased to this instance; `row` is the ceiling as the database has it.
    Leased { row: LedgerRow, amount: Money },
    /// Not even `want` is free.
    Refused(Refused),
}

/// Leases at least `want` of the pair's ceiling to `instance`, in the caller's transaction.
pub fn grant(
    conn: &Conn<'_>,
    instance: &str,
    account: i64,
    provider: &str,
    want: Money,
    now: OffsetDateTime,
) -> Result<Grant, DbError> {
    conn.lock(LOCK_SPACE, account)?;
    let Some(row) = ceiling(conn, account, provider, now)? else {
        return Ok(Grant::NoCeiling(LedgerRow {
            account,
            provider: provider.to_owned(),
            limit: None,
            period: Period::None,
            period_start: Period::None.start(now),
            spent: Money::ZERO,
        }));
    };
    let Some(limit) = row.limit else {
        return Ok(Grant::NoCeiling(row));
    };
    let start = row.period_start.unix_timestamp();
    let leased: i64 = conn.query_row(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM spend_leases
         WHERE account_id = ?1 AND provider = ?2 AND period_start >= ?3",
        params![account, provider, start],
        |r| r.get(0),
    )?;
    let leased = Money::from_micros(leased);
    let free = limit.saturating_sub(row.spent).saturating_sub(leased);
    if free < want {
        return Ok(Grant::Refused(Refused {
            limit,
            spent: row.spent,
            reserved: leased,
            requested: want,
        }));
    }
    let amount = Money::from_micros(free.micros() / SLICE)
        .max(want)
        .min(free);
    conn.execute(
        "INSERT INTO spend_leases (account_id, provider, instance_id, period_start, amount_micros)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (account_id, provider, instance_id) DO UPDATE SET
            amount_micros = CASE WHEN spend_leases.period_start >= excluded.period_start
                            THEN spend_leases.amount_micros + excluded.amount_micros
                            ELSE excluded.amount_micros END,
            period_start = CASE WHEN spend_leases.period_start >= excluded.period_start
                           THEN spend_leases.period_start ELSE excluded.period_start END",
        params![account, provider, instance, start, amount.micros()],
    )?;
    Ok(Grant::Leased { row, amount })
}

/// The pair's ceiling as the database has it, rolled to the period containing `now`.
pub fn ceiling(
    conn: &Conn<'_>,
    account: i64,
    provider: &str,
    now: OffsetDateTime,
) -> Result<Option<LedgerRow>, DbError> {
    use crate::db::Optional as _;
    let found = conn
        .query_row(
            "SELECT limit_micros, period, period_start, spent_micros FROM spend
             WHERE account_id = ?1 AND provider = ?2",
            params![account, provider],
            |r| {
                Ok((
                    r.get::<_, Option<i64>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    Ok(found.map(|(limit, period, stored_start, spent)| {
        let period = parse_period(&period).unwrap_or_default();
        let current = period.start(now).unix_timestamp();
        // A row from an ended period has spent nothing in this one.
        let (start, spent) = if stored_start >= current {
            (stored_start, spent)
        } else {
            (current, 0)
        };
        LedgerRow {
            account,
            provider: provider.to_owned(),
            limit: limit.map(Money::from_micros),
            period,
            period_start: OffsetDateTime::from_unix_timestamp(start)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            spent: Money::from_micros(spent),
        }
    }))
}

/// Hands `amount` of this instance's lease of the pair back.
pub fn give_back(
    conn: &Conn<'_>,
    instance: &str,
    account: i64,
    provider: &str,
    amount: Money,
) -> Result<(), DbError> {
    conn.execute(
        "UPDATE spend_leases SET amount_micros = CASE WHEN amount_micros > ?4
                                 THEN amount_micros - ?4 ELSE 0 END
         WHERE account_id = ?1 AND provider = ?2 AND instance_id = ?3",
        params![account, provider, instance, amount.micros()],
    )?;
    Ok(())
}

/// What one heartbeat did.
#[derive(Debug, Default)]
pub struct Beat {
    /// This instance had been taken for dead (its leases were charged): forget them.
    pub leases_lost: bool,
    /// Pairs whose spend a reclaim charged, to announce.
    pub charged: Vec<(i64, String)>,
}

/// Says `instance` is alive at `now_secs` (wall clock), and charges what dead instances held.
pub fn heartbeat(conn: &Conn<'_>, instance: &str, now_secs: i64) -> Result<Beat, DbError> {
    let mut beat = Beat::default();
    let seen = conn.execute(
        "UPDATE keybroker_instances SET seen_at = ?2 WHERE id = ?1",
        params![instance, now_secs],
    )?;
    if seen == 0 {
        conn.execute(
            "INSERT INTO keybroker_instances (id, started_at, seen_at) VALUES (?1, ?2, ?2)",
            params![instance, now_secs],
        )?;
        beat.leases_lost = true;
    }
    let dead: Vec<String> = conn.query_all(
        "SELECT id FROM keybroker_instances WHERE seen_at < ?1",
        params![now_secs - DEAD_AFTER_SECS],
        |r| r.get(0),
    )?;
    for id in dead {
        beat.charged.extend(reclaim(conn, &id)?);
    }
    Ok(beat)
}

/// Charges in full what instance `id` held (it is gone) and forgets it. Returns the pairs charged.
pub fn reclaim(conn: &Conn<'_>, id: &str) -> Result<Vec<(i64, String)>, DbError> {
    let leases: Vec<(i64, String, i64, i64)> = conn.query_all(
        "DELETE FROM spend_leases WHERE instance_id = ?1
         RETURNING account_id, provider, period_start, amount_micros",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let holds: Vec<(i64, String, i64, i64)> = conn.query_all(
        "DELETE FROM spend_holds WHERE instance_id = ?1
         RETURNING account_id, provider, period_start, amount_micros",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let mut charged: Vec<(i64, String)> = Vec::new();
    for (account, provider, start, amount) in &leases {
        crate::spend::store::charge(conn, *account, provider, *start, *amount)?;
        charged.push((*account, provider.clone()));
    }
    for (account, provider, start, amount) in &holds {
        // A hold on a leased pair is inside the lease just charged.
        if charged.iter().any(|(a, p)| a == account && p == provider) {
            continue;
        }
        crate::spend::store::charge(conn, *account, provider, *start, *amount)?;
        charged.push((*account, provider.clone()));
    }
    conn.execute("DELETE FROM keybroker_instances WHERE id = ?1", params![id])?;
    if !leases.is_empty() || !holds.is_empty() {
        tracing::warn!(
            leases = leases.len(),
            holds = holds.len(),
            "an instance stopped answering; what it held is charged in full (fail closed)"
        );
    }
    Ok(charged)
}

/// One instance's handle on the shared ceilings: its id, the database, its ledger.
#[derive(Clone)]
pub struct Shared {
    db: crate::db::Db,
    instance: std::sync::Arc<str>,
    ledger: crate::spend::Ledger,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(db: crate::db::Db, instance: &str, ledger: crate::spend::Ledger) -> Self {
        Shared {
            db,
            instance: std::sync::Arc::from(instance),
            ledger,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Leases at least `want` more of the pair's ceiling for this instance and adds it to the
    /// ledger; `Ok(Some(refused))` when not that much is free. A pair found without a ceiling
    /// is refreshed in the ledger, so the next reserve admits freely.
    pub async fn lease(
        &self,
        account: i64,
        provider: &str,
        want: Money,
    ) -> Result<Option<Refused>, DbError> {
        let (instance, owned) = (self.instance.clone(), provider.to_owned());
        let now = OffsetDateTime::now_utc();
        let granted = self
            .db
            .write(move |c| grant(c, &instance, account, &owned, want, now))
            .await?;
        match granted {
            Grant::Leased { row, amount } => {
                self.ledger.add_lease(&row, amount);
                Ok(None)
            }
            Grant::NoCeiling(row) => {
                let _ = self.ledger.refresh(&row);
                Ok(None)
            }
            Grant::Refused(r) => Ok(Some(r)),
        }
    }
}
