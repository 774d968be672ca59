//! The in-memory reserve-then-settle ledger that makes a spend ceiling a promise under concurrency.
//!
//! Before a call is sent, its worst-case cost is *reserved*: admitted only if
//! `spent + reserved + amount <= limit`, checked and recorded under one lock. When the call ends the
//! reservation is *settled* at the metered cost, or *released* if the provider charged nothing. A
//! reservation dropped unsettled (a cancelled future, a client that went away, an error path that
//! forgot it) is settled at its full amount: the ledger fails closed.
//!
//! The promise rests on reservations being true upper bounds. If a call settles above its reservation
//! the actual amount is still recorded (spend must be true), the overshoot is flagged on the result,
//! the entry and the event, and further calls are refused once the ceiling is reached.
//!
//! Locking: one `Mutex` per (account, provider) entry, found through a `RwLock`ed map that is held
//! only to look up or insert an entry. Nothing here is async, so no lock is held across an await.
//!
//! Persistence: every change to spend is announced, under the entry's lock and so in order per entry,
//! to an optional [`SpendSink`] (e.g. a channel's `send`) for a batching writer to store; [`Ledger::load`]
//! restores what it stored at start-up.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, Time, UtcOffset};

use crate::clock::Clock;
#[cfg(test)]
use crate::clock::ManualClock;
use crate::clock::SystemClock;
use crate::money::Money;

/// How often spend starts again from zero. Periods are calendar days or months in UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Spend accumulates until reset by hand.
    #[default]
    None,
    Daily,
    Monthly,
}

impl Period {
    /// The start of the period containing `now`. For [`Period::None`] the Unix epoch.
    pub fn start(self, now: OffsetDateTime) -> OffsetDateTime {
        let day = now.to_offset(UtcOffset::UTC).replace_time(Time::MIDNIGHT);
        match self {
            Period::None => OffsetDateTime::UNIX_EPOCH,
            Period::Daily => day,
            // Day 1 exists in every month. Were it ever refused, the epoch is the fail-closed
            // answer: it is never later than a stored period start, so spend is never forgotten.
            Period::Monthly => day.replace_day(1).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        }
    }
}

/// Whether the ceiling has been reached by settled spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CeilingState {
    Ok,
    Reached,
}

/// A call refused because its reservation would break the ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("spend ceiling reached: limit {limit}, spent {spent}, reserved {reserved}, requested {requested}")]
pub struct Refused {
    pub limit: Money,
    pub spent: Money,
    /// Held by calls in flight.
    pub reserved: Money,
    pub requested: Money,
}

/// What one (account, provider) entry looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub limit: Option<Money>,
    pub period: Period,
    pub period_start: OffsetDateTime,
    pub spent: Money,
    pub reserved: Money,
    /// `limit - spent - reserved`, at least zero; `None` without a limit.
    pub remaining: Option<Money>,
    /// Spend above reservations this period: non-zero means an estimate was not an upper bound.
    pub overshoot: Money,
    /// `Reached` once settled spend is at or above the limit. A call can be refused before that,
    /// when its estimate does not fit in `remaining`.
    pub state: CeilingState,
}

/// Persisted state of one entry, for [`Ledger::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub account: i64,
    pub provider: String,
    pub limit: Option<Money>,
    pub period: Period,
    pub period_start: OffsetDateTime,
    pub spent: Money,
}

/// What happened to spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendKind {
    /// Money held for a call about to be sent (`amount` is the hold). Persisted so a crash
    /// between this and the settle still charges the hold (fail closed).
    Reserved,
    /// A hold given back uncharged (the call was never billed).
    Released,
    /// A reservation settled at the metered cost. `overshoot` is how far it exceeded its reservation.
    Settled { overshoot: Option<Money> },
    /// A reservation dropped unsettled, charged its full amount.
    Abandoned,
    /// Spend set back to zero by hand; `amount` is what was forgiven.
    Reset,
}

/// One change to spend, for a writer to persist. Settled and abandoned amounts add to the spend of
/// `period_start`'s row; a reset sets it to zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendEvent {
    /// The reservation this event closes or opens; 0 for a reset.
    pub reservation: u64,
    pub account: i64,
    pub provider: String,
    pub amount: Money,
    pub kind: SpendKind,
    pub period_start: OffsetDateTime,
    pub at: OffsetDateTime,
}

/// Receives spend events. It is called while the entry's lock is held — that is what keeps one
/// entry's events in order — so it must be quick and must not call back into the ledger: send on a
/// channel and return. An `Err` for a `Reserved` event means the hold could not be recorded
/// durably (the hold journal could not be written): the reservation is then undone and refused.
pub type SpendSink = Arc<dyn Fn(&SpendEvent) -> Result<(), Unrecorded> + Send + Sync>;

/// A sink could not record an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unrecorded;

/// Why a reservation was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveError {
    /// It would break the ceiling.
    Ceiling(Refused),
    /// The hold could not be recorded durably; nothing was reserved.
    Unrecorded,
    /// Shared ceilings (several instances on one database): this instance's lease of the
    /// ceiling's budget does not cover the call; lease at least `want` more
    /// ([`Ledger::add_lease`]) and try again. Nothing was reserved.
    NeedsLease { want: Money },
}

