//! Impact analysis (docs/src/guides/impact.md): recorded decisions replayed
//! through the embedded Rego engine against the active bundle and against
//! a candidate's, and what would change.

use std::collections::BTreeMap;

use serde_json::Value;

use super::decision::Decision;
use super::rego::{self, BundleContent};
use super::{Error, Result, canonical_json};

/// Decisions kept as examples of each group of a report.
pub const MAX_EXAMPLES: usize = 5;

/// Decisions replayed when a request names no limit.
pub const DEFAULT_REPLAYED: u32 = 1000;

/// Most decisions one analysis replays.
pub const MAX_REPLAYED: u32 = 10_000;

/// What regorus says when a query calls a builtin it was built without.
const MISSING_BUILTIN: &str = "could not find function ";

/// A bundle's modules and data in the embedded engine, ready to decide.
pub struct Decider {
    engine: regorus::Engine,
}

/// What replaying one decision gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// The result as canonical JSON; `None` when undefined.
    Decided(Option<String>),
    /// The engine could not evaluate it: the builtin it lacks
    /// (`builtin regex.match`), or its error.
    Unknown(String),
}

impl Decider {
    /// The engine holding `content`.
    pub fn new(content: &BundleContent) -> Result<Self> {
        let mut engine = rego::engine();
        for (path, source) in &content.modules {
            engine
                .add_policy(path.clone(), source.clone())
                .map_err(|error| {
                    Error::precondition(format!("{path} does not compile: {error}"))
                })?;
        }
        rego::load_data(&mut engine, &content.data)?;
        Ok(Decider { engine })
    }

    /// What the bundle decides at `path` (`payments/authz/allow`) for
    /// `input` (canonical JSON; `None`: no input), as OPA's
    /// `/v1/data/{path}` would.
    pub fn decide(&mut self, path: &str, input: Option<&str>) -> Replayed {
        let input = match input {
            Some(text) => match regorus::Value::from_json_str(text) {
                Ok(input) => input,
                Err(error) => {
                    return Replayed::Unknown(format!("the input does not load: {error}"));
                }
            },
            None => regorus::Value::Undefined,
        };
        self.engine.set_input(input);
        let query = path
            .split('/')
            .filter(|segment| !segment.is_empty())
            .fold("data".to_owned(), |query, segment| {
                format!("{query}[{}]", Value::String(segment.to_owned()))
            });
        let value = match rego::query_value(&mut self.engine, query) {
            Ok(Some(value)) => value,
            Ok(None) => return Replayed::Decided(None),
            Err(error) => return Replayed::Unknown(unknown(&error.to_string())),
        };
        match value
            .to_json_str()
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        {
            Some(json) => Replayed::Decided(Some(canonical_json(&json))),
            None => Replayed::Unknown("the result is not JSON".into()),
        }
    }
}

/// Why an evaluation failed: the builtin the engine lacks, or the error's
/// first line.
fn unknown(error: &str) -> String {
    match error.split_once(MISSING_BUILTIN) {
        Some((_, rest)) => {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            format!("builtin {name}")
        }
        None => error.lines().next().unwrap_or(error).to_owned(),
    }
}

/// One decision of a group: its id and input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub decision_id: String,
    /// Canonical JSON.
    pub input: Option<String>,
}

/// Decisions of one path whose result changes from `before` to `after`
/// (canonical JSON; `None`: undefined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// Decisions of one path the engine could not evaluate, for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub path: String,
    pub reason: String,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// What replaying decisions against the active bundle and a candidate's
/// gave: every decision replayed counts once, as changed, unknown, or
/// neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImpactReport {
    pub replayed: u64,
    pub changed: u64,
    pub unknown: u64,
    /// By path, then result before and after.
    pub changes: Vec<Change>,
    /// By path, then reason.
    pub unknowns: Vec<Unknown>,
}

