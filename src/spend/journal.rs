//! The hold journal: every reservation is appended here, by the thread that makes it, before the
//! call goes upstream. It is what makes a hold survive a crash of the process without the call
//! waiting for the spend writer's SQLite commit.
//!
//! Why: the spend writer commits holds in batches on its own thread. Waiting for that commit
//! before answering made the answer depend on a cross-thread hand-off and a transaction, which
//! is what the proxy's tail latency was made of. An append to a file is one `write(2)` of a
//! few dozen bytes into the OS page cache: like a `synchronous = NORMAL` commit, it survives
//! SIGKILL (not a power cut), and it costs a few microseconds on the calling thread.
//!
//! How the journal and the database agree: every record carries the writer's sequence number
//! for the hold's `Reserved` event, and every spend-writer transaction stores the last sequence
//! number it committed (`spend_journal_state.committed_seq`). At start-up, a record whose
//! sequence number is above the committed one is a hold the database never saw: it is charged
//! in full, like a hold left in `spend_holds` (fail closed). A record at or below it is already
//! in the database (still open in `spend_holds`, or settled), so it is not charged twice.
//!
//! Each run has its own epoch (a counter in `spend_journal_state`), part of every file's name:
//! only the last run's files are replayed, and recovery bumps the epoch in the same transaction
//! that charges the holds, so a crash between that commit and the deletion of the old files
//! cannot charge them twice.
//!
//! Files: `DATA/spend-journal/holds-EPOCH-SEGMENT.log`, mode 0600, one line per hold:
//! `SEQ RESERVATION ACCOUNT PROVIDER AMOUNT_MICROS PERIOD_START CRC32\n` (the CRC covers the
//! rest of the line). A line that is torn or fails its CRC is skipped. A segment is rotated
//! after [`SEGMENT_BYTES`] and deleted once the writer has committed every record in it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::money::Money;
use crate::spend::ledger::SpendEvent;

/// Segment size after which the journal moves to a new file (about 16,000 holds).
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// A hold as the journal recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledHold {
    pub seq: u64,
    pub reservation: u64,
    pub account: i64,
    pub provider: String,
    pub amount: Money,
    pub period_start: i64,
}

struct Segment {
    number: u64,
    file: File,
    bytes: u64,
}

/// The current run's journal.
pub struct HoldJournal {
    dir: PathBuf,
    epoch: u64,
    current: Mutex<Segment>,
    /// Rotated segments and the last sequence number written to each, to delete once committed.
    retired: Mutex<Vec<(PathBuf, u64)>>,
    has_retired: AtomicBool,
}

impl std::fmt::Debug for HoldJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldJournal")
            .field("dir", &self.dir)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn segment_path(dir: &Path, epoch: u64, number: u64) -> PathBuf {
    dir.join(format!("holds-{epoch}-{number}.log"))
}

fn open_segment(dir: &Path, epoch: u64, number: u64) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(segment_path(dir, epoch, number))
}

/// `(epoch, segment)` from a journal file name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("holds-")?.strip_suffix(".log")?;
    let (epoch, number) = rest.split_once('-')?;
    Some((epoch.parse().ok()?, number.parse().ok()?))
}

fn encode(seq: u64, event: &SpendEvent) -> String {
    let body = format!(
        "{seq} {} {} {} {} {}",
        event.reservation,
        event.account,
        event.provider,
        event.amount.micros(),
        event.period_start.unix_timestamp()
    );
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body} {crc:08x}\n")
}

