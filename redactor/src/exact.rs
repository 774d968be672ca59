//! Exact-value redaction: secrets the caller holds (a provider key it has just decrypted) are
//! removed wherever they occur, together with their usual encodings, whatever their shape.
//!
//! Registering must stay cheap at thousands of calls a second and scanning must not slow down as
//! registrations pile up, so there is no automaton to rebuild. Each encoded form ("form") of at
//! least [`LONG_MIN`] bytes is indexed by a fingerprint of every [`WIN`]-byte window starting at
//! offsets `0..STRIDE` into it. A scan fingerprints only the windows starting at multiples of
//! [`STRIDE`] in the text: any occurrence of a form covers exactly one such window at an indexed
//! offset. A 2^18-bit filter answers most windows without touching the map; hits are verified
//! byte for byte, so a fingerprint collision costs time, never correctness. Forms shorter than
//! [`LONG_MIN`] (from secrets of 8..23 bytes) go to a second index with an 8-byte window tested
//! at every position, which only runs while such forms exist.

use crate::kind::Kind;
use crate::Span;
use base64::Engine as _;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use zeroize::Zeroizing;

/// Secrets shorter than this are refused: no real key is, and redacting short strings exactly
/// would destroy ordinary text.
pub const MIN_SECRET_LEN: usize = 8;
const WIN: usize = 16;
const STRIDE: usize = 8;
const LONG_MIN: usize = WIN + STRIDE - 1;
const FILTER_LOG2: u32 = 18;

/// A registered value or one of its encodings. These are plaintext keys: the buffer is wiped
/// when the last reference to it drops (the value's release), never left in freed memory.
pub(crate) type Form = Arc<Zeroizing<Vec<u8>>>;

/// A registered value as the key of the registry's map, looked up by its bytes.
#[derive(Clone)]
pub(crate) struct SecretKey(Form);

impl std::borrow::Borrow<[u8]> for SecretKey {
    fn borrow(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}

impl Eq for SecretKey {}

impl std::hash::Hash for SecretKey {
    // The same hash as the `[u8]` it borrows as, which `Borrow` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_slice().hash(state);
    }
}

/// Fingerprints are already well mixed; hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type FpMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

fn mix(a: u64, b: u64) -> u64 {
    let h = (a ^ 0x243F_6A88_85A3_08D3).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (b ^ 0x1319_8A2E_0370_7344)
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            .rotate_left(31);
    h ^ (h >> 29)
}

fn load(t: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = t.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn long_fp(t: &[u8], at: usize) -> Option<u64> {
    Some(mix(load(t, at)?, load(t, at.checked_add(8)?)?))
}

fn short_fp(t: &[u8], at: usize) -> Option<u64> {
    Some(mix(load(t, at)?, 0))
}

/// A bitset over fingerprints. Bits are only cleared by a rebuild, done once as many windows
/// have been removed as are live, which keeps removal amortised O(1).
struct Filter {
    bits: Vec<u64>,
}

impl Filter {
    fn new() -> Filter {
        Filter {
            bits: vec![0; (1usize << FILTER_LOG2) / 64],
        }
    }

    fn slot(fp: u64) -> (usize, u64) {
        let i = (fp >> (64 - FILTER_LOG2)) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    fn set(&mut self, fp: u64) {
        let (w, m) = Filter::slot(fp);
        if let Some(x) = self.bits.get_mut(w) {
            *x |= m;
        }
    }

    fn test(&self, fp: u64) -> bool {
        let (w, m) = Filter::slot(fp);
        self.bits.get(w).is_some_and(|x| x & m != 0)
    }

    fn rebuild<'a>(&mut self, fps: impl Iterator<Item = &'a u64>) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        for fp in fps {
            self.set(*fp);
        }
    }
}

struct Slot {
    form: Form,
    offset: usize,
}

struct Entry {
    refs: usize,
    forms: Vec<Form>,
}

struct Index {
    long: FpMap<Vec<Slot>>,
    long_filter: Filter,
    long_stale: usize,
    short: FpMap<Vec<Form>>,
    short_filter: Filter,
    short_stale: usize,
    secrets: HashMap<SecretKey, Entry>,
}

