//! The one logging set-up. Every line, to stderr and to `<data-dir>/logs/`, passes the redactor
//! before it is written, and so does the panic message. ANSI colours are off everywhere: escape
//! codes between a field name and its value would hide a `key=value` pair from the redactor.
//!
//! For `serve`, each event is formatted once and redacted once, then appended to an in-memory
//! buffer ([`LogPipe`]); one background thread writes that buffer to stderr and to the day's log
//! file every [`FLUSH_INTERVAL`] (sooner once [`FLUSH_BYTES`] are waiting). A request therefore
//! costs no `write(2)` and no thread wake-up for its log line: with a write or a hand-off per line,
//! logging was a fifth of the proxy's CPU time at one call at a time. The price is that a
//! SIGKILL loses at most the last [`FLUSH_INTERVAL`] of log lines (never spend, which has its own
//! journal); a normal shutdown and a panic flush what is buffered.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use redactor::Redactor;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static REDACTOR: LazyLock<Redactor> = LazyLock::new(Redactor::new);

/// The process-wide redactor: logs, error bodies and rewritten upstream errors all use it, and
/// the proxy registers each key it decrypts with it for the life of the call.
pub fn redactor() -> &'static Redactor {
    &REDACTOR
}

/// Longest time a `serve` log line waits in memory before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the log thread before its interval is up.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Buffered bytes past which new lines are dropped (and counted) rather than grow memory without
/// bound while stderr or the disk is stuck.
pub const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Redacted lines on their way to the log thread.
pub struct LogPipe {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    stop: AtomicBool,
    urgent: AtomicBool,
    dropped: AtomicU64,
}

impl LogPipe {
    fn new() -> Self {
        Self {
            buf: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    fn push(&self, line: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        if buf.len() + line.len() > MAX_BUFFERED_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.extend_from_slice(line);
        if buf.len() >= FLUSH_BYTES {
            self.wake.notify_one();
        }
    }

    /// Asks the log thread to write what is buffered now (a panic, a shutdown).
    fn hurry(&self) {
        self.urgent.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The log thread: every interval (or when woken), swap the buffer out and write it to every
    /// destination. Write errors are ignored: a logger has nowhere to report them, and the line
    /// must never be written unredacted somewhere else instead.
    fn run(&self, mut outs: Vec<Box<dyn Write + Send>>) {
        crate::threads::lower_priority(5);
        let mut out = Vec::with_capacity(FLUSH_BYTES);
        loop {
            let stopping = {
                let buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
                let (mut buf, _) = self
                    .wake
                    .wait_timeout_while(buf, FLUSH_INTERVAL, |b| {
                        b.len() < FLUSH_BYTES
                            && !self.urgent.load(Ordering::Acquire)
                            && !self.stop.load(Ordering::Acquire)
                    })
                    .unwrap_or_else(PoisonError::into_inner);
                self.urgent.store(false, Ordering::Release);
                std::mem::swap(&mut *buf, &mut out);
                self.stop.load(Ordering::Acquire)
            };
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                out.extend_from_slice(
                    format!("keybroker: {dropped} log line(s) dropped: the log output could not keep up\n")
                        .as_bytes(),
                );
            }
            if !out.is_empty() {
                for w in &mut outs {
                    let _ = w.write_all(&out).and_then(|()| w.flush());
                }
                out.clear();
                // A burst can leave a large buffer behind; do not keep it for ever.
                out.shrink_to(FLUSH_BYTES);
            }
            if stopping {
                return;
            }
        }
    }
}

/// Where redacted lines go.
#[derive(Clone)]
enum Sink {
    /// Written at once: CLI commands, which are short-lived and not on a hot path.
    Stderr,
    /// Handed to the `serve` log thread.
    Pipe(Arc<LogPipe>),
    Memory(Arc<Mutex<Vec<u8>>>),
}

#[derive(Clone)]
struct RedactingMakeWriter(Sink);

/// Buffers one formatted event and writes it, redacted, when the formatter is done with it.
struct LineWriter {
    buf: Vec<u8>,
    sink: Sink,
}

impl<'a> MakeWriter<'a> for RedactingMakeWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            buf: Vec::with_capacity(256),
            sink: self.0.clone(),
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let clean = redactor().redact_bytes(&self.buf);
        // A logger has nowhere to report its own write failures; dropping the line is the
        // only safe choice (never fall back to writing it unredacted somewhere else).
        match &self.sink {
            Sink::Stderr => {
                let _ = io::stderr().lock().write_all(&clean);
            }
            Sink::Pipe(pipe) => pipe.push(&clean),
            Sink::Memory(m) => m
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&clean),
        }
    }
}

