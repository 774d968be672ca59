//! The part of a proxied URL that is forwarded: checked so it can only ever name a path under the
//! provider's base URL. Parse, don't validate: an [`UpstreamPath`] is safe to append to a base.

/// A checked path (always starting with `/`) plus the raw query, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPath {
    path: String,
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
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one segment, refusing what would change the path's shape once decoded.
fn check_segment(raw: &str) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes
                .get(i + 1)
                .copied()
                .and_then(hex)
                .ok_or(PathError::BadEscape)?;
            let lo = bytes
                .get(i + 2)
                .copied()
                .and_then(hex)
                .ok_or(PathError::BadEscape)?;
            decoded.push(hi << 4 | lo);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded == b"." || decoded == b".." {
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
    Ok(())
}

impl UpstreamPath {
    /// `tail` is the raw (still percent-encoded) path after `/proxy/{provider}`, `query` the raw
    /// query string.
    pub fn parse(tail: &str, query: Option<&str>) -> Result<Self, PathError> {
        if tail.is_empty() || tail == "/" {
            return Ok(Self {
                path: "/".into(),
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
        for segment in tail.split('/').skip(1) {
            if segment.is_empty() {
                // `a//b` is harmless to most servers but has no use here; refuse rather than guess.
                return Err(PathError::NotRelative);
            }
            check_segment(segment)?;
        }
        Ok(Self {
            path: tail.to_owned(),
            query: clean_query(query)?,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
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
    fn traversal_and_smuggling_are_refused() {
        for (tail, err) in [
            ("/v1/../admin", PathError::DotSegment),
            ("/v1/%2e%2e/admin", PathError::DotSegment),
            ("/v1/%2E%2e", PathError::DotSegment),
            ("/./v1", PathError::DotSegment),
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

    proptest::proptest! {
        #[test]
        fn an_accepted_path_never_escapes_the_base(tail in "(/[a-zA-Z0-9%._~:@\\\\-]{0,12}){0,6}") {
            if let Ok(p) = UpstreamPath::parse(&tail, None) {
                let url = p.join("https://api.example.com/base");
                proptest::prop_assert!(url.starts_with("https://api.example.com/base/") || url == "https://api.example.com/base/");
                proptest::prop_assert!(!p.path().split('/').any(|s| s == ".." || s == "."));
                proptest::prop_assert!(!url["https://".len()..].contains('@'));
            }
        }
    }
}
