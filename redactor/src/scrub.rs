//! Scrubbing one call's key out of everything its upstream sends back: headers, error and success
//! bodies, whole or streamed.
//!
//! A [`Scrubber`] is built per call from the plaintext key, and it answers a question the log
//! redactor does not: *could a client recover the key, or a long piece of it, from these bytes?*
//! So it matches what a client would decode, not only the bytes as sent:
//!
//! - **Decoding first.** The text is read through a canonical view: percent-escapes (`%73`),
//!   JSON/JavaScript escapes (`\u0073`, surrogate pairs, `\/`, `\x73`), HTML character references
//!   (`&#115;`, `&#x73;`, a few named ones) are decoded; fullwidth ASCII (`ｓ`, U+FF01..U+FF5E) is
//!   folded to ASCII as NFKC does; invisible format characters (U+200B, U+FEFF, soft hyphen,
//!   bidi controls, tag characters, variation selectors, ...) are skipped, raw or escaped. Mixed
//!   encodings in one value are seen through alike.
//! - **Pieces, not only wholes.** The forms searched are the key, its hex (both cases), base64
//!   and base64url, and the base64 runs that are fixed whatever surrounds the key in a longer
//!   base64 stream (as in `Basic base64(user:key)`), for each of the three alignments. Any run of
//!   [`MIN_RUN`] or more canonical bytes that occurs in one of those forms is cut, so a key split
//!   into a few long pieces, or echoed in part, is cut piece by piece; a form shorter than that is
//!   cut wherever it occurs whole.
//! - **Same length.** A cut is replaced by a mask of exactly the bytes it covers
//!   (`[REDACTED***]`): a body keeps its declared length and its framing, and the mask holds no
//!   quote or backslash, so JSON stays JSON.
//! - **Streams.** [`ScrubStream`] carries over, from one chunk to the next, only the tail that
//!   could still become part of a match: an unfinished escape, or a suffix that occurs in one of
//!   the forms. A chunk that ends in framing (`\n`, `}`, `]`) is passed on whole at once, so an
//!   SSE event is never held back waiting for the next one.
//!
//! How matching stays linear: every form is indexed by a fingerprint of each [`MIN_RUN`]-byte
//! window starting at a multiple of [`STRIDE`] in it; the scan fingerprints the window at every
//! canonical position and tests a small bitset before a hash probe; a hit is verified byte for
//! byte and extended both ways. Any run of `MIN_RUN + STRIDE - 1` bytes covers an indexed
//! window, so runs that long are always found; shorter ones (down to `MIN_RUN`) when aligned.
//!
//! Every buffer holding a form, or the canonical text of what it scanned, is wiped on drop.

use base64::Engine as _;
use std::borrow::Cow;
use zeroize::Zeroizing;

/// The shortest run of a key's form that is cut.
pub const MIN_RUN: usize = 12;
/// Forms are indexed at every `STRIDE`-th offset; runs of `MIN_RUN + STRIDE - 1` are always found.
pub const STRIDE: usize = 4;
const FILTER_BITS_LOG2: u32 = 13;
/// Longest incomplete escape held over a chunk boundary (`&#x10FFFF;` is 10 bytes).
const MAX_TOKEN: usize = 12;

/// One call's key, ready to be found in anything the upstream sends.
pub struct Scrubber {
    forms: Vec<Zeroizing<Vec<u8>>>,
    /// Every form, separated by NUL bytes (never in a form): the suffix test searches it.
    joined: Zeroizing<Vec<u8>>,
    /// Bytes that occur in some form.
    alphabet: [bool; 256],
    /// Open-addressed table of (fingerprint, form, offset); fingerprint 0 marks an empty slot.
    table: Vec<(u64, u16, u16)>,
    table_bits: u32,
    filter: Vec<u64>,
    /// Forms shorter than [`MIN_RUN`], searched whole with `memmem`.
    short: Vec<usize>,
    longest_form: usize,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("forms", &self.forms.len())
            .finish_non_exhaustive()
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let h = (a ^ 0x243F_6A88_85A3_08D3).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (b ^ 0x1319_8A2E_0370_7344)
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            .rotate_left(31);
    let h = h ^ (h >> 29);
    h.max(1)
}

