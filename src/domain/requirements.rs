//! Requirements between the policies of one namespace: a version may need
//! other policies active beside it, each at a release inside a semver
//! range. The rules: no cycles (checked at Draft), something published to
//! satisfy each range (at Publish), and no change of active pointers that
//! leaves an active version's requirement unmet (at Activate, Rollback and
//! rollout start), judged on the state after the change as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Error, Label, Namespace, PolicyName, Precondition, Result, VersionRecord};

/// Most requirements of one version.
pub const MAX_REQUIREMENTS: usize = 32;

/// Another policy of the namespace that must be active, at a release whose
/// label is in `range`, wherever the requiring version is active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The required policy.
    pub name: PolicyName,
    /// The releases that satisfy it.
    #[serde(with = "range_text")]
    pub range: semver::VersionReq,
}

mod range_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(range: &semver::VersionReq, out: S) -> Result<S::Ok, S::Error> {
        out.collect_str(range)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        input: D,
    ) -> Result<semver::VersionReq, D::Error> {
        let text = String::deserialize(input)?;
        semver::VersionReq::parse(&text).map_err(D::Error::custom)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.range)
    }
}

impl Requirement {
    /// Parses the `(name, range)` pairs of a draft of a policy in
    /// `namespace`; a name with a namespace of its own is out of scope.
    pub fn parse_all(
        namespace: &Namespace,
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<Requirement>> {
        let mut requirements: Vec<Requirement> = Vec::new();
        for (index, (name, range)) in entries.into_iter().enumerate() {
            if index == MAX_REQUIREMENTS {
                return Err(Error::invalid(
                    "requirements",
                    format!("at most {MAX_REQUIREMENTS} requirements per version"),
                ));
            }
            let field = format!("requirements[{index}]");
            if let Some((other, _)) = name.split_once('/')
                && other != namespace.as_str()
            {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    format!(
                        "names a policy of namespace {}; a version can only require \
                         policies of its own namespace ({namespace})",
                        super::quoted(other)
                    ),
                ));
            }
            let name = name.strip_prefix(&format!("{namespace}/")).unwrap_or(&name);
            let name = PolicyName::parse(&format!("{field}.name"), name)?;
            if range.trim().is_empty() {
                return Err(Error::invalid(
                    format!("{field}.range"),
                    "is empty; use \"*\" for any release",
                ));
            }
            let range = semver::VersionReq::parse(&range).map_err(|error| {
                Error::invalid(
                    format!("{field}.range"),
                    format!(
                        "{} is not a semver range ({error}); write e.g. \">=1.5.0, <2\"",
                        super::quoted(&range)
                    ),
                )
            })?;
            if requirements.iter().any(|earlier| earlier.name == name) {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    format!("{name} is required twice; give one range"),
                ));
            }
            requirements.push(Requirement { name, range });
        }
        Ok(requirements)
    }

    /// Whether a release labelled `label` satisfies this requirement.
    pub fn accepts(&self, label: Option<&Label>) -> bool {
        label.is_some_and(|label| self.range.matches(label.semver()))
    }
}

/// Refuses requirements that close a cycle through `policy`, naming it:
/// `requires` holds the requirements of every other policy's latest version.
pub fn ensure_acyclic(
    policy: &PolicyName,
    requirements: &[Requirement],
    requires: &BTreeMap<PolicyName, Vec<PolicyName>>,
) -> Result<()> {
    // Depth-first from each direct requirement, back to `policy`.
    let mut stack: Vec<Vec<&PolicyName>> = requirements
        .iter()
        .map(|requirement| vec![policy, &requirement.name])
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = *path.last().expect("paths are never empty");
        if last == policy {
            let names: Vec<String> = path.iter().map(ToString::to_string).collect();
            return Err(Error::refused_by(
                Precondition::Requirements,
                format!("the requirements form a cycle: {}", names.join(" -> ")),
            ));
        }
        if !seen.insert(last) {
            continue;
        }
        for next in requires.get(last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next);
            stack.push(longer);
        }
    }
    Ok(())
}

