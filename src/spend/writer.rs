//! The spend writer: one thread that persists spend events, holds in flight and per-call usage to
//! SQLite in batches. Group commit: while one transaction commits, new messages queue up, and the
//! next transaction takes all of them, so the cost per call falls as load rises.
//!
//! Durability: the writer has its own connection with `synchronous = NORMAL`. In WAL mode a
//! committed transaction then survives a crash of the process (SIGKILL included: the data is in
//! the OS page cache), but not a power cut right after it. Measured on the build machine, an
//! fsync per commit (`FULL`) costs 1.8 ms and `NORMAL` 18 µs. Keys and accounts are written
//! through the main connection with `FULL`.
//!
//! A call must not be answered before its hold would survive a crash. The hold is appended to the
//! hold journal (`spend::journal`) by the thread that reserves it, inside [`SpendWriter::send`],
//! so the call never waits for this thread's commit.
//!
//! Every message gets a sequence number in channel order; each transaction also stores the last
//! number it committed (`spend_journal_state`), and after the commit the hold journal drops the
//! segments that are all committed. The writer is owned by [`SpendWriter`], whose drop drains the queue and joins the thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::alerts::AlertHook;
use crate::db::{Conn, Value};
use crate::params;

use crate::db::{Checkpointer, Db, DedicatedWriter};
use crate::money::Money;
use crate::spend::journal::HoldJournal;
use crate::spend::ledger::{Period, SpendEvent, SpendKind, SpendSink, Unrecorded};

const MAX_BATCH: usize = 4096;
/// The writer and checkpoint threads run at this nice value: no call waits for them (holds are
/// journaled), so they take the CPU when the workers answering calls leave it.
const BACKGROUND_NICE: i32 = 5;
/// How long the writer lets messages gather after the first one arrives. No call waits for the
/// writer (holds are journaled, see `spend::journal`), so batching costs no latency; it turns a
/// transaction (and a thread wake-up) per message into at most one per window, which keeps the
/// writer from taking the CPU away from calls being proxied. A flush waits at most one window.
/// Each transaction rewrites about nine pages whatever its size (recent calls, usage, spend,
/// last use, the journal mark), so a longer window means fewer WAL bytes per call: measured at
/// 12,000 calls/s, 1.5 KB per call with 2 ms, 0.8 KB with 5 ms.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// The window with shared ceilings (several instances on PostgreSQL): every hold is inside its
/// instance's lease, which a crash charges in full, so settled spend loses nothing by waiting;
/// a longer window turns the ~5 statements of a transaction into a fraction of one per call, and
/// each round trip to PostgreSQL costs far more than SQLite's. Every instance writes its own
/// batches, so the statements per call grow with the instances at a given total rate: measured
/// at 1,000 calls/s with 100 ms, 0.085 per call with one instance and 0.146 with two (about 70
/// statements a second per instance); 250 ms cuts the batches to 4 a second. A flush or a stop
/// still ends the window at once.
const SHARED_BATCH_WINDOW: Duration = Duration::from_millis(250);
/// Recent calls kept per account for the dashboard.
pub const RECENT_CALLS_KEPT: i64 = 200;

/// One proxied call, for usage and the recent-calls list.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    pub account: i64,
    pub provider: String,
    pub at: i64,
    pub method: String,
    pub route: String,
    pub status: u16,
    /// `ok`, `refused` (ceiling), `failed` (no upstream answer), `upstream_error` (4xx/5xx).
    pub outcome: &'static str,
    pub model: String,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost: Money,
    pub priced_by_fallback: bool,
    pub request_id: String,
    /// The tool token that made the call (its `last_used_at` is bumped).
    pub token_id: String,
    /// The call's `X-Keybroker-Agent` label ('' without one), already checked.
    pub agent: String,
    /// From the call's arrival to its settlement (the whole answer, streamed or not).
    pub latency_ms: u64,
}

impl CallRecord {
    /// Records the call's latency up to now: at least 1 ms, since 0 is what rows from before
    /// latency was recorded hold.
    pub fn took_since(&mut self, started: std::time::Instant) {
        self.latency_ms = u64::try_from(started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
    }
}

/// A ceiling as configured, written in order with the spend events around it.
#[derive(Debug, Clone)]
pub struct CeilingRow {
    pub account: i64,
    pub provider: String,
    pub limit: Option<Money>,
    pub period: Period,
    pub period_start: i64,
    pub spent: Money,
}

enum Msg {
    Spend(SpendEvent),
    Call(Box<CallRecord>),
    Ceiling(CeilingRow),
    Barrier(SyncSender<()>),
    Stop,
}

pub struct SpendWriter {
    /// The sender and the last sequence number handed out, under one lock, so sequence order is
    /// channel order.
    tx: Mutex<(Sender<(u64, Msg)>, u64)>,
    /// Holds are journaled under the `tx` lock, so the journal is in sequence order.
    journal: Option<Arc<HoldJournal>>,
    depth: Arc<AtomicUsize>,
    /// Set by [`SpendWriter::shutdown`]: a batch the database cannot take is then tried for at
    /// most [`STOP_GRACE`] more, so stopping never waits for ever on a database that is down.
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Told of every alert threshold a batch's spend crosses (`alerts`); set once, after start.
    alerts: Arc<OnceLock<Arc<dyn AlertHook>>>,
}

/// The alert hook as the writer thread sees it (unset until the application installs it).
type Alerts = Arc<OnceLock<Arc<dyn AlertHook>>>;

/// How often the WAL is checkpointed (see [`SpendWriter::start`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Copies the WAL back into the database file once a second, on its own connection, instead of
/// SQLite's automatic checkpoint (which runs inside whichever commit crosses 1,000 pages).
///
/// RESTART, not PASSIVE: under steady load the spend writer commits every few milliseconds, and
/// a PASSIVE checkpoint never finds the moment when every frame is copied and no commit has begun,
/// so the WAL was never started over and grew without bound (measured: 470 MB after six minutes
/// at 12,000 calls/s). RESTART makes writers wait while it copies the last second's frames (a few
/// milliseconds), so the next commit starts the WAL from its beginning; `journal_size_limit`
/// (see `db.rs`) then trims the file. No proxied call waits for the spend writer (holds are
/// journaled, see `spend::journal`), so that wait is invisible to calls; an API write waits at
/// most that long, within its busy timeout.
fn run_checkpoints(conn: &Checkpointer, stop: &mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.checkpoint() {
                    tracing::warn!(error = %e, "WAL checkpoint failed; will try again");
                }
            }
            _ => return,
        }
    }
}

impl std::fmt::Debug for SpendWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendWriter")
            .field("queue_depth", &self.queue_depth())
            .finish()
    }
}

impl SpendWriter {
    /// Starts the writer. With a `journal`, every hold is appended to it before it is queued; the
    /// database must then have been through `store::recover_and_load` with that journal's epoch.
    pub fn start(db: &Db, journal: Option<HoldJournal>) -> Result<Arc<Self>, crate::db::DbError> {
        Self::start_as(db, journal, None)
    }

