//! What an OPA's status report says of the bundle it was given
//! (docs/src/guides/opa.md#status): OPA reports the manifest revision of
//! the bundle it runs, which names the version of each policy it holds,
//! and the error of its last download or activation, which names nothing:
//! a failed activation is read against the bundle this server gives it now.

use std::collections::BTreeMap;

use super::{ApplyState, MAX_REJECTION_ERROR_BYTES, PolicyOutcome};
use crate::domain::PolicyName;

/// What an OPA reported of its namespace's bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaBundleReport {
    /// The bundle it runs, read from its manifest revision; `None` when it
    /// runs none of this server's.
    pub active: Option<OpaDue>,
    /// OPA's text when it downloaded a bundle and failed to activate it:
    /// a failed download (policyhub unreachable, a refused signature) is
    /// not the versions' fault and is not a rejection.
    pub activation_error: Option<String>,
}

/// A bundle an OPA is given: its revision and the version of each policy
/// it holds, which its manifest revision spells (`12;authz@3;limits@2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaDue {
    /// The revision that last changed the namespace.
    pub revision: u64,
    /// Per policy, the version.
    pub versions: BTreeMap<PolicyName, u32>,
}

impl OpaDue {
    /// The manifest revision that names this bundle.
    pub fn manifest_revision(&self) -> String {
        let mut text = self.revision.to_string();
        for (name, version) in &self.versions {
            text.push_str(&format!(";{name}@{version}"));
        }
        text
    }

    /// The bundle a manifest revision names, if it is one of this server's.
    pub fn from_manifest_revision(text: &str) -> Option<OpaDue> {
        let mut parts = text.split(';');
        let revision = parts.next()?.parse().ok()?;
        let versions = parts
            .map(|part| {
                let (name, version) = part.split_once('@')?;
                Some((PolicyName::parse("name", name).ok()?, version.parse().ok()?))
            })
            .collect::<Option<_>>()?;
        Some(OpaDue { revision, versions })
    }
}

impl OpaBundleReport {
    /// The revision and outcomes the report amounts to, given the bundle
    /// `due` to the runtime now. A failed activation rejects the versions
    /// of `due` that the bundle it runs does not hold, at `due`'s revision:
    /// one reported again after the namespace moved back to what it runs
    /// rejects nothing. Otherwise every version of the bundle it runs is
    /// applied, at that bundle's revision. `None` when the report says
    /// nothing of this server's bundles.
    pub fn outcomes(&self, due: &OpaDue) -> Option<(u64, Vec<(PolicyName, PolicyOutcome)>)> {
        let outcome = |version: u32, state: ApplyState, error: &str, revision: u64| PolicyOutcome {
            version,
            state,
            error: error.to_owned(),
            revision,
            reported_at: None,
        };
        if let Some(error) = &self.activation_error {
            let runs = |name: &PolicyName, version: u32| {
                self.active
                    .as_ref()
                    .is_some_and(|active| active.versions.get(name) == Some(&version))
            };
            let rejected: Vec<_> = due
                .versions
                .iter()
                .filter(|(name, version)| !runs(name, **version))
                .map(|(name, version)| {
                    let rejected = outcome(*version, ApplyState::Rejected, error, due.revision);
                    (name.clone(), rejected)
                })
                .collect();
            if !rejected.is_empty() {
                return Some((due.revision, rejected));
            }
        }
        let active = self.active.as_ref()?;
        let applied = active
            .versions
            .iter()
            .map(|(name, version)| {
                let applied = outcome(*version, ApplyState::Applied, "", active.revision);
                (name.clone(), applied)
            })
            .collect();
        Some((active.revision, applied))
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

    fn bundle(revision: u64, versions: &[(&str, u32)]) -> OpaDue {
        OpaDue {
            revision,
            versions: versions
                .iter()
                .map(|(policy, version)| (name(policy), *version))
                .collect(),
        }
    }

    fn states(outcomes: &[(PolicyName, PolicyOutcome)]) -> Vec<(&str, u32, ApplyState, u64)> {
        outcomes
            .iter()
            .map(|(name, outcome)| {
                (
                    name.as_str(),
                    outcome.version,
                    outcome.state,
                    outcome.revision,
                )
            })
            .collect()
    }

    #[test]
    fn the_manifest_revision_names_the_versions_and_reads_back() {
        let due = bundle(12, &[("authz", 3), ("limits", 2)]);
        assert_eq!(due.manifest_revision(), "12;authz@3;limits@2");
        assert_eq!(
            OpaDue::from_manifest_revision("12;authz@3;limits@2"),
            Some(due)
        );
        assert_eq!(OpaDue::from_manifest_revision("4"), Some(bundle(4, &[])));
        for foreign in ["", "v1", "12;authz", "12;authz@x", "12;Authz@1"] {
            assert_eq!(OpaDue::from_manifest_revision(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn the_bundle_it_runs_is_applied_at_its_revision() {
        let report = OpaBundleReport {
            active: Some(bundle(5, &[("authz", 2), ("limits", 2)])),
            activation_error: None,
        };
        let due = bundle(7, &[("authz", 3), ("limits", 2)]);
        let (revision, outcomes) = report.outcomes(&due).unwrap();
        assert_eq!(revision, 5);
        assert_eq!(
            states(&outcomes),
            [
                ("authz", 2, ApplyState::Applied, 5),
                ("limits", 2, ApplyState::Applied, 5)
            ]
        );
    }

    #[test]
    fn a_failed_activation_rejects_what_the_bundle_it_runs_lacks() {
        let report = OpaBundleReport {
            active: Some(bundle(5, &[("authz", 2), ("limits", 2)])),
            activation_error: Some("rego_type_error".into()),
        };
        let due = bundle(7, &[("authz", 3), ("limits", 2)]);
        let (revision, outcomes) = report.outcomes(&due).unwrap();
        assert_eq!(revision, 7);
        assert_eq!(states(&outcomes), [("authz", 3, ApplyState::Rejected, 7)]);
        assert_eq!(outcomes[0].1.error, "rego_type_error");
        // The same report once the namespace is back to what it runs.
        let back = bundle(8, &[("authz", 2), ("limits", 2)]);
        let (revision, outcomes) = report.outcomes(&back).unwrap();
        assert_eq!(revision, 5);
        assert!(
            outcomes
                .iter()
                .all(|(_, outcome)| outcome.state == ApplyState::Applied)
        );
        // An OPA that never ran a bundle of this server's.
        let first = OpaBundleReport {
            active: None,
            activation_error: Some("rego_type_error".into()),
        };
        let (_, outcomes) = first.outcomes(&due).unwrap();
        assert_eq!(outcomes.len(), 2);
        let foreign = OpaBundleReport {
            active: None,
            activation_error: None,
        };
        assert_eq!(foreign.outcomes(&due), None);
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
