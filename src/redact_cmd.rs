//! `keybroker redact`: copies standard input to standard output with every secret the redactor
//! knows replaced by its `[REDACTED:kind]` marker, so an operator can clean any log before
//! sharing it. It streams over bytes in bounded memory, whatever the size of the input.
//!
//! Each line (up to and including `\n`) is redacted on its own, so a clean line comes out byte
//! for byte and the result does not depend on how the input arrives. Two exceptions:
//!
//! * A private-key block (`-----BEGIN … PRIVATE KEY-----` on one line, its body on the next) is
//!   gathered up to its `-----END` line and redacted as one piece, because its body lines look
//!   like any other base64 on their own.
//! * A line longer than [`Limits::max_line`] is redacted in pieces. Each cut is placed where the
//!   redactor itself says nothing spans it: redacting [`Limits::window`] bytes on each side
//!   separately must give the same result as redacting them together. A secret plus its context
//!   longer than the window (a private-key body of more than 16 KiB) could still be cut.

use std::io::{self, BufRead, BufReader, BufWriter, Write};

use memchr::memmem;
use redactor::{Counts, Redactor};

use crate::telemetry;

/// Bounds on the memory `redact` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest piece redacted in one call; longer lines (and private-key blocks) are cut.
    pub max_line: usize,
    /// Bytes on each side of a cut that are checked for a secret spanning it.
    pub window: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 1 << 20,
            window: 16 << 10,
        }
    }
}

impl Limits {
    /// A window of at most an eighth of the line cap, so a cut always leaves room to search.
    pub fn new(max_line: usize, window: usize) -> Limits {
        let max_line = max_line.max(64);
        Limits {
            max_line,
            window: window.clamp(8, max_line / 8),
        }
    }
}

/// Where a stream failed: reading is an error, a closed reader on the output side is not.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading standard input: {0}")]
    Read(io::Error),
    #[error("writing standard output: {0}")]
    Write(io::Error),
}

/// Read and write buffer size: large enough that syscalls do not dominate.
const IO_BUF: usize = 1 << 20;

/// The `redact` command. With `stats`, prints one `kind count` line per kind found (sorted by
/// kind) and a total to stderr at the end, also when the reader of stdout went away early.
pub fn run(stats: bool) -> anyhow::Result<()> {
    let mut counts = Counts::new();
    let input = BufReader::with_capacity(IO_BUF, io::stdin().lock());
    let output = BufWriter::with_capacity(IO_BUF, io::stdout().lock());
    let result = redact_stream(
        telemetry::redactor(),
        Limits::default(),
        input,
        output,
        &mut counts,
    );
    if stats {
        // Nothing useful to do if stderr is gone too.
        let _ = io::stderr()
            .lock()
            .write_all(stats_report(&counts).as_bytes());
    }
    match result {
        // Like `head` on the other side of a pipe: the reader has what it wanted.
        Err(StreamError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `kind count` per kind found, sorted by kind name, then `total N`.
pub fn stats_report(counts: &Counts) -> String {
    let mut rows: Vec<(&str, u64)> = counts.iter().map(|(k, n)| (k.as_str(), n)).collect();
    rows.sort_unstable();
    let mut out = String::new();
    for (kind, n) in rows {
        out.push_str(&format!("{kind} {n}\n"));
    }
    out.push_str(&format!("total {}\n", counts.total()));
    out
}

/// Copies `input` to `output`, redacted, adding one to `counts` per marker written. Memory is
/// bounded by the reader's buffer plus about twice `limits.max_line`.
pub fn redact_stream<R: BufRead, W: Write>(
    redactor: &Redactor,
    limits: Limits,
    mut input: R,
    output: W,
    counts: &mut Counts,
) -> Result<(), StreamError> {
    let mut s = Splitter {
        limits,
        pending: Vec::new(),
        gathering: false,
        private_key: memmem::Finder::new(PRIVATE_KEY),
        sink: Sink {
            redactor,
            output,
            counts,
        },
    };
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::Read(e)),
        };
        if buf.is_empty() {
            break;
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', buf) {
            s.line(buf.get(start..=end).unwrap_or_default())?;
            start = end + 1;
        }
        s.partial(buf.get(start..).unwrap_or_default())?;
        let n = buf.len();
        input.consume(n);
    }
    s.finish()
}

/// Redacts and writes.
struct Sink<'a, W> {
    redactor: &'a Redactor,
    output: W,
    counts: &'a mut Counts,
}

impl<W: Write> Sink<'_, W> {
    fn emit(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        let clean = self.redactor.redact_counting(bytes, self.counts);
        self.output.write_all(&clean).map_err(StreamError::Write)
    }
}