/// What a settle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub charged: Money,
    /// `charged - reserved` when the call cost more than was reserved.
    pub overshoot: Option<Money>,
}

#[derive(Debug)]
struct Entry {
    limit: Option<Money>,
    period: Period,
    period_start: OffsetDateTime,
    spent: Money,
    reserved: Money,
    overshoot: Money,
    /// Shared ceilings only: the budget this instance may still hold or spend, leased from the
    /// database (`spend::shared`). Settled spend comes out of it; holds must fit in it.
    lease: Money,
    /// When a call last reserved here, for handing back a lease that sits idle.
    used_at: Option<std::time::Instant>,
}

impl Entry {
    fn new(now: OffsetDateTime) -> Self {
        Entry {
            limit: None,
            period: Period::None,
            period_start: Period::None.start(now),
            spent: Money::ZERO,
            reserved: Money::ZERO,
            overshoot: Money::ZERO,
            lease: Money::ZERO,
            used_at: None,
        }
    }

    /// Starts a new period if `now` is past the current one. Reservations in flight carry over and
    /// settle into the new period. A clock that went backwards never re-opens an old period.
    fn roll(&mut self, now: OffsetDateTime) {
        let start = self.period.start(now);
        if start > self.period_start {
            self.period_start = start;
            self.spent = Money::ZERO;
            self.overshoot = Money::ZERO;
            // A lease is of one period's budget; the next is leased afresh.
            self.lease = Money::ZERO;
        }
    }

    fn snapshot(&self) -> Snapshot {
        let remaining = self.limit.map(|limit| {
            limit
                .saturating_sub(self.spent)
                .saturating_sub(self.reserved)
                .max(Money::ZERO)
        });
        let reached = self.limit.is_some_and(|limit| self.spent >= limit);
        Snapshot {
            limit: self.limit,
            period: self.period,
            period_start: self.period_start,
            spent: self.spent,
            reserved: self.reserved,
            remaining,
            overshoot: self.overshoot,
            state: if reached {
                CeilingState::Reached
            } else {
                CeilingState::Ok
            },
        }
    }
}

type SharedEntry = Arc<Mutex<Entry>>;

struct Inner {
    entries: RwLock<HashMap<i64, HashMap<String, SharedEntry>>>,
    clock: Arc<dyn Clock>,
    sink: Option<SpendSink>,
    next_reservation: AtomicU64,
    /// Several instances share the ceilings: a hold must fit in this instance's lease.
    shared: bool,
}

impl Inner {
    fn emit(&self, event: SpendEvent) -> Result<(), Unrecorded> {
        match &self.sink {
            Some(sink) => sink(&event),
            None => Ok(()),
        }
    }
}

/// Spend per (account, provider), with optional ceilings. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(Arc::new(SystemClock), None)
    }
}

impl Ledger {
    pub fn new(clock: Arc<dyn Clock>, sink: Option<SpendSink>) -> Self {
        Self::with_mode(clock, sink, false)
    }

    fn with_mode(clock: Arc<dyn Clock>, sink: Option<SpendSink>, shared: bool) -> Self {
        Ledger {
            inner: Arc::new(Inner {
                entries: RwLock::new(HashMap::new()),
                clock,
                sink,
                next_reservation: AtomicU64::new(1),
                shared,
            }),
        }
    }

    /// A ledger for one of several instances sharing one database: with a ceiling set, a call is
    /// admitted only against this instance's lease of the ceiling's budget (see `spend::shared`,
    /// which leases from the database what [`ReserveError::NeedsLease`] asks for). The entry's
    /// limit and spend are then what the database said last; the lease is what protects the
    /// ceiling.
    pub fn shared(clock: Arc<dyn Clock>, sink: Option<SpendSink>) -> Self {
        Self::with_mode(clock, sink, true)
    }

    /// Whether this ledger admits calls against leases (see [`Ledger::shared`]).
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    /// The ledger's clock's time (what periods are measured by).
    pub fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    /// Shared ceilings: takes the ceiling as the database has it (limit, period, spend) without
    /// touching this instance's lease.
    pub fn observe(&self, global: &LedgerRow) {
        let entry = self.entry(global.account, &global.provider);
        let mut e = lock(&entry);
        e.roll(self.inner.clock.now());
        adopt(&mut e, global);
    }