/// The fingerprint of the [`MIN_RUN`]-byte window at `at`.
fn fp(t: &[u8], at: usize) -> Option<u64> {
    let w = t.get(at..at.checked_add(MIN_RUN)?)?;
    let a = u64::from_le_bytes(w.get(..8)?.try_into().ok()?);
    let b = u32::from_le_bytes(w.get(8..12)?.try_into().ok()?);
    Some(mix(a, u64::from(b)))
}

fn hex_of(key: &[u8], upper: bool) -> Zeroizing<Vec<u8>> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Zeroizing::new(Vec::with_capacity(key.len() * 2));
    for &b in key {
        out.push(digits[usize::from(b >> 4)]);
        out.push(digits[usize::from(b & 15)]);
    }
    out
}

fn base64_of(engine: &base64::engine::GeneralPurpose, bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![
        0u8;
        base64::encoded_len(bytes.len(), true).unwrap_or(0)
    ]);
    let written = engine.encode_slice(bytes, out.as_mut_slice()).unwrap_or(0);
    out.truncate(written);
    out
}

/// The key, its hex, and its base64 in both alphabets at each of the three alignments (only the
/// characters that do not depend on the neighbouring bytes).
fn forms_of(key: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut out = vec![
        Zeroizing::new(key.to_vec()),
        hex_of(key, false),
        hex_of(key, true),
    ];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for lead in 0..3usize {
            let mut buf = Zeroizing::new(Vec::with_capacity(lead + key.len()));
            buf.resize(lead, 0);
            buf.extend_from_slice(key);
            let enc = base64_of(engine, &buf);
            let lead_chars = [0usize, 2, 3][lead];
            let total = buf.len();
            let stable_end = (total / 3 * 4 + total % 3).min(enc.len());
            if let Some(mid) = enc.get(lead_chars..stable_end) {
                out.push(Zeroizing::new(mid.to_vec()));
            }
        }
    }
    out.retain(|f| !f.is_empty());
    out.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
    out.dedup_by(|a, b| a.as_slice() == b.as_slice());
    out
}

impl Scrubber {
    /// A scrubber for `key`. A key shorter than [`crate::MIN_SECRET_LEN`] gets one that finds
    /// nothing (no real key is that short, and cutting short strings would destroy text).
    pub fn new(key: &[u8]) -> Scrubber {
        let forms = if key.len() >= crate::MIN_SECRET_LEN {
            forms_of(key)
        } else {
            Vec::new()
        };
        let mut joined = Zeroizing::new(Vec::with_capacity(
            forms.iter().map(|f| f.len() + 1).sum::<usize>(),
        ));
        let mut alphabet = [false; 256];
        let mut short = Vec::new();
        let mut entries = 0usize;
        for (i, f) in forms.iter().enumerate() {
            joined.extend_from_slice(f);
            joined.push(0);
            for &b in f.iter() {
                alphabet[usize::from(b)] = true;
            }
            if f.len() < MIN_RUN {
                short.push(i);
            } else {
                entries += (f.len() - MIN_RUN) / STRIDE + 1;
            }
        }
        let table_bits = (entries.max(16) * 2).next_power_of_two().trailing_zeros();
        let mut table = vec![(0u64, 0u16, 0u16); 1usize << table_bits];
        let mut filter = vec![0u64; (1usize << FILTER_BITS_LOG2) / 64];
        let mask = (1usize << table_bits) - 1;
        for (i, f) in forms.iter().enumerate() {
            if f.len() < MIN_RUN {
                continue;
            }
            let mut off = 0;
            while let Some(h) = fp(f, off) {
                let bit = (h >> (64 - FILTER_BITS_LOG2)) as usize;
                if let Some(w) = filter.get_mut(bit / 64) {
                    *w |= 1u64 << (bit % 64);
                }
                let mut slot = (h >> (64 - table_bits)) as usize & mask;
                while table.get(slot).is_some_and(|e| e.0 != 0) {
                    slot = (slot + 1) & mask;
                }
                if let Some(e) = table.get_mut(slot) {
                    *e = (
                        h,
                        u16::try_from(i).unwrap_or(u16::MAX),
                        u16::try_from(off).unwrap_or(u16::MAX),
                    );
                }
                off += STRIDE;
            }
        }
        let longest_form = forms.iter().map(|f| f.len()).max().unwrap_or(0);
        Scrubber {
            forms,
            joined,
            alphabet,
            table,
            table_bits,
            filter,
            short,
            longest_form,
        }
    }