    /// The writer of one of several instances sharing the database's ceilings (`spend::shared`):
    /// its holds carry `instance`, its settled spend comes off that instance's leases in the
    /// same transaction, and it keeps no hold journal.
    pub fn start_shared(db: &Db, instance: &str) -> Result<Arc<Self>, crate::db::DbError> {
        Self::start_as(db, None, Some(instance.to_owned()))
    }

    fn start_as(
        db: &Db,
        journal: Option<HoldJournal>,
        instance: Option<String>,
    ) -> Result<Arc<Self>, crate::db::DbError> {
        // On SQLite: its own connection, with `wal_autocheckpoint` off (the checkpointer below
        // does it once a second).
        let conn = db.dedicated_writer()?;
        let checkpointer = match db.checkpointer()? {
            Some(checkpoint_conn) => {
                let (stop_tx, stop_rx) = mpsc::channel();
                let thread = std::thread::Builder::new()
                    .name("wal-checkpoint".into())
                    .spawn(move || {
                        crate::threads::lower_priority(BACKGROUND_NICE);
                        run_checkpoints(&checkpoint_conn, &stop_rx)
                    })
                    .map_err(|e| crate::db::DbError::Thread(e.to_string()))?;
                Some((stop_tx, thread))
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread_stopping = stopping.clone();
        let journal = journal.map(Arc::new);
        let thread_journal = journal.clone();
        let alerts: Alerts = Arc::new(OnceLock::new());
        let thread_alerts = alerts.clone();
        let thread = std::thread::Builder::new()
            .name("spend-writer".into())
            .spawn(move || {
                crate::threads::lower_priority(BACKGROUND_NICE);
                run(
                    conn,
                    rx,
                    thread_depth,
                    thread_journal,
                    &thread_stopping,
                    instance.as_deref(),
                    &thread_alerts,
                )
            })
            .map_err(|e| crate::db::DbError::Thread(e.to_string()))?;
        Ok(Arc::new(Self {
            tx: Mutex::new((tx, 0)),
            journal,
            depth,
            stopping,
            thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(checkpointer),
            alerts,
        }))
    }

    /// Queues a message. A hold is first appended to the journal; if that fails the hold is not
    /// queued and the caller refuses the call.
    fn send(&self, msg: Msg) -> Result<(), Unrecorded> {
        let mut guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = guard.1 + 1;
        if let (Some(journal), Msg::Spend(event)) = (&self.journal, &msg) {
            if event.kind == SpendKind::Reserved {
                if let Err(e) = journal.append(seq, event) {
                    tracing::error!(error = %e, "the hold journal could not be written; the call is refused");
                    return Err(Unrecorded);
                }
            }
        }
        guard.1 = seq;
        self.depth.fetch_add(1, Ordering::Relaxed);
        if guard.0.send((seq, msg)).is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("spend writer is gone; a spend record was not persisted");
        }
        Ok(())
    }

    /// The sequence number of the last message sent so far.
    #[cfg(test)]
    fn sent(&self) -> u64 {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// The ledger's sink: every event goes to the writer, in the order the ledger made them.
    pub fn sink(self: &Arc<Self>) -> SpendSink {
        let writer = Arc::clone(self);
        Arc::new(move |event: &SpendEvent| writer.send(Msg::Spend(event.clone())))
    }

    pub fn record_call(&self, call: CallRecord) {
        let _ = self.send(Msg::Call(Box::new(call)));
    }

    /// Installs the hook told of alert thresholds crossed (once; a second call changes nothing).
    /// Before it is set, crossings are not looked for.
    pub fn set_alert_hook(&self, hook: Arc<dyn AlertHook>) {
        let _ = self.alerts.set(hook);
    }

    pub fn record_ceiling(&self, row: CeilingRow) {
        let _ = self.send(Msg::Ceiling(row));
    }

    /// Messages sent but not yet committed.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Waits until everything sent before this call is committed.
    pub fn flush_blocking(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = self.send(Msg::Barrier(tx));
        let _ = rx.recv();
    }

    pub async fn flush(self: &Arc<Self>) {
        let w = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || w.flush_blocking()).await;
    }

    /// Commits what is queued and stops the thread. Idempotent.
    pub fn shutdown(&self) {
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            self.stopping.store(true, Ordering::Relaxed);
            let _ = self.send(Msg::Stop);
            let _ = handle.join();
        }
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((stop, handle)) = checkpointer {
            let _ = stop.send(());
            let _ = handle.join();
        }
    }
}

impl Drop for SpendWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    mut conn: DedicatedWriter,
    rx: Receiver<(u64, Msg)>,
    depth: Arc<AtomicUsize>,
    journal: Option<Arc<HoldJournal>>,
    stopping: &AtomicBool,
    instance: Option<&str>,
    alerts: &Alerts,
) {
    let published = |seq: u64| {
        if let Some(journal) = &journal {
            journal.committed(seq);
        }
        if let Some(hook) = alerts.get() {
            hook.committed();
        }
    };
    let mut batch = Vec::with_capacity(256);
    let mut recent = RecentCalls::default();
    let mut last_seq = 0;
    loop {
        // Recent calls waiting to be written are written once they are due even if no other
        // message comes.
        let first = match recent.due_in() {
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    apply(
                        &mut conn,
                        &mut batch,
                        last_seq,
                        &mut recent,
                        true,
                        stopping,
                        instance,
                        alerts.get(),
                    );
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        last_seq = first.0;
        let mut stop = matches!(first.1, Msg::Stop);
        let mut waited = matches!(first.1, Msg::Stop | Msg::Barrier(_));
        batch.push(first.1);
        // Everything queued within the window joins this transaction; a flush or a stop ends the
        // window early (it is slept in slices, so no message wakes the thread by itself).
        let window = if instance.is_some() {
            SHARED_BATCH_WINDOW
        } else {
            BATCH_WINDOW
        };
        let opened = std::time::Instant::now();
        loop {
            if !waited {
                std::thread::sleep(BATCH_WINDOW);
            }
            while !stop && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok((seq, msg)) => {
                        last_seq = seq;
                        stop = matches!(msg, Msg::Stop);
                        waited |= matches!(msg, Msg::Barrier(_));
                        batch.push(msg);
                    }
                    Err(_) => break,
                }
            }
            if waited || stop || batch.len() >= MAX_BATCH || opened.elapsed() >= window {
                break;
            }
        }
        let n = batch.len();
        let (barriers, committed) = apply(
            &mut conn,
            &mut batch,
            last_seq,
            &mut recent,
            stop,
            stopping,
            instance,
            alerts.get(),
        );
        depth.fetch_sub(n, Ordering::Relaxed);
        if committed {
            published(last_seq);
        }
        for b in barriers {
            let _ = b.send(());
        }
        if stop {
            // Anything sent after Stop (a late settle) is still written before we go.
            let mut rest: Vec<Msg> = Vec::new();
            for (seq, msg) in rx.try_iter() {
                last_seq = seq;
                rest.push(msg);
            }
            if !rest.is_empty() {
                let n = rest.len();
                let (barriers, committed) = apply(
                    &mut conn,
                    &mut rest,
                    last_seq,
                    &mut recent,
                    true,
                    stopping,
                    instance,
                    alerts.get(),
                );
                for b in barriers {
                    let _ = b.send(());
                }
                depth.fetch_sub(n, Ordering::Relaxed);
                if committed {
                    published(last_seq);
                }
            }
            return;
        }
    }
}