    /// Holds `amount` for a call about to be sent, or refuses it if the ceiling would be broken.
    /// Without a ceiling every reservation is admitted (spend is still tracked). A negative amount
    /// is taken as zero; a zero amount always fits.
    pub fn reserve(
        &self,
        account: i64,
        provider: &str,
        amount: Money,
    ) -> Result<Reservation, ReserveError> {
        let amount = amount.max(Money::ZERO);
        let entry = self.entry(account, provider);
        let id = self.inner.next_reservation.fetch_add(1, Ordering::Relaxed);
        {
            let mut e = lock(&entry);
            let now = self.inner.clock.now();
            e.roll(now);
            e.used_at = Some(std::time::Instant::now());
            if self.inner.shared && e.limit.is_some() {
                let need = e.reserved.saturating_add(amount);
                if need > e.lease {
                    return Err(ReserveError::NeedsLease {
                        want: need.saturating_sub(e.lease),
                    });
                }
            } else if let Some(limit) = e.limit {
                let total = e
                    .spent
                    .checked_add(e.reserved)
                    .and_then(|t| t.checked_add(amount));
                if total.is_none_or(|total| total > limit) {
                    return Err(ReserveError::Ceiling(Refused {
                        limit,
                        spent: e.spent,
                        reserved: e.reserved,
                        requested: amount,
                    }));
                }
            }
            let recorded = self.inner.emit(SpendEvent {
                reservation: id,
                account,
                provider: provider.to_owned(),
                amount,
                kind: SpendKind::Reserved,
                period_start: e.period_start,
                at: now,
            });
            if recorded.is_err() {
                return Err(ReserveError::Unrecorded);
            }
            e.reserved = e.reserved.saturating_add(amount);
        }
        Ok(Reservation {
            id,
            inner: Arc::clone(&self.inner),
            entry,
            account,
            provider: provider.to_owned(),
            amount,
            open: true,
            joined: None,
        })
    }

    /// Sets (or changes) the ceiling. Changing the period starts the new period now but keeps what
    /// was spent, so a change never frees budget by itself; use [`Ledger::reset`] for that.
    pub fn set_ceiling(
        &self,
        account: i64,
        provider: &str,
        limit: Money,
        period: Period,
    ) -> Snapshot {
        match self.set_ceiling_unless(account, provider, limit, period, |_| false) {
            Ok(s) | Err(s) => s,
        }
    }

    /// [`Ledger::set_ceiling`], unless `refuse` says no to the entry as it stands (then nothing
    /// changes and that entry is the `Err`). The check runs under the entry's lock, so no other
    /// change can land between what `refuse` saw and the update.
    pub fn set_ceiling_unless(
        &self,
        account: i64,
        provider: &str,
        limit: Money,
        period: Period,
        refuse: impl FnOnce(&Snapshot) -> bool,
    ) -> Result<Snapshot, Snapshot> {
        let entry = self.entry(account, provider);
        let mut e = lock(&entry);
        let now = self.inner.clock.now();
        // Only the limit and the period are compared, so the entry need not be rolled first.
        let current = e.snapshot();
        if refuse(&current) {
            return Err(current);
        }
        if e.period == period {
            e.roll(now);
        } else {
            e.period = period;
            e.period_start = period.start(now);
        }
        e.limit = Some(limit.max(Money::ZERO));
        Ok(e.snapshot())
    }

    /// Removes the ceiling; spend is still tracked.
    pub fn remove_ceiling(&self, account: i64, provider: &str) -> Snapshot {
        let entry = self.entry(account, provider);
        let mut e = lock(&entry);
        e.roll(self.inner.clock.now());
        e.limit = None;
        e.snapshot()
    }

    /// Sets the current period's spend back to zero. Reservations in flight stay held.
    pub fn reset(&self, account: i64, provider: &str) -> Snapshot {
        let entry = self.entry(account, provider);
        let mut e = lock(&entry);
        let now = self.inner.clock.now();
        e.roll(now);
        let forgiven = std::mem::replace(&mut e.spent, Money::ZERO);
        e.overshoot = Money::ZERO;
        // Only a hold's event can fail to be recorded (see `SpendSink`).
        let _ = self.inner.emit(SpendEvent {
            reservation: 0,
            account,
            provider: provider.to_owned(),
            amount: forgiven,
            kind: SpendKind::Reset,
            period_start: e.period_start,
            at: now,
        });
        e.snapshot()
    }

    /// The entry as it stands now (an untouched pair reads as no limit, nothing spent).
    pub fn snapshot(&self, account: i64, provider: &str) -> Snapshot {
        let now = self.inner.clock.now();
        let Some(entry) = self.existing(account, provider) else {
            return Entry::new(now).snapshot();
        };
        let mut e = lock(&entry);
        e.roll(now);
        e.snapshot()
    }

    /// Whether the pair has a limit now (no entry: none). Creates nothing.
    pub fn has_limit(&self, account: i64, provider: &str) -> bool {
        self.existing(account, provider)
            .is_some_and(|entry| lock(&entry).limit.is_some())
    }

    /// Takes back up to `amount` of the spend of the period starting `period_start` (nothing
    /// when the entry has moved to another period since), without announcing it: the caller
    /// has already written the same credit to the database (`spend::budget`, a child token's
    /// unspent carve going back to its parent). Returns what was taken back.
    pub fn credit_local(
        &self,
        account: i64,
        provider: &str,
        amount: Money,
        period_start: OffsetDateTime,
    ) -> Money {
        let Some(entry) = self.existing(account, provider) else {
            return Money::ZERO;
        };
        let mut e = lock(&entry);
        e.roll(self.inner.clock.now());
        if e.period_start != period_start {
            return Money::ZERO;
        }
        let credited = amount.max(Money::ZERO).min(e.spent);
        e.spent = e.spent.saturating_sub(credited);
        credited
    }

