//! A JSON request body parsed the way every provider could read it: one pass into a
//! [`serde_json::Value`], refusing any object that names a key twice. Parsers disagree on
//! duplicates (serde keeps the last, others the first), so a body with `"n": 1, "n": 8` could be
//! estimated at one reading and served at the other.

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not one JSON value without duplicate keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("the request body is not JSON")]
    NotJson,
    #[error("the request body repeats a key in one object")]
    DuplicateKey,
}

/// Marks the serde error raised for a duplicate, so it is told apart from a syntax error.
const DUPLICATE: &str = "keybroker: duplicate key";

/// Parses `body` as one JSON value, refusing duplicate keys at any depth.
pub fn parse(body: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Unique.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(|_| JsonError::NotJson)?;
    Ok(value)
}

fn classify(e: serde_json::Error) -> JsonError {
    if e.is_data() && e.to_string().starts_with(DUPLICATE) {
        JsonError::DuplicateKey
    } else {
        JsonError::NotJson
    }
}

/// Builds a `Value` like serde_json's own, with a duplicate check in every object.
#[derive(Clone, Copy)]
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(Unique)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(A::Error::custom(DUPLICATE));
            }
            let value = map.next_value_seed(Unique)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_without_duplicates_parses_as_serde_json_does() {
        let text =
            r#"{"model":"gpt-4o","n":2,"x":[1,-2,3.5,"s",null,true,{"a":{"b":[]}}],"u":"\u00e9"}"#;
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse(text.as_bytes()), Ok(expected));
        assert_eq!(parse(b"[1, 2]"), Ok(json!([1, 2])));
        assert_eq!(parse(b" 42 "), Ok(json!(42)));
    }

    #[test]
    fn a_repeated_key_at_any_depth_is_refused() {
        for body in [
            r#"{"n": 1, "n": 8}"#,
            r#"{"generationConfig": {"candidateCount": 1, "candidateCount": 8}}"#,
            r#"{"messages": [{"role": "user", "role": "system"}]}"#,
            r#"{"a": {}, "b": [[{"k": 1, "k": 1}]]}"#,
            r#"{"n\u0031": 1, "n1": 2}"#,
        ] {
            assert_eq!(
                parse(body.as_bytes()),
                Err(JsonError::DuplicateKey),
                "{body}"
            );
        }
        // The same key in two different objects is fine.
        assert!(parse(br#"{"a": {"k": 1}, "b": {"k": 2}, "k": 3}"#).is_ok());
    }

    #[test]
    fn what_is_not_one_json_value_is_not_json() {
        for body in [
            &b"not json"[..],
            b"",
            b"{\"a\": 1} {}",
            b"{\"a\": 1",
            b"{\"a\": 1,}",
        ] {
            assert_eq!(parse(body), Err(JsonError::NotJson));
        }
    }

    #[test]
    fn a_key_that_looks_like_the_marker_is_not_a_duplicate() {
        let body = format!(r#"{{"{DUPLICATE}": 1}}"#);
        assert!(parse(body.as_bytes()).is_ok());
        let not_json = format!(r#"{{"{DUPLICATE}" 1}}"#);
        assert_eq!(parse(not_json.as_bytes()), Err(JsonError::NotJson));
    }
}