/// Writes one batch in one transaction. A statement that fails (e.g. a row for an account deleted
/// meanwhile) is logged and skipped; it does not lose the rest of the batch.
///
/// The batch is folded before it is written, so the statements per call fall as load rises: a
/// hold opened and closed in the same batch is never inserted (nor deleted), settled amounts are
/// summed per spend row, usage per hour row, last use per key and per token. The recent-calls
/// list (a dashboard view, not an account of money) is gathered in `recent` and written once per
/// [`RECENT_CALLS_EVERY`], or at once with `force`, a flush or a stop. A reset or a ceiling
/// change writes the sums gathered before it first, so order is kept where it matters.
#[allow(clippy::too_many_arguments)] // the writer thread's state, passed as it is
fn apply(
    conn: &mut DedicatedWriter,
    batch: &mut Vec<Msg>,
    last_seq: u64,
    recent: &mut RecentCalls,
    force: bool,
    stopping: &AtomicBool,
    instance: Option<&str>,
    alerts: Option<&Arc<dyn AlertHook>>,
) -> (Vec<SyncSender<()>>, bool) {
    let force = force
        || batch
            .iter()
            .any(|m| matches!(m, Msg::Barrier(_) | Msg::Stop));
    for msg in batch.iter() {
        if let Msg::Call(c) = msg {
            recent.push(c.clone());
        }
    }
    let write_recent = force || recent.due_in() == Some(Duration::ZERO);
    let mut wait = RETRY_FIRST;
    let mut stopping_since: Option<std::time::Instant> = None;
    let mut committed = false;
    // A record that fails (its account deleted meanwhile, say) is skipped; on PostgreSQL a failed
    // statement aborts the whole transaction, so a batch refused once is written again with a
    // savepoint around each record (slower, and only then).
    let mut careful = false;
    let mut conflicts = 0;
    loop {
        RECORD_FAILED.with(|f| f.set(false));
        let result = conn.write(|tx| -> crate::db::Result<()> {
            let mut fold = Fold::of(batch, instance);
            fold.careful = careful;
            fold.alerts = alerts.cloned();
            for msg in batch.iter() {
                let outcome = match msg {
                    Msg::Spend(e) if careful => {
                        let e = e.clone();
                        let f = &mut fold;
                        tx.savepoint(|c| f.spend(c, e))
                    }
                    Msg::Spend(e) => fold.spend(tx, e.clone()),
                    Msg::Call(c) => {
                        fold.call(c);
                        Ok(())
                    }
                    Msg::Ceiling(row) => fold.write_spend(tx).and_then(|()| {
                        if careful {
                            tx.savepoint(|c| apply_ceiling(c, row))
                        } else {
                            apply_ceiling(tx, row)
                        }
                    }),
                    Msg::Barrier(_) | Msg::Stop => Ok(()),
                };
                skip_failed(outcome);
            }
            fold.finish(tx)?;
            if write_recent {
                recent.write(tx, careful)?;
            }
            // On PostgreSQL a failed statement aborted the transaction and its COMMIT would
            // quietly roll everything back: refuse the batch so it is written record by record.
            if !careful && RECORD_FAILED.with(std::cell::Cell::take) {
                return Err(crate::db::DbError::RolledBack(
                    "a record of the batch could not be written",
                ));
            }
            // What the hold journal's recovery compares against (see `spend::journal`); shared
            // ceilings keep no journal, and several writers must not contend for this one row.
            if instance.is_none() {
                tx.prepare_cached(
                    "UPDATE spend_journal_state SET committed_seq = ?1 WHERE id = 1",
                )?
                .execute([i64::try_from(last_seq).unwrap_or(i64::MAX)])?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                if write_recent {
                    recent.clear();
                }
                committed = true;
                break;
            }
            // The database is down or restarting (PostgreSQL): nothing of this batch committed,
            // and settled spend must not be lost, so the same batch is written again once it is
            // back. Calls meanwhile queue behind it; new ones are refused by the proxy itself
            // (their token or key lookup fails with `store_unavailable`).
            Err(e) if e.is_unavailable() => {
                if stopping.load(Ordering::Relaxed)
                    && stopping_since
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed()
                        >= STOP_GRACE
                {
                    // Not published as committed: the hold journal keeps this batch's holds,
                    // and the next start charges them in full (fail closed).
                    tracing::error!(records = batch.len(), "spend writer: stopping while the database is still unavailable; this batch was not written (its holds are charged in full at the next start)");
                    break;
                }
                if wait == RETRY_FIRST {
                    tracing::warn!(error = %e, "spend writer: the database is unavailable; the batch will be written when it is back");
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(RETRY_MAX);
            }
            // Another writer (another instance's) got in the way; the database rolled this one
            // back whole, so the same batch is simply written again.
            Err(e) if e.is_conflict() && conflicts < 20 => {
                conflicts += 1;
                std::thread::sleep(Duration::from_millis(2 * conflicts));
            }
            Err(e) if !careful => {
                tracing::warn!(error = %e, "spend writer: a batch was refused; writing it again record by record");
                careful = true;
            }
            Err(e) => {
                // A batch the database refuses even record by record is dropped rather than
                // retried for ever; the holds already committed are charged in full at the next
                // start, which keeps the ceiling safe.
                tracing::error!(error = %e, "spend writer: a batch could not be committed");
                break;
            }
        }
    }
    let barriers = batch
        .drain(..)
        .filter_map(|m| match m {
            Msg::Barrier(b) => Some(b),
            _ => None,
        })
        .collect();
    (barriers, committed)
}

/// How long the writer waits before writing a batch again while the database is unavailable,
/// doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a stopping writer keeps trying a batch the database cannot take (see
/// [`SpendWriter::shutdown`]).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Usage of one `usage_hourly` row gathered from a batch.
#[derive(Default)]
struct HourUsage {
    calls: i64,
    refused: i64,
    failed: i64,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    spend_micros: i64,
    fallback_priced: i64,
}

/// A `usage_hourly_by_token` row's key: (account, hour, provider, token id, agent label).
type TokenHour = (i64, i64, String, String, String);

impl HourUsage {
    fn add(&mut self, c: &CallRecord) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.calls += 1;
        self.refused += i64::from(c.outcome == "refused");
        self.failed += i64::from(c.outcome == "failed" || c.outcome == "upstream_error");
        self.input_tokens = self.input_tokens.saturating_add(clamp(c.input_tokens));
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(clamp(c.cached_input_tokens));
        self.output_tokens = self.output_tokens.saturating_add(clamp(c.output_tokens));
        self.reasoning_tokens = self
            .reasoning_tokens
            .saturating_add(clamp(c.reasoning_tokens));
        self.spend_micros = self.spend_micros.saturating_add(c.cost.micros());
        self.fallback_priced += i64::from(c.priced_by_fallback);
    }
}

/// One batch, folded: what can be summed is summed and written once.
#[derive(Default)]
struct Fold {
    /// Reservations both opened and closed in this batch: neither end touches `spend_holds`.
    transient: std::collections::HashSet<u64>,
    /// Settled amounts per (account, provider, period start).
    spend: std::collections::HashMap<(i64, String, i64), Money>,
    usage: std::collections::HashMap<(i64, String, i64), HourUsage>,
    /// The same usage per (account, hour, provider, token, agent): `usage_hourly_by_token`.
    usage_by_token: std::collections::HashMap<TokenHour, HourUsage>,
    /// The instance whose holds these are ('' for the one instance of a SQLite file); with
    /// shared ceilings, settled spend also comes off its leases.
    instance: String,
    shared: bool,
    /// Settled and abandoned amounts per (account, provider), to take off the leases.
    lease_spent: std::collections::HashMap<(i64, String), Money>,
    /// Each row in a savepoint of its own (see `apply`).
    careful: bool,
    /// Holds opened in this batch and still open, and holds opened in an earlier one that
    /// closed, gathered to be written together: [`HOLDS_PER_STATEMENT`] rows per `INSERT` and
    /// ids per `DELETE` (a careful batch writes each at once, in its record's savepoint).
    holds_opened: Vec<OpenedHold>,
    holds_closed: Vec<i64>,
    /// Told of alert thresholds the spend written crosses.
    alerts: Option<Arc<dyn AlertHook>>,
}

/// A hold row to insert.
struct OpenedHold {
    id: i64,
    account: i64,
    provider: String,
    amount_micros: i64,
    period_start: i64,
    created_at: i64,
}

/// Rows per multi-row hold `INSERT` (7 parameters each) and ids per hold `DELETE`. With a slow
/// upstream most holds outlive the batch they opened in (a 20–60 ms call spans a 250 ms batch's
/// end often enough): measured at 1,000 calls/s with a 60 ms upstream, 0.46 statements per call
/// when each hold was its own `INSERT` and `DELETE`.
const HOLDS_PER_STATEMENT: usize = 100;

/// The hold `INSERT` for `rows` rows, the instance bound once as `?1`.
fn insert_holds(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO spend_holds (id, account_id, provider, amount_micros, period_start, created_at, instance_id) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let base = 1 + row * 6;
        sql.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?1)",
            base + 1,
            base + 2,
            base + 3,
            base + 4,
            base + 5,
            base + 6
        ));
    }
    sql.push_str(
        " ON CONFLICT (instance_id, id) DO UPDATE SET account_id = excluded.account_id,
         provider = excluded.provider, amount_micros = excluded.amount_micros,
         period_start = excluded.period_start, created_at = excluded.created_at",
    );
    sql
}