    /// Every provider entry of an account, by provider name (tokens' own limits, keyed
    /// `token:<id>`, are not among them: they are shown with their tokens).
    pub fn snapshots(&self, account: i64) -> Vec<(String, Snapshot)> {
        let now = self.inner.clock.now();
        let entries: Vec<(String, SharedEntry)> = read(&self.inner.entries)
            .get(&account)
            .map(|providers| {
                providers
                    .iter()
                    .filter(|(name, _)| !crate::spend::budget::is_token_key(name))
                    .map(|(name, entry)| (name.clone(), Arc::clone(entry)))
                    .collect()
            })
            .unwrap_or_default();
        let mut out: Vec<(String, Snapshot)> = entries
            .into_iter()
            .map(|(name, entry)| {
                let mut e = lock(&entry);
                e.roll(now);
                (name, e.snapshot())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores persisted entries at start-up. A row replaces the entry's limit, period and spend;
    /// reservations in flight (there should be none yet) are kept. A row from a period that has since
    /// ended rolls over on first use.
    pub fn load(&self, rows: impl IntoIterator<Item = LedgerRow>) {
        for row in rows {
            let entry = self.entry(row.account, &row.provider);
            let mut e = lock(&entry);
            e.limit = row.limit;
            e.period = row.period;
            e.period_start = row.period_start;
            e.spent = row.spent;
            e.overshoot = Money::ZERO;
        }
    }

    /// Shared ceilings: adds `granted` to this instance's lease of the pair, and takes the limit,
    /// period and spend the database showed when it granted it (`global`).
    pub fn add_lease(&self, global: &LedgerRow, granted: Money) {
        let entry = self.entry(global.account, &global.provider);
        let mut e = lock(&entry);
        e.roll(self.inner.clock.now());
        if global.period_start < e.period_start {
            // Granted for a period this instance has already left: not usable, and the database
            // row will be written over by the next grant.
            return;
        }
        adopt(&mut e, global);
        e.lease = e.lease.saturating_add(granted.max(Money::ZERO));
    }

    /// Shared ceilings: takes the ceiling as the database has it now (another instance changed
    /// it, or spend was reset) and returns the part of this instance's lease no call holds, which
    /// the caller hands back to the database: the next call leases again under the new terms.
    pub fn refresh(&self, global: &LedgerRow) -> Money {
        let entry = self.entry(global.account, &global.provider);
        let mut e = lock(&entry);
        e.roll(self.inner.clock.now());
        adopt(&mut e, global);
        let unused = e.lease.saturating_sub(e.reserved).max(Money::ZERO);
        e.lease = e.lease.saturating_sub(unused);
        unused
    }

    /// Shared ceilings: takes back every lease part that no call holds on pairs where no call
    /// reserved for `idle`, so budget an instance does not use goes back to the others. Returns
    /// (account, provider, amount) for the caller to hand back to the database.
    pub fn take_idle_leases(&self, idle: std::time::Duration) -> Vec<(i64, String, Money)> {
        let entries: Vec<(i64, String, SharedEntry)> = read(&self.inner.entries)
            .iter()
            .flat_map(|(account, providers)| {
                providers
                    .iter()
                    .map(|(p, e)| (*account, p.clone(), Arc::clone(e)))
            })
            .collect();
        let mut out = Vec::new();
        for (account, provider, entry) in entries {
            let mut e = lock(&entry);
            let idle_now = e.used_at.is_none_or(|at| at.elapsed() >= idle);
            let unused = e.lease.saturating_sub(e.reserved).max(Money::ZERO);
            if idle_now && unused > Money::ZERO {
                e.lease = e.lease.saturating_sub(unused);
                out.push((account, provider, unused));
            }
        }
        out
    }

    /// Shared ceilings: forgets every lease (the database charged them, having taken this
    /// instance for dead). Calls in flight still settle; new ones lease again.
    pub fn drop_leases(&self) {
        for providers in read(&self.inner.entries).values() {
            for entry in providers.values() {
                lock(entry).lease = Money::ZERO;
            }
        }
    }

    /// This instance's lease of one pair (tests and metrics).
    pub fn lease(&self, account: i64, provider: &str) -> Money {
        self.existing(account, provider)
            .map(|e| lock(&e).lease)
            .unwrap_or(Money::ZERO)
    }

    /// Forgets an account (e.g. when it is deleted). Its reservations in flight settle harmlessly
    /// into the detached entries.
    pub fn remove_account(&self, account: i64) {
        write(&self.inner.entries).remove(&account);
    }

    fn existing(&self, account: i64, provider: &str) -> Option<SharedEntry> {
        read(&self.inner.entries)
            .get(&account)
            .and_then(|providers| providers.get(provider))
            .cloned()
    }

    fn entry(&self, account: i64, provider: &str) -> SharedEntry {
        if let Some(entry) = self.existing(account, provider) {
            return entry;
        }
        let now = self.inner.clock.now();
        let mut entries = write(&self.inner.entries);
        Arc::clone(
            entries
                .entry(account)
                .or_default()
                .entry(provider.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(Entry::new(now)))),
        )
    }
}

/// Money held for one call in flight. Settle it with the metered cost, or release it if the provider
/// charged nothing; if it is dropped instead, its full amount is charged.
#[must_use = "a reservation dropped unsettled is charged in full"]
pub struct Reservation {
    id: u64,
    inner: Arc<Inner>,
    entry: SharedEntry,
    account: i64,
    provider: String,
    amount: Money,
    open: bool,
    /// A second hold the call needs as well (its token's own budget beside the provider's
    /// ceiling): settled, released or charged together with this one.
    joined: Option<Box<Reservation>>,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("account", &self.account)
            .field("provider", &self.provider)
            .field("amount", &self.amount)
            .field("open", &self.open)
            .finish()
    }
}

impl Reservation {
    /// The amount held.
    pub fn amount(&self) -> Money {
        self.amount
    }

