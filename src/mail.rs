//! Outgoing mail: one [`Mailer`] over lettre's SMTP transport (when `KEYBROKER_SMTP_URL` is set)
//! or its file transport into `<data-dir>/outbox/`, and an [`Outbox`] queue drained by one worker
//! task, so that sending never happens on a request's path (and its latency says nothing about
//! whether an account exists).
//!
//! Mail bodies carry reset links: they are never logged, and the outbox directory is 0700.

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::MailSettings;

const QUEUE: usize = 1024;
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long shutdown waits for queued mail before giving up on it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("sending failed: {0}")]
    Send(String),
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

    pub async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let to: Mailbox = mail.to.parse().map_err(|_| MailError::InvalidRecipient)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| MailError::Build(e.to_string()))?;
        match &self.transport {
            Transport::Smtp(t) => t
                .send(message)
                .await
                .map(drop)
                .map_err(|e| MailError::Send(e.to_string())),
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
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Mail>,
}

impl Outbox {
    /// Queues a message without waiting. A full queue drops it with a warning rather than stall
    /// the request.
    pub fn enqueue(&self, mail: Mail) {
        let kind = mail.kind;
        if self.tx.try_send(mail).is_err() {
            tracing::warn!(kind, "mail queue is full or closed; a message was dropped");
        }
    }
}

/// Owns the task that sends queued mail; [`MailWorker::shutdown`] drains the queue and stops it.
#[derive(Debug)]
pub struct MailWorker {
    handle: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

/// Starts the worker task on the current runtime.
pub fn start(mailer: Mailer) -> (Outbox, MailWorker) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stop, stopped) = oneshot::channel();
    let handle = tokio::spawn(run(mailer, rx, stopped));
    (Outbox { tx }, MailWorker { handle, stop })
}

async fn deliver(mailer: &Mailer, mail: Mail) {
    match mailer.send(&mail).await {
        Ok(()) => tracing::info!(kind = mail.kind, "mail sent"),
        Err(e) => tracing::warn!(kind = mail.kind, error = %e, "mail could not be sent"),
    }
}

async fn run(mailer: Mailer, mut rx: mpsc::Receiver<Mail>, mut stopped: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(mail) => deliver(&mailer, mail).await,
                None => return,
            },
            _ = &mut stopped => break,
        }
    }
    rx.close();
    while let Some(mail) = rx.recv().await {
        deliver(&mailer, mail).await;
    }
}

impl MailWorker {
    /// Sends what is already queued (up to 30 s), then stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut handle = self.handle;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut handle)
            .await
            .is_err()
        {
            tracing::warn!("queued mail was not sent before shutdown");
            handle.abort();
        }
    }
}