/// Refuses publishing a version whose requirements nothing published
/// satisfies: `published` holds the release labels of each required policy
/// that exists.
pub fn ensure_satisfiable(
    requirements: &[Requirement],
    published: &BTreeMap<PolicyName, Vec<Label>>,
) -> Result<()> {
    let missing: Vec<String> = requirements
        .iter()
        .filter_map(|requirement| match published.get(&requirement.name) {
            None => Some(format!("{} does not exist", requirement.name)),
            Some(labels) if !labels.iter().any(|label| requirement.accepts(Some(label))) => {
                Some(format!(
                    "{} has no published release in {}",
                    requirement.name, requirement.range
                ))
            }
            Some(_) => None,
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::refused_by(
        Precondition::Requirements,
        format!("its requirements cannot be met: {}", missing.join("; ")),
    ))
}

/// An active version as requirements see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRelease {
    /// Version number.
    pub version: u32,
    /// Its release label.
    pub label: Option<Label>,
    /// What it requires.
    pub requirements: Vec<Requirement>,
}

impl fmt::Display for ActiveRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.label {
            Some(label) => write!(f, "version {} ({label})", self.version),
            None => write!(f, "version {} (no release label)", self.version),
        }
    }
}

/// Refuses moving the pointers of `namespace`'s policies to `targets` when
/// an active version's requirement would be unmet afterwards. `active` is
/// every active version of the namespace now; the view after the change
/// puts each target in place of its policy's active version, and only the
/// requirements of or on the moved policies are judged.
pub fn ensure_met_after(
    namespace: &Namespace,
    mut active: BTreeMap<PolicyName, ActiveRelease>,
    targets: &[&VersionRecord],
) -> Result<()> {
    let mut changed = BTreeSet::new();
    for target in targets {
        debug_assert_eq!(&target.policy.namespace, namespace);
        changed.insert(&target.policy.name);
        let release = ActiveRelease {
            version: target.version,
            label: target.label.clone(),
            requirements: target.requirements.clone(),
        };
        active.insert(target.policy.name.clone(), release);
    }
    if active
        .values()
        .all(|release| release.requirements.is_empty())
    {
        return Ok(());
    }
    ensure_met(namespace, &active, &changed)
}