    /// This hold and `other` as one: whatever closes this one closes `other` the same way (the
    /// same charge, release, or full charge when dropped).
    pub fn join(mut self, other: Reservation) -> Reservation {
        match self.joined.take() {
            Some(first) => self.joined = Some(Box::new(first.join(other))),
            None => self.joined = Some(Box::new(other)),
        }
        self
    }

    /// Charges `actual` (negative is taken as zero) and releases the hold. An `actual` above the
    /// reservation is charged in full and reported as an overshoot.
    pub fn settle(mut self, actual: Money) -> Settled {
        self.open = false;
        if let Some(joined) = self.joined.take() {
            let _ = joined.settle(actual);
        }
        self.close(actual.max(Money::ZERO), false)
    }

    /// Releases the hold without charging: for a call the provider did not bill (it was never sent,
    /// or failed before any work).
    pub fn release(mut self) {
        self.open = false;
        if let Some(joined) = self.joined.take() {
            joined.release();
        }
        let mut e = lock(&self.entry);
        e.reserved = e.reserved.saturating_sub(self.amount).max(Money::ZERO);
        let _ = self.inner.emit(SpendEvent {
            reservation: self.id,
            account: self.account,
            provider: self.provider.clone(),
            amount: self.amount,
            kind: SpendKind::Released,
            period_start: e.period_start,
            at: self.inner.clock.now(),
        });
    }

    fn close(&self, actual: Money, abandoned: bool) -> Settled {
        let mut e = lock(&self.entry);
        let now = self.inner.clock.now();
        e.roll(now);
        e.reserved = e.reserved.saturating_sub(self.amount).max(Money::ZERO);
        e.spent = e.spent.saturating_add(actual);
        // What is spent is no longer this instance's to hold (the spend writer takes the same
        // amount off the lease's row when it writes the spend).
        e.lease = e.lease.saturating_sub(actual).max(Money::ZERO);
        let overshoot = (actual > self.amount).then(|| actual.saturating_sub(self.amount));
        if let Some(over) = overshoot {
            e.overshoot = e.overshoot.saturating_add(over);
        }
        let _ = self.inner.emit(SpendEvent {
            reservation: self.id,
            account: self.account,
            provider: self.provider.clone(),
            amount: actual,
            kind: if abandoned {
                SpendKind::Abandoned
            } else {
                SpendKind::Settled { overshoot }
            },
            period_start: e.period_start,
            at: now,
        });
        Settled {
            charged: actual,
            overshoot,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            self.open = false;
            self.close(self.amount, true);
        }
    }
}

/// Takes the database's view of a shared ceiling: limit, period and spend. A period this entry
/// has already moved past is not taken back.
fn adopt(e: &mut Entry, global: &LedgerRow) {
    if global.period_start < e.period_start && global.period == e.period {
        e.limit = global.limit;
        return;
    }
    e.limit = global.limit;
    e.period = global.period;
    e.period_start = global.period_start;
    e.spent = global.spent;
}

// A panic elsewhere while a lock was held leaves the data consistent (every update is a few plain
// assignments), so a poisoned lock is used as is rather than taking the ledger down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
    use std::sync::Barrier;
    use time::macros::datetime;