/// The shared set of registered values. Owned by a `Redactor` and by every live `Registration`.
pub(crate) struct Registry {
    index: RwLock<Index>,
    /// Distinct registered secrets, read without the lock so an empty registry costs nothing.
    live: AtomicUsize,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            index: RwLock::new(Index {
                long: FpMap::default(),
                long_filter: Filter::new(),
                long_stale: 0,
                short: FpMap::default(),
                short_filter: Filter::new(),
                short_stale: 0,
                secrets: HashMap::new(),
            }),
            live: AtomicUsize::new(0),
        }
    }

    // A panic while holding the lock cannot leave the index half-updated in a way that matters
    // for safety (worst case: a stale entry keeps redacting), so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Adds one reference to `secret`; returns the key to release it with.
    pub(crate) fn add(&self, secret: &[u8]) -> SecretKey {
        let mut ix = self.write();
        let existing = ix.secrets.get_key_value(secret).map(|(k, _)| k.clone());
        if let Some(key) = existing {
            if let Some(e) = ix.secrets.get_mut(&key) {
                e.refs += 1;
            }
            return key;
        }
        let forms: Vec<Form> = encoded_forms(secret).into_iter().map(Arc::new).collect();
        // The secret is itself one of its forms (never dropped: `register` refuses shorter ones),
        // so the key shares that buffer instead of holding one more copy of the plaintext.
        let key = SecretKey(
            forms
                .iter()
                .find(|f| f.as_slice() == secret)
                .cloned()
                .unwrap_or_else(|| Arc::new(Zeroizing::new(secret.to_vec()))),
        );
        for form in &forms {
            ix.insert_form(form);
        }
        ix.secrets.insert(key.clone(), Entry { refs: 1, forms });
        self.live.store(ix.secrets.len(), Ordering::Relaxed);
        key
    }

    pub(crate) fn release(&self, key: &SecretKey) {
        let mut ix = self.write();
        let gone = match ix.secrets.get_mut(key) {
            Some(e) => {
                e.refs = e.refs.saturating_sub(1);
                e.refs == 0
            }
            None => false,
        };
        if gone {
            if let Some(entry) = ix.secrets.remove(key) {
                for form in &entry.forms {
                    ix.remove_form(form);
                }
            }
            ix.maybe_rebuild();
        }
        self.live.store(ix.secrets.len(), Ordering::Relaxed);
    }

    /// Appends a span for every occurrence of every registered form.
    pub(crate) fn scan(&self, text: &[u8], out: &mut Vec<Span>) {
        if self.len() == 0 || text.len() < MIN_SECRET_LEN {
            return;
        }
        let ix = self.read();
        if !ix.long.is_empty() {
            let mut pos = 0;
            while let Some(fp) = long_fp(text, pos) {
                if ix.long_filter.test(fp) {
                    for slot in ix.long.get(&fp).map(Vec::as_slice).unwrap_or_default() {
                        if let Some(start) = pos.checked_sub(slot.offset) {
                            push_if_at(text, start, &slot.form, out);
                        }
                    }
                }
                pos += STRIDE;
            }
        }
        if !ix.short.is_empty() {
            let mut pos = 0;
            while let Some(fp) = short_fp(text, pos) {
                if ix.short_filter.test(fp) {
                    for form in ix.short.get(&fp).map(Vec::as_slice).unwrap_or_default() {
                        push_if_at(text, pos, form, out);
                    }
                }
                pos += 1;
            }
        }
    }
}

fn push_if_at(text: &[u8], start: usize, form: &[u8], out: &mut Vec<Span>) {
    if text.get(start..).is_some_and(|t| t.starts_with(form)) {
        out.push(Span {
            start,
            end: start + form.len(),
            kind: Kind::Exact,
        });
    }
}

impl Index {
    fn insert_form(&mut self, form: &Form) {
        if form.len() >= LONG_MIN {
            for offset in 0..STRIDE {
                if let Some(fp) = long_fp(form, offset) {
                    self.long.entry(fp).or_default().push(Slot {
                        form: Arc::clone(form),
                        offset,
                    });
                    self.long_filter.set(fp);
                }
            }
        } else if let Some(fp) = short_fp(form, 0) {
            self.short.entry(fp).or_default().push(Arc::clone(form));
            self.short_filter.set(fp);
        }
    }

    fn remove_form(&mut self, form: &Form) {
        if form.len() >= LONG_MIN {
            for offset in 0..STRIDE {
                let Some(fp) = long_fp(form, offset) else {
                    continue;
                };
                if let Some(slots) = self.long.get_mut(&fp) {
                    slots.retain(|s| !(Arc::ptr_eq(&s.form, form) && s.offset == offset));
                    if slots.is_empty() {
                        self.long.remove(&fp);
                    }
                }
                self.long_stale += 1;
            }
        } else if let Some(fp) = short_fp(form, 0) {
            if let Some(forms) = self.short.get_mut(&fp) {
                forms.retain(|f| !Arc::ptr_eq(f, form));
                if forms.is_empty() {
                    self.short.remove(&fp);
                }
            }
            self.short_stale += 1;
        }
    }

    fn maybe_rebuild(&mut self) {
        if self.long_stale > self.long.len() + 1024 {
            self.long_filter.rebuild(self.long.keys());
            self.long_stale = 0;
        }
        if self.short_stale > self.short.len() + 1024 {
            self.short_filter.rebuild(self.short.keys());
            self.short_stale = 0;
        }
    }
}

