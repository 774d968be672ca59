//! Outgoing mail: one [`Mailer`] over lettre's SMTP transport (when `KEYBROKER_SMTP_URL` is set)
//! or its file transport into `<data-dir>/outbox/`, and the `mail_queue` table it is sent from.
//!
//! A handler queues a mail with [`Outbox::queue`] inside the write transaction that decided it
//! (so the mail commits with the token it carries, and the request runs no transaction of its
//! own for it), then [`Outbox::wake`]s the worker. The worker, one task per instance, claims one due
//! row at a time with a conditional `UPDATE` (two instances on one PostgreSQL never both take a
//! row), sends it, and deletes it; a failed send is tried again later ([`BACKOFF_SECS`]) and given
//! up after [`MAX_ATTEMPTS`], or at once when the server refuses it for good. It also polls, for mail other instances queued or that fell due.
//! A crash between sending and deleting sends the mail again at the next claim: at least once.
//!
//! Mail bodies carry reset links: the recipient and the body are sealed by the vault, bound to
//! the row (`vault_store::mail_binding`); they are never logged, and the outbox directory is 0700.

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::db::{Conn, Db, DbError, Optional as _};
use crate::env_var::env_var;
use crate::params;
use crate::vault::{Purpose, Vault, VaultError};
use crate::vault_store::mail_binding;

const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest one send may take; well inside [`CLAIM_SECS`], so a send never outlives its claim.
const SEND_TIMEOUT: Duration = Duration::from_secs(45);
/// How long shutdown waits for the send in flight before giving up on it (the row stays queued).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a claimed row is this worker's; after that any worker may take it again (its
/// instance died mid-send).
pub const CLAIM_SECS: i64 = 60;
/// How often the worker looks for due rows without being woken (mail another instance queued,
/// or a retry that fell due).
const POLL: Duration = Duration::from_secs(5);
/// Attempts before a mail is given up (and deleted, with a warning naming its kind only).
pub const MAX_ATTEMPTS: i64 = 8;
/// Seconds before the next try, after the first, second, … failed attempt.
pub const BACKOFF_SECS: [i64; 7] = [30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600];

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(
        "KEYBROKER_MAIL_FROM is not a valid mailbox (e.g. `keybroker <keybroker@example.com>`)"
    )]
    InvalidFrom,
    #[error("KEYBROKER_SMTP_URL is not a valid SMTP URL (smtp://host:port, smtp://host?tls=required or smtps://user:password@host)")]
    InvalidSmtpUrl,
    #[error("outbox directory {path}: {source}")]
    Outbox {
        path: String,
        source: std::io::Error,
    },
    #[error("the recipient address is not valid")]
    InvalidRecipient,
    #[error("building the message failed: {0}")]
    Build(String),
    /// What went wrong, described without the server's text (which may quote the address).
    #[error("sending failed: {0}")]
    Send(String),
    /// The server refused the message for good (an SMTP 5xx): trying again would not help.
    #[error("the mail server refused the message ({0})")]
    Refused(String),
}

impl MailError {
    /// Sending this message again cannot succeed.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            MailError::Refused(_) | MailError::InvalidRecipient | MailError::Build(_)
        )
    }
}

/// An SMTP failure by its class and reply code only: a server's reply text may quote the
/// recipient's address, which is not logged.
fn smtp_error(e: &lettre::transport::smtp::Error) -> MailError {
    let code = e.status().map(|c| c.to_string());
    if e.is_permanent() {
        return MailError::Refused(code.unwrap_or_default());
    }
    let class = if e.is_transient() {
        "the server deferred the message"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_tls() {
        "TLS failed"
    } else if e.is_response() {
        "the server's reply could not be read"
    } else if e.is_client() {
        "the client failed"
    } else {
        "the connection failed"
    };
    MailError::Send(match code {
        Some(code) => format!("{class} ({code})"),
        None => class.to_owned(),
    })
}

/// Why queuing a mail failed. Carries no address and no body.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("sealing or opening a queued mail failed: {0}")]
    Vault(#[from] VaultError),
}

/// One message to send. `Debug` shows only its kind: the body may hold a reset link.
pub struct Mail {
    pub kind: &'static str,
    pub to: String,
    pub subject: &'static str,
    pub body: String,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `<data-dir>/outbox/`: one `.eml` file per message, written whole (see [`write_eml`]).
    File(PathBuf),
}

pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.transport {
            Transport::Smtp(_) => "smtp",
            Transport::File(_) => "file",
        };
        f.debug_struct("Mailer").field("transport", &kind).finish()
    }
}

