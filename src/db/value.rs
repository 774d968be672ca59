//! The values that cross the storage seam: what a statement is given ([`ToValue`], [`Params`])
//! and what a row gives back ([`FromValue`]). Five kinds, the ones both backends store: integer,
//! real, text, bytes and NULL. Each backend maps them onto its own types (`db::sqlite`,
//! `db::pg`), so domain code names none of a backend's types.

use super::DbError;

/// One value, borrowed from whatever holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl Value<'_> {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// What can be bound to a statement's parameter.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, i8, u32, u16, u8, bool);

impl ToValue for u64 {
    /// Counts and sizes only; one past `i64::MAX` is stored as `i64::MAX` (no count gets there).
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for usize {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        *self
    }
}

/// A statement's parameters, in order: `()`, an array of one type, or [`params!`](crate::params).
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for () {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(ToValue::to_value).collect()
    }
}

impl<T: ToValue> Params for Vec<T> {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(ToValue::to_value).collect()
    }
}

/// Parameters of mixed types: `params![account_id, provider, blob]`.
#[macro_export]
macro_rules! params {
    () => { () };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::db::ToValue),+] as &[&dyn $crate::db::ToValue]
    };
}

/// What a column can be read as.
pub trait FromValue: Sized {
    /// `Err` carries what was wanted, for the error message.
    fn from_value(v: Value<'_>) -> Result<Self, &'static str>;
}

impl FromValue for i64 {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        match v {
            Value::Int(i) => Ok(i),
            _ => Err("an integer"),
        }
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).map_err(|_| concat!("an integer that fits ", stringify!($t))),
                    _ => Err("an integer"),
                }
            }
        }
    )*};
}
int_from_value!(i32, i16, i8, u64, u32, u16, u8, usize);

impl FromValue for bool {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        match v {
            Value::Int(i) => Ok(i != 0),
            _ => Err("an integer (a flag)"),
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        match v {
            Value::Real(f) => Ok(f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Ok(i as f64),
            _ => Err("a number"),
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        match v {
            Value::Text(s) => Ok(s.to_owned()),
            _ => Err("text"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        match v {
            Value::Blob(b) => Ok(b.to_vec()),
            _ => Err("bytes"),
        }
    }
}

impl<const N: usize> FromValue for [u8; N] {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        match v {
            Value::Blob(b) => b.try_into().map_err(|_| "bytes of the expected length"),
            _ => Err("bytes"),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// The owned form of a [`Value`], for rows copied from one database to another.
#[derive(Debug, Clone, PartialEq)]
pub enum Owned {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl FromValue for Owned {
    fn from_value(v: Value<'_>) -> Result<Self, &'static str> {
        Ok(match v {
            Value::Null => Owned::Null,
            Value::Int(i) => Owned::Int(i),
            Value::Real(f) => Owned::Real(f),
            Value::Text(s) => Owned::Text(s.to_owned()),
            Value::Blob(b) => Owned::Blob(b.to_vec()),
        })
    }
}

impl ToValue for Owned {
    fn to_value(&self) -> Value<'_> {
        match self {
            Owned::Null => Value::Null,
            Owned::Int(i) => Value::Int(*i),
            Owned::Real(f) => Value::Real(*f),
            Owned::Text(s) => Value::Text(s),
            Owned::Blob(b) => Value::Blob(b),
        }
    }
}

pub(crate) fn type_error(
    column: impl std::fmt::Display,
    wanted: &'static str,
    found: Value<'_>,
) -> DbError {
    DbError::Type {
        column: column.to_string(),
        wanted,
        found: found.kind(),
    }
}
