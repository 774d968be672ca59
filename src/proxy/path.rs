//! The part of a proxied URL that is forwarded: checked so it can only ever name a path under the
//! provider's base URL, and normalised so that what keybroker meters is what the provider serves.
//! Parse, don't validate: an [`UpstreamPath`] is safe to append to a base.
//!
//! Normalisation (done once, here; the normalised form is what is forwarded):
//! - a percent-escape of an unreserved character (RFC 3986 ALPHA / DIGIT / `-._~`) is decoded,
//!   because every server decodes it: `/v1/chat/complet%69ons` *is* `/v1/chat/completions`;
//! - `;params` are cut from every segment (servers that honour them route `/v1/messages;x=1` as
//!   `/v1/messages`);
//! - every other escape is kept, its hex upper-cased.
//!
//! Refused (each would let the provider see a different path than the one metered): dot segments
//! in any spelling (`..`, `%2e%2e`, `..;x`), double-encoded escapes (`%252e`, `%252f`: one more
//! decoding turns them into path syntax), encoded slashes and backslashes, and escapes that do
//! not decode to valid UTF-8 (overlong forms such as `%c0%ae` are other spellings of `.`).
//!
//! [`UpstreamPath::folded`] is the path as the provider routes it, every escape decoded, in ASCII
//! lower case, for classifying a call: providers decode `%3A` to the `:` Google routes on, route
//! some paths case-insensitively, and no such variant may look unpriced.

/// A checked, normalised path (always starting with `/`) plus the raw query, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPath {
    path: String,
    folded: String,
    query: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains a dot segment")]
    DotSegment,
    #[error("the path is not a relative path under the provider")]
    NotRelative,
    #[error("the path contains a forbidden character")]
    ForbiddenCharacter,
    #[error("the path contains a malformed percent-escape")]
    BadEscape,
    #[error("the path contains a double-encoded percent-escape")]
    DoubleEncoded,
    #[error("the path's percent-escapes are not valid UTF-8")]
    InvalidUtf8,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The byte spelled by the two hex digits at `bytes[at..at + 2]`, if they are hex digits.
fn hex_pair(bytes: &[u8], at: usize) -> Option<u8> {
    let hi = bytes.get(at).copied().and_then(hex)?;
    let lo = bytes.get(at + 1).copied().and_then(hex)?;
    Some(hi << 4 | lo)
}

/// The escape at `bytes[i..]` (which starts with `%`), decoded.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    hex_pair(bytes, i + 1).ok_or(PathError::BadEscape)
}

/// Normalises one raw segment onto `out`, and its fully decoded, case-folded form onto `folded`,
/// refusing what would change the path's shape once the provider decodes it.
fn normalise_segment(raw: &str, out: &mut String, folded: &mut String) -> Result<(), PathError> {
    // `;params` go first: servers split them off before decoding, and they are not forwarded.
    let raw = raw.split(';').next().unwrap_or_default();
    if raw.is_empty() {
        // `a//b` (or `a/;x/b`) is harmless to most servers but has no use here; refuse rather
        // than guess.
        return Err(PathError::NotRelative);
    }
    let bytes = raw.as_bytes();
    let start = out.len();
    // The segment fully decoded, as the provider will see it: checked for shape and UTF-8.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            decoded.push(b);
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let c = escape_at(bytes, i)?;
        decoded.push(c);
        if unreserved(c) {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(c >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(c & 0xf)]));
        }
        i += 3;
    }
    // `%25` followed by two hex digits in what is forwarded is an escape again after the
    // provider's decoding (`%252e`, or `%25%32%65` once `%32%65` is decoded to `2e`).
    let forwarded = out.as_bytes().get(start..).unwrap_or_default();
    if forwarded
        .windows(5)
        .any(|w| w.starts_with(b"%25") && hex_pair(w, 3).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    // A decoded `;` is not a parameter to us, but may be to a server that decodes first.
    let stem = decoded.split(|&c| c == b';').next().unwrap_or_default();
    if stem == b"." || stem == b".." {
        return Err(PathError::DotSegment);
    }
    // Decoded slashes, backslashes, control bytes and `@` would let a segment smuggle in a new
    // path, host or header line.
    if decoded
        .iter()
        .any(|&c| c == b'/' || c == b'\\' || c == b'@' || c < 0x20 || c == 0x7f)
    {
        return Err(PathError::ForbiddenCharacter);
    }
    // Overlong and surrogate forms are refused by the UTF-8 check: `%c0%ae` is a `.` to a lax
    // decoder.
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return Err(PathError::InvalidUtf8);
    };
    folded.push_str(&text.to_ascii_lowercase());
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