/// Turns a stream of byte runs into the pieces that are redacted one at a time.
struct Splitter<'a, W> {
    limits: Limits,
    /// Bytes not yet redacted: the start of a line, or a private-key block being gathered.
    pending: Vec<u8>,
    /// `pending` holds a private-key block whose `-----END` line has not arrived.
    gathering: bool,
    /// Built once: `memmem::find` would build a searcher for every line.
    private_key: memmem::Finder<'static>,
    sink: Sink<'a, W>,
}

impl<W: Write> Splitter<'_, W> {
    /// `line` ends with `\n`.
    fn line(&mut self, line: &[u8]) -> Result<(), StreamError> {
        if self.pending.is_empty() && !self.gathering {
            if self.opens_private_key(line) {
                self.pending.extend_from_slice(line);
                self.gathering = true;
                return Ok(());
            }
            // The common case: the whole line is in the reader's buffer; no copy.
            return self.sink.emit(line);
        }
        self.pending.extend_from_slice(line);
        if self.gathering {
            if closes_private_key(line) || self.pending.len() >= self.limits.max_line {
                self.gathering = false;
                return self.flush();
            }
            return Ok(());
        }
        if self.opens_private_key(&self.pending) {
            self.gathering = true;
            return Ok(());
        }
        self.flush()
    }

    /// The start of a line whose `\n` has not been read yet.
    fn partial(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= self.limits.max_line {
            self.gathering = false;
            let cut = find_cut(self.sink.redactor, &self.pending, self.limits.window);
            self.sink
                .emit(self.pending.get(..cut).unwrap_or_default())?;
            self.pending.drain(..cut);
        }
        Ok(())
    }

    /// A line that starts a private-key block and does not finish it.
    fn opens_private_key(&self, line: &[u8]) -> bool {
        if self.private_key.find(line).is_none() {
            return false;
        }
        match memmem::rfind(line, b"-----BEGIN") {
            Some(begin) => {
                let rest = line.get(begin..).unwrap_or_default();
                self.private_key.find(rest).is_some() && memmem::find(rest, b"-----END").is_none()
            }
            None => false,
        }
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        let result = self.sink.emit(&self.pending);
        self.pending.clear();
        result
    }

    fn finish(mut self) -> Result<(), StreamError> {
        if !self.pending.is_empty() {
            self.flush()?;
        }
        self.sink.output.flush().map_err(StreamError::Write)
    }
}

const PRIVATE_KEY: &[u8] = b"PRIVATE KEY";

fn closes_private_key(line: &[u8]) -> bool {
    memmem::find(line, b"-----END").is_some()
}

/// How far back from the end of a long piece to look for a delimiter to cut at.
const SEARCH_WINDOWS: usize = 4;
/// Cut positions tested before giving up and cutting anyway.
const MAX_TRIES: usize = 12;

/// Where to cut `buf` (longer than `8 * window`): the latest position, at least `window` bytes
/// from the end, at which no secret spans the cut. Positions just after whitespace or `,;&`
/// are tried first, then plain ones; if none passes, the latest position is used.
fn find_cut(redactor: &Redactor, buf: &[u8], window: usize) -> usize {
    let hi = buf.len().saturating_sub(window).max(1);
    let lo = hi.saturating_sub(SEARCH_WINDOWS * window).max(1);
    let mut tries = 0;
    for p in (lo..=hi).rev() {
        if tries >= MAX_TRIES {
            break;
        }
        let before = buf.get(p - 1).copied().unwrap_or(b'x');
        let at = buf.get(p).copied().unwrap_or(b'x');
        if is_delimiter(before) && !is_delimiter(at) {
            tries += 1;
            if separable(redactor, buf, p, window) {
                return p;
            }
        }
    }
    let step = (window / 2).max(1);
    (0..MAX_TRIES / 2)
        .filter_map(|i| hi.checked_sub(i * step).filter(|p| *p > 0))
        .find(|&p| separable(redactor, buf, p, window))
        .unwrap_or(hi)
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b',' | b';' | b'&')
}

