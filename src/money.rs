//! `Money`: an amount of US dollars held as integer micro-dollars, so metering never touches `f64`.
//!
//! Parsing is strict (it runs at the edge, on operator config and API input) and display is canonical,
//! so a value survives a round trip through JSON, TOML and the database unchanged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-dollars in one dollar.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// Most decimals a USD amount may carry: one micro-dollar is the unit.
const MAX_DECIMALS: usize = 6;

/// An amount of US dollars in integer micro-dollars (1 USD = 1,000,000).
///
/// Arithmetic is checked or saturating, never wrapping: a spend ceiling built on a wrapped sum would be
/// a ceiling in name only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

/// Why a string is not a valid USD amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("an amount cannot be empty")]
    Empty,
    #[error("an amount must be a plain decimal like \"5\" or \"0.000150\"")]
    Malformed,
    #[error("an amount has at most 6 decimals (one micro-dollar)")]
    TooPrecise,
    #[error("the amount is too large")]
    Overflow,
    #[error("the amount cannot be negative")]
    Negative,
}

impl Money {
    pub const ZERO: Money = Money(0);
    pub const MAX: Money = Money(i64::MAX);

    pub const fn from_micros(micros: i64) -> Self {
        Money(micros)
    }

    /// Whole dollars; saturates rather than overflowing.
    pub const fn from_usd(dollars: i64) -> Self {
        Money(dollars.saturating_mul(MICROS_PER_USD))
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub fn checked_mul(self, factor: i64) -> Option<Money> {
        self.0.checked_mul(factor).map(Money)
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    pub fn saturating_mul(self, factor: i64) -> Money {
        Money(self.0.saturating_mul(factor))
    }

    /// Parses an amount that must not be negative: a ceiling, a price.
    pub fn parse_non_negative(s: &str) -> Result<Money, MoneyError> {
        let money: Money = s.parse()?;
        if money.is_negative() {
            return Err(MoneyError::Negative);
        }
        Ok(money)
    }
}

/// Accepts `[-]DIGITS[.DIGITS]` with 1 to 6 decimals: "5", "5.00", "0.000150", "-1.5".
///
/// Rejected on purpose: surrounding whitespace, a leading `+`, a bare "." or ".5" or "5.", exponents,
/// thousands separators and more than 6 decimals (rounding an operator's price silently is worse than
/// telling them).
impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(MoneyError::Empty);
        }
        let (negative, unsigned) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (unsigned, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MoneyError::Malformed);
        }
        let fraction = fraction.unwrap_or("");
        if unsigned.contains('.') && fraction.is_empty() {
            return Err(MoneyError::Malformed);
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MoneyError::Malformed);
        }
        if fraction.len() > MAX_DECIMALS {
            return Err(MoneyError::TooPrecise);
        }

        // i128 holds any 19-digit whole part times 10^6, so only the final conversion can overflow;
        // working in the magnitude and applying the sign last keeps i64::MIN representable.
        if whole.len() > 19 {
            return Err(MoneyError::Overflow);
        }
        let mut micros: i128 = 0;
        for digit in whole.bytes() {
            micros = micros * 10 + i128::from(digit - b'0');
        }
        micros *= i128::from(MICROS_PER_USD);
        for (position, digit) in fraction.bytes().enumerate() {
            // position < 6, so the exponent is at most 5.
            let scale = 10_i128.pow((MAX_DECIMALS - 1 - position) as u32);
            micros += i128::from(digit - b'0') * scale;
        }
        if negative {
            micros = -micros;
        }
        i64::try_from(micros)
            .map(Money)
            .map_err(|_| MoneyError::Overflow)
    }
}