/// Where the file transport writes: `<data-dir>/outbox/`.
pub fn outbox_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("outbox")
}

impl Mailer {
    pub fn new(settings: &MailSettings, data_dir: &Path) -> Result<Self, MailError> {
        let from: Mailbox = settings.from.parse().map_err(|_| MailError::InvalidFrom)?;
        let transport = match &settings.smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .map_err(|_| MailError::InvalidSmtpUrl)?
                    .timeout(Some(SMTP_TIMEOUT))
                    .build(),
            ),
            None => {
                let dir = outbox_dir(data_dir);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|source| MailError::Outbox {
                        path: dir.display().to_string(),
                        source,
                    })?;
                Transport::File(dir)
            }
        };
        Ok(Self { transport, from })
    }

    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(|_| MailError::InvalidRecipient)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| MailError::Build(e.to_string()))?;
        match &self.transport {
            Transport::Smtp(t) => t.send(message).await.map(drop).map_err(|e| smtp_error(&e)),
            Transport::File(dir) => {
                let (dir, bytes) = (dir.clone(), message.formatted());
                tokio::task::spawn_blocking(move || write_eml(&dir, &bytes))
                    .await
                    .map_err(|e| MailError::Send(e.to_string()))?
                    .map_err(|e| MailError::Send(e.to_string()))
            }
        }
    }
}

/// Writes one message as `<uuid>.eml`, readable by the owner only (reset mails carry live
/// links). It is written under a temporary name and renamed into place, so a reader of the
/// outbox never sees half a message.
fn write_eml(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = uuid::Uuid::new_v4();
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(format!("{name}.eml")))
}

/// The sending side of the mail queue, held by the application state.
#[derive(Clone)]
pub struct Outbox {
    vault: Arc<Vault>,
    wake: Arc<Notify>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    /// Queues `mail` in the caller's write transaction: it commits (or rolls back) with what the
    /// transaction decided. A failure is logged (kind only) and does not fail the transaction,
    /// so a request is answered the same whether or not it queued a mail; a savepoint keeps
    /// PostgreSQL's transaction usable after a refused insert. Call [`Outbox::wake`] once the
    /// transaction has committed.
    pub fn queue(&self, conn: &Conn<'_>, mail: &Mail, now: i64) {
        if let Err(e) = insert(conn, &self.vault, mail, now) {
            tracing::error!(kind = mail.kind, error = %e, "a mail could not be queued; it will not be sent");
        }
    }

    /// Tells this instance's worker to look for mail now (after the queuing transaction
    /// committed). Cheap and harmless when nothing was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Seals the recipient and the body to a new row's id and inserts it, due now.
pub fn insert(conn: &Conn<'_>, vault: &Vault, mail: &Mail, now: i64) -> Result<(), QueueError> {
    let id = uuid::Uuid::new_v4().to_string();
    let key_id = vault.keyring().active_id().as_str();
    let to = vault.seal(mail.to.as_bytes(), &mail_binding(Purpose::MailTo, &id))?;
    let body = vault.seal(mail.body.as_bytes(), &mail_binding(Purpose::MailBody, &id))?;
    conn.savepoint(|c| {
        c.execute(
            "INSERT INTO mail_queue (id, kind, subject, to_blob, to_master_key_id, body_blob,
                 body_master_key_id, created_at, attempts, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7, 0, ?7)",
            params![id, mail.kind, mail.subject, to, key_id, body, now],
        )
    })?;
    Ok(())
}