    /// Whether any form of the key, or a run of one, can be read out of `text`.
    pub fn finds(&self, text: &[u8]) -> bool {
        !self.spans_of(text).is_empty()
    }

    /// `text` with every run of the key's forms masked (same length). Borrowed when nothing was
    /// found.
    pub fn scrub<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let spans = self.spans_of(text);
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_vec();
        mask(&mut out, &spans);
        Cow::Owned(out)
    }

    /// Original-byte spans of every run in a whole `text`. Text with nothing to decode or skip
    /// (most header values, most bodies) is scanned as it is, without a canonical copy.
    fn spans_of(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        if self.forms.is_empty() || text.len() < crate::MIN_SECRET_LEN {
            return spans;
        }
        if plain(text) {
            self.runs_in(text, |a, e| (a, e), &mut spans);
        } else {
            let mut canon = Canonical::default();
            canon.read(text, true);
            self.runs(&canon, &mut spans);
        }
        spans
    }

    /// [`Scrubber::scrub`] for text.
    pub fn scrub_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // The masks are ASCII and cover whole tokens, so the result is UTF-8 when the input
            // was; lossy only as a guard.
            Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
        }
    }

    /// Original-byte spans of every run found in `canon`, sorted and merged.
    fn runs(&self, canon: &Canonical, out: &mut Vec<(usize, usize)>) {
        self.runs_in(&canon.bytes, |a, e| canon.original(a, e), out);
    }

    /// [`Scrubber::runs`] over canonical bytes `c`, with `original` mapping a canonical span back
    /// to the text's.
    fn runs_in(
        &self,
        c: &[u8],
        original: impl Fn(usize, usize) -> (usize, usize),
        out: &mut Vec<(usize, usize)>,
    ) {
        let mut found: Vec<(usize, usize)> = Vec::new();
        if self.short.len() < self.forms.len() && c.len() >= MIN_RUN {
            let mask_bits = (1usize << self.table_bits) - 1;
            let mut covered = 0usize;
            let mut p = 0usize;
            while let Some(h) = fp(c, p) {
                let bit = (h >> (64 - FILTER_BITS_LOG2)) as usize;
                let hit = self
                    .filter
                    .get(bit / 64)
                    .is_some_and(|w| w & (1u64 << (bit % 64)) != 0);
                if hit && p + MIN_RUN > covered {
                    let mut slot = (h >> (64 - self.table_bits)) as usize & mask_bits;
                    while let Some(&(eh, form, off)) = self.table.get(slot) {
                        if eh == 0 {
                            break;
                        }
                        if eh == h {
                            if let Some(run) =
                                self.extend(c, p, usize::from(form), usize::from(off))
                            {
                                covered = covered.max(run.1);
                                found.push(run);
                            }
                        }
                        slot = (slot + 1) & mask_bits;
                    }
                }
                p += 1;
            }
        }
        for &i in &self.short {
            if let Some(f) = self.forms.get(i) {
                for s in memchr::memmem::find_iter(c, f.as_slice()) {
                    found.push((s, s + f.len()));
                }
            }
        }
        if found.is_empty() {
            return;
        }
        found.sort_unstable();
        for (a, e) in found {
            let (start, end) = original(a, e);
            match out.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => out.push((start, end)),
            }
        }
    }

    /// The canonical run `[a, e)` around position `p` that equals a stretch of form `form`
    /// around offset `off`, if the window really matches.
    fn extend(&self, c: &[u8], p: usize, form: usize, off: usize) -> Option<(usize, usize)> {
        let f = self.forms.get(form)?;
        if c.get(p..p + MIN_RUN)? != f.get(off..off + MIN_RUN)? {
            return None;
        }
        let back = c[..p]
            .iter()
            .rev()
            .zip(f[..off].iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        let fwd = c[p + MIN_RUN..]
            .iter()
            .zip(f[off + MIN_RUN..].iter())
            .take_while(|(x, y)| x == y)
            .count();
        Some((p - back, p + MIN_RUN + fwd))
    }

    /// Length of the longest suffix of `c` that occurs inside some form (it could still grow into
    /// a run with the next chunk).
    fn open_suffix(&self, c: &[u8]) -> usize {
        let mut k = 0;
        let limit = c.len().min(self.longest_form);
        while k < limit {
            let Some(&b) = c.get(c.len() - k - 1) else {
                break;
            };
            if !self.alphabet[usize::from(b)] {
                break;
            }
            if memchr::memmem::find(&self.joined, &c[c.len() - k - 1..]).is_none() {
                break;
            }
            k += 1;
        }
        k
    }
}

