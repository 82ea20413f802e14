//! Impact analysis (docs/src/guides/impact.md): recorded decisions replayed
//! through the embedded Rego engine against the active bundle and against
//! a candidate's, and what would change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub decision_id: String,
    /// Canonical JSON.
    pub input: Option<String>,
}

/// Decisions of one path whose result changes from `before` to `after`
/// (canonical JSON; `None`: undefined).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// Decisions of one path the engine could not evaluate, for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unknown {
    pub path: String,
    pub reason: String,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// The decisions of one path replayed, and how many of them changed or
/// could not be evaluated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathTally {
    pub path: String,
    pub replayed: u64,
    pub changed: u64,
    pub unknown: u64,
}

/// What replaying decisions against the active bundle and a candidate's
/// gave: every decision replayed counts once, as changed, unknown, or
/// neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpactReport {
    /// The namespace revision whose active bundle was the baseline.
    pub active_revision: u64,
    pub replayed: u64,
    pub changed: u64,
    pub unknown: u64,
    /// By path.
    pub paths: Vec<PathTally>,
    /// By path, then result before and after.
    pub changes: Vec<Change>,
    /// By path, then reason.
    pub unknowns: Vec<Unknown>,
}

/// A namespace's bound on what a change may decide differently: on no path
/// may more than `max_changed_percent` of the newest `decisions` replayed
/// change or be unknown (docs/src/guides/impact.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImpactGate {
    pub max_changed_percent: f64,
    pub decisions: u32,
}

impl ImpactGate {
    /// The gate, its bound a percentage and its window one analysis can
    /// replay.
    pub fn new(field: &str, max_changed_percent: f64, decisions: u32) -> Result<Self> {
        if !(0.0..=100.0).contains(&max_changed_percent) {
            return Err(Error::invalid(
                format!("{field}.max_changed_percent"),
                format!("{max_changed_percent} is not a percentage from 0 to 100"),
            ));
        }
        if !(1..=MAX_REPLAYED).contains(&decisions) {
            return Err(Error::invalid(
                format!("{field}.decisions"),
                format!("{decisions}: an analysis replays 1 to {MAX_REPLAYED} decisions"),
            ));
        }
        Ok(ImpactGate {
            max_changed_percent,
            decisions,
        })
    }

    /// The paths of `report` over the bound: a decision the engine could
    /// not evaluate counts as changed, since nothing says it is not.
    pub fn exceeded<'a>(&self, report: &'a ImpactReport) -> Vec<&'a PathTally> {
        report
            .paths
            .iter()
            .filter(|path| {
                (path.changed + path.unknown) as f64 * 100.0
                    > self.max_changed_percent * path.replayed as f64
            })
            .collect()
    }
}

impl PathTally {
    /// "payments/authz/allow: 3 of 20 decisions (15.0%)".
    pub fn describe(&self) -> String {
        let moved = self.changed + self.unknown;
        let percent = moved as f64 * 100.0 / self.replayed.max(1) as f64;
        let unknown = match self.unknown {
            0 => String::new(),
            n => format!(", {n} of them unknown"),
        };
        format!(
            "{}: {moved} of {} decisions ({percent:.1}%){unknown}",
            self.path, self.replayed
        )
    }
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
    let mut paths: BTreeMap<&str, PathTally> = BTreeMap::new();
    let mut report = ImpactReport::default();
    for decision in decisions {
        report.replayed += 1;
        let tally = paths.entry(&decision.path).or_insert_with(|| PathTally {
            path: decision.path.clone(),
            ..PathTally::default()
        });
        tally.replayed += 1;
        let input = decision.input.as_deref();
        let before = active.decide(&decision.path, input);
        let after = candidate.decide(&decision.path, input);
        let group = match (before, after) {
            (Replayed::Unknown(reason), _) | (_, Replayed::Unknown(reason)) => {
                report.unknown += 1;
                tally.unknown += 1;
                unknowns.entry((decision.path.clone(), reason)).or_default()
            }
            (Replayed::Decided(before), Replayed::Decided(after)) if before != after => {
                report.changed += 1;
                tally.changed += 1;
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
    report.paths = paths.into_values().collect();
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
        assert_eq!(
            report.paths,
            [PathTally {
                path: "payments/authz/allow".into(),
                replayed: 10,
                changed: 4,
                unknown: 0
            }]
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
    fn the_gate_admits_its_bound_and_refuses_past_it() {
        let gate = ImpactGate::new("gate", 10.0, 1000).unwrap();
        let report = |changed, unknown| ImpactReport {
            paths: vec![PathTally {
                path: "payments/authz/allow".into(),
                replayed: 20,
                changed,
                unknown,
            }],
            ..ImpactReport::default()
        };
        assert!(gate.exceeded(&report(2, 0)).is_empty());
        assert!(gate.exceeded(&report(1, 1)).is_empty());
        let over = report(2, 1);
        let exceeded = gate.exceeded(&over);
        assert_eq!(exceeded.len(), 1);
        assert_eq!(
            exceeded[0].describe(),
            "payments/authz/allow: 3 of 20 decisions (15.0%), 1 of them unknown"
        );
        assert!(ImpactGate::new("gate", 100.5, 1000).is_err());
        assert!(ImpactGate::new("gate", f64::NAN, 1000).is_err());
        assert!(ImpactGate::new("gate", 1.0, 0).is_err());
        assert!(ImpactGate::new("gate", 1.0, MAX_REPLAYED + 1).is_err());
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