fn layer<S>(format: LogFormat, sink: Sink) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let base = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(RedactingMakeWriter(sink));
    let wire = tracing_subscriber::filter::filter_fn(not_wire_detail);
    match format {
        LogFormat::Text => base.with_filter(wire).boxed(),
        LogFormat::Json => base
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(wire)
            .boxed(),
    }
}

/// Client libraries that log what they put on the wire below `info`: the PostgreSQL client
/// logs every statement's parameters at `debug` (ciphertexts, token hashes, e-mail addresses),
/// the HTTP clients their headers at `trace`. Such lines are never written, whatever
/// `KEYBROKER_LOG` asks for; a directive can still quiet them further, never open them.
const WIRE_TARGETS: &[&str] = &[
    "tokio_postgres",
    "postgres",
    "awc",
    "actix_http",
    "h2",
    "rustls",
];

fn not_wire_detail(meta: &tracing::Metadata<'_>) -> bool {
    if *meta.level() <= tracing::Level::INFO {
        return true;
    }
    let target = meta.target();
    !WIRE_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("KEYBROKER_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Keeps the log thread running; dropping it (last, at exit) writes what is buffered and stops
/// the thread.
pub struct LogGuard {
    pipe: Arc<LogPipe>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.pipe.stop.store(true, Ordering::Release);
        self.pipe.hurry();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

static PIPE: OnceLock<Arc<LogPipe>> = OnceLock::new();

/// Logging for `serve`: stderr plus a daily file under `<data_dir>/logs/`, both written by one
/// background thread. Level from `KEYBROKER_LOG` (an `EnvFilter` directive), default `info`.
pub fn init(format: LogFormat, data_dir: Option<&Path>) -> io::Result<LogGuard> {
    let mut outs: Vec<Box<dyn Write + Send>> = vec![Box::new(io::stderr())];
    if let Some(dir) = data_dir {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("keybroker")
            .filename_suffix("log")
            .build(&logs)
            .map_err(io::Error::other)?;
        outs.push(Box::new(appender));
    }
    let pipe = Arc::new(LogPipe::new());
    tracing_subscriber::registry()
        // The framework's own start-up lines (workers started, runtime found) mean nothing to
        // a user: they are shown from `KEYBROKER_LOG=debug` or a per-target directive.
        .with(filter(
            "info,actix_server=warn,actix_web=warn,actix_http=warn",
        ))
        .with(layer(format, Sink::Pipe(pipe.clone())))
        .try_init()
        .map_err(io::Error::other)?;
    let _ = PIPE.set(pipe.clone());
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let pipe = pipe.clone();
            move || pipe.run(outs)
        })?;
    install_panic_hook();
    Ok(LogGuard {
        pipe,
        thread: Some(thread),
    })
}

/// Logging for CLI commands other than `serve`: stderr only, warnings and up by default.
pub fn init_cli() {
    let _ = tracing_subscriber::registry()
        .with(filter("warn"))
        .with(layer(LogFormat::Text, Sink::Stderr))
        .try_init();
    install_panic_hook();
}

static CAPTURE: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// For tests: every line at `debug` and above, redacted exactly as in production, kept in memory
/// so a test can assert what reached the logs. Idempotent.
pub fn init_capture() -> Arc<Mutex<Vec<u8>>> {
    CAPTURE
        .get_or_init(|| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let _ = tracing_subscriber::registry()
                .with(EnvFilter::new("debug"))
                .with(layer(LogFormat::Json, Sink::Memory(buf.clone())))
                .try_init();
            // Tests keep the default panic hook: a failing assertion must print where a person
            // reads it, not vanish into the captured log.
            buf
        })
        .clone()
}

