//! What the database-backed work queues share (`mail_queue`, `webhook_deliveries`): one tokio
//! task per instance that claims due rows one at a time, woken after a commit that queued work
//! and polling for work other instances queued or that fell due; the backoff between attempts;
//! and a shutdown that lets the attempt in flight finish.
//!
//! The claim itself stays with each queue (its SQL names its table): a conditional `UPDATE …
//! WHERE id = (SELECT … LIMIT 1) AND <still unclaimed> RETURNING …`, so two instances on one
//! PostgreSQL never both take a row (see `mail`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::db::DbError;

/// One queue's work: claim the next due row, and deliver (and settle) one claimed row.
pub trait Job: Send + Sync + 'static {
    type Claimed: Send + 'static;
    /// What the log calls it (`mail`, `webhook`).
    const NAME: &'static str;
    /// The next due row, claimed for this worker; `None` when nothing is due.
    fn next(&self) -> impl Future<Output = Result<Option<Self::Claimed>, DbError>> + Send;
    /// Sends one claimed row and records the outcome (done, or due again later).
    fn deliver(&self, claimed: Self::Claimed) -> impl Future<Output = ()> + Send;
}

/// Owns a queue's task; [`QueueWorker::shutdown`] stops it.
#[derive(Debug)]
pub struct QueueWorker {
    handle: JoinHandle<()>,
    stop: watch::Sender<bool>,
    name: &'static str,
    drain: Duration,
}

/// Starts `job`'s task on the current runtime. It looks for due rows at once (what an earlier
/// run left queued goes out now), then whenever `wake` is notified, and every `poll`.
pub fn spawn<J: Job>(job: J, wake: Arc<Notify>, poll: Duration, drain: Duration) -> QueueWorker {
    let (stop, mut stopped) = watch::channel(false);
    let handle = tokio::spawn(async move {
        loop {
            // Everything due, one row at a time; the stop is looked at between attempts only,
            // so the attempt in flight finishes.
            while !*stopped.borrow() {
                match job.next().await {
                    Ok(Some(claimed)) => job.deliver(claimed).await,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(queue = J::NAME, error = %e, "queue: claiming failed; trying again later");
                        break;
                    }
                }
            }
            if *stopped.borrow() {
                return;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stopped.changed() => return,
            }
        }
    });
    QueueWorker {
        handle,
        stop,
        name: J::NAME,
        drain,
    }
}

impl QueueWorker {
    /// Stops claiming, lets the attempt in flight finish (up to its drain time), then stops.
    /// What is still queued stays in the database for the next start (or another instance).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut handle = self.handle;
        if tokio::time::timeout(self.drain, &mut handle).await.is_err() {
            tracing::warn!(
                queue = self.name,
                "the attempt in flight did not finish before shutdown; it stays queued"
            );
            handle.abort();
        }
    }
}

/// Seconds to wait after the `attempts`th failed attempt: `schedule`'s entry for it, its last
/// entry once the schedule runs out.
pub fn backoff(schedule: &[i64], attempts: i64) -> i64 {
    let i = usize::try_from(attempts.saturating_sub(1)).unwrap_or(0);
    schedule
        .get(i.min(schedule.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_its_schedule_and_then_stays_at_its_longest() {
        let waits: Vec<i64> = (0..=4).map(|a| backoff(&[10, 60, 300], a)).collect();
        assert_eq!(waits, [10, 10, 60, 300, 300]);
        assert_eq!(backoff(&[], 3), 0);
    }
}