/// Refuses a change of active pointers that leaves a requirement unmet:
/// `after` is every active version of `namespace` once the change is made,
/// and only requirements of or on the `changed` policies are judged.
fn ensure_met(
    namespace: &Namespace,
    after: &BTreeMap<PolicyName, ActiveRelease>,
    changed: &BTreeSet<&PolicyName>,
) -> Result<()> {
    let mut unmet = Vec::new();
    for (dependant, release) in after {
        for requirement in &release.requirements {
            if !changed.contains(dependant) && !changed.contains(&requirement.name) {
                continue;
            }
            let found = after.get(&requirement.name);
            if found.is_some_and(|found| requirement.accepts(found.label.as_ref())) {
                continue;
            }
            let instead = match found {
                Some(found) => format!("{namespace}/{} would be at {found}", requirement.name),
                None => format!("{namespace}/{} would not be active", requirement.name),
            };
            unmet.push(format!(
                "{namespace}/{dependant} {release} requires {namespace}/{requirement}, but {instead}"
            ));
        }
    }
    if unmet.is_empty() {
        return Ok(());
    }
    Err(Error::refused_by(
        Precondition::Requirements,
        format!(
            "the change would leave requirements unmet: {}",
            unmet.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> Namespace {
        Namespace::parse("namespace", "team").unwrap()
    }

    fn name(text: &str) -> PolicyName {
        PolicyName::parse("name", text).unwrap()
    }

    fn requires(text: &str, range: &str) -> Requirement {
        Requirement::parse_all(&namespace(), [(text.to_owned(), range.to_owned())])
            .unwrap()
            .remove(0)
    }

    fn release(version: u32, label: &str, requirements: Vec<Requirement>) -> ActiveRelease {
        ActiveRelease {
            version,
            label: Some(Label::parse("label", label).unwrap()),
            requirements,
        }
    }

    #[test]
    fn requirements_parse_within_their_namespace_once_each() {
        let parsed = requires("team/discovery", ">=1.5.0, <2");
        assert_eq!(parsed.to_string(), "discovery >=1.5.0, <2");
        let refused = |entries: Vec<(&str, &str)>| {
            let entries = entries
                .into_iter()
                .map(|(name, range)| (name.to_owned(), range.to_owned()));
            Requirement::parse_all(&namespace(), entries).unwrap_err()
        };
        for (entries, field) in [
            (vec![("other/discovery", "*")], "requirements[0].name"),
            (vec![("Bad Name", "*")], "requirements[0].name"),
            (vec![("a", "")], "requirements[0].range"),
            (vec![("a", "one")], "requirements[0].range"),
            (vec![("a", "*"), ("a", "^1")], "requirements[1].name"),
        ] {
            let Error::InvalidArgument(violations) = refused(entries) else {
                panic!("not invalid");
            };
            assert_eq!(violations[0].field, field);
        }
        let many = (0..=MAX_REQUIREMENTS).map(|n| (format!("p{n}"), "*".to_owned()));
        assert!(Requirement::parse_all(&namespace(), many).is_err());
    }

    #[test]
    fn a_cycle_is_named() {
        let graph = BTreeMap::from([(name("b"), vec![name("c")]), (name("c"), vec![name("a")])]);
        let error = ensure_acyclic(&name("a"), &[requires("b", "*")], &graph).unwrap_err();
        assert!(error.to_string().contains("a -> b -> c -> a"), "{error}");
        assert!(ensure_acyclic(&name("a"), &[requires("a", "*")], &BTreeMap::new()).is_err());
        assert!(ensure_acyclic(&name("d"), &[requires("b", "*")], &graph).is_ok());
    }

    #[test]
    fn publish_needs_a_release_in_each_range() {
        let published =
            BTreeMap::from([(name("b"), vec![Label::parse("label", "1.4.0").unwrap()])]);
        assert!(ensure_satisfiable(&[requires("b", ">=1.0")], &published).is_ok());
        let error = ensure_satisfiable(&[requires("b", ">=1.5"), requires("c", "*")], &published)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("b has no published release in >=1.5"),
            "{error}"
        );
        assert!(error.contains("c does not exist"), "{error}");
    }

    #[test]
    fn the_state_after_the_change_is_judged_as_a_whole() {
        let b_old = release(1, "1.0.0", Vec::new());
        let b_new = release(2, "2.0.0", Vec::new());
        let a = release(3, "1.0.0", vec![requires("b", "^2")]);
        let (a_name, b_name) = (name("a"), name("b"));
        let changed_a = BTreeSet::from([&a_name]);
        // a alone while b is at 1.0.0: refused, naming the chain.
        let after = BTreeMap::from([(name("a"), a.clone()), (name("b"), b_old.clone())]);
        let error = ensure_met(&namespace(), &after, &changed_a)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("team/a version 3 (1.0.0) requires team/b ^2, but team/b would be at version 1 (1.0.0)"),
            "{error}"
        );
        // Both together: accepted.
        let after = BTreeMap::from([(name("a"), a.clone()), (name("b"), b_new)]);
        let both = BTreeSet::from([&a_name, &b_name]);
        assert!(ensure_met(&namespace(), &after, &both).is_ok());
        // Moving b back below the range breaks a, which did not change.
        let after = BTreeMap::from([(name("a"), a), (name("b"), b_old)]);
        let changed_b = BTreeSet::from([&b_name]);
        assert!(ensure_met(&namespace(), &after, &changed_b).is_err());
    }
}
