//! Mail for tests: a tiny SMTP sink that speaks just enough of the protocol for lettre and keeps
//! every message, readers for the file transport's outbox, and a decoder for the
//! quoted-printable bodies lettre writes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// An SMTP server on 127.0.0.1 that accepts every message; stops when dropped.
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<String>>>,
    /// Recipients refused (`RCPT` answered 550), in arrival order.
    refused: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_as(false).await
    }

    /// A server that refuses every recipient for good (`550`, quoting the address, as real
    /// servers do).
    pub async fn refusing() -> Self {
        Self::start_as(true).await
    }

    async fn start_as(refuse: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (store, refusals) = (messages.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let refusals = refuse.then(|| refusals.clone());
                tokio::spawn(session(stream, store.clone(), refusals));
            }
        });
        Self {
            port,
            messages,
            refused,
            task,
        }
    }

    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until at least `n` messages arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        wait_until(|| {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .await
    }
}

async fn session(
    stream: TcpStream,
    store: Arc<Mutex<Vec<String>>>,
    refusals: Option<Arc<Mutex<Vec<String>>>>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    if write.write_all(b"220 sink ESMTP ready\r\n").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if let (Some(refusals), "RCPT") = (&refusals, verb.as_str()) {
            let to = line
                .split_once(':')
                .map_or("", |(_, to)| to.trim())
                .to_owned();
            let reply = format!("550 5.1.1 {to}: recipient address rejected\r\n");
            refusals.lock().unwrap().push(to);
            if write.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 sink\r\n",
            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 ok\r\n",
            "DATA" => {
                if write.write_all(b"354 end with .\r\n").await.is_err() {
                    return;
                }
                let mut message = String::new();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l == "." {
                        break;
                    }
                    message.push_str(l.strip_prefix('.').unwrap_or(&l));
                    message.push_str("\r\n");
                }
                store.lock().unwrap().push(message);
                b"250 queued\r\n"
            }
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"502 not implemented\r\n",
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Polls `f` every 20 ms for up to 10 s.
pub async fn wait_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting");
}

/// Every message the file transport wrote into `<data-dir>/outbox/`, oldest first.
pub fn outbox_messages(data_dir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(data_dir.join("outbox")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = dir
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            (modified, e.path())
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Waits until the outbox holds at least `n` messages.
pub async fn wait_for_outbox(data_dir: &Path, n: usize) -> Vec<String> {
    wait_until(|| {
        let m = outbox_messages(data_dir);
        (m.len() >= n).then_some(m)
    })
    .await
}

/// The readable text of a message: soft line breaks joined and `=XX` escapes decoded.
pub fn decode(message: &str) -> String {
    let joined = message.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let (b'=', Some(b)) = (bytes[i], hex) {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The reset link in a message, if any.
pub fn reset_link(message: &str) -> Option<String> {
    let text = decode(message);
    let start = text.find("/reset/confirm?token=")?;
    let line_start = text[..start]
        .rfind(char::is_whitespace)
        .map_or(0, |i| i + 1);
    let end = text[start..]
        .find(char::is_whitespace)
        .map_or(text.len(), |i| start + i);
    Some(text[line_start..end].to_owned())
}

/// The token of a reset link.
pub fn token_of(link: &str) -> String {
    link.split_once("token=").unwrap().1.to_owned()
}