/// Whether cutting at `p` changes nothing within `window` bytes either side.
fn separable(redactor: &Redactor, buf: &[u8], p: usize, window: usize) -> bool {
    let from = p.saturating_sub(window);
    let to = (p + window).min(buf.len());
    let (Some(left), Some(right), Some(both)) =
        (buf.get(from..p), buf.get(p..to), buf.get(from..to))
    else {
        return false;
    };
    let left = redactor.redact_bytes(left);
    let right = redactor.redact_bytes(right);
    let both = redactor.redact_bytes(both);
    both.len() == left.len() + right.len() && both.starts_with(&left) && both.ends_with(&right)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai_key(n: u8) -> String {
        let c = char::from(b'a' + n % 26);
        format!(
            "sk-proj-{}T3BlbkFJ{}",
            c.to_string().repeat(20),
            "Qz9".repeat(7)
        )
    }

    fn run_with(limits: Limits, input: &[u8]) -> (Vec<u8>, Counts) {
        let r = telemetry::redactor();
        let mut out = Vec::new();
        let mut counts = Counts::new();
        // A reader buffer smaller than the cap, as stdin's is for lines longer than the cap.
        let input = io::BufReader::with_capacity(limits.max_line / 3, input);
        redact_stream(r, limits, input, &mut out, &mut counts).unwrap();
        (out, counts)
    }

    #[test]
    fn the_test_key_is_one_the_redactor_catches() {
        let key = openai_key(0);
        assert_eq!(
            telemetry::redactor().redact(&format!("k {key} x")),
            "k [REDACTED:openai] x"
        );
    }

    #[test]
    fn a_key_wherever_a_long_line_is_cut_is_redacted_as_if_the_line_were_whole() {
        let limits = Limits::new(4096, 256);
        let key = openai_key(1);
        let filler = "lorem ipsum dolor sit amet, ".repeat(400);
        for offset in (3000..9000).step_by(5) {
            let mut line = filler.clone().into_bytes();
            line.splice(offset..offset, format!(" {key} ").bytes());
            line.push(b'\n');
            let (out, counts) = run_with(limits, &line);
            let expected = telemetry::redactor().redact_bytes(&line).into_owned();
            assert_eq!(out, expected, "key at {offset}");
            assert_eq!(counts.total(), 1);
        }
    }

    #[test]
    fn a_long_line_without_delimiters_is_still_cut_and_kept_whole() {
        let limits = Limits::new(4096, 256);
        let line = format!("{}\n", "A".repeat(20_000));
        let (out, _) = run_with(limits, line.as_bytes());
        assert_eq!(out, line.as_bytes());
    }

    #[test]
    fn reading_one_byte_at_a_time_gives_the_same_output() {
        let text = format!(
            "clean line\nkey {} here\n{}\nno newline at end {}",
            openai_key(2),
            "x ".repeat(3000),
            openai_key(3)
        );
        let limits = Limits::new(1024, 64);
        let (whole, _) = run_with(limits, text.as_bytes());
        let r = telemetry::redactor();
        let mut out = Vec::new();
        let mut counts = Counts::new();
        let slow = io::BufReader::with_capacity(1, text.as_bytes());
        redact_stream(r, limits, slow, &mut out, &mut counts).unwrap();
        assert_eq!(out, whole);
        assert_eq!(counts.get(redactor::Kind::OpenAi), 2);
    }

    #[test]
    fn a_multi_line_private_key_block_is_gathered_and_redacted() {
        let body: String = (0..20)
            .map(|i| {
                format!(
                    "{}\n",
                    "MIIEpAIBAAKCAQEA7x9k"
                        .repeat(3)
                        .replace('k', &i.to_string())
                )
            })
            .collect();
        let text = format!(
            "before\n-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\nafter\n"
        );
        let (out, counts) = run_with(Limits::default(), text.as_bytes());
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("before\n-----BEGIN RSA PRIVATE KEY-----"),
            "{out}"
        );
        assert!(out.ends_with("after\n"), "{out}");
        assert!(!out.contains("MIIEpAIBAAKCAQEA"), "{out}");
        assert_eq!(counts.get(redactor::Kind::PrivateKey), 1);
    }

    #[test]
    fn an_unfinished_private_key_block_is_flushed_at_the_cap() {
        let limits = Limits::new(1024, 64);
        let mut out = Vec::new();
        let mut counts = Counts::new();
        let mut s = Splitter {
            limits,
            pending: Vec::new(),
            gathering: false,
            private_key: memmem::Finder::new(PRIVATE_KEY),
            sink: Sink {
                redactor: telemetry::redactor(),
                output: &mut out,
                counts: &mut counts,
            },
        };
        let line = b"just an ordinary line that never ends the block\n";
        s.line(b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        for _ in 0..100 {
            s.line(line).unwrap();
            assert!(s.pending.len() < limits.max_line + line.len());
        }
        s.finish().unwrap();
        let mut expected = b"-----BEGIN PRIVATE KEY-----\n".to_vec();
        for _ in 0..100 {
            expected.extend_from_slice(line);
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn stats_are_sorted_by_kind_and_totalled() {
        let mut counts = Counts::new();
        let text = format!(
            "{} AKIAIOSFODNN7EXAMPL3 {} AKIAIOSFODNN7EXAMPL4\n",
            openai_key(4),
            openai_key(5)
        );
        let _ = telemetry::redactor().redact_counting(text.as_bytes(), &mut counts);
        assert_eq!(stats_report(&counts), "aws 2\nopenai 2\ntotal 4\n");
        assert_eq!(stats_report(&Counts::new()), "total 0\n");
    }
}