/// Replays `decisions` through `active` and `candidate`. A decision either
/// engine cannot evaluate is unknown, never unchanged.
pub fn analyze(
    active: &mut Decider,
    candidate: &mut Decider,
    decisions: &[Decision],
) -> ImpactReport {
    type Key = (String, Option<String>, Option<String>);
    let mut changes: BTreeMap<Key, (u64, Vec<Example>)> = BTreeMap::new();
    let mut unknowns: BTreeMap<(String, String), (u64, Vec<Example>)> = BTreeMap::new();
    let mut report = ImpactReport::default();
    for decision in decisions {
        report.replayed += 1;
        let input = decision.input.as_deref();
        let before = active.decide(&decision.path, input);
        let after = candidate.decide(&decision.path, input);
        let group = match (before, after) {
            (Replayed::Unknown(reason), _) | (_, Replayed::Unknown(reason)) => {
                report.unknown += 1;
                unknowns.entry((decision.path.clone(), reason)).or_default()
            }
            (Replayed::Decided(before), Replayed::Decided(after)) if before != after => {
                report.changed += 1;
                changes
                    .entry((decision.path.clone(), before, after))
                    .or_default()
            }
            _ => continue,
        };
        group.0 += 1;
        if group.1.len() < MAX_EXAMPLES {
            group.1.push(Example {
                decision_id: decision.id.clone(),
                input: decision.input.clone(),
            });
        }
    }
    report.changes = changes
        .into_iter()
        .map(|((path, before, after), (count, examples))| Change {
            path,
            before,
            after,
            count,
            examples,
        })
        .collect();
    report.unknowns = unknowns
        .into_iter()
        .map(|((path, reason), (count, examples))| Unknown {
            path,
            reason,
            count,
            examples,
        })
        .collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rego::BundleContent;

    fn decider(allow: &str) -> Decider {
        let mut content = BundleContent::default();
        content.modules.insert(
            "authz/allow.rego".into(),
            format!("package payments.authz\n\ndefault allow := false\n\nallow if {allow}\n"),
        );
        content
            .data
            .insert("payments".into(), serde_json::json!({"max": 500}));
        Decider::new(&content).unwrap()
    }

    fn decision(id: &str, amount: u64) -> Decision {
        Decision {
            id: id.into(),
            runtime: crate::domain::runtime::RuntimeId::parse("runtime_id", "opa-1").unwrap(),
            path: "payments/authz/allow".into(),
            input: Some(format!("{{\"amount\":{amount}}}")),
            result: None,
            revision: None,
            decided_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_lower_limit_changes_the_decisions_between_the_limits() {
        let mut active = decider("input.amount <= data.payments.max");
        let mut candidate = decider("input.amount <= 100");
        let decisions: Vec<Decision> = (0..10)
            .map(|n| decision(&format!("d-{n}"), n * 100))
            .collect();
        let report = analyze(&mut active, &mut candidate, &decisions);
        assert_eq!(
            (report.replayed, report.changed, report.unknown),
            (10, 4, 0)
        );
        assert_eq!(report.changes.len(), 1);
        let change = &report.changes[0];
        assert_eq!(
            (change.before.as_deref(), change.after.as_deref()),
            (Some("true"), Some("false"))
        );
        assert_eq!(change.examples[0].decision_id, "d-2");
    }

    #[test]
    fn a_builtin_the_engine_lacks_is_unknown_and_named() {
        let mut active = decider("input.amount <= data.payments.max");
        let mut candidate = decider("regex.match(\"^[0-9]+$\", sprintf(\"%v\", [input.amount]))");
        let report = analyze(&mut active, &mut candidate, &[decision("d-1", 1)]);
        assert_eq!((report.replayed, report.changed, report.unknown), (1, 0, 1));
        assert_eq!(
            report.unknowns[0].reason, "builtin regex.match",
            "{report:?}"
        );
    }

    #[test]
    fn an_undefined_path_is_undefined_and_no_input_is_none() {
        let mut active = decider("input.amount <= data.payments.max");
        assert_eq!(
            active.decide("payments/authz/deny", None),
            Replayed::Decided(None)
        );
        assert_eq!(
            active.decide("payments/authz/allow", None),
            Replayed::Decided(Some("false".into()))
        );
    }
}