/// `DELETE FROM spend_holds` of `ids` ids of the instance bound as `?1`.
fn delete_holds(ids: usize) -> String {
    let list: Vec<String> = (0..ids).map(|i| format!("?{}", i + 2)).collect();
    format!(
        "DELETE FROM spend_holds WHERE instance_id = ?1 AND id IN ({})",
        list.join(", ")
    )
}

impl Fold {
    fn of(batch: &[Msg], instance: Option<&str>) -> Self {
        let mut opened = std::collections::HashSet::new();
        let mut transient = std::collections::HashSet::new();
        for msg in batch {
            if let Msg::Spend(e) = msg {
                match e.kind {
                    SpendKind::Reserved => {
                        opened.insert(e.reservation);
                    }
                    SpendKind::Released | SpendKind::Settled { .. } | SpendKind::Abandoned => {
                        if opened.contains(&e.reservation) {
                            transient.insert(e.reservation);
                        }
                    }
                    SpendKind::Reset => {}
                }
            }
        }
        Self {
            transient,
            instance: instance.unwrap_or_default().to_owned(),
            shared: instance.is_some(),
            ..Self::default()
        }
    }

    fn spend(&mut self, conn: &Conn<'_>, e: SpendEvent) -> crate::db::Result<()> {
        let id = i64::try_from(e.reservation).unwrap_or(i64::MAX);
        let transient = self.transient.contains(&e.reservation);
        match e.kind {
            SpendKind::Reserved if transient => {}
            SpendKind::Reserved => {
                self.holds_opened.push(OpenedHold {
                    id,
                    account: e.account,
                    provider: e.provider,
                    amount_micros: e.amount.micros(),
                    period_start: e.period_start.unix_timestamp(),
                    created_at: e.at.unix_timestamp(),
                });
                if self.careful {
                    self.write_holds(conn)?;
                }
            }
            SpendKind::Released | SpendKind::Settled { .. } | SpendKind::Abandoned => {
                if !transient {
                    self.holds_closed.push(id);
                    if self.careful {
                        self.write_holds(conn)?;
                    }
                }
                if e.kind != SpendKind::Released && self.shared {
                    let sum = self
                        .lease_spent
                        .entry((e.account, e.provider.clone()))
                        .or_insert(Money::ZERO);
                    *sum = sum.saturating_add(e.amount);
                }
                if e.kind != SpendKind::Released {
                    let sum = self
                        .spend
                        .entry((e.account, e.provider, e.period_start.unix_timestamp()))
                        .or_insert(Money::ZERO);
                    *sum = sum.saturating_add(e.amount);
                }
            }
            SpendKind::Reset => {
                self.write_spend(conn)?;
                conn.prepare_cached(
                    "UPDATE spend SET spent_micros = 0, alerted_percent = 0 WHERE account_id = ?1 AND provider = ?2",
                )?
                .execute(params![e.account, e.provider])?;
            }
        }
        Ok(())
    }

    fn call(&mut self, c: &CallRecord) {
        let hour = c.at - c.at.rem_euclid(3600);
        self.usage
            .entry((c.account, c.provider.clone(), hour))
            .or_default()
            .add(c);
        self.usage_by_token
            .entry((
                c.account,
                hour,
                c.provider.clone(),
                c.token_id.clone(),
                c.agent.clone(),
            ))
            .or_default()
            .add(c);
    }