/// Renders with at least 2 and at most 6 decimals, trimming trailing zeros beyond the second:
/// 5 USD is "5.00", 150 micro-dollars is "0.00015", 1,234,500 micro-dollars is "1.2345".
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // unsigned_abs keeps i64::MIN printable.
        let magnitude = self.0.unsigned_abs();
        let per_usd = MICROS_PER_USD.unsigned_abs();
        let whole = magnitude / per_usd;
        let fraction = format!("{:06}", magnitude % per_usd);
        let trimmed = fraction.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            &fraction[..2]
        } else {
            trimmed
        };
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{whole}.{shown}")
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Only strings are accepted: a JSON number would already have gone through `f64` in many clients.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Money, MoneyError> {
        s.parse()
    }

    #[test]
    fn parses_whole_dollars() {
        assert_eq!(parse("5"), Ok(Money::from_micros(5_000_000)));
    }

    #[test]
    fn parses_two_decimals() {
        assert_eq!(parse("5.00"), Ok(Money::from_micros(5_000_000)));
    }

    #[test]
    fn parses_six_decimals() {
        assert_eq!(parse("0.000150"), Ok(Money::from_micros(150)));
    }

    #[test]
    fn parses_negative_amounts_in_general() {
        assert_eq!(parse("-1.5"), Ok(Money::from_micros(-1_500_000)));
    }

    #[test]
    fn rejects_negative_where_non_negative_is_required() {
        assert_eq!(Money::parse_non_negative("-1"), Err(MoneyError::Negative));
        assert_eq!(Money::parse_non_negative("0"), Ok(Money::ZERO));
    }

    #[test]
    fn rejects_more_than_six_decimals() {
        assert_eq!(parse("0.0000001"), Err(MoneyError::TooPrecise));
    }

    #[test]
    fn rejects_exponents_and_garbage() {
        for input in [
            "1e3", "1E3", "abc", "1.2.3", " 1", "1 ", "+1", ".5", "5.", ".", "-", "1,000", "0x10",
            "NaN", "inf", "--1", "1.-5",
        ] {
            assert_eq!(parse(input), Err(MoneyError::Malformed), "{input:?}");
        }
        assert_eq!(parse(""), Err(MoneyError::Empty));
    }

    #[test]
    fn rejects_amounts_beyond_i64_micros() {
        assert_eq!(parse("9223372036855"), Err(MoneyError::Overflow));
        assert_eq!(
            parse("9223372036854.775807"),
            Ok(Money::from_micros(i64::MAX))
        );
        assert_eq!(parse("9223372036854.775808"), Err(MoneyError::Overflow));
    }

    #[test]
    fn displays_at_least_two_decimals() {
        assert_eq!(Money::from_usd(5).to_string(), "5.00");
        assert_eq!(Money::ZERO.to_string(), "0.00");
        assert_eq!(Money::from_micros(100_000).to_string(), "0.10");
    }

    #[test]
    fn displays_trimmed_sub_cent_amounts() {
        assert_eq!(Money::from_micros(150).to_string(), "0.00015");
        assert_eq!(Money::from_micros(1_234_500).to_string(), "1.2345");
        assert_eq!(Money::from_micros(1).to_string(), "0.000001");
    }

    #[test]
    fn displays_negative_and_extreme_amounts() {
        assert_eq!(Money::from_micros(-1_500_000).to_string(), "-1.50");
        assert_eq!(
            Money::from_micros(i64::MIN).to_string(),
            "-9223372036854.775808"
        );
    }

    #[test]
    fn arithmetic_never_wraps() {
        assert_eq!(Money::MAX.checked_add(Money::from_micros(1)), None);
        assert_eq!(Money::MAX.saturating_add(Money::from_micros(1)), Money::MAX);
        assert_eq!(Money::from_usd(i64::MAX), Money::MAX);
    }

    #[test]
    fn serialises_as_a_string() {
        let json = serde_json::to_string(&Money::from_micros(150)).unwrap_or_default();
        assert_eq!(json, "\"0.00015\"");
    }

    #[test]
    fn deserialises_from_a_string_only() {
        let money: Result<Money, _> = serde_json::from_str("\"2.50\"");
        assert_eq!(money.ok(), Some(Money::from_micros(2_500_000)));
        let number: Result<Money, _> = serde_json::from_str("2.5");
        assert!(number.is_err());
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(micros in any::<i64>()) {
            let money = Money::from_micros(micros);
            prop_assert_eq!(money.to_string().parse::<Money>(), Ok(money));
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,24}") {
            let _ = input.parse::<Money>();
        }
    }
}
