//! What an OPA's status report says of the bundle it was given
//! (docs/src/guides/opa.md#status): OPA reports the revision of the bundle
//! it runs and the error of its last download or activation, not the
//! versions it holds, so its outcomes are read against the bundle this
//! server gives it now.

use std::collections::BTreeMap;

use super::{ApplyState, MAX_REJECTION_ERROR_BYTES, PolicyOutcome, RuntimeRecord};
use crate::domain::PolicyName;

/// What an OPA reported of its namespace's bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaBundleReport {
    /// The manifest revision of the bundle it runs; `None` when it runs
    /// none of this server's (a revision that is not a number).
    pub active_revision: Option<u64>,
    /// OPA's text when it downloaded a bundle and failed to activate it:
    /// a failed download (policyhub unreachable, a refused signature) is
    /// not the versions' fault and is not a rejection.
    pub activation_error: Option<String>,
}

/// The bundle an OPA is given: its manifest revision and the version of
/// each policy it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaDue {
    /// The manifest revision.
    pub revision: u64,
    /// Per policy, the version.
    pub versions: BTreeMap<PolicyName, u32>,
}

impl OpaBundleReport {
    /// The revision and outcomes the report amounts to, for a runtime
    /// `held` as it stands, given the bundle `due` to it: a failed
    /// activation rejects the versions of `due` the runtime had not
    /// applied, at `due`'s revision; running `due`'s revision applies every
    /// version of it; running an older one says only that. `None` when the
    /// report says nothing of this server's bundles.
    pub fn outcomes(
        &self,
        due: &OpaDue,
        held: Option<&RuntimeRecord>,
    ) -> Option<(u64, Vec<(PolicyName, PolicyOutcome)>)> {
        let outcome = |version: u32, state: ApplyState, error: &str| PolicyOutcome {
            version,
            state,
            error: error.to_owned(),
            revision: due.revision,
            reported_at: None,
        };
        if let Some(error) = &self.activation_error {
            let applied = |name: &PolicyName, version: u32| {
                held.and_then(|record| record.policies.get(name))
                    .is_some_and(|outcome| {
                        outcome.state == ApplyState::Applied && outcome.version == version
                    })
            };
            let rejected = due
                .versions
                .iter()
                .filter(|(name, version)| !applied(name, **version))
                .map(|(name, version)| {
                    (name.clone(), outcome(*version, ApplyState::Rejected, error))
                })
                .collect();
            return Some((due.revision, rejected));
        }
        let active = self.active_revision.filter(|revision| *revision > 0)?;
        if active != due.revision {
            return Some((active.min(due.revision), Vec::new()));
        }
        let applied = due
            .versions
            .iter()
            .map(|(name, version)| (name.clone(), outcome(*version, ApplyState::Applied, "")))
            .collect();
        Some((due.revision, applied))
    }
}

/// OPA's error text, cut to what a rejection keeps.
pub fn rejection_text(message: &str, errors: &[String]) -> String {
    let mut text = message.trim().to_owned();
    for error in errors {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(error.trim());
    }
    if text.is_empty() {
        text = "OPA could not activate the bundle".to_owned();
    }
    if text.len() > MAX_REJECTION_ERROR_BYTES {
        let mut end = MAX_REJECTION_ERROR_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> PolicyName {
        PolicyName::parse("name", text).unwrap()
    }

    fn due() -> OpaDue {
        OpaDue {
            revision: 7,
            versions: [(name("authz"), 3), (name("limits"), 2)].into(),
        }
    }

    fn record(applied: &[(&str, u32)]) -> RuntimeRecord {
        RuntimeRecord {
            namespace: crate::domain::Namespace::parse("namespace", "payments").unwrap(),
            id: super::super::RuntimeId::parse("id", "opa-1").unwrap(),
            subject: "opa".into(),
            labels: Default::default(),
            names: Vec::new(),
            connected: true,
            replica: "r".into(),
            last_seen: chrono::Utc::now(),
            applied_revision: 5,
            policies: applied
                .iter()
                .map(|(policy, version)| {
                    (
                        name(policy),
                        PolicyOutcome {
                            version: *version,
                            state: ApplyState::Applied,
                            error: String::new(),
                            revision: 5,
                            reported_at: None,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn running_the_due_revision_applies_every_version_of_it() {
        let report = OpaBundleReport {
            active_revision: Some(7),
            activation_error: None,
        };
        let (revision, outcomes) = report.outcomes(&due(), None).unwrap();
        assert_eq!(revision, 7);
        let states: Vec<_> = outcomes
            .iter()
            .map(|(name, outcome)| (name.as_str(), outcome.version, outcome.state))
            .collect();
        assert_eq!(
            states,
            [
                ("authz", 3, ApplyState::Applied),
                ("limits", 2, ApplyState::Applied)
            ]
        );
    }

    #[test]
    fn a_failed_activation_rejects_only_the_versions_not_applied_before() {
        let report = OpaBundleReport {
            active_revision: Some(5),
            activation_error: Some("rego_type_error".into()),
        };
        let held = record(&[("authz", 2), ("limits", 2)]);
        let (revision, outcomes) = report.outcomes(&due(), Some(&held)).unwrap();
        assert_eq!(revision, 7);
        assert_eq!(outcomes.len(), 1);
        let (policy, outcome) = &outcomes[0];
        assert_eq!(policy.as_str(), "authz");
        assert_eq!(
            (outcome.version, outcome.state, outcome.error.as_str()),
            (3, ApplyState::Rejected, "rego_type_error")
        );
    }

    #[test]
    fn an_older_revision_says_only_that_and_none_says_nothing() {
        let behind = OpaBundleReport {
            active_revision: Some(5),
            activation_error: None,
        };
        assert_eq!(behind.outcomes(&due(), None), Some((5, Vec::new())));
        let foreign = OpaBundleReport {
            active_revision: None,
            activation_error: None,
        };
        assert_eq!(foreign.outcomes(&due(), None), None);
    }

    #[test]
    fn rejection_text_joins_and_bounds_opas_errors() {
        assert_eq!(
            rejection_text(
                "1 error occurred",
                &["authz.rego:3: rego_type_error".into()]
            ),
            "1 error occurred; authz.rego:3: rego_type_error"
        );
        assert_eq!(rejection_text("", &[]), "OPA could not activate the bundle");
        let long = rejection_text(&"é".repeat(2000), &[]);
        assert!(long.len() <= MAX_REJECTION_ERROR_BYTES && long.ends_with('…'));
    }
}
