//! Policy bodies and their digests.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, Result};

/// `sha256:` + lowercase hex of the SHA-256 of a body's RFC 8785 canonical
/// JSON: key order, whitespace and `1` vs `1.0` do not change it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// The digest of some canonical bytes.
    pub fn of_canonical(canonical: &[u8]) -> Self {
        Digest(policyhub_runtime::bundle::digest_of_canonical(canonical))
    }

    /// The digest as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a digest read back from storage or a signed bundle.
    pub fn from_stored(text: String) -> Self {
        Digest(text)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use policyhub_runtime::bundle::canonical_json;

/// How deep a body or schema may nest objects and arrays (the top-level
/// object is level 1). Well below what protobuf decoders accept, so a too
/// deep document is refused with this limit named, not with a decoder's
/// recursion error.
pub const MAX_JSON_DEPTH: usize = 32;

/// How deep `value` nests objects and arrays (a scalar is 0).
fn depth_of(value: &Value) -> usize {
    match value {
        Value::Object(members) => 1 + members.values().map(depth_of).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// Refuses a document nested deeper than [`MAX_JSON_DEPTH`].
pub fn check_depth(field: &str, value: &Value) -> Result<()> {
    let depth = depth_of(value);
    if depth > MAX_JSON_DEPTH {
        return Err(Error::invalid(
            field,
            format!(
                "nests {depth} levels of objects and arrays, at most {MAX_JSON_DEPTH} levels are allowed"
            ),
        ));
    }
    Ok(())
}

/// The largest magnitude a body's number may have: 2^53 − 1, the interval
/// in which an IEEE 754 double holds every integer (I-JSON, RFC 7493
/// §2.2). Past it a number may already have been rounded on its way here
/// (`12345678901234567890` arrives as `12345678901234567168`), and
/// `google.protobuf.Value` carries only doubles: so it is refused, on every
/// transport alike, rather than stored rounded.
pub const MAX_EXACT_NUMBER: f64 = 9_007_199_254_740_991.0;

/// Refuses every number of `value` beyond ±[`MAX_EXACT_NUMBER`], each
/// named by its path (`body.limits[2]`).
pub fn check_numbers(field: &str, value: &Value) -> Result<()> {
    fn walk(path: String, value: &Value, found: &mut Vec<(String, String)>) {
        match value {
            Value::Number(number)
                if number.as_f64().is_some_and(|x| x.abs() > MAX_EXACT_NUMBER) =>
            {
                found.push((path, number.to_string()));
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(format!("{path}[{index}]"), item, found);
                }
            }
            Value::Object(members) => {
                for (key, member) in members {
                    walk(format!("{path}.{key}"), member, found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(field.to_owned(), value, &mut found);
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidArgument(
        found
            .into_iter()
            .map(|(path, number)| super::FieldViolation {
                field: path,
                description: format!(
                    "{number} is beyond ±(2^53 - 1), where a JSON number stops being exact: \
                     send it as a string"
                ),
            })
            .collect(),
    ))
}

/// A policy document: a JSON object with its canonical form and digest.
///
/// Valid by construction: the value is an object within the size limit.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyBody {
    value: Value,
    canonical: String,
    digest: Digest,
}

impl PolicyBody {
    /// Parses a body given in a request, refusing anything but an object and
    /// anything whose canonical JSON exceeds `max_bytes`.
    pub fn parse(field: &str, value: Value, max_bytes: usize) -> Result<Self> {
        if !value.is_object() {
            return Err(Error::invalid(
                field,
                format!("must be a JSON object, got {}", json_type_name(&value)),
            ));
        }
        check_depth(field, &value)?;
        check_numbers(field, &value)?;
        let canonical = canonical_json(&value);
        if canonical.len() > max_bytes {
            return Err(Error::TooLarge(format!(
                "{field} is {} bytes of canonical JSON, over the limit of {max_bytes} bytes",
                canonical.len()
            )));
        }
        Ok(Self::from_parts(value, canonical))
    }

    /// Reads back a body stored as canonical JSON.
    pub fn from_canonical(canonical: String) -> Result<Self> {
        let value: Value = serde_json::from_str(&canonical)
            .map_err(|error| Error::Internal(format!("stored body is not json: {error}")))?;
        Ok(Self::from_parts(value, canonical))
    }

    fn from_parts(value: Value, canonical: String) -> Self {
        let digest = Digest::of_canonical(canonical.as_bytes());
        PolicyBody {
            value,
            canonical,
            digest,
        }
    }

    /// The document.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Its RFC 8785 canonical JSON, exactly what the digest covers.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Its digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl Serialize for PolicyBody {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PolicyBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let canonical = canonical_json(&value);
        Ok(PolicyBody::from_parts(value, canonical))
    }
}

/// The JSON type of a value, for error messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn digest_ignores_key_order_whitespace_and_number_spelling() {
        let a = PolicyBody::parse("body", json!({"b": 1, "a": [1.0, "x"]}), 1024).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a" : [1, "x"], "b": 1.0 }"#).unwrap();
        let b = PolicyBody::parse("body", b, 1024).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.canonical(), r#"{"a":[1,"x"],"b":1}"#);
        assert!(a.digest().as_str().starts_with("sha256:"));
        assert_eq!(a.digest().as_str().len(), "sha256:".len() + 64);
    }

    #[test]
    fn digest_changes_with_content() {
        let a = PolicyBody::parse("body", json!({"a": 1}), 1024).unwrap();
        let b = PolicyBody::parse("body", json!({"a": 2}), 1024).unwrap();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn numbers_past_the_exact_range_of_a_double_are_refused_by_path() {
        let exact = serde_json::json!({"max": 9_007_199_254_740_991_u64, "min": -9_007_199_254_740_991_i64, "f": 0.1});
        assert!(PolicyBody::parse("body", exact, 1 << 20).is_ok());
        let past = serde_json::json!({"a": [9_007_199_254_740_992_u64], "b": {"c": -1e300}});
        let Err(Error::InvalidArgument(violations)) = PolicyBody::parse("body", past, 1 << 20)
        else {
            panic!("refused");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["body.a[0]", "body.b.c"]);
    }

    #[test]
    fn only_objects_within_the_limit_are_bodies() {
        assert!(matches!(
            PolicyBody::parse("body", json!([1]), 1024),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            PolicyBody::parse("body", json!({"a": "x".repeat(100)}), 64),
            Err(Error::TooLarge(_))
        ));
    }
}