fn decode(line: &str) -> Option<JournaledHold> {
    let (body, crc) = line.rsplit_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut f = body.split(' ');
    let hold = JournaledHold {
        seq: f.next()?.parse().ok()?,
        reservation: f.next()?.parse().ok()?,
        account: f.next()?.parse().ok()?,
        provider: f.next()?.to_owned(),
        amount: Money::from_micros(f.next()?.parse().ok()?),
        period_start: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some(hold)
}

impl HoldJournal {
    /// Starts the journal of run `epoch` in `dir` (created 0700 if missing).
    pub fn create(dir: &Path, epoch: u64) -> io::Result<Self> {
        create_dir(dir)?;
        let file = open_segment(dir, epoch, 0)?;
        let bytes = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_owned(),
            epoch,
            current: Mutex::new(Segment {
                number: 0,
                file,
                bytes,
            }),
            retired: Mutex::new(Vec::new()),
            has_retired: AtomicBool::new(false),
        })
    }

    /// Appends one hold in a single `write(2)`. `seq` is the writer's sequence number of the
    /// hold's event. Callers append in sequence order (the spend writer does it under the lock
    /// that hands out sequence numbers), which is what makes segment retirement exact.
    pub fn append(&self, seq: u64, event: &SpendEvent) -> io::Result<()> {
        if event.provider.contains([' ', '\n']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "provider id with a space",
            ));
        }
        let line = encode(seq, event);
        let mut seg = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if seg.bytes >= SEGMENT_BYTES {
            let number = seg.number + 1;
            let file = open_segment(&self.dir, self.epoch, number)?;
            let old = segment_path(&self.dir, self.epoch, seg.number);
            *seg = Segment {
                number,
                file,
                bytes: 0,
            };
            // Every record in the old segment has a sequence number below this one.
            self.retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((old, seq.saturating_sub(1)));
            self.has_retired.store(true, Ordering::Release);
        }
        seg.file.write_all(line.as_bytes())?;
        seg.bytes += line.len() as u64;
        Ok(())
    }

    /// Deletes the rotated segments whose records are all committed (called by the spend writer
    /// after each commit; cheap when there is nothing to delete).
    pub fn committed(&self, seq: u64) {
        if !self.has_retired.load(Ordering::Acquire) {
            return;
        }
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|(path, last)| {
            if *last > seq {
                return true;
            }
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, "could not delete a committed hold-journal segment");
                    return true;
                }
            }
            false
        });
        self.has_retired
            .store(!retired.is_empty(), Ordering::Release);
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The holds journaled by run `epoch`, in file order. Lines that are torn or corrupt are skipped
/// (counted in the second value).
pub fn read_epoch(dir: &Path, epoch: u64) -> io::Result<(Vec<JournaledHold>, u64)> {
    let mut segments = Vec::new();
    for entry in list(dir)? {
        if entry.0 == epoch {
            segments.push((entry.1, entry.2));
        }
    }
    segments.sort();
    let mut holds = Vec::new();
    let mut skipped = 0;
    for (_, path) in segments {
        let reader = BufReader::new(File::open(&path)?);
        for line in reader.split(b'\n') {
            let line = line?;
            match std::str::from_utf8(&line).ok().and_then(decode) {
                Some(hold) => holds.push(hold),
                None => skipped += 1,
            }
        }
    }
    Ok((holds, skipped))
}

/// Deletes every journal file of an epoch below `keep_from`.
pub fn delete_before(dir: &Path, keep_from: u64) -> io::Result<()> {
    for (epoch, _, path) in list(dir)? {
        if epoch < keep_from {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn list(dir: &Path) -> io::Result<Vec<(u64, u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some((epoch, number)) = entry.file_name().to_str().and_then(parse_name) {
            files.push((epoch, number, entry.path()));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::ledger::SpendKind;
    use time::OffsetDateTime;

    fn hold(reservation: u64, micros: i64) -> SpendEvent {
        SpendEvent {
            reservation,
            account: 7,
            provider: "openai".into(),
            amount: Money::from_micros(micros),
            kind: SpendKind::Reserved,
            period_start: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            at: OffsetDateTime::from_unix_timestamp(1_700_000_100).unwrap(),
        }
    }

    #[test]
    fn holds_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let j = HoldJournal::create(dir.path(), 3).unwrap();
        j.append(10, &hold(1, 500)).unwrap();
        j.append(11, &hold(2, 700)).unwrap();
        let (holds, skipped) = read_epoch(dir.path(), 3).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(holds.len(), 2);
        assert_eq!(
            holds[1],
            JournaledHold {
                seq: 11,
                reservation: 2,
                account: 7,
                provider: "openai".into(),
                amount: Money::from_micros(700),
                period_start: 1_700_000_000,
            }
        );
        assert!(read_epoch(dir.path(), 2).unwrap().0.is_empty());
    }

    #[test]
    fn a_torn_or_altered_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = HoldJournal::create(dir.path(), 1).unwrap();
        j.append(1, &hold(1, 500)).unwrap();
        j.append(2, &hold(2, 600)).unwrap();
        drop(j);
        let path = segment_path(dir.path(), 1, 0);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replacen(" 500 ", " 5 ", 1);
        text.push_str("3 3 7 openai 9");
        std::fs::write(&path, text).unwrap();
        let (holds, skipped) = read_epoch(dir.path(), 1).unwrap();
        assert_eq!(skipped, 2);
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].amount, Money::from_micros(600));
    }

    #[test]
    fn rotated_segments_go_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let j = HoldJournal::create(dir.path(), 1).unwrap();
        let mut seq = 0;
        while list(dir.path()).unwrap().len() < 2 {
            seq += 1;
            j.append(seq, &hold(seq, 1)).unwrap();
        }
        // The first segment holds every sequence number below the last one.
        j.committed(seq - 2);
        assert_eq!(list(dir.path()).unwrap().len(), 2);
        j.committed(seq - 1);
        let left = list(dir.path()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, 1);
        let (holds, _) = read_epoch(dir.path(), 1).unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].seq, seq);
    }

    #[test]
    fn old_epochs_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        HoldJournal::create(dir.path(), 1)
            .unwrap()
            .append(1, &hold(1, 1))
            .unwrap();
        HoldJournal::create(dir.path(), 2).unwrap();
        delete_before(dir.path(), 2).unwrap();
        let left = list(dir.path()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, 2);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("spend-journal");
        HoldJournal::create(&jdir, 1).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&jdir), 0o700);
        assert_eq!(mode(&segment_path(&jdir, 1, 0)), 0o600);
    }
}
