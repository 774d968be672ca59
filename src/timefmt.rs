//! Timestamps at the API edge: stored as Unix seconds, shown and accepted as RFC 3339 (UTC).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `unix` as RFC 3339 in UTC, e.g. `2025-01-31T12:00:00Z`. Out-of-range values (which we never
/// store) fall back to the plain number rather than failing a whole listing.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

pub fn rfc3339_opt(unix: Option<i64>) -> Option<String> {
    unix.map(rfc3339)
}

/// Parses an RFC 3339 timestamp (any offset) into Unix seconds.
pub fn parse_rfc3339(raw: &str) -> Option<i64> {
    OffsetDateTime::parse(raw.trim(), &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339(&rfc3339(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
