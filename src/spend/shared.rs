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

use crate::db::{Conn, DbError, Optional as _};
use crate::money::Money;
use crate::params;
use crate::spend::ledger::{LedgerRow, Period, Refused};
use crate::spend::writer::parse_period;
use std::sync::atomic::Ordering;
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
    /// This instance had been taken for dead and what it leased was charged: it is registered
    /// again; forget every lease and ask again.
    Lost,
}

/// Leases at least `want` of the pair's ceiling to `instance`, in the caller's transaction.
/// `instance` must be alive in `keybroker_instances`: one that was taken for dead gets
/// [`Grant::Lost`] (what it leased was charged), re-registers, and asks again.
pub fn grant(
    conn: &Conn<'_>,
    instance: &str,
    account: i64,
    provider: &str,
    want: Money,
    now: OffsetDateTime,
) -> Result<Grant, DbError> {
    // This instance's row first, then the account's lock: the heartbeat takes the same row first
    // too, so the two never wait on each other in opposite orders.
    if conn.execute(
        "UPDATE keybroker_instances SET seen_at = CASE WHEN seen_at < ?2 THEN ?2 ELSE seen_at END
         WHERE id = ?1",
        params![instance, now_secs()],
    )? == 0
    {
        // Taken for dead meanwhile: anything leased since is charged too, then start over.
        reclaim(conn, instance, None)?;
        register(conn, instance)?;
        return Ok(Grant::Lost);
    }
    conn.lock(LOCK_SPACE, account)?;
    let Some(row) = ceiling(conn, account, provider, now)? else {
        return Ok(Grant::NoCeiling(no_ceiling(account, provider, now)));
    };
    let Some(limit) = row.limit else {
        return Ok(Grant::NoCeiling(row));
    };
    let start = row.period_start.unix_timestamp();
    // Spend and leases in one statement, so from one snapshot: the spend writer moves settled
    // amounts from a lease into the spend in one transaction, and two separate reads could see
    // the lease after the move and the spend before it (and so lease that amount twice).
    let (spent_now, leased): (i64, i64) = conn.query_row(
        "SELECT CASE WHEN s.period_start >= ?3 THEN s.spent_micros ELSE 0 END,
                (SELECT CAST(COALESCE(SUM(l.amount_micros), 0) AS BIGINT) FROM spend_leases l
                 WHERE l.account_id = s.account_id AND l.provider = s.provider
                   AND l.period_start >= ?3)
         FROM spend s WHERE s.account_id = ?1 AND s.provider = ?2",
        params![account, provider, start],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let row = LedgerRow {
        spent: Money::from_micros(spent_now),
        ..row
    };
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

/// A pair the database has no ceiling row for.
fn no_ceiling(account: i64, provider: &str, now: OffsetDateTime) -> LedgerRow {
    LedgerRow {
        account,
        provider: provider.to_owned(),
        limit: None,
        period: Period::None,
        period_start: Period::None.start(now),
        spent: Money::ZERO,
    }
}

/// Seconds of the wall clock, which instances compare with each other's `seen_at` (their clocks
/// must agree to well within [`DEAD_AFTER_SECS`]; NTP does that).
pub fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Says `instance` is running (again).
pub fn register(conn: &Conn<'_>, instance: &str) -> Result<(), DbError> {
    let now = now_secs();
    conn.execute(
        "INSERT INTO keybroker_instances (id, started_at, seen_at) VALUES (?1, ?2, ?2)
         ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        params![instance, now],
    )?;
    Ok(())
}

/// A stored row as of the period containing `now` (an ended period has spent nothing in it).
pub fn current(row: LedgerRow, now: OffsetDateTime) -> LedgerRow {
    let current = row.period.start(now);
    if row.period_start >= current {
        row
    } else {
        LedgerRow {
            period_start: current,
            spent: Money::ZERO,
            ..row
        }
    }
}

fn rolled(
    account: i64,
    provider: &str,
    limit: Option<i64>,
    period: &str,
    stored_start: i64,
    spent: i64,
    now: OffsetDateTime,
) -> LedgerRow {
    let period = parse_period(period).unwrap_or_default();
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
}

/// The pair's ceiling as the database has it, rolled to the period containing `now`.
pub fn ceiling(
    conn: &Conn<'_>,
    account: i64,
    provider: &str,
    now: OffsetDateTime,
) -> Result<Option<LedgerRow>, DbError> {
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
        rolled(account, provider, limit, &period, stored_start, spent, now)
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
    /// Instances not seen for [`DEAD_AFTER_SECS`], to reclaim (each in a transaction of its own,
    /// so this one's row is not held while spend rows are written).
    pub dead: Vec<String>,
}

/// Says `instance` is alive at `now_secs` (wall clock), and charges what dead instances held.
pub fn heartbeat(conn: &Conn<'_>, instance: &str, now_secs: i64) -> Result<Beat, DbError> {
    let mut beat = Beat::default();
    let seen = conn.execute(
        "UPDATE keybroker_instances SET seen_at = ?2 WHERE id = ?1",
        params![instance, now_secs],
    )?;
    if seen == 0 {
        // Taken for dead (a pause longer than DEAD_AFTER_SECS): what was leased after that is
        // charged as well, and this instance starts over with nothing leased.
        beat.charged.extend(reclaim(conn, instance, None)?);
        register(conn, instance)?;
        beat.leases_lost = true;
    }
    beat.dead = conn.query_all(
        "SELECT id FROM keybroker_instances WHERE seen_at < ?1",
        params![now_secs - DEAD_AFTER_SECS],
        |r| r.get(0),
    )?;
    Ok(beat)
}

/// Charges in full what instance `id` held (it is gone) and forgets it. Returns the pairs charged.
/// With `seen_before`, only if it still has not been seen since then: its row is deleted first,
/// so an instance that comes back at that moment waits for this and then finds itself lost.
pub fn reclaim(
    conn: &Conn<'_>,
    id: &str,
    seen_before: Option<i64>,
) -> Result<Vec<(i64, String)>, DbError> {
    let gone = conn.execute(
        "DELETE FROM keybroker_instances WHERE id = ?1 AND (CAST(?2 AS BIGINT) IS NULL OR seen_at < ?2)",
        params![id, seen_before],
    )?;
    if gone == 0 && seen_before.is_some() {
        return Ok(Vec::new());
    }
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
    // Spend rows in one order, as the spend writers write them (no deadlock between the two).
    let (mut leases, mut holds) = (leases, holds);
    leases.sort_unstable();
    holds.sort_unstable();
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
    if !leases.is_empty() || !holds.is_empty() {
        tracing::warn!(
            leases = leases.len(),
            holds = holds.len(),
            "an instance stopped answering; what it held is charged in full (fail closed)"
        );
    }
    Ok(charged)
}

/// Hands back, when an instance stops cleanly, what it leased: its open holds are charged (fail
/// closed: nothing will settle them now), the rest of its leases goes back.
pub fn release(conn: &Conn<'_>, id: &str) -> Result<(), DbError> {
    let holds: Vec<(i64, String, i64, i64)> = conn.query_all(
        "DELETE FROM spend_holds WHERE instance_id = ?1
         RETURNING account_id, provider, period_start, amount_micros",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    for (account, provider, start, amount) in &holds {
        crate::spend::store::charge(conn, *account, provider, *start, *amount)?;
    }
    conn.execute(
        "DELETE FROM spend_leases WHERE instance_id = ?1",
        params![id],
    )?;
    conn.execute("DELETE FROM keybroker_instances WHERE id = ?1", params![id])?;
    Ok(())
}

/// The announcement that the ceiling of (account, provider) changed.
/// Tells every instance, when the caller's transaction commits, that the pair's ceiling or spend
/// changed (a child token's carve went back to its parent, say).
pub fn announce_in(conn: &Conn<'_>, account: i64, provider: &str) -> Result<(), DbError> {
    conn.notify(CHANNEL, &payload(account, provider))
}

fn payload(account: i64, provider: &str) -> String {
    format!("{account}:{provider}")
}

/// A lease older than this without a heartbeat that reached the database is not used: the
/// others may take this instance for dead after [`DEAD_AFTER_SECS`] and charge it.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// One instance's handle on the shared ceilings: its id, the database, its ledger, and the
/// heartbeat thread (which stops when the last handle is dropped, handing the leases back).
#[derive(Clone)]
pub struct Shared {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    db: crate::db::Db,
    instance: String,
    ledger: crate::spend::Ledger,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// When a heartbeat or a grant last reached the database (ms since `base`).
    fresh_ms: std::sync::atomic::AtomicU64,
    /// Set once the leases were dropped for staleness, until the database answers again.
    stale: std::sync::atomic::AtomicBool,
    base: std::time::Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Joins the instances sharing `db`'s ceilings: charges what this data directory's previous
    /// run left leased (its id is kept in `id_file`; a crash leaves it), registers a new id,
    /// listens for ceiling changes and starts the heartbeat. `instance` is new for every run (the
    /// spend writer's holds carry it).
    pub fn start(
        db: &crate::db::Db,
        ledger: crate::spend::Ledger,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        id_file: &std::path::Path,
        instance: String,
    ) -> Result<Self, DbError> {
        let previous = std::fs::read_to_string(id_file)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s.len() <= 64);
        let id = instance.clone();
        let charged = db.write_blocking(move |c| -> Result<Vec<(i64, String)>, DbError> {
            let charged = match &previous {
                Some(prev) => reclaim(c, prev, None)?,
                None => Vec::new(),
            };
            register(c, &id)?;
            for (account, provider) in &charged {
                c.notify(CHANNEL, &payload(*account, provider))?;
            }
            Ok(charged)
        })?;
        if !charged.is_empty() {
            tracing::warn!(
                pairs = charged.len(),
                "the last run of this instance did not stop cleanly: what it had leased is charged in full (fail closed)"
            );
        }
        if let Err(e) = std::fs::write(id_file, &instance) {
            tracing::warn!(error = %e, "could not keep the instance id in the data directory; a crash of this run is charged only when the other instances notice it");
        }
        let inner = std::sync::Arc::new(Inner {
            db: db.clone(),
            instance,
            ledger,
            metrics,
            fresh_ms: std::sync::atomic::AtomicU64::new(0),
            stale: std::sync::atomic::AtomicBool::new(false),
            base: std::time::Instant::now(),
        });
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let listener_tx = std::sync::Mutex::new(tx);
        db.listen(
            CHANNEL,
            std::sync::Arc::new(move |p: &str| {
                if let Ok(tx) = listener_tx.lock() {
                    let _ = tx.send(p.to_owned());
                }
            }),
        )?;
        let weak = std::sync::Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("ceiling-leases".into())
            .spawn(move || beat_until_dropped(&weak, &rx))
            .map_err(|e| DbError::Thread(e.to_string()))?;
        Ok(Shared { inner })
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Before admitting against leases: if the database has not heard from this instance for
    /// [`STALE_AFTER`], its leases may soon be charged to it and given to others, so they are
    /// dropped here and the next call leases through the database (or fails closed without it).
    pub fn check_fresh(&self) {
        let i = &self.inner;
        let age = i
            .elapsed_ms()
            .saturating_sub(i.fresh_ms.load(Ordering::Relaxed));
        if age > ms(STALE_AFTER) && !i.stale.swap(true, Ordering::Relaxed) {
            i.ledger.drop_leases();
            tracing::warn!("the database has not answered this instance's heartbeat: its ceiling leases are dropped until it does");
        }
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
        let i = &self.inner;
        let (instance, owned) = (i.instance.clone(), provider.to_owned());
        let now = i.ledger.now();
        let granted =
            i.db.write(move |c| grant(c, &instance, account, &owned, want, now))
                .await?;
        i.touch();
        let counters = &i.metrics.leases;
        match granted {
            Grant::Leased { row, amount } => {
                counters.granted.fetch_add(1, Ordering::Relaxed);
                i.ledger.add_lease(&row, amount);
                Ok(None)
            }
            Grant::NoCeiling(row) => {
                counters.no_ceiling.fetch_add(1, Ordering::Relaxed);
                let _ = i.ledger.refresh(&row);
                Ok(None)
            }
            Grant::Lost => {
                i.ledger.drop_leases();
                Ok(None)
            }
            Grant::Refused(r) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                Ok(Some(r))
            }
        }
    }

    /// Takes the pair's ceiling as the database has it now and hands back the part of this
    /// instance's lease no call holds (before a ceiling is changed here, and when another
    /// instance announces a change).
    pub async fn sync(&self, account: i64, provider: &str) -> Result<(), DbError> {
        let inner = self.inner.clone();
        let provider = provider.to_owned();
        tokio::task::spawn_blocking(move || inner.sync(account, &provider))
            .await
            .map_err(|_| DbError::Cancelled)?
    }

    /// Tells every instance that the pair's ceiling changed.
    pub async fn announce(&self, account: i64, provider: &str) -> Result<(), DbError> {
        let p = payload(account, provider);
        self.inner.db.write(move |c| c.notify(CHANNEL, &p)).await
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    fn elapsed_ms(&self) -> u64 {
        ms(self.base.elapsed())
    }

    fn touch(&self) {
        self.fresh_ms.store(self.elapsed_ms(), Ordering::Relaxed);
        self.stale.store(false, Ordering::Relaxed);
    }

    fn sync(&self, account: i64, provider: &str) -> Result<(), DbError> {
        let now = self.ledger.now();
        let owned = provider.to_owned();
        let row = self
            .db
            .read_blocking(move |c| ceiling(c, account, &owned, now))?
            .unwrap_or_else(|| no_ceiling(account, provider, now));
        let unused = self.ledger.refresh(&row);
        self.hand_back(vec![(account, provider.to_owned(), unused)])
    }

    /// Every pair at once (the listener reconnected and may have missed announcements).
    fn sync_all(&self) -> Result<(), DbError> {
        let rows = self.db.read_blocking(crate::spend::store::rows)?;
        let back: Vec<(i64, String, Money)> = rows
            .iter()
            .map(|r| (r.account, r.provider.clone(), self.ledger.refresh(r)))
            .collect();
        self.hand_back(back)
    }

    fn hand_back(&self, back: Vec<(i64, String, Money)>) -> Result<(), DbError> {
        let back: Vec<_> = back
            .into_iter()
            .filter(|(_, _, m)| *m > Money::ZERO)
            .collect();
        if back.is_empty() {
            return Ok(());
        }
        let n = back.len() as u64;
        let instance = self.instance.clone();
        self.db.write_blocking(move |c| {
            for (account, provider, amount) in &back {
                give_back(c, &instance, *account, provider, *amount)?;
            }
            Ok::<_, DbError>(())
        })?;
        self.metrics
            .leases
            .handed_back
            .fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn beat(&self) {
        let instance = self.instance.clone();
        let beat = self.db.write_blocking(move |c| -> Result<Beat, DbError> {
            let beat = heartbeat(c, &instance, now_secs())?;
            for (account, provider) in &beat.charged {
                c.notify(CHANNEL, &payload(*account, provider))?;
            }
            Ok(beat)
        });
        match beat {
            Ok(beat) => {
                for id in &beat.dead {
                    let (id, cutoff) = (id.clone(), now_secs() - DEAD_AFTER_SECS);
                    let reclaimed = self.db.write_blocking(move |c| -> Result<(), DbError> {
                        for (account, provider) in reclaim(c, &id, Some(cutoff))? {
                            c.notify(CHANNEL, &payload(account, &provider))?;
                        }
                        Ok(())
                    });
                    if let Err(e) = reclaimed {
                        tracing::warn!(error = %e, "could not charge what a stopped instance held (tried again next beat)");
                    }
                }
                if beat.leases_lost {
                    self.ledger.drop_leases();
                    tracing::warn!("this instance had been taken for dead (no heartbeat for {DEAD_AFTER_SECS} s): its leases were charged, it leases afresh");
                }
                self.touch();
            }
            Err(e) => {
                tracing::warn!(error = %e, "ceiling heartbeat: the database did not answer");
                return;
            }
        }
        if let Err(e) = self.hand_back(self.ledger.take_idle_leases(IDLE)) {
            tracing::warn!(error = %e, "could not hand idle ceiling leases back (they stay charged to this instance until it stops)");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The blocking client must not run on an async runtime's thread.
        let (db, id) = (self.db.clone(), self.instance.clone());
        let done = std::thread::spawn(move || db.write_blocking(|c| release(c, &id))).join();
        if !matches!(done, Ok(Ok(()))) {
            tracing::warn!("could not hand this instance's ceiling leases back; they are charged when it is next started or taken for dead");
        }
    }
}

fn beat_until_dropped(weak: &std::sync::Weak<Inner>, rx: &std::sync::mpsc::Receiver<String>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut next = std::time::Instant::now();
    loop {
        let wait = next.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(wait) {
            Ok(p) => {
                let Some(inner) = weak.upgrade() else { return };
                let synced = match p.split_once(':') {
                    Some((account, provider)) => match account.parse() {
                        Ok(a) => inner.sync(a, provider),
                        Err(_) => Ok(()),
                    },
                    None => inner.sync_all(),
                };
                if let Err(e) = synced {
                    tracing::warn!(error = %e, "could not take a ceiling change from the database");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let Some(inner) = weak.upgrade() else { return };
                inner.beat();
                next = std::time::Instant::now() + HEARTBEAT;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let Some(inner) = weak.upgrade() else { return };
                inner.beat();
                drop(inner);
                std::thread::sleep(HEARTBEAT);
            }
        }
    }
}