impl UpstreamPath {
    /// `tail` is the raw (still percent-encoded) path after `/proxy/{provider}`, `query` the raw
    /// query string.
    pub fn parse(tail: &str, query: Option<&str>) -> Result<Self, PathError> {
        if tail.is_empty() || tail == "/" {
            return Ok(Self {
                path: "/".into(),
                folded: "/".into(),
                query: clean_query(query)?,
            });
        }
        if !tail.starts_with('/') || tail.starts_with("//") || tail.contains("://") {
            return Err(PathError::NotRelative);
        }
        if tail
            .bytes()
            .any(|c| c == b'\\' || c == b'@' || c == b'#' || c < 0x21 || c == 0x7f)
        {
            return Err(PathError::ForbiddenCharacter);
        }
        let mut path = String::with_capacity(tail.len());
        let mut folded = String::with_capacity(tail.len());
        for segment in tail.split('/').skip(1) {
            path.push('/');
            folded.push('/');
            normalise_segment(segment, &mut path, &mut folded)?;
        }
        Ok(Self {
            folded,
            path,
            query: clean_query(query)?,
        })
    }

    /// The normalised path, as forwarded.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path fully decoded, in ASCII lower case: what a call is classified and priced by.
    pub fn folded(&self) -> &str {
        &self.folded
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// `base` (no trailing slash) + path + `?query`.
    pub fn join(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        match &self.query {
            Some(q) => format!("{base}{}?{q}", self.path),
            None => format!("{base}{}", self.path),
        }
    }
}

fn clean_query(query: Option<&str>) -> Result<Option<String>, PathError> {
    match query {
        None | Some("") => Ok(None),
        Some(q) if q.bytes().any(|c| c < 0x21 || c == 0x7f || c == b'#') => {
            Err(PathError::ForbiddenCharacter)
        }
        Some(q) => Ok(Some(q.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_sdk_paths_pass_through_unchanged() {
        for (tail, q) in [
            ("/v1/chat/completions", None),
            ("/v1/messages", None),
            (
                "/v1/models/gemini-2.5-flash:streamGenerateContent",
                Some("alt=sse"),
            ),
            ("/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM", None),
            ("/2010-04-01/Accounts/AC123/Messages.json", None),
            ("/v1/files/file-abc%20def", None),
            ("/v1/files/caf%C3%A9", None),
        ] {
            let p = UpstreamPath::parse(tail, q).unwrap();
            assert_eq!(p.path(), tail);
            assert_eq!(p.query(), q);
        }
        let p = UpstreamPath::parse("/v1/models/x:streamGenerateContent", Some("alt=sse")).unwrap();
        assert_eq!(
            p.join("https://api.example.com/"),
            "https://api.example.com/v1/models/x:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_in_upper_case() {
        for (tail, normal) in [
            ("/v1/chat/complet%69ons", "/v1/chat/completions"),
            ("/v1/%63hat/%43ompletions", "/v1/chat/Completions"),
            ("/v1/a%2Db%2ec%5fd%7Ee", "/v1/a-b.c_d~e"),
            ("/v1/files/file%20x%2bY", "/v1/files/file%20x%2BY"),
            ("/v1/files/caf%c3%a9", "/v1/files/caf%C3%A9"),
        ] {
            assert_eq!(
                UpstreamPath::parse(tail, None).unwrap().path(),
                normal,
                "{tail}"
            );
        }
    }

    #[test]
    fn params_are_cut_from_every_segment() {
        for (tail, normal) in [
            ("/v1/messages;x=1", "/v1/messages"),
            ("/v1;a/chat;b=c/completions;d", "/v1/chat/completions"),
            ("/v1/files/f%3Bx", "/v1/files/f%3Bx"),
        ] {
            assert_eq!(
                UpstreamPath::parse(tail, None).unwrap().path(),
                normal,
                "{tail}"
            );
        }
        assert_eq!(
            UpstreamPath::parse("/v1/;x/y", None),
            Err(PathError::NotRelative)
        );
    }

    #[test]
    fn the_folded_path_is_the_decoded_path_in_lower_case() {
        let p = UpstreamPath::parse("/v1/Chat/Complet%69ons;x", None).unwrap();
        assert_eq!(p.path(), "/v1/Chat/Completions");
        assert_eq!(p.folded(), "/v1/chat/completions");
        let p =
            UpstreamPath::parse("/v1beta/models/Gemini-2.5-Pro%3AgenerateContent", None).unwrap();
        assert_eq!(p.path(), "/v1beta/models/Gemini-2.5-Pro%3AgenerateContent");
        assert_eq!(p.folded(), "/v1beta/models/gemini-2.5-pro:generatecontent");
        let p = UpstreamPath::parse("/v1/files/caf%C3%89%20x", None).unwrap();
        assert_eq!(p.folded(), "/v1/files/caf\u{c9} x");
    }

    #[test]
    fn traversal_and_smuggling_are_refused() {
        for (tail, err) in [
            ("/v1/../admin", PathError::DotSegment),
            ("/v1/%2e%2e/admin", PathError::DotSegment),
            ("/v1/%2E%2e", PathError::DotSegment),
            ("/./v1", PathError::DotSegment),
            ("/v1/..;/admin", PathError::DotSegment),
            ("/v1/..;x=1/admin", PathError::DotSegment),
            ("/v1/.;x/admin", PathError::DotSegment),
            ("/v1/..%3b/admin", PathError::DotSegment),
            ("/v1/%2e%2e%3Bx/admin", PathError::DotSegment),
            ("/v1/%252e%252e/admin", PathError::DoubleEncoded),
            ("/v1/a%252fb", PathError::DoubleEncoded),
            ("/v1/%25252e", PathError::DoubleEncoded),
            ("/v1/%25%32%65%25%32%65", PathError::DoubleEncoded),
            ("/v1/%252%65", PathError::DoubleEncoded),
            ("/v1/%c0%ae%c0%ae/admin", PathError::InvalidUtf8),
            ("/v1/%e0%80%ae", PathError::InvalidUtf8),
            ("/v1/a%c0%afb", PathError::InvalidUtf8),
            ("/v1/%ed%a0%80", PathError::InvalidUtf8),
            ("/v1/%ff", PathError::InvalidUtf8),
            ("/v1/a%2fb", PathError::ForbiddenCharacter),
            ("/v1/a%5cb", PathError::ForbiddenCharacter),
            ("/v1\\..\\x", PathError::ForbiddenCharacter),
            ("/@evil.example/v1", PathError::ForbiddenCharacter),
            ("/v1/%40evil", PathError::ForbiddenCharacter),
            ("/v1/x%0d%0aHost:%20evil", PathError::ForbiddenCharacter),
            ("/v1/x\r\nHost: evil", PathError::ForbiddenCharacter),
            ("/v1/x%00", PathError::ForbiddenCharacter),
            ("//evil.example/v1", PathError::NotRelative),
            ("/http://evil.example/", PathError::NotRelative),
            ("https://evil.example/", PathError::NotRelative),
            ("/v1//x", PathError::NotRelative),
            ("/v1/%zz", PathError::BadEscape),
            ("/v1/%4", PathError::BadEscape),
        ] {
            assert_eq!(UpstreamPath::parse(tail, None), Err(err), "{tail:?}");
        }
        assert_eq!(
            UpstreamPath::parse("/v1", Some("a=b\r\nX: y")),
            Err(PathError::ForbiddenCharacter)
        );
        assert_eq!(
            UpstreamPath::parse("/v1", Some("a=b#frag")),
            Err(PathError::ForbiddenCharacter)
        );
    }

    /// Decodes every escape once, as a provider would.
    fn decode_once(path: &str) -> Vec<u8> {
        let bytes = path.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match (b, escape_at(bytes, i)) {
                (b'%', Ok(c)) => {
                    out.push(c);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn an_accepted_path_never_escapes_the_base(tail in "(/[a-zA-Z0-9%._~:@;\\\\-]{0,12}){0,6}") {
            if let Ok(p) = UpstreamPath::parse(&tail, None) {
                let url = p.join("https://api.example.com/base");
                proptest::prop_assert!(url.starts_with("https://api.example.com/base/") || url == "https://api.example.com/base/");
                proptest::prop_assert!(!p.path().split('/').any(|s| s == ".." || s == "."));
                proptest::prop_assert!(!url["https://".len()..].contains('@'));
            }
        }

        #[test]
        fn normalising_is_idempotent_and_survives_one_more_decoding(
            tail in "(/([a-zA-Z0-9._~;-]|%(2[eEfF5]|25|3[bB]|[6-7][0-9a-fA-F]|[cC]0|[aA][eEfF])){1,8}){1,5}"
        ) {
            if let Ok(p) = UpstreamPath::parse(&tail, None) {
                let again = UpstreamPath::parse(p.path(), None);
                proptest::prop_assert_eq!(again.as_ref().map(UpstreamPath::path), Ok(p.path()));
                // What the provider sees after its own decoding has the same segments, none of
                // them a dot segment, none holding a slash.
                let seen = decode_once(p.path());
                let segments: Vec<&[u8]> = seen.split(|&c| c == b'/').collect();
                proptest::prop_assert_eq!(segments.len(), p.path().split('/').count());
                for s in segments.iter().skip(1) {
                    let stem = s.split(|&c| c == b';').next().unwrap_or_default();
                    proptest::prop_assert!(stem != b"." && stem != b"..");
                }
            }
        }
    }
}
