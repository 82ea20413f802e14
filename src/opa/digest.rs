//! The digest OPA checks each file of a signed bundle against
//! (`bundle.VerifyBundleFile`): SHA-256 of a module's bytes, and of a
//! structured document (`data.json`, `.manifest`) the SHA-256 of OPA's own
//! walk of the parsed value, so that whitespace and key order do not count.
//!
//! The walk writes an object as `{`, its keys in byte order each as
//! `key:value`, `,` between, `}`; an array as `[`, its items, `]`; and every
//! key and scalar as Go's `encoding/json` encodes it with HTML escaping off.
//! Numbers are written as the document spells them (OPA parses with
//! `UseNumber`), which is serde_json's spelling when serde_json wrote the
//! document.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The SHA-256 OPA computes for a structured document holding `value`.
pub fn structured(value: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut scratch = String::new();
    walk(value, &mut hasher, &mut scratch);
    hasher.finalize().into()
}

/// The SHA-256 of an unstructured file's bytes.
pub fn raw(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn walk(value: &Value, hasher: &mut Sha256, scratch: &mut String) {
    match value {
        Value::Object(members) => {
            hasher.update(b"{");
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort();
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                string(key, hasher, scratch);
                hasher.update(b":");
                walk(&members[key], hasher, scratch);
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                walk(item, hasher, scratch);
            }
            hasher.update(b"]");
        }
        Value::String(text) => string(text, hasher, scratch),
        Value::Number(number) => hasher.update(number.to_string().as_bytes()),
        Value::Bool(true) => hasher.update(b"true"),
        Value::Bool(false) => hasher.update(b"false"),
        Value::Null => hasher.update(b"null"),
    }
}

/// A string as Go's `encoding/json` writes it with `SetEscapeHTML(false)`:
/// `"` and `\` escaped, `\b \f \n \r \t` short, other control characters as
/// `\u00xx`, U+2028 and U+2029 as `\u2028` and `\u2029`, the rest as is.
fn string(text: &str, hasher: &mut Sha256, scratch: &mut String) {
    scratch.clear();
    scratch.push('"');
    for c in text.chars() {
        match c {
            '"' => scratch.push_str("\\\""),
            '\\' => scratch.push_str("\\\\"),
            '\u{8}' => scratch.push_str("\\b"),
            '\u{c}' => scratch.push_str("\\f"),
            '\n' => scratch.push_str("\\n"),
            '\r' => scratch.push_str("\\r"),
            '\t' => scratch.push_str("\\t"),
            '\u{2028}' | '\u{2029}' => {
                let _ = write!(scratch, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(scratch, "\\u{:04x}", c as u32);
            }
            c => scratch.push(c),
        }
    }
    scratch.push('"');
    hasher.update(scratch.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; 32]) -> String {
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn a_document_hashes_as_its_walk_whatever_its_spelling() {
        let value: Value =
            serde_json::from_str(r#"{ "b": [1, 2.5, "x"], "a": {"z": null, "y": true} }"#).unwrap();
        let walk = r#"{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}"#;
        assert_eq!(hex(structured(&value)), hex(raw(walk.as_bytes())));
    }

    #[test]
    fn strings_are_escaped_as_go_escapes_them() {
        let value = Value::String("<&>\"\\\u{8}\u{c}\n\r\t\u{1}\u{2028}é".into());
        let go = "\"<&>\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u2028é\"";
        assert_eq!(hex(structured(&value)), hex(raw(go.as_bytes())));
    }
}