/// Appends spans for one-off values (`redact_with`): few values, so a plain substring search.
pub(crate) fn scan_extra(text: &[u8], extra: &[&[u8]], out: &mut Vec<Span>) {
    for value in extra.iter().filter(|v| v.len() >= MIN_SECRET_LEN) {
        for form in encoded_forms(value) {
            for start in memchr::memmem::find_iter(text, form.as_slice()) {
                out.push(Span {
                    start,
                    end: start + form.len(),
                    kind: Kind::Exact,
                });
            }
        }
    }
}

fn percent_encode(v: &[u8], upper: bool) -> Zeroizing<Vec<u8>> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    const LOWER: &[u8; 16] = b"0123456789abcdef";
    let hex = if upper { UPPER } else { LOWER };
    // Sized for the worst case up front: growing would leave a copy behind in freed memory.
    let mut out = Zeroizing::new(Vec::with_capacity(v.len().saturating_mul(3)));
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.push(b'%');
            out.push(hex.get(usize::from(b >> 4)).copied().unwrap_or(b'0'));
            out.push(hex.get(usize::from(b & 15)).copied().unwrap_or(b'0'));
        }
    }
    out
}

fn json_escape(v: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(v.len().saturating_mul(2)));
    for &b in v {
        if matches!(b, b'/' | b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// `secret` in `engine`'s base64, in a buffer that is wiped when dropped.
fn base64_of(engine: &base64::engine::GeneralPurpose, secret: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![
        0u8;
        base64::encoded_len(secret.len(), true).unwrap_or(0)
    ]);
    let written = engine.encode_slice(secret, out.as_mut_slice()).unwrap_or(0);
    out.truncate(written);
    out
}

/// The forms a secret is searched for: itself, percent-encoded (both hex cases), JSON-escaped,
/// base64 and base64url (padded and not), and the part of its base64 that is fixed whatever
/// precedes and follows it inside a longer base64 stream (as in `Basic base64(user:key)`), for
/// each of the three alignments. Forms shorter than [`MIN_SECRET_LEN`] are dropped. Every buffer
/// that holds a form, or a step towards one, is wiped when it drops.
pub(crate) fn encoded_forms(secret: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = vec![
        Zeroizing::new(secret.to_vec()),
        percent_encode(secret, true),
        percent_encode(secret, false),
        json_escape(secret),
        base64_of(&STANDARD, secret),
        base64_of(&STANDARD_NO_PAD, secret),
        base64_of(&URL_SAFE, secret),
        base64_of(&URL_SAFE_NO_PAD, secret),
    ];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for lead_bytes in 0..3usize {
            let mut buf = Zeroizing::new(Vec::with_capacity(lead_bytes + secret.len()));
            buf.resize(lead_bytes, 0);
            buf.extend_from_slice(secret);
            let enc = base64_of(engine, &buf);
            // Characters mixing in bits of the unknown neighbours are cut off: the leading group's
            // first 2 (one leading byte) or 3 (two) characters, the trailing partial group's last.
            let lead_chars = [0, 2, 3].get(lead_bytes).copied().unwrap_or(0);
            let total = buf.len();
            let stable_end = total / 3 * 4 + total % 3;
            if let Some(mid) = enc.get(lead_chars..stable_end.min(enc.len())) {
                out.push(Zeroizing::new(mid.to_vec()));
            }
        }
    }
    out.retain(|f| f.len() >= MIN_SECRET_LEN);
    out.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
    out.dedup_by(|a, b| a.as_slice() == b.as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_base64_middle_is_found_inside_a_longer_stream() {
        use base64::engine::general_purpose::STANDARD;
        let key = b"k3y-that-is-long-enough-1234";
        let forms = encoded_forms(key);
        for prefix in [&b"u:"[..], b"us:", b"use:"] {
            let mut whole = prefix.to_vec();
            whole.extend_from_slice(key);
            whole.extend_from_slice(b"!trailer");
            let enc = STANDARD.encode(&whole).into_bytes();
            assert!(
                forms
                    .iter()
                    .any(|f| f.len() >= 20 && memchr::memmem::find(&enc, f).is_some()),
                "prefix {prefix:?}"
            );
        }
    }

    #[test]
    fn registering_twice_needs_two_releases() {
        let r = Registry::new();
        let a = r.add(b"0123456789abcdefghijklmnop");
        let b = r.add(b"0123456789abcdefghijklmnop");
        r.release(&a);
        let mut spans = Vec::new();
        r.scan(b"x 0123456789abcdefghijklmnop y", &mut spans);
        assert_eq!(spans.len(), 1);
        r.release(&b);
        spans.clear();
        r.scan(b"x 0123456789abcdefghijklmnop y", &mut spans);
        assert!(spans.is_empty());
        assert_eq!(r.len(), 0);
    }
}