    /// Writes the gathered holds, many rows per statement, and forgets them. A careful batch
    /// calls it after each record (one row, inside that record's savepoint); otherwise it runs
    /// once, and a failure marks the batch (see [`skip_failed`]) to be written again carefully.
    fn write_holds(&mut self, conn: &Conn<'_>) -> crate::db::Result<()> {
        // Taken first: a failed write is not tried again with the next record's.
        let opened = std::mem::take(&mut self.holds_opened);
        let closed = std::mem::take(&mut self.holds_closed);
        let instance = Value::Text(&self.instance);
        for chunk in opened.chunks(HOLDS_PER_STATEMENT) {
            let mut values = Vec::with_capacity(1 + chunk.len() * 6);
            values.push(instance);
            for h in chunk {
                values.extend([
                    Value::Int(h.id),
                    Value::Int(h.account),
                    Value::Text(&h.provider),
                    Value::Int(h.amount_micros),
                    Value::Int(h.period_start),
                    Value::Int(h.created_at),
                ]);
            }
            conn.prepare_cached(&insert_holds(chunk.len()))?
                .execute(values)?;
        }
        for chunk in closed.chunks(HOLDS_PER_STATEMENT) {
            let mut values = Vec::with_capacity(1 + chunk.len());
            values.push(instance);
            values.extend(chunk.iter().map(|id| Value::Int(*id)));
            conn.prepare_cached(&delete_holds(chunk.len()))?
                .execute(values)?;
        }
        Ok(())
    }

    /// Adds the settled sums gathered so far to their spend rows.
    fn write_spend(&mut self, conn: &Conn<'_>) -> crate::db::Result<()> {
        // In one order on every instance, so two writers never wait on each other's rows in
        // opposite orders (a deadlock on PostgreSQL).
        let mut rows: Vec<_> = self.spend.drain().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((account, provider, period_start), amount) in rows {
            guarded(conn, self.careful, |c| {
                add_spend(
                    c,
                    account,
                    &provider,
                    period_start,
                    amount,
                    self.alerts.as_deref(),
                )
            });
        }
        Ok(())
    }

    /// Writes the folded rows. Like a single record, a row that cannot be written (its account
    /// was deleted meanwhile) is logged and skipped without losing the rest of the batch.
    fn finish(mut self, conn: &Conn<'_>) -> crate::db::Result<()> {
        skip_failed(self.write_holds(conn));
        self.write_spend(conn)?;
        let careful = self.careful;
        // Spend written above leaves the lease it was held in, in the same transaction, so
        // `spent + Σ leases` never drops by itself (see `spend::shared`).
        let mut leases: Vec<_> = self.lease_spent.drain().collect();
        leases.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((account, provider), amount) in leases {
            guarded(conn, careful, |c| {
                crate::spend::shared::give_back(c, &self.instance, account, &provider, amount)
            });
        }
        let mut usage: Vec<_> = self.usage.drain().collect();
        usage.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((account, provider, hour), u) in usage {
            guarded(conn, careful, |c| {
                apply_usage(c, account, &provider, hour, &u)
            });
        }
        let mut by_token: Vec<_> = self.usage_by_token.drain().collect();
        by_token.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, u) in by_token {
            guarded(conn, careful, |c| apply_usage_by_token(c, &key, &u));
        }
        Ok(())
    }
}

/// How often gathered recent calls are written (see [`apply`]).
const RECENT_CALLS_EVERY: Duration = Duration::from_secs(1);

/// Calls for the recent-calls list not written yet: at most [`RECENT_CALLS_KEPT`] per account,
/// since older ones would be trimmed right after their insert, and the latest use of each key and
/// token. Under load this turns a row insert (and a trim) per call, and two `last_used_at`
/// updates per batch, into a few statements per account per second (the inserts go
/// [`RECENT_ROWS_PER_INSERT`] rows at a time); a SIGKILL loses at most the last second of this
/// list and of `last_used_at`, never spend or usage.
#[derive(Default)]
struct RecentCalls {
    calls: std::collections::HashMap<i64, std::collections::VecDeque<Box<CallRecord>>>,
    key_used: std::collections::HashMap<(i64, String), i64>,
    token_used: std::collections::HashMap<String, i64>,
    since: Option<std::time::Instant>,
}

/// Rows per multi-row `INSERT INTO recent_calls` (15 parameters each: 1,500 in all, far below
/// either backend's limit).
const RECENT_ROWS_PER_INSERT: usize = 100;