/// Replaces each span with a mask of the same length: `[REDACTED]`, padded with `*` inside the
/// brackets, or as many of its first bytes as fit.
fn mask(out: &mut [u8], spans: &[(usize, usize)]) {
    for &(s, e) in spans {
        let Some(dst) = out.get_mut(s..e) else {
            continue;
        };
        let n = dst.len();
        for (i, d) in dst.iter_mut().enumerate() {
            *d = if n >= 10 {
                match i {
                    0..=8 => b"[REDACTED"[i],
                    _ if i == n - 1 => b']',
                    _ => b'*',
                }
            } else {
                b'*'
            };
        }
    }
}

/// Text with nothing to decode or skip: ASCII without `%`, `\` or `&`. Its canonical view is
/// itself.
fn plain(text: &[u8]) -> bool {
    text.is_ascii() && memchr::memchr3(b'%', b'\\', b'&', text).is_none()
}

/// The canonical (decoded) view of a text, with where each canonical byte came from.
#[derive(Default)]
struct Canonical {
    bytes: Zeroizing<Vec<u8>>,
    /// For each canonical byte, the original span of the token it was decoded from.
    from: Vec<(u32, u32)>,
    /// Identity map: `from` is empty and canonical offsets are original offsets.
    identity: bool,
    /// Original bytes read; an unfinished token after this is left for the next chunk.
    consumed: usize,
}

fn hexval(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u32::from(b - b'A' + 10)),
        _ => None,
    }
}

fn hex_n(t: &[u8], n: usize) -> Option<u32> {
    let digits = t.get(..n)?;
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some(acc * 16 + hexval(d)?))
}

