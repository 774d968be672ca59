//! The one logging set-up. Every line, to stderr and to `<data-dir>/logs/`, passes the redactor
//! before it is written, and so does the panic message. ANSI colours are off everywhere: escape
//! codes between a field name and its value would hide a `key=value` pair from the redactor.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where redacted lines go.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(tracing_appender::non_blocking::NonBlocking),
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
        let _ = match &mut self.sink {
            Sink::Stderr => io::stderr().lock().write_all(&clean),
            Sink::File(w) => w.write_all(&clean),
            Sink::Memory(m) => {
                m.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&clean);
                Ok(())
            }
        };
    }
}

fn layer<S>(format: LogFormat, sink: Sink) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let base = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(RedactingMakeWriter(sink));
    match format {
        LogFormat::Text => base.boxed(),
        LogFormat::Json => base
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("KEYBROKER_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// Keeps the file writer's background thread alive; drop it last, at exit.
pub struct LogGuard {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Logging for `serve`: stderr plus a daily file under `<data_dir>/logs/`. Level from
/// `KEYBROKER_LOG` (an `EnvFilter` directive), default `info`.
pub fn init(format: LogFormat, data_dir: Option<&Path>) -> io::Result<LogGuard> {
    let (file_layer, guard) = match data_dir {
        Some(dir) => {
            let logs = dir.join("logs");
            std::fs::create_dir_all(&logs)?;
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("keybroker")
                .filename_suffix("log")
                .build(&logs)
                .map_err(io::Error::other)?;
            let (w, guard) = tracing_appender::non_blocking(appender);
            (Some(layer(format, Sink::File(w))), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter("info"))
        .with(layer(format, Sink::Stderr))
        .with(file_layer)
        .try_init()
        .map_err(io::Error::other)?;
    install_panic_hook();
    Ok(LogGuard { _file: guard })
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
    }));
}
