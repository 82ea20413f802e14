//! Reading the JSON and YAML documents the CLI sends (bodies, schemas),
//! strictly: a duplicate key is an error rather than "the last one wins",
//! and an integer beyond ±2^53, which a protobuf `Struct` (a double) would
//! silently round, is refused with advice.

use std::{collections::BTreeSet, fmt, path::Path};

use anyhow::Context;
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Number, Value};

use super::failure::{Unusable, What};

/// The largest integer a double holds exactly.
const EXACT: u64 = 1 << 53;

/// A JSON value read strictly.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

fn too_large<E: de::Error>(number: impl fmt::Display) -> E {
    E::custom(format!(
        "{number} is beyond ±2^53: policies travel as JSON numbers (doubles), which would \
         round it; write it as a string"
    ))
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        if value.unsigned_abs() > EXACT {
            return Err(too_large(value));
        }
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        if value > EXACT {
            return Err(too_large(value));
        }
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{value} is not a JSON number")))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict::deserialize(deserializer).map(|strict| strict.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut array = Vec::new();
        while let Some(Strict(item)) = items.next_element()? {
            array.push(item);
        }
        Ok(Value::Array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        let mut seen = BTreeSet::new();
        while let Some(key) = entries.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            let Strict(value) = entries.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Reads a document: JSON from a `.json` file, YAML from anything else
/// (standard input included, since JSON is also YAML).
pub fn read(path: &Path) -> anyhow::Result<Value> {
    parse(path, &read_text(path)?)
}

/// A Rego policy's body (`{"modules": …, "data": …}`) from a directory, as
/// `opa build` reads one: every `.rego` file a module under its path in the
/// directory, every `data.json` or `data.yaml` merged into the data
/// document at its directory's path (`limits/cards/data.json` at
/// `limits.cards`). Hidden files and directories are skipped, as are other
/// files.
pub fn read_rego_dir(dir: &Path) -> anyhow::Result<Value> {
    let mut modules = Map::new();
    let mut data = Value::Object(Map::new());
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("reading the directory {}", current.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading the directory {}", current.display()))?
                .path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(dir).expect("a path under the directory");
            let relative: Vec<String> = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect();
            if name.ends_with(".rego") {
                modules.insert(relative.join("/"), Value::String(read_text(&path)?));
            } else if matches!(name.as_ref(), "data.json" | "data.yaml") {
                let at = &relative[..relative.len() - 1];
                merge_at(&mut data, at, read(&path)?)
                    .with_context(|| not_a_document(&path, "data that merges with the others"))?;
            }
        }
    }
    let mut body = Map::new();
    body.insert("modules".into(), Value::Object(modules));
    body.insert("data".into(), data);
    Ok(Value::Object(body))
}

/// Merges `value` into `document` at the path `at`, as OPA merges data
/// files: objects merge member by member; anything else met twice is a
/// conflict.
fn merge_at(document: &mut Value, at: &[String], value: Value) -> anyhow::Result<()> {
    let mut place = document;
    for key in at {
        let Value::Object(members) = place else {
            anyhow::bail!("{} is not an object", at.join("."));
        };
        place = members
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    merge(place, value, &at.join("."))
}

fn merge(place: &mut Value, value: Value, path: &str) -> anyhow::Result<()> {
    match (place, value) {
        (Value::Object(members), Value::Object(incoming)) => {
            for (key, value) in incoming {
                let path = format!("{path}.{key}");
                match members.get_mut(&key) {
                    Some(existing) => merge(existing, value, &path)?,
                    None => {
                        members.insert(key, value);
                    }
                }
            }
            Ok(())
        }
        (_, _) => anyhow::bail!("two data files set {}", path.trim_start_matches('.')),
    }
}

/// The text of a file; `-` is standard input, as in kubectl's `-f -`.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The failure of a file that does not parse as `format`.
fn not_a_document(path: &Path, format: &str) -> Unusable {
    Unusable::new(
        What::Document,
        format!("{} is not {format}", path.display()),
    )
}

/// Parses a document read from `path`, naming the file in every error.
pub fn parse(path: &Path, text: &str) -> anyhow::Result<Value> {
    let strict: Strict = if path
        .extension()
        .is_some_and(|extension| extension == "json")
    {
        serde_json::from_str(text).with_context(|| not_a_document(path, "JSON"))?
    } else {
        serde_yaml_ng::from_str(text).with_context(|| not_a_document(path, "YAML"))?
    };
    Ok(strict.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> anyhow::Result<Value> {
        parse(Path::new("body.json"), text)
    }

    fn yaml(text: &str) -> anyhow::Result<Value> {
        parse(Path::new("body.yaml"), text)
    }

    #[test]
    fn duplicate_keys_are_refused_in_json_and_yaml() {
        let error = format!(
            "{:#}",
            json(r#"{"a": 1, "b": {"c": 1, "c": 2}}"#).unwrap_err()
        );
        assert!(error.contains("\"c\" appears twice"), "{error}");
        let error = format!("{:#}", yaml("a: 1\na: 2\n").unwrap_err());
        assert!(error.contains("body.yaml"), "{error}");
    }

    #[test]
    fn integers_a_double_would_round_are_refused() {
        let error = format!("{:#}", json(r#"{"id": 12345678901234567890}"#).unwrap_err());
        assert!(
            error.contains("12345678901234567890 is beyond ±2^53"),
            "{error}"
        );
        assert!(yaml("id: -9007199254740993\n").is_err());
        let fine = json(r#"{"id": 9007199254740992, "x": 0.5, "s": "12345678901234567890"}"#);
        assert_eq!(fine.unwrap()["id"], 9_007_199_254_740_992u64);
    }
}