/// Characters a reader does not see: Unicode format characters (Cf), variation selectors, the
/// combining grapheme joiner, and the like. Skipped when matching.
fn invisible(c: u32) -> bool {
    matches!(c,
        0xAD | 0x34F | 0x61C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// What one token of the original text decodes to.
enum Token {
    /// A code point, from an escape or a multi-byte UTF-8 sequence.
    Char(u32),
    /// A byte passed through (ASCII, or part of something that is not UTF-8).
    Byte(u8),
}

/// Reads the token at the start of `t`: `(token, length)`, or `None` when `t` holds only the
/// beginning of one and more input may follow.
fn token(t: &[u8], last: bool) -> Option<(Token, usize)> {
    let b = *t.first()?;
    let incomplete = |needed: usize| -> Option<(Token, usize)> {
        if t.len() < needed && !last {
            None
        } else {
            Some((Token::Byte(b), 1))
        }
    };
    match b {
        b'%' => match hex_n(&t[1..], 2) {
            Some(v) => Some((Token::Byte(v as u8), 3)),
            None => incomplete(3),
        },
        b'\\' => {
            let Some(&k) = t.get(1) else {
                return incomplete(2);
            };
            match k {
                b'u' => match hex_n(&t[2..], 4) {
                    Some(hi @ 0xD800..=0xDBFF) => {
                        // A high surrogate takes the low one after it, if there is one.
                        match (t.get(6..8), hex_n(t.get(8..).unwrap_or_default(), 4)) {
                            (Some(&[b'\\', b'u']), Some(lo @ 0xDC00..=0xDFFF)) => Some((
                                Token::Char(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)),
                                12,
                            )),
                            _ if t.len() < 12 && !last => None,
                            _ => Some((Token::Char(0xFFFD), 6)),
                        }
                    }
                    Some(v) => Some((Token::Char(v), 6)),
                    None => incomplete(6),
                },
                b'x' => match hex_n(&t[2..], 2) {
                    Some(v) => Some((Token::Byte(v as u8), 4)),
                    None => incomplete(4),
                },
                b'/' | b'\\' | b'"' | b'\'' => Some((Token::Byte(k), 2)),
                b'n' => Some((Token::Byte(b'\n'), 2)),
                b'r' => Some((Token::Byte(b'\r'), 2)),
                b't' => Some((Token::Byte(b'\t'), 2)),
                _ => Some((Token::Byte(b), 1)),
            }
        }
        b'&' => entity(t, last),
        0x80..=0xFF => {
            let len = match b {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return Some((Token::Byte(b), 1)),
            };
            let Some(seq) = t.get(..len) else {
                return incomplete(len);
            };
            match std::str::from_utf8(seq).ok().and_then(|s| s.chars().next()) {
                Some(c) => Some((Token::Char(u32::from(c)), len)),
                None => Some((Token::Byte(b), 1)),
            }
        }
        _ => Some((Token::Byte(b), 1)),
    }
}

/// An HTML character reference at the start of `t` (`&#115;`, `&#x73;`, `&amp;`, ...).
fn entity(t: &[u8], last: bool) -> Option<(Token, usize)> {
    let end = t.iter().take(MAX_TOKEN).position(|&c| c == b';');
    let Some(end) = end else {
        // Not finished yet if everything so far could still be a reference.
        let plausible = t.len() < MAX_TOKEN
            && t.iter()
                .skip(1)
                .all(|c| c.is_ascii_alphanumeric() || *c == b'#');
        return if plausible && !last {
            None
        } else {
            Some((Token::Byte(b'&'), 1))
        };
    };
    let body = &t[1..end];
    let value = if let Some(num) = body.strip_prefix(b"#") {
        if let Some(h) = num.strip_prefix(b"x").or_else(|| num.strip_prefix(b"X")) {
            (!h.is_empty() && h.len() <= 6)
                .then(|| hex_n(h, h.len()))
                .flatten()
        } else {
            (!num.is_empty() && num.len() <= 7 && num.iter().all(u8::is_ascii_digit)).then(|| {
                num.iter()
                    .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
            })
        }
    } else {
        let named: &[(&[u8], u32)] = &[
            (b"amp", 0x26),
            (b"lt", 0x3C),
            (b"gt", 0x3E),
            (b"quot", 0x22),
            (b"apos", 0x27),
            (b"sol", 0x2F),
            (b"hyphen", 0x2D),
            (b"dash", 0x2D),
            (b"lowbar", 0x5F),
            (b"equals", 0x3D),
            (b"plus", 0x2B),
            (b"period", 0x2E),
            (b"colon", 0x3A),
            (b"shy", 0xAD),
            (b"ZeroWidthSpace", 0x200B),
            (b"NoBreak", 0x2060),
        ];
        named.iter().find(|(n, _)| *n == body).map(|(_, v)| *v)
    };
    match value {
        Some(v) => Some((Token::Char(v), end + 1)),
        None => Some((Token::Byte(b'&'), 1)),
    }
}

impl Canonical {
    /// Decodes `text` into the canonical view. With `last`, an unfinished escape at the end is
    /// taken as the bytes it is; otherwise reading stops before it (`consumed`).
    fn read(&mut self, text: &[u8], last: bool) {
        self.bytes.clear();
        self.from.clear();
        // Fast path: nothing to decode, nothing to skip.
        if plain(text) {
            self.bytes.extend_from_slice(text);
            self.identity = true;
            self.consumed = text.len();
            return;
        }
        self.identity = false;
        let mut i = 0usize;
        while i < text.len() {
            let Some((tok, len)) = token(&text[i..], last) else {
                break;
            };
            let span = (i as u32, (i + len) as u32);
            match tok {
                Token::Byte(b) => {
                    self.bytes.push(b);
                    self.from.push(span);
                }
                Token::Char(c) if invisible(c) => {}
                Token::Char(c) => {
                    // Fullwidth ASCII folds to ASCII, as NFKC does.
                    let c = if (0xFF01..=0xFF5E).contains(&c) {
                        c - 0xFF01 + 0x21
                    } else {
                        c
                    };
                    let ch = char::from_u32(c).unwrap_or('\u{FFFD}');
                    let mut buf = [0u8; 4];
                    for &b in ch.encode_utf8(&mut buf).as_bytes() {
                        self.bytes.push(b);
                        self.from.push(span);
                    }
                }
            }
            i += len;
        }
        self.consumed = i;
    }

    /// The original span of canonical bytes `[a, e)`.
    fn original(&self, a: usize, e: usize) -> (usize, usize) {
        if self.identity {
            return (a, e);
        }
        let start = self.from.get(a).map_or(0, |s| s.0 as usize);
        let end = e
            .checked_sub(1)
            .and_then(|l| self.from.get(l))
            .map_or(start, |s| s.1 as usize);
        (start, end)
    }

    /// The original offset where canonical byte `a` starts (or `consumed` past the end).
    fn original_start(&self, a: usize) -> usize {
        if self.identity {
            return a;
        }
        self.from.get(a).map_or(self.consumed, |s| s.0 as usize)
    }
}

/// A body passing through in chunks: each call to [`ScrubStream::feed`] returns what can go to
/// the client now, masked; [`ScrubStream::finish`] returns the rest.
pub struct ScrubStream {
    scrubber: std::sync::Arc<Scrubber>,
    held: Zeroizing<Vec<u8>>,
    canon: Canonical,
    spans: Vec<(usize, usize)>,
    /// Whether anything was masked so far.
    masked: bool,
}

impl ScrubStream {
    pub fn new(scrubber: std::sync::Arc<Scrubber>) -> ScrubStream {
        ScrubStream {
            scrubber,
            held: Zeroizing::new(Vec::new()),
            canon: Canonical::default(),
            spans: Vec::new(),
            masked: false,
        }
    }

    /// Whether any chunk so far had something masked.
    pub fn masked(&self) -> bool {
        self.masked
    }

    /// Bytes held back from the client until the next chunk or the end.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes the next chunk; returns what may be sent now (possibly empty).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.scrubber.forms.is_empty() {
            return chunk.to_vec();
        }
        self.held.extend_from_slice(chunk);
        self.step(false)
    }

    /// The end of the body: everything still held, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.held.is_empty() {
            return Vec::new();
        }
        self.step(true)
    }

    fn step(&mut self, last: bool) -> Vec<u8> {
        let text = std::mem::take(&mut self.held);
        self.canon.read(&text, last);
        self.spans.clear();
        self.scrubber.runs(&self.canon, &mut self.spans);
        let mut cut = text.len();
        if !last {
            let open = self.scrubber.open_suffix(&self.canon.bytes);
            cut = self
                .canon
                .original_start(self.canon.bytes.len() - open)
                .min(self.canon.consumed);
            // A run that reaches past the cut is held whole, so it is masked in one piece.
            for &(s, e) in &self.spans {
                if s < cut && e > cut {
                    cut = s;
                }
            }
        }
        let mut out = text.get(..cut).unwrap_or_default().to_vec();
        self.spans.retain(|&(_, e)| e <= cut);
        if !self.spans.is_empty() {
            self.masked = true;
            mask(&mut out, &self.spans);
        }
        self.held
            .extend_from_slice(text.get(cut..).unwrap_or_default());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    const KEY: &str = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";

    fn scrubbed(text: &str) -> String {
        String::from_utf8(
            Scrubber::new(KEY.as_bytes())
                .scrub(text.as_bytes())
                .into_owned(),
        )
        .unwrap()
    }

    fn assert_cut(text: &str) {
        let out = scrubbed(text);
        assert!(out.contains("[REDACTED"), "not cut: {text:?} -> {out:?}");
        assert_eq!(out.len(), text.len(), "length changed: {out:?}");
        assert!(
            !Scrubber::new(KEY.as_bytes()).finds(out.as_bytes()),
            "{out:?}"
        );
    }

    #[test]
    fn every_encoding_a_client_decodes_is_cut() {
        let k = KEY;
        let pct: String = k.bytes().map(|b| format!("%{b:02X}")).collect();
        let pct_one = k.replacen('A', "%41", 1);
        let json_u: String = k.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
        let html: String = k.chars().map(|c| format!("&#{};", c as u32)).collect();
        let html_x: String = k.chars().map(|c| format!("&#x{:x};", c as u32)).collect();
        let zw: String = k.chars().flat_map(|c| [c, '\u{200B}']).collect();
        let zw_escaped = k.replacen('-', "-\\u200b", 2);
        let fullwidth: String = k
            .chars()
            .map(|c| char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap())
            .collect();
        let basic = STANDARD.encode(format!("user:{k}"));
        for text in [
            format!("{{\"key\":\"{k}\"}}"),
            format!("x={pct}&y=1"),
            pct_one,
            json_u,
            html,
            html_x,
            zw,
            zw_escaped,
            fullwidth,
            String::from_utf8(hex_of(k.as_bytes(), false).to_vec()).unwrap(),
            String::from_utf8(hex_of(k.as_bytes(), true).to_vec()).unwrap(),
            STANDARD.encode(k),
            URL_SAFE_NO_PAD.encode(k),
            format!("Authorization: Basic {basic}"),
            k.replace('/', "\\/"),
        ] {
            assert_cut(&text);
        }
    }

    #[test]
    fn long_pieces_of_the_key_are_cut_and_short_ones_are_not() {
        let first = &KEY[..20];
        let second = &KEY[20..];
        let out = scrubbed(&format!("a={first} b={second}"));
        assert!(!out.contains(first) && !out.contains(second), "{out}");
        // Eleven characters are not a leak worth destroying text for.
        let out = scrubbed(&format!(
            "last four {} and {}",
            &KEY[KEY.len() - 4..],
            &KEY[5..16]
        ));
        assert!(!out.contains("REDACTED"), "{out}");
    }

    #[test]
    fn text_without_the_key_is_borrowed_unchanged() {
        let s = Scrubber::new(KEY.as_bytes());
        let text =
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hello \\u00e9 &amp; 50%\"}}]}\n\n";
        assert!(matches!(s.scrub(text.as_bytes()), Cow::Borrowed(_)));
        assert!(!s.finds(b""));
    }

    #[test]
    fn a_key_split_across_chunks_is_cut_at_every_split_point() {
        let scrubber = std::sync::Arc::new(Scrubber::new(KEY.as_bytes()));
        let texts = [
            format!("data: {{\"echo\":\"{KEY}\"}}\n\n"),
            format!("data: {{\"echo\":\"{}\"}}\n\n", KEY.replace('-', "\\u002d")),
            format!("pre {} post", STANDARD.encode(KEY)),
        ];
        for text in &texts {
            let bytes = text.as_bytes();
            for cut in 0..=bytes.len() {
                for cut2 in [cut, (cut + 7).min(bytes.len())] {
                    let mut s = ScrubStream::new(scrubber.clone());
                    let mut out = s.feed(&bytes[..cut]);
                    out.extend(s.feed(&bytes[cut..cut2]));
                    out.extend(s.feed(&bytes[cut2..]));
                    out.extend(s.finish());
                    assert_eq!(out.len(), bytes.len());
                    assert!(
                        !scrubber.finds(&out),
                        "{cut}/{cut2}: {}",
                        String::from_utf8_lossy(&out)
                    );
                    assert!(s.masked());
                }
            }
        }
    }

    #[test]
    fn a_chunk_that_ends_in_framing_is_passed_on_whole() {
        let scrubber = std::sync::Arc::new(Scrubber::new(KEY.as_bytes()));
        let mut s = ScrubStream::new(scrubber);
        let event = b"data: {\"choices\":[{\"delta\":{\"content\":\"abc\"}}]}\n\n";
        assert_eq!(s.feed(event), event.to_vec());
        assert_eq!(s.held(), 0);
        // A chunk ending mid-word may keep its last letters until the next one.
        let out = s.feed(b"data: {\"content\":\"sk-pr");
        assert!(out.len() < 24);
        let rest = s.feed(b"oj is fine\"}\n\n");
        assert_eq!(
            [out, rest].concat(),
            b"data: {\"content\":\"sk-proj is fine\"}\n\n".to_vec()
        );
    }

    #[test]
    fn short_keys_and_hostile_input_never_panic() {
        let s = Scrubber::new(b"short123");
        assert!(s.finds(b"x short123 y"));
        let none = Scrubber::new(b"tiny");
        assert!(!none.finds(b"tiny tiny"));
        for junk in [
            &b"%"[..],
            b"\\u",
            b"\\ud83d",
            b"\\ud83d\\u",
            b"&#",
            b"&#x110000;",
            b"&#99999999;",
            b"\xf0\x9f",
            b"\xff\xfe%zz\\q&;",
        ] {
            let _ = s.scrub(junk);
            let mut st = ScrubStream::new(std::sync::Arc::new(Scrubber::new(KEY.as_bytes())));
            let mut out = st.feed(junk);
            out.extend(st.finish());
            assert_eq!(out, junk.to_vec());
        }
    }
}