/// A row this worker claimed, still sealed.
#[derive(Debug)]
struct Claimed {
    id: String,
    kind: String,
    subject: String,
    to_blob: Vec<u8>,
    body_blob: Vec<u8>,
    attempts: i64,
}

/// Whether any row is due and unclaimed at `now` (a read, so an idle poll takes no write lock).
fn any_due(conn: &Conn<'_>, now: i64) -> Result<bool, DbError> {
    conn.query_row(
        "SELECT 1 FROM mail_queue
         WHERE next_attempt_at <= ?1 AND (claimed_until IS NULL OR claimed_until < ?1) LIMIT 1",
        params![now],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// Claims the oldest due row for `worker` until `now + CLAIM_SECS`, counting the attempt. The
/// claim's condition is checked again on the row being updated, not only in the subquery: on
/// PostgreSQL a second instance's `UPDATE` waiting on the row re-reads it after the first
/// commits, finds it claimed and changes nothing, so no two workers send one mail.
fn claim(conn: &Conn<'_>, worker: &str, now: i64) -> Result<Option<Claimed>, DbError> {
    conn.query_row(
        "UPDATE mail_queue SET claimed_by = ?1, claimed_until = ?2, attempts = attempts + 1
         WHERE id = (SELECT id FROM mail_queue
                     WHERE next_attempt_at <= ?3 AND (claimed_until IS NULL OR claimed_until < ?3)
                     ORDER BY created_at, id LIMIT 1)
           AND next_attempt_at <= ?3 AND (claimed_until IS NULL OR claimed_until < ?3)
         RETURNING id, kind, subject, to_blob, body_blob, attempts",
        params![worker, now + CLAIM_SECS, now],
        |r| {
            Ok(Claimed {
                id: r.get(0)?,
                kind: r.get(1)?,
                subject: r.get(2)?,
                to_blob: r.get(3)?,
                body_blob: r.get(4)?,
                attempts: r.get(5)?,
            })
        },
    )
    .optional()
}

/// Deletes a row this worker still holds (sent, or given up).
fn remove(conn: &Conn<'_>, id: &str, worker: &str) -> Result<(), DbError> {
    conn.execute(
        "DELETE FROM mail_queue WHERE id = ?1 AND claimed_by = ?2",
        params![id, worker],
    )
    .map(drop)
}

/// Hands a row back after a failed attempt, due again at `due`.
fn retry_at(conn: &Conn<'_>, id: &str, worker: &str, due: i64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE mail_queue SET claimed_by = NULL, claimed_until = NULL, next_attempt_at = ?3
         WHERE id = ?1 AND claimed_by = ?2",
        params![id, worker, due],
    )
    .map(drop)
}

/// Seconds to wait after the `attempts`th failed attempt.
fn backoff(attempts: i64) -> i64 {
    crate::queue::backoff(&BACKOFF_SECS, attempts)
}

/// Owns the task that sends queued mail; `shutdown` stops it.
pub type MailWorker = crate::queue::QueueWorker;

struct Worker {
    /// This run's claim mark (`claimed_by`); a new one at every start.
    id: String,
    mailer: Mailer,
    db: Db,
    vault: Arc<Vault>,
    clock: SharedClock,
}

/// Starts the worker task on the current runtime. It looks for due mail at once, so what an
/// earlier run left queued goes out now. Shutdown lets the send in flight finish (up to 30 s).
pub fn start(
    mailer: Mailer,
    db: Db,
    vault: Arc<Vault>,
    clock: SharedClock,
) -> (Outbox, MailWorker) {
    let wake = Arc::new(Notify::new());
    let worker = Worker {
        id: uuid::Uuid::new_v4().to_string(),
        mailer,
        db,
        vault: vault.clone(),
        clock,
    };
    let handle = crate::queue::spawn(worker, wake.clone(), POLL, DRAIN_TIMEOUT);
    (Outbox { vault, wake }, handle)
}

impl crate::queue::Job for Worker {
    type Claimed = Claimed;
    const NAME: &'static str = "mail";

    async fn next(&self) -> Result<Option<Claimed>, DbError> {
        Worker::next(self).await
    }

    async fn deliver(&self, claimed: Claimed) {
        Worker::deliver(self, claimed).await
    }
}

impl Worker {
    async fn next(&self) -> Result<Option<Claimed>, DbError> {
        let now = self.clock.unix();
        if !self.db.read(move |c| any_due(c, now)).await? {
            return Ok(None);
        }
        let worker = self.id.clone();
        self.db.write(move |c| claim(c, &worker, now)).await
    }

    async fn deliver(&self, claimed: Claimed) {
        let Claimed {
            id,
            kind,
            subject,
            to_blob,
            body_blob,
            attempts,
        } = claimed;
        let opened = self
            .vault
            .open(&to_blob, &mail_binding(Purpose::MailTo, &id))
            .and_then(|to| {
                let body = self
                    .vault
                    .open(&body_blob, &mail_binding(Purpose::MailBody, &id))?;
                Ok((to, body))
            });
        let sent = match &opened {
            Ok((to, body)) => match (to.expose_str(), body.expose_str()) {
                (Some(to), Some(body)) => {
                    match tokio::time::timeout(SEND_TIMEOUT, self.mailer.send(to, &subject, body))
                        .await
                    {
                        Ok(sent) => sent,
                        Err(_) => Err(MailError::Send("timed out".into())),
                    }
                }
                _ => Err(MailError::InvalidRecipient),
            },
            Err(e) => {
                // It can never open (moved, tampered with): sending again would not help.
                tracing::error!(kind, error = %e, "a queued mail does not open; it is dropped");
                self.finish(id, None).await;
                return;
            }
        };
        drop(opened);
        match sent {
            Ok(()) => {
                tracing::info!(kind, "mail sent");
                self.finish(id, None).await;
            }
            Err(e) if attempts >= MAX_ATTEMPTS || e.is_permanent() => {
                tracing::warn!(kind, attempts, error = %e, "mail could not be sent; giving up on it");
                self.finish(id, None).await;
            }
            Err(e) => {
                let wait = backoff(attempts);
                tracing::warn!(kind, attempts, retry_in_secs = wait, error = %e, "mail could not be sent; it stays queued");
                self.finish(id, Some(self.clock.unix() + wait)).await;
            }
        }
    }

    /// Deletes the row (`None`) or hands it back due at `retry`. A failure here leaves the claim
    /// to expire, after which the row is tried again.
    async fn finish(&self, id: String, retry: Option<i64>) {
        let worker = self.id.clone();
        let done = self
            .db
            .write(move |c| match retry {
                None => remove(c, &id, &worker),
                Some(due) => retry_at(c, &id, &worker, due),
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "mail queue: updating a row after sending failed");
        }
    }
}

/// Outgoing mail: SMTP when `KEYBROKER_SMTP_URL` is set, otherwise lettre's file transport into
/// `<data-dir>/outbox/`, so a default installation works with no mail server.
#[derive(Clone)]
pub struct MailSettings {
    /// `KEYBROKER_SMTP_URL`: `smtp://host:port` (plain), `smtp://host?tls=required` (STARTTLS) or
    /// `smtps://user:password@host`. A secret, because it may carry the SMTP password.
    pub smtp_url: Option<SecretString>,
    /// `KEYBROKER_MAIL_FROM`: the sender, default `keybroker <keybroker@localhost>`.
    pub from: String,
}

pub const DEFAULT_MAIL_FROM: &str = "keybroker <keybroker@localhost>";

impl MailSettings {
    pub fn from_env() -> Self {
        Self {
            smtp_url: env_var("KEYBROKER_SMTP_URL").map(SecretString::from),
            from: env_var("KEYBROKER_MAIL_FROM").unwrap_or_else(|| DEFAULT_MAIL_FROM.to_owned()),
        }
    }
}

impl fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailSettings")
            .field("smtp", &self.smtp_url.is_some())
            .field("from", &self.from)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{Keyring, MasterKeyId};
    use crate::vault_store;
    use zeroize::Zeroizing;

    const NOW: i64 = 1_800_000_000;

    fn vault(keys: &[(&str, u8)], active: &str) -> Vault {
        let keys = keys
            .iter()
            .map(|(id, byte)| {
                (
                    MasterKeyId::parse(id).unwrap(),
                    Zeroizing::new(vec![*byte; 32]),
                )
            })
            .collect();
        Vault::new(Keyring::new(keys, Some(MasterKeyId::parse(active).unwrap())).unwrap())
    }

    fn reset_mail(to: &str) -> Mail {
        Mail {
            kind: "password_reset",
            to: to.to_owned(),
            subject: "Reset your keybroker password",
            body: format!("open https://kb.example/reset/confirm?token=kbr_{to}"),
        }
    }

    fn ids(conn: &Conn<'_>) -> Vec<String> {
        conn.query_all(
            "SELECT id FROM mail_queue ORDER BY created_at, id",
            (),
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_queued_mail_holds_neither_address_nor_body_in_plaintext_and_opens_with_its_row() {
        let (conn, v) = (Conn::memory(), vault(&[("k1", 7)], "k1"));
        let mail = reset_mail("alice@example.com");
        insert(&conn, &v, &mail, NOW).unwrap();
        let (kind, subject, to, body): (String, String, Vec<u8>, Vec<u8>) = conn
            .query_row(
                "SELECT kind, subject, to_blob, body_blob FROM mail_queue",
                (),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!((kind.as_str(), subject.as_str()), (mail.kind, mail.subject));
        let has = |blob: &[u8], s: &str| blob.windows(s.len()).any(|w| w == s.as_bytes());
        for blob in [&to, &body] {
            assert!(!has(blob, "alice@example.com") && !has(blob, "kbr_"));
        }
        let claimed = claim(&conn, "w1", NOW).unwrap().unwrap();
        let open = |blob: &[u8], purpose| v.open(blob, &mail_binding(purpose, &claimed.id));
        assert_eq!(
            open(&claimed.to_blob, Purpose::MailTo)
                .unwrap()
                .expose_str(),
            Some("alice@example.com")
        );
        assert_eq!(
            open(&claimed.body_blob, Purpose::MailBody)
                .unwrap()
                .expose_str(),
            Some(mail.body.as_str())
        );
        // Each blob is bound to its column too: the recipient does not open as a body.
        assert!(open(&claimed.to_blob, Purpose::MailBody).is_err());
    }

    #[test]
    fn a_body_copied_onto_another_row_does_not_open() {
        let (conn, v) = (Conn::memory(), vault(&[("k1", 7)], "k1"));
        insert(&conn, &v, &reset_mail("a@example.com"), NOW).unwrap();
        insert(&conn, &v, &reset_mail("b@example.com"), NOW).unwrap();
        let (a, b) = match ids(&conn).as_slice() {
            [a, b] => (a.clone(), b.clone()),
            other => panic!("{other:?}"),
        };
        conn.execute(
            "UPDATE mail_queue SET body_blob = (SELECT body_blob FROM mail_queue WHERE id = ?1)
             WHERE id = ?2",
            params![a, b],
        )
        .unwrap();
        let moved: Vec<u8> = conn
            .query_row(
                "SELECT body_blob FROM mail_queue WHERE id = ?1",
                params![b],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            v.open(&moved, &mail_binding(Purpose::MailBody, &b)).err(),
            Some(VaultError::Unauthentic)
        );
        let opened = vault_store::open_all(&conn, &v).unwrap();
        let body = opened
            .iter()
            .find(|t| t.table == "mail_queue (body)")
            .unwrap();
        assert_eq!((body.opened, body.failed), (1, 1));
        assert_eq!(body.first_failed.as_deref(), Some(b.as_str()));
    }

    #[test]
    fn a_claimed_mail_is_not_claimed_again_until_its_claim_expires() {
        let (conn, v) = (Conn::memory(), vault(&[("k1", 7)], "k1"));
        insert(&conn, &v, &reset_mail("a@example.com"), NOW).unwrap();
        let first = claim(&conn, "w1", NOW).unwrap().unwrap();
        assert_eq!(first.attempts, 1);
        assert!(claim(&conn, "w2", NOW).unwrap().is_none());
        assert!(claim(&conn, "w2", NOW + CLAIM_SECS).unwrap().is_none());
        // w1 died mid-send: once the claim expired, w2 takes the row, and w1 can no longer
        // delete it.
        let again = claim(&conn, "w2", NOW + CLAIM_SECS + 1).unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempts), (first.id.as_str(), 2));
        remove(&conn, &first.id, "w1").unwrap();
        assert_eq!(ids(&conn).len(), 1);
        remove(&conn, &first.id, "w2").unwrap();
        assert!(ids(&conn).is_empty());
    }

    #[test]
    fn a_failed_mail_is_due_again_after_its_backoff_and_mail_goes_out_oldest_first() {
        let (conn, v) = (Conn::memory(), vault(&[("k1", 7)], "k1"));
        insert(&conn, &v, &reset_mail("old@example.com"), NOW).unwrap();
        insert(&conn, &v, &reset_mail("new@example.com"), NOW + 1).unwrap();
        let old = claim(&conn, "w1", NOW + 1).unwrap().unwrap();
        let to = v
            .open(&old.to_blob, &mail_binding(Purpose::MailTo, &old.id))
            .unwrap();
        assert_eq!(to.expose_str(), Some("old@example.com"));
        retry_at(&conn, &old.id, "w1", NOW + 1 + backoff(old.attempts)).unwrap();
        let new = claim(&conn, "w1", NOW + 1).unwrap().unwrap();
        assert_ne!(new.id, old.id);
        assert!(claim(&conn, "w1", NOW + 30).unwrap().is_none());
        let retried = claim(&conn, "w1", NOW + 31).unwrap().unwrap();
        assert_eq!((retried.id, retried.attempts), (old.id, 2));
    }

    #[test]
    fn backoff_grows_and_then_stays_at_its_longest() {
        let waits: Vec<i64> = (1..=MAX_ATTEMPTS + 1).map(backoff).collect();
        assert_eq!(
            waits,
            [30, 120, 600, 1800, 3600, 10_800, 21_600, 21_600, 21_600]
        );
    }

    #[test]
    fn rewrap_reseals_queued_mail_and_retiring_its_old_key_waits_for_it() {
        let conn = Conn::memory();
        insert(
            &conn,
            &vault(&[("k1", 7)], "k1"),
            &reset_mail("a@example.com"),
            NOW,
        )
        .unwrap();
        let both = vault(&[("k1", 7), ("k2", 9)], "k2");
        assert!(matches!(
            vault_store::check_retirable(&conn, "k1"),
            Err(vault_store::StoreError::StillInUse { count: 2, .. })
        ));
        let report = vault_store::rewrap_all(&conn, &both, 10).unwrap();
        for table in ["mail_queue (recipient)", "mail_queue (body)"] {
            assert!(
                report.rewrapped.contains(&(table.to_owned(), 1)),
                "{report:?}"
            );
        }
        vault_store::check_retirable(&conn, "k1").unwrap();
        let only_k2 = vault(&[("k2", 9)], "k2");
        let row = claim(&conn, "w1", NOW).unwrap().unwrap();
        let to = only_k2
            .open(&row.to_blob, &mail_binding(Purpose::MailTo, &row.id))
            .unwrap();
        assert_eq!(to.expose_str(), Some("a@example.com"));
        let body = only_k2
            .open(&row.body_blob, &mail_binding(Purpose::MailBody, &row.id))
            .unwrap();
        assert!(body
            .expose_str()
            .is_some_and(|b| b.contains("kbr_a@example.com")));
    }
}