    const ACCOUNT: i64 = 7;

    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }

    fn ledger_at(at: OffsetDateTime) -> (Ledger, Arc<ManualClock>, Arc<Mutex<Vec<SpendEvent>>>) {
        let clock = Arc::new(ManualClock::at(at));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink_events = Arc::clone(&events);
        // Holds (reserved/released) are checked in their own test; the others look at spend.
        let sink: SpendSink = Arc::new(move |event: &SpendEvent| {
            if !matches!(event.kind, SpendKind::Reserved | SpendKind::Released) {
                sink_events.lock().unwrap().push(event.clone());
            }
            Ok(())
        });
        (Ledger::new(clock.clone(), Some(sink)), clock, events)
    }

    fn ledger() -> (Ledger, Arc<ManualClock>, Arc<Mutex<Vec<SpendEvent>>>) {
        ledger_at(datetime!(2025-06-15 12:00 UTC))
    }

    #[test]
    fn concurrent_reservations_admit_exactly_what_fits() {
        let (ledger, _, _) = ledger();
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::Monthly);
        let threads = 100;
        let barrier = Arc::new(Barrier::new(threads));
        let admitted = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (ledger, barrier, admitted) =
                    (ledger.clone(), barrier.clone(), admitted.clone());
                std::thread::spawn(move || {
                    let reservation = ledger.reserve(ACCOUNT, "openai", usd("0.03"));
                    // Everyone holds until all have tried, so no settle frees room mid-way.
                    barrier.wait();
                    if let Ok(reservation) = reservation {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        let actual = rand::thread_rng().gen_range(0..=30_000);
                        reservation.settle(Money::from_micros(actual));
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(admitted.load(Ordering::SeqCst), 33);
        let snapshot = ledger.snapshot(ACCOUNT, "openai");
        assert!(snapshot.spent <= usd("1.00"));
        assert_eq!(snapshot.reserved, Money::ZERO);
    }

    #[test]
    fn concurrent_churn_never_settles_past_the_ceiling() {
        let (ledger, _, events) = ledger();
        ledger.set_ceiling(ACCOUNT, "anthropic", usd("0.50"), Period::Daily);
        let charged = Arc::new(AtomicI64::new(0));
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let (ledger, charged) = (ledger.clone(), charged.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::thread_rng();
                    for _ in 0..50 {
                        let hold = rng.gen_range(1..=20_000);
                        if let Ok(reservation) =
                            ledger.reserve(ACCOUNT, "anthropic", Money::from_micros(hold))
                        {
                            let actual = rng.gen_range(0..=hold);
                            reservation.settle(Money::from_micros(actual));
                            charged.fetch_add(actual, Ordering::SeqCst);
                        }
                        assert!(ledger.snapshot(ACCOUNT, "anthropic").spent <= usd("0.50"));
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        let snapshot = ledger.snapshot(ACCOUNT, "anthropic");
        assert_eq!(snapshot.spent.micros(), charged.load(Ordering::SeqCst));
        assert!(snapshot.spent <= usd("0.50"));
        assert_eq!(snapshot.reserved, Money::ZERO);
        let evented: i64 = events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.amount.micros())
            .sum();
        assert_eq!(evented, snapshot.spent.micros());
    }

    #[test]
    fn refusal_reports_the_ceiling_state() {
        let (ledger, _, _) = ledger();
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::None);
        let held = ledger.reserve(ACCOUNT, "openai", usd("0.60")).unwrap();
        let refused = ledger.reserve(ACCOUNT, "openai", usd("0.50")).unwrap_err();
        assert_eq!(
            refused,
            ReserveError::Ceiling(Refused {
                limit: usd("1.00"),
                spent: Money::ZERO,
                reserved: usd("0.60"),
                requested: usd("0.50")
            })
        );
        held.release();
    }

    #[test]
    fn reservation_that_fits_exactly_is_admitted() {
        let (ledger, _, _) = ledger();
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::None);
        let r = ledger.reserve(ACCOUNT, "openai", usd("1.00")).unwrap();
        assert_eq!(
            ledger.snapshot(ACCOUNT, "openai").remaining,
            Some(Money::ZERO)
        );
        r.settle(usd("1.00"));
        assert_eq!(
            ledger.snapshot(ACCOUNT, "openai").state,
            CeilingState::Reached
        );
    }

    #[test]
    fn dropped_reservation_is_charged_the_reserved_amount() {
        let (ledger, _, events) = ledger();
        drop(ledger.reserve(ACCOUNT, "google", usd("0.25")).unwrap());
        let snapshot = ledger.snapshot(ACCOUNT, "google");
        assert_eq!(
            (snapshot.spent, snapshot.reserved),
            (usd("0.25"), Money::ZERO)
        );
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, SpendKind::Abandoned);
        assert_eq!(events[0].amount, usd("0.25"));
    }

    #[test]
    fn released_reservation_charges_nothing() {
        let (ledger, _, events) = ledger();
        ledger
            .reserve(ACCOUNT, "openai", usd("0.25"))
            .unwrap()
            .release();
        let snapshot = ledger.snapshot(ACCOUNT, "openai");
        assert_eq!(
            (snapshot.spent, snapshot.reserved),
            (Money::ZERO, Money::ZERO)
        );
        assert!(events.lock().unwrap().is_empty());
    }

    #[test]
    fn settle_charges_actual_and_emits_an_event() {
        let (ledger, _, events) = ledger();
        let settled = ledger
            .reserve(ACCOUNT, "openai", usd("0.25"))
            .unwrap()
            .settle(usd("0.10"));
        assert_eq!(
            settled,
            Settled {
                charged: usd("0.10"),
                overshoot: None
            }
        );
        assert_eq!(ledger.snapshot(ACCOUNT, "openai").spent, usd("0.10"));
        let events = events.lock().unwrap();
        assert_eq!(
            events[..],
            [SpendEvent {
                reservation: events[0].reservation,
                account: ACCOUNT,
                provider: "openai".to_owned(),
                amount: usd("0.10"),
                kind: SpendKind::Settled { overshoot: None },
                period_start: OffsetDateTime::UNIX_EPOCH,
                at: datetime!(2025-06-15 12:00 UTC),
            }]
        );
    }

    #[test]
    fn settle_above_reservation_is_recorded_and_flagged() {
        let (ledger, _, events) = ledger();
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::None);
        let settled = ledger
            .reserve(ACCOUNT, "openai", usd("0.90"))
            .unwrap()
            .settle(usd("1.20"));
        assert_eq!(settled.overshoot, Some(usd("0.30")));
        let snapshot = ledger.snapshot(ACCOUNT, "openai");
        assert_eq!(snapshot.spent, usd("1.20"));
        assert_eq!(snapshot.overshoot, usd("0.30"));
        assert_eq!(snapshot.state, CeilingState::Reached);
        assert_eq!(snapshot.remaining, Some(Money::ZERO));
        assert!(ledger
            .reserve(ACCOUNT, "openai", Money::from_micros(1))
            .is_err());
        assert_eq!(
            events.lock().unwrap()[0].kind,
            SpendKind::Settled {
                overshoot: Some(usd("0.30"))
            }
        );
    }

    #[test]
    fn without_a_ceiling_everything_is_admitted_and_tracked() {
        let (ledger, _, _) = ledger();
        ledger
            .reserve(ACCOUNT, "twilio", usd("1000"))
            .unwrap()
            .settle(usd("999"));
        let snapshot = ledger.snapshot(ACCOUNT, "twilio");
        assert_eq!((snapshot.limit, snapshot.spent), (None, usd("999")));
        assert_eq!(snapshot.state, CeilingState::Ok);
    }

    #[test]
    fn daily_period_rolls_over_at_utc_midnight() {
        let (ledger, clock, _) = ledger_at(datetime!(2025-06-15 23:59 UTC));
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::Daily);
        ledger
            .reserve(ACCOUNT, "openai", usd("1.00"))
            .unwrap()
            .settle(usd("1.00"));
        assert!(ledger.reserve(ACCOUNT, "openai", usd("0.01")).is_err());
        clock.set(datetime!(2025-06-16 00:00 UTC));
        let snapshot = ledger.snapshot(ACCOUNT, "openai");
        assert_eq!(
            (snapshot.spent, snapshot.period_start),
            (Money::ZERO, datetime!(2025-06-16 00:00 UTC))
        );
        assert!(ledger.reserve(ACCOUNT, "openai", usd("0.01")).is_ok());
    }

    #[test]
    fn monthly_period_rolls_over_on_the_first() {
        let (ledger, clock, _) = ledger_at(datetime!(2025-01-31 10:00 UTC));
        ledger.set_ceiling(ACCOUNT, "google", usd("5"), Period::Monthly);
        ledger
            .reserve(ACCOUNT, "google", usd("2"))
            .unwrap()
            .settle(usd("2"));
        clock.set(datetime!(2025-01-31 23:00 -02:00)); // 2025-02-01 01:00 UTC
        let snapshot = ledger.snapshot(ACCOUNT, "google");
        assert_eq!(snapshot.spent, Money::ZERO);
        assert_eq!(snapshot.period_start, datetime!(2025-02-01 00:00 UTC));
    }

    #[test]
    fn reservation_in_flight_at_rollover_settles_into_the_new_period() {
        let (ledger, clock, events) = ledger_at(datetime!(2025-06-15 23:59 UTC));
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::Daily);
        let held = ledger.reserve(ACCOUNT, "openai", usd("0.50")).unwrap();
        clock.advance(time::Duration::minutes(2));
        assert_eq!(ledger.snapshot(ACCOUNT, "openai").reserved, usd("0.50"));
        held.settle(usd("0.40"));
        assert_eq!(ledger.snapshot(ACCOUNT, "openai").spent, usd("0.40"));
        assert_eq!(
            events.lock().unwrap()[0].period_start,
            datetime!(2025-06-16 00:00 UTC)
        );
    }

    #[test]
    fn clock_going_back_does_not_reopen_a_period() {
        let (ledger, clock, _) = ledger_at(datetime!(2025-06-16 00:01 UTC));
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::Daily);
        ledger
            .reserve(ACCOUNT, "openai", usd("0.30"))
            .unwrap()
            .settle(usd("0.30"));
        clock.set(datetime!(2025-06-15 23:59 UTC));
        assert_eq!(ledger.snapshot(ACCOUNT, "openai").spent, usd("0.30"));
    }

    #[test]
    fn reset_zeroes_spend_keeps_reservations_and_emits() {
        let (ledger, _, events) = ledger();
        ledger.set_ceiling(ACCOUNT, "openai", usd("1.00"), Period::Monthly);
        ledger
            .reserve(ACCOUNT, "openai", usd("0.70"))
            .unwrap()
            .settle(usd("0.70"));
        let held = ledger.reserve(ACCOUNT, "openai", usd("0.20")).unwrap();
        let snapshot = ledger.reset(ACCOUNT, "openai");
        assert_eq!(
            (snapshot.spent, snapshot.reserved),
            (Money::ZERO, usd("0.20"))
        );
        assert_eq!(snapshot.remaining, Some(usd("0.80")));
        let last = events.lock().unwrap().last().cloned().unwrap();
        assert_eq!((last.kind, last.amount), (SpendKind::Reset, usd("0.70")));
        held.release();
    }

    #[test]
    fn lowering_the_ceiling_below_spend_marks_it_reached() {
        let (ledger, _, _) = ledger();
        ledger
            .reserve(ACCOUNT, "openai", usd("2"))
            .unwrap()
            .settle(usd("2"));
        let snapshot = ledger.set_ceiling(ACCOUNT, "openai", usd("1"), Period::None);
        assert_eq!(snapshot.state, CeilingState::Reached);
        assert!(ledger
            .reserve(ACCOUNT, "openai", Money::from_micros(1))
            .is_err());
        let snapshot = ledger.remove_ceiling(ACCOUNT, "openai");
        assert_eq!((snapshot.limit, snapshot.state), (None, CeilingState::Ok));
    }

    #[test]
    fn changing_the_period_keeps_spend() {
        let (ledger, _, _) = ledger();
        ledger.set_ceiling(ACCOUNT, "openai", usd("10"), Period::Monthly);
        ledger
            .reserve(ACCOUNT, "openai", usd("3"))
            .unwrap()
            .settle(usd("3"));
        let snapshot = ledger.set_ceiling(ACCOUNT, "openai", usd("10"), Period::Daily);
        assert_eq!(snapshot.spent, usd("3"));
        assert_eq!(snapshot.period_start, datetime!(2025-06-15 00:00 UTC));
    }

    #[test]
    fn load_restores_spend_of_the_current_period() {
        let (ledger, _, _) = ledger();
        ledger.load([LedgerRow {
            account: ACCOUNT,
            provider: "openai".to_owned(),
            limit: Some(usd("1.00")),
            period: Period::Monthly,
            period_start: datetime!(2025-06-01 00:00 UTC),
            spent: usd("0.95"),
        }]);
        assert!(ledger.reserve(ACCOUNT, "openai", usd("0.10")).is_err());
        assert!(ledger.reserve(ACCOUNT, "openai", usd("0.05")).is_ok());
    }

    #[test]
    fn load_of_an_ended_period_rolls_over() {
        let (ledger, _, _) = ledger();
        ledger.load([LedgerRow {
            account: ACCOUNT,
            provider: "openai".to_owned(),
            limit: Some(usd("1.00")),
            period: Period::Monthly,
            period_start: datetime!(2025-05-01 00:00 UTC),
            spent: usd("1.00"),
        }]);
        let snapshot = ledger.snapshot(ACCOUNT, "openai");
        assert_eq!(
            (snapshot.spent, snapshot.limit),
            (Money::ZERO, Some(usd("1.00")))
        );
    }

    #[test]
    fn accounts_and_providers_are_independent() {
        let (ledger, _, _) = ledger();
        ledger.set_ceiling(1, "openai", usd("1"), Period::None);
        ledger
            .reserve(1, "openai", usd("1"))
            .unwrap()
            .settle(usd("1"));
        assert!(ledger.reserve(1, "openai", usd("0.01")).is_err());
        assert!(ledger.reserve(2, "openai", usd("5")).is_ok());
        assert!(ledger.reserve(1, "anthropic", usd("5")).is_ok());
        let names: Vec<String> = ledger
            .snapshots(1)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec!["anthropic".to_owned(), "openai".to_owned()]);
    }

    #[test]
    fn negative_amounts_are_taken_as_zero() {
        let (ledger, _, _) = ledger();
        let r = ledger.reserve(ACCOUNT, "openai", usd("-5")).unwrap();
        assert_eq!(r.amount(), Money::ZERO);
        r.settle(usd("-1"));
        assert_eq!(ledger.snapshot(ACCOUNT, "openai").spent, Money::ZERO);
    }

    #[test]
    fn untouched_pair_reads_as_empty() {
        let snapshot = Ledger::default().snapshot(1, "openai");
        assert_eq!(
            (snapshot.limit, snapshot.spent, snapshot.state),
            (None, Money::ZERO, CeilingState::Ok)
        );
    }

    #[test]
    fn holds_are_announced_so_a_writer_can_persist_them() {
        let clock = Arc::new(ManualClock::at(datetime!(2025-06-15 12:00 UTC)));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink_events = Arc::clone(&events);
        let sink: SpendSink = Arc::new(move |e: &SpendEvent| {
            sink_events
                .lock()
                .unwrap()
                .push((e.reservation, e.kind, e.amount));
            Ok(())
        });
        let ledger = Ledger::new(clock, Some(sink));
        let a = ledger.reserve(ACCOUNT, "openai", usd("0.30")).unwrap();
        let b = ledger.reserve(ACCOUNT, "openai", usd("0.20")).unwrap();
        let (ida, idb) = (a.id, b.id);
        assert_ne!(ida, idb);
        a.settle(usd("0.10"));
        b.release();
        assert_eq!(
            events.lock().unwrap()[..],
            [
                (ida, SpendKind::Reserved, usd("0.30")),
                (idb, SpendKind::Reserved, usd("0.20")),
                (ida, SpendKind::Settled { overshoot: None }, usd("0.10")),
                (idb, SpendKind::Released, usd("0.20")),
            ]
        );
    }
}