/// A panic message can quote anything that was in scope; it goes through the redacting logger
/// instead of straight to stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%location, message = %payload, "panic");
        if let Some(pipe) = PIPE.get() {
            pipe.hurry();
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database client's statement parameters never reach a log, even at `trace`.
    #[test]
    fn wire_detail_of_client_libraries_is_never_written() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let buf = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(layer(LogFormat::Json, Sink::Memory(buf.clone())));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "tokio_postgres::query", "parameters: plantedparam");
            tracing::trace!(target: "actix_http::h1", "header: plantedheader");
            tracing::warn!(target: "tokio_postgres::connection", "connection lost");
            tracing::debug!(target: "postgresql_like", "kept");
        });
        let out = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
        assert!(
            !out.contains("plantedparam") && !out.contains("plantedheader"),
            "{out}"
        );
        assert!(
            out.contains("connection lost") && out.contains("kept"),
            "{out}"
        );
    }

    /// keybroker's own access-log fields are never taken for secrets: every route of the table,
    /// in both formats, keeps its route and status through the redacting writer.
    #[test]
    fn every_route_of_the_table_keeps_its_status_in_the_access_log() {
        use tracing_subscriber::layer::SubscriberExt as _;
        for format in [LogFormat::Text, LogFormat::Json] {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let subscriber = tracing_subscriber::registry()
                .with(EnvFilter::new("info"))
                .with(layer(format, Sink::Memory(buf.clone())));
            tracing::subscriber::with_default(subscriber, || {
                for route in crate::routes::API_ROUTES {
                    for status in [200, 401, 403, 429, 503] {
                        crate::http::access_log::write(
                            route.method,
                            route.path,
                            status,
                            12,
                            "127.0.0.1",
                        );
                    }
                }
            });
            let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let mut i = 0;
            for route in crate::routes::API_ROUTES {
                for status in [200, 401, 403, 429, 503] {
                    let line = lines[i];
                    i += 1;
                    let (want_route, want_status) = match format {
                        LogFormat::Text => {
                            (format!("route={}", route.path), format!("status={status}"))
                        }
                        LogFormat::Json => (
                            format!("\"route\":\"{}\"", route.path),
                            format!("\"status\":{status}"),
                        ),
                    };
                    assert!(
                        line.contains(&want_route) && line.contains(&want_status),
                        "{line}"
                    );
                    assert!(!line.contains("REDACTED"), "{line}");
                }
            }
        }
    }

    /// A destination the test can read while the log thread writes to it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn start(pipe: &Arc<LogPipe>, outs: Vec<Shared>) -> std::thread::JoinHandle<()> {
        let pipe = pipe.clone();
        std::thread::spawn(move || {
            pipe.run(
                outs.into_iter()
                    .map(|s| Box::new(s) as Box<dyn Write + Send>)
                    .collect(),
            )
        })
    }

    #[test]
    fn lines_reach_every_destination_within_the_interval_and_all_of_them_at_stop() {
        let pipe = Arc::new(LogPipe::new());
        let (a, b) = (Shared::default(), Shared::default());
        let thread = start(&pipe, vec![a.clone(), b.clone()]);
        pipe.push(b"one\n");
        let deadline = std::time::Instant::now() + FLUSH_INTERVAL * 20;
        while a.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*a.0.lock().unwrap(), b"one\n");
        pipe.push(b"two\n");
        pipe.stop.store(true, Ordering::Release);
        pipe.hurry();
        thread.join().unwrap();
        assert_eq!(&*a.0.lock().unwrap(), b"one\ntwo\n");
        assert_eq!(&*b.0.lock().unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn a_stuck_output_drops_lines_and_says_how_many_instead_of_growing() {
        let pipe = LogPipe::new();
        let line = vec![b'x'; 1024];
        for _ in 0..(MAX_BUFFERED_BYTES / line.len() + 10) {
            pipe.push(&line);
        }
        assert!(pipe.buf.lock().unwrap().len() <= MAX_BUFFERED_BYTES);
        assert_eq!(pipe.dropped.load(Ordering::Relaxed), 10);
        let pipe = Arc::new(pipe);
        let out = Shared::default();
        pipe.stop.store(true, Ordering::Release);
        start(&pipe, vec![out.clone()]).join().unwrap();
        let written = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
        assert!(written
            .ends_with("keybroker: 10 log line(s) dropped: the log output could not keep up\n"));
    }
}