/// `INSERT INTO recent_calls ... VALUES (?1, ..., ?15), (?16, ...)` for `rows` rows.
fn recent_calls_insert(rows: usize) -> String {
    const COLUMNS: usize = 15;
    let mut sql = String::from(
        "INSERT INTO recent_calls (account_id, provider, at, method, route, status, outcome, model, input_tokens, output_tokens, cost_micros, request_id, token_id, latency_ms, agent) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..COLUMNS {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
            sql.push_str(&(row * COLUMNS + col + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

impl RecentCalls {
    fn push(&mut self, c: Box<CallRecord>) {
        if c.outcome != "refused" {
            let at = self
                .key_used
                .entry((c.account, c.provider.clone()))
                .or_insert(c.at);
            *at = (*at).max(c.at);
        }
        if !c.token_id.is_empty() {
            let at = self.token_used.entry(c.token_id.clone()).or_insert(c.at);
            *at = (*at).max(c.at);
        }
        let calls = self.calls.entry(c.account).or_default();
        if calls.len() >= usize::try_from(RECENT_CALLS_KEPT).unwrap_or(usize::MAX) {
            calls.pop_front();
        }
        calls.push_back(c);
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    /// How long until the gathered calls are due (zero when they are); `None` with none gathered.
    fn due_in(&self) -> Option<Duration> {
        self.since
            .map(|since| RECENT_CALLS_EVERY.saturating_sub(since.elapsed()))
    }

    /// Forgets what [`RecentCalls::write`] wrote (after its transaction committed).
    fn clear(&mut self) {
        self.calls.clear();
        self.key_used.clear();
        self.token_used.clear();
        self.since = None;
    }

    /// Writes the latest uses of keys and tokens, inserts the gathered calls and trims each
    /// account's list; changes nothing here, so a transaction that did not commit can be written
    /// again. `careful`: each row (each account's calls) in a savepoint of its own.
    fn write(&self, conn: &Conn<'_>, careful: bool) -> crate::db::Result<()> {
        if self.since.is_none() {
            return Ok(());
        }
        // Sorted, like every row the writer touches (see `Fold::write_spend`).
        let mut key_used: Vec<_> = self.key_used.iter().collect();
        key_used.sort_unstable();
        for ((account, provider), at) in key_used {
            guarded(conn, careful, |c| {
                c.prepare_cached(
                    "UPDATE provider_keys SET last_used_at = ?3
                     WHERE account_id = ?1 AND provider = ?2 AND (last_used_at IS NULL OR last_used_at < ?3)",
                )?
                .execute(params![*account, provider, *at])
                .map(drop)
            });
        }
        let mut token_used: Vec<_> = self.token_used.iter().collect();
        token_used.sort_unstable();
        for (token, at) in token_used {
            guarded(conn, careful, |c| {
                c.prepare_cached(
                    "UPDATE tool_tokens SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                )?
                .execute(params![token, *at])
                .map(drop)
            });
        }
        let mut accounts: Vec<_> = self.calls.iter().collect();
        accounts.sort_unstable_by_key(|(account, _)| **account);
        for (account, calls) in accounts {
            guarded(conn, careful, |c| write_recent_calls(c, *account, calls));
        }
        Ok(())
    }
}

/// One account's gathered calls, [`RECENT_ROWS_PER_INSERT`] rows per statement, then the trim of
/// its list to [`RECENT_CALLS_KEPT`].
fn write_recent_calls(
    conn: &Conn<'_>,
    account: i64,
    calls: &std::collections::VecDeque<Box<CallRecord>>,
) -> crate::db::Result<()> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let calls: Vec<&CallRecord> = calls.iter().map(|c| &**c).collect();
    for chunk in calls.chunks(RECENT_ROWS_PER_INSERT) {
        let mut values: Vec<Value<'_>> = Vec::with_capacity(chunk.len() * 15);
        for c in chunk {
            values.extend([
                Value::Int(c.account),
                Value::Text(&c.provider),
                Value::Int(c.at),
                Value::Text(&c.method),
                Value::Text(&c.route),
                Value::Int(i64::from(c.status)),
                Value::Text(c.outcome),
                Value::Text(&c.model),
                Value::Int(clamp(c.input_tokens)),
                Value::Int(clamp(c.output_tokens)),
                Value::Int(c.cost.micros()),
                Value::Text(&c.request_id),
                Value::Text(&c.token_id),
                Value::Int(clamp(c.latency_ms)),
                Value::Text(&c.agent),
            ]);
        }
        conn.prepare_cached(&recent_calls_insert(chunk.len()))?
            .execute(values)?;
    }
    conn.prepare_cached(
        "DELETE FROM recent_calls WHERE account_id = ?1 AND id <= (
            SELECT id FROM recent_calls WHERE account_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![account, RECENT_CALLS_KEPT])?;
    Ok(())
}

/// Runs one row's write, in a savepoint when `careful`, and logs and skips it when it fails.
fn guarded(conn: &Conn<'_>, careful: bool, f: impl FnOnce(&Conn<'_>) -> crate::db::Result<()>) {
    skip_failed(if careful { conn.savepoint(f) } else { f(conn) });
}

thread_local! {
    /// Whether a record of the batch being written failed (see [`apply`]).
    static RECORD_FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn skip_failed(outcome: crate::db::Result<()>) {
    if let Err(e) = outcome {
        RECORD_FAILED.with(|f| f.set(true));
        tracing::error!(error = %e, "spend writer: a record could not be written");
    }
}

/// Adds `amount` to the spend of `period_start` (a newer period replaces an older one), then
/// looks for alert thresholds it crossed (no statement unless one was).
fn add_spend(
    conn: &Conn<'_>,
    account: i64,
    provider: &str,
    period_start: i64,
    amount: Money,
    alerts: Option<&dyn AlertHook>,
) -> crate::db::Result<()> {
    // An account deleted meanwhile has nothing left to charge.
    let charged = crate::spend::store::charge_returning(
        conn,
        account,
        provider,
        period_start,
        amount.micros(),
    )?;
    if let (Some(hook), Some(charged)) = (alerts, charged) {
        // An alert that cannot be written never loses the spend (it runs in a savepoint).
        if let Err(e) = crate::alerts::after_charge(conn, hook, account, provider, &charged) {
            tracing::error!(error = %e, "spend writer: an alert threshold could not be checked");
        }
    }
    Ok(())
}

fn apply_usage(
    conn: &Conn<'_>,
    account: i64,
    provider: &str,
    hour: i64,
    u: &HourUsage,
) -> crate::db::Result<()> {
    conn.prepare_cached(
        "INSERT INTO usage_hourly (account_id, provider, hour, calls, refused, failed, input_tokens, cached_input_tokens,
                                   output_tokens, reasoning_tokens, spend_micros, fallback_priced)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (account_id, provider, hour) DO UPDATE SET
            calls = usage_hourly.calls + excluded.calls, refused = usage_hourly.refused + excluded.refused, failed = usage_hourly.failed + excluded.failed,
            input_tokens = usage_hourly.input_tokens + excluded.input_tokens,
            cached_input_tokens = usage_hourly.cached_input_tokens + excluded.cached_input_tokens,
            output_tokens = usage_hourly.output_tokens + excluded.output_tokens,
            reasoning_tokens = usage_hourly.reasoning_tokens + excluded.reasoning_tokens,
            spend_micros = usage_hourly.spend_micros + excluded.spend_micros,
            fallback_priced = usage_hourly.fallback_priced + excluded.fallback_priced",
    )?
    .execute(params![
        account,
        provider,
        hour,
        u.calls,
        u.refused,
        u.failed,
        u.input_tokens,
        u.cached_input_tokens,
        u.output_tokens,
        u.reasoning_tokens,
        u.spend_micros,
        u.fallback_priced,
    ])?;
    Ok(())
}

/// Adds a batch's usage of one (account, hour, provider, token, agent) to `usage_hourly_by_token`.
fn apply_usage_by_token(conn: &Conn<'_>, key: &TokenHour, u: &HourUsage) -> crate::db::Result<()> {
    let (account, hour, provider, token_id, agent) = key;
    conn.prepare_cached(
        "INSERT INTO usage_hourly_by_token (account_id, hour, provider, token_id, agent, calls, refused, failed,
                                   input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, spend_micros, fallback_priced)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (account_id, hour, provider, token_id, agent) DO UPDATE SET
            calls = usage_hourly_by_token.calls + excluded.calls,
            refused = usage_hourly_by_token.refused + excluded.refused,
            failed = usage_hourly_by_token.failed + excluded.failed,
            input_tokens = usage_hourly_by_token.input_tokens + excluded.input_tokens,
            cached_input_tokens = usage_hourly_by_token.cached_input_tokens + excluded.cached_input_tokens,
            output_tokens = usage_hourly_by_token.output_tokens + excluded.output_tokens,
            reasoning_tokens = usage_hourly_by_token.reasoning_tokens + excluded.reasoning_tokens,
            spend_micros = usage_hourly_by_token.spend_micros + excluded.spend_micros,
            fallback_priced = usage_hourly_by_token.fallback_priced + excluded.fallback_priced",
    )?
    .execute(params![
        *account,
        *hour,
        provider.as_str(),
        token_id.as_str(),
        agent.as_str(),
        u.calls,
        u.refused,
        u.failed,
        u.input_tokens,
        u.cached_input_tokens,
        u.output_tokens,
        u.reasoning_tokens,
        u.spend_micros,
        u.fallback_priced,
    ])?;
    Ok(())
}

fn apply_ceiling(conn: &Conn<'_>, r: &CeilingRow) -> crate::db::Result<()> {
    conn.prepare_cached(
        "INSERT INTO spend (account_id, provider, limit_micros, period, period_start, spent_micros) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (account_id, provider) DO UPDATE SET
            limit_micros = excluded.limit_micros, period = excluded.period,
            period_start = excluded.period_start,
            -- Never the writer's own view of spend, which another instance may have moved on:
            -- only a period that started over (same period, later start) sets it to zero.
            spent_micros = CASE WHEN excluded.period = spend.period
                                 AND excluded.period_start > spend.period_start
                            THEN 0 ELSE spend.spent_micros END",
    )?
    .execute(params![
        r.account,
        r.provider,
        r.limit.map(Money::micros),
        period_name(r.period),
        r.period_start,
        r.spent.micros()
    ])?;
    Ok(())
}

pub fn period_name(p: Period) -> &'static str {
    match p {
        Period::None => "none",
        Period::Daily => "daily",
        Period::Monthly => "monthly",
    }
}

pub fn parse_period(s: &str) -> Option<Period> {
    match s {
        "none" => Some(Period::None),
        "daily" => Some(Period::Daily),
        "monthly" => Some(Period::Monthly),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::spend::ledger::Ledger;
    use crate::spend::store;
    use time::macros::datetime;

    fn db_with_account(dir: &std::path::Path) -> Db {
        let db = Db::open(&dir.join("t.db")).unwrap();
        db.write_blocking(|c| {
            c.execute("INSERT INTO accounts (id, email_hash, email_blob, master_key_id, created_at) VALUES (1, x'01', x'', 'k', 0)", ())
        })
        .unwrap();
        db
    }

    fn usd(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn settled_spend_and_ceilings_are_persisted_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_account(dir.path());
        let writer = SpendWriter::start(&db, None).unwrap();
        let clock = Arc::new(ManualClock::at(datetime!(2026-01-10 12:00 UTC)));
        let ledger = Ledger::new(clock, Some(writer.sink()));
        let snap = ledger.set_ceiling(1, "openai", usd("1.00"), Period::Monthly);
        writer.record_ceiling(CeilingRow {
            account: 1,
            provider: "openai".into(),
            limit: snap.limit,
            period: snap.period,
            period_start: snap.period_start.unix_timestamp(),
            spent: snap.spent,
        });
        for _ in 0..10 {
            ledger
                .reserve(1, "openai", usd("0.05"))
                .unwrap()
                .settle(usd("0.03"));
        }
        ledger.reserve(1, "openai", usd("0.05")).unwrap().release();
        writer.flush_blocking();
        let (spent, limit, holds): (i64, i64, i64) = db
            .read_blocking(|c| {
                c.query_row(
                    "SELECT spent_micros, limit_micros, (SELECT COUNT(*) FROM spend_holds) FROM spend WHERE account_id = 1",
                    (),
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })
            .unwrap();
        assert_eq!((spent, limit, holds), (300_000, 1_000_000, 0));
        assert_eq!(writer.queue_depth(), 0);
    }

    #[test]
    fn a_reset_inside_a_batch_forgets_what_was_settled_before_it_and_keeps_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_account(dir.path());
        let writer = SpendWriter::start(&db, None).unwrap();
        let clock = Arc::new(ManualClock::at(datetime!(2026-01-10 12:00 UTC)));
        let ledger = Ledger::new(clock, Some(writer.sink()));
        ledger.set_ceiling(1, "openai", usd("5.00"), Period::Monthly);
        // All of this lands well inside one batch window.
        let open = ledger.reserve(1, "openai", usd("0.40")).unwrap();
        ledger
            .reserve(1, "openai", usd("0.50"))
            .unwrap()
            .settle(usd("0.25"));
        ledger.reset(1, "openai");
        ledger
            .reserve(1, "openai", usd("0.50"))
            .unwrap()
            .settle(usd("0.10"));
        writer.flush_blocking();
        let spent_and_holds = || -> (i64, i64) {
            db.read_blocking(|c| {
                c.query_row(
                    "SELECT spent_micros, (SELECT COUNT(*) FROM spend_holds) FROM spend WHERE account_id = 1",
                    (),
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap()
        };
        let (spent, holds) = spent_and_holds();
        // The hold still open is in spend_holds (a crash would charge it); the settled one is not.
        assert_eq!((spent, holds), (100_000, 1));
        open.settle(usd("0.40"));
        writer.flush_blocking();
        let (spent, holds) = spent_and_holds();
        assert_eq!((spent, holds), (500_000, 0));
    }

    #[test]
    fn recent_calls_reach_the_database_within_a_second_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_account(dir.path());
        let writer = SpendWriter::start(&db, None).unwrap();
        writer.record_call(CallRecord {
            account: 1,
            provider: "openai".into(),
            at: 1_767_000_000,
            outcome: "ok",
            ..CallRecord::default()
        });
        let count = || -> i64 {
            db.read_blocking(|c| c.query_row("SELECT COUNT(*) FROM recent_calls", (), |r| r.get(0)))
                .unwrap()
        };
        // Usage is written with the batch, the recent-calls row only once it is due.
        std::thread::sleep(BATCH_WINDOW * 4);
        assert_eq!(count(), 0);
        let deadline = std::time::Instant::now() + RECENT_CALLS_EVERY * 3;
        while count() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(count(), 1);
    }

    #[test]
    fn a_hold_left_by_a_crash_is_charged_in_full_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_account(dir.path());
        {
            let writer = SpendWriter::start(&db, None).unwrap();
            let ledger = Ledger::new(
                Arc::new(ManualClock::at(datetime!(2026-01-10 12:00 UTC))),
                Some(writer.sink()),
            );
            ledger
                .reserve(1, "anthropic", usd("0.20"))
                .unwrap()
                .settle(usd("0.10"));
            // The process dies with this call in flight: nothing settles or releases it.
            std::mem::forget(ledger.reserve(1, "anthropic", usd("0.50")).unwrap());
            writer.flush_blocking();
        }
        let store::Recovery {
            recovered, rows, ..
        } = db
            .write_blocking(|c| store::recover_and_load(c, None))
            .unwrap();
        assert_eq!(recovered.holds_charged, 1);
        assert_eq!(recovered.amount, usd("0.50"));
        let row = rows.iter().find(|r| r.provider == "anthropic").unwrap();
        assert_eq!(row.spent, usd("0.60"));
        // Recovery is done once: the holds are gone.
        let again = db
            .write_blocking(|c| store::recover_and_load(c, None))
            .unwrap();
        assert_eq!(again.recovered.holds_charged, 0);
    }

    /// Holds that outlive their batch are written many to a statement: 250 open ones are 250
    /// rows, closing 240 of them in a later batch leaves 10, and a crash then charges exactly
    /// those 10.
    #[test]
    fn holds_outliving_their_batch_are_written_and_removed_in_bulk() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_account(dir.path());
        let holds = |db: &Db| -> i64 {
            db.read_blocking(|c| c.query_row("SELECT COUNT(*) FROM spend_holds", (), |r| r.get(0)))
                .unwrap()
        };
        {
            let writer = SpendWriter::start(&db, None).unwrap();
            let ledger = Ledger::new(
                Arc::new(ManualClock::at(datetime!(2026-01-10 12:00 UTC))),
                Some(writer.sink()),
            );
            let mut open: Vec<_> = (0..250)
                .map(|_| ledger.reserve(1, "anthropic", usd("0.01")).unwrap())
                .collect();
            writer.flush_blocking();
            assert_eq!(holds(&db), 250);
            for r in open.drain(..240) {
                r.settle(usd("0.01"));
            }
            writer.flush_blocking();
            assert_eq!(holds(&db), 10);
            open.into_iter().for_each(std::mem::forget);
        }
        let recovered = db
            .write_blocking(|c| store::recover_and_load(c, None))
            .unwrap()
            .recovered;
        assert_eq!(
            (recovered.holds_charged, recovered.amount),
            (10, usd("0.10"))
        );
    }

    #[test]
    fn bulk_hold_statements_bind_the_instance_once() {
        assert!(insert_holds(2).contains(
            "VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?1), (?8, ?9, ?10, ?11, ?12, ?13, ?1) ON CONFLICT"
        ));
        assert_eq!(
            delete_holds(3),
            "DELETE FROM spend_holds WHERE instance_id = ?1 AND id IN (?2, ?3, ?4)"
        );
    }

    /// A crash with holds the writer had not committed yet: they reached only the journal, and
    /// are charged from it at the next start. Holds the database did commit are charged once, not
    /// again from the journal.
    #[test]
    fn holds_only_the_journal_saw_are_charged_once_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("spend-journal");
        let db = db_with_account(dir.path());
        let first = db
            .write_blocking(|c| store::recover_and_load(c, Some(&jdir)))
            .unwrap();
        let clock = Arc::new(ManualClock::at(datetime!(2026-01-10 12:00 UTC)));
        let writer =
            SpendWriter::start(&db, Some(HoldJournal::create(&jdir, first.epoch).unwrap()))
                .unwrap();
        let ledger = Ledger::new(clock.clone(), Some(writer.sink()));
        // Committed: one settled call and one hold still open.
        ledger
            .reserve(1, "openai", usd("0.20"))
            .unwrap()
            .settle(usd("0.10"));
        let open = ledger.reserve(1, "openai", usd("0.30")).unwrap();
        writer.flush_blocking();
        let period_start = ledger.snapshot(1, "openai").period_start;
        writer.shutdown();
        let committed = writer.sent();
        std::mem::forget(open);
        // Two more holds were journaled (as `send` does, in sequence order) when the process died,
        // before the writer committed them.
        let journal = HoldJournal::create(&jdir, first.epoch).unwrap();
        for (i, amount) in ["0.40", "0.50"].into_iter().enumerate() {
            let event = SpendEvent {
                reservation: 100 + i as u64,
                account: 1,
                provider: "openai".into(),
                amount: usd(amount),
                kind: SpendKind::Reserved,
                period_start,
                at: datetime!(2026-01-10 12:00 UTC),
            };
            journal.append(committed + 1 + i as u64, &event).unwrap();
        }
        let second = db
            .write_blocking(|c| store::recover_and_load(c, Some(&jdir)))
            .unwrap();
        assert_eq!(second.epoch, first.epoch + 1);
        assert_eq!(second.recovered.holds_charged, 3, "{:?}", second.recovered);
        assert_eq!(second.recovered.from_journal, 2);
        let row = second.rows.iter().find(|r| r.provider == "openai").unwrap();
        assert_eq!(row.spent, usd("1.30"));
        // The old epoch's files are gone; a second recovery charges nothing.
        let third = db
            .write_blocking(|c| store::recover_and_load(c, Some(&jdir)))
            .unwrap();
        assert_eq!(third.recovered.holds_charged, 0);
        let row = third.rows.iter().find(|r| r.provider == "openai").unwrap();
        assert_eq!(row.spent, usd("1.30"));
    }

    #[test]
    fn a_hold_that_cannot_be_journaled_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("spend-journal");
        let db = db_with_account(dir.path());
        let epoch = db
            .write_blocking(|c| store::recover_and_load(c, Some(&jdir)))
            .unwrap()
            .epoch;
        let writer =
            SpendWriter::start(&db, Some(HoldJournal::create(&jdir, epoch).unwrap())).unwrap();
        let ledger = Ledger::new(
            Arc::new(ManualClock::at(datetime!(2026-01-10 12:00 UTC))),
            Some(writer.sink()),
        );
        // The journal cannot take this provider id: the hold is refused and nothing is held.
        assert_eq!(
            ledger.reserve(1, "bad id", usd("0.10")).unwrap_err(),
            crate::spend::ReserveError::Unrecorded
        );
        assert_eq!(ledger.snapshot(1, "bad id").reserved, Money::ZERO);
        writer.flush_blocking();
        let holds: i64 = db
            .read_blocking(|c| c.query_row("SELECT COUNT(*) FROM spend_holds", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(holds, 0);
    }

    #[test]
    fn calls_are_aggregated_per_hour_and_recent_calls_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_account(dir.path());
        let writer = SpendWriter::start(&db, None).unwrap();
        let n = RECENT_CALLS_KEPT + 25;
        for i in 0..n {
            writer.record_call(CallRecord {
                account: 1,
                provider: "openai".into(),
                at: 1_767_000_000 + i,
                outcome: if i % 5 == 0 { "refused" } else { "ok" },
                input_tokens: 10,
                output_tokens: 20,
                cost: Money::from_micros(7),
                ..CallRecord::default()
            });
        }
        writer.flush_blocking();
        let usage = db
            .read_blocking(|c| store::usage(c, 1, 0, i64::MAX))
            .unwrap();
        assert_eq!(usage.len(), 1);
        let refused = (0..n).filter(|i| i % 5 == 0).count() as i64;
        assert_eq!(
            (usage[0].calls, usage[0].refused, usage[0].input_tokens),
            (n, refused, 10 * n)
        );
        assert_eq!(usage[0].spend_usd, Money::from_micros(7 * n));
        let kept: i64 = db
            .read_blocking(|c| c.query_row("SELECT COUNT(*) FROM recent_calls", (), |r| r.get(0)))
            .unwrap();
        assert_eq!(kept, RECENT_CALLS_KEPT);
        // The newest are kept, inserted in order (the list is shown by id), 100 rows a statement.
        let (first, last, in_order): (i64, i64, i64) = db
            .read_blocking(|c| {
                c.query_row(
                    "SELECT MIN(at), MAX(at), COUNT(*) FILTER (WHERE at - 1767000000 - 25 = id - (SELECT MIN(id) FROM recent_calls)) FROM recent_calls",
                    (),
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })
            .unwrap();
        assert_eq!(
            (first, last, in_order),
            (1_767_000_025, 1_767_000_000 + n - 1, RECENT_CALLS_KEPT)
        );
    }

    #[test]
    fn a_multi_row_insert_numbers_its_parameters_row_by_row() {
        let sql = recent_calls_insert(2);
        assert!(sql.ends_with("VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15), (?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)"), "{sql}");
    }
}
