//! Command-line values that name policies and versions: `namespace/name`,
//! `namespace/name@3`, `namespace/name@1.2.0`. Each parser refuses a bad
//! value before any call is made, so clap reports it as a usage error.

use crate::domain::{Label, Namespace, PolicyRef, VersionSelector};
use crate::grpc::proto;

/// A policy written `namespace/name`.
pub fn parse_policy(text: &str) -> Result<PolicyRef, String> {
    let (namespace, name) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not namespace/name, such as payments/card-limits"))?;
    PolicyRef::parse(namespace, name).map_err(|error| error.to_string())
}

/// A namespace.
pub fn parse_namespace(text: &str) -> Result<Namespace, String> {
    Namespace::parse("namespace", text).map_err(|error| error.to_string())
}

/// A release label, a semantic version such as `1.5.0`.
pub fn parse_label(text: &str) -> Result<Label, String> {
    Label::parse("label", text).map_err(|error| error.to_string())
}

/// One version of one policy: `namespace/name@3` or `namespace/name@1.2.0`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The policy.
    pub policy: PolicyRef,
    /// Which of its versions.
    pub selector: VersionSelector,
}

/// A version number (digits only) or a label.
pub fn parse_selector(text: &str) -> Result<VersionSelector, String> {
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return match text.parse() {
            Ok(0) => Err("versions start at 1: write a version number or a label".to_owned()),
            Ok(number) => Ok(VersionSelector::Number(number)),
            Err(_) => Err(format!("version {text} is too large")),
        };
    }
    parse_label(text).map(VersionSelector::Label)
}

/// Splits `namespace/name@selector`.
fn split_at_selector(text: &str) -> Result<(PolicyRef, &str), String> {
    let (policy, selector) = text.rsplit_once('@').ok_or_else(|| {
        format!("{text:?} names no version: write namespace/name@3 or namespace/name@1.2.0")
    })?;
    Ok((parse_policy(policy)?, selector))
}

/// A [`Target`].
pub fn parse_target(text: &str) -> Result<Target, String> {
    let (policy, selector) = split_at_selector(text)?;
    Ok(Target {
        policy,
        selector: parse_selector(selector)?,
    })
}

/// A compare-and-swap expectation, `namespace/name@N`: version N must be
/// active (0: nothing is).
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The policy.
    pub policy: PolicyRef,
    /// The version that must be active.
    pub active_version: u32,
}

/// An [`Expectation`].
pub fn parse_expectation(text: &str) -> Result<Expectation, String> {
    let (policy, version) = split_at_selector(text)?;
    let active_version = version.parse().map_err(|_| {
        format!("{text:?}: the expected active version is a number (0 when nothing is active)")
    })?;
    Ok(Expectation {
        policy,
        active_version,
    })
}

/// What `policyhub events` lists: a namespace, or one policy.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every policy of a namespace.
    Namespace(Namespace),
    /// One policy.
    Policy(PolicyRef),
}

/// A [`Scope`]: `namespace` or `namespace/name`.
pub fn parse_scope(text: &str) -> Result<Scope, String> {
    if text.contains('/') {
        parse_policy(text).map(Scope::Policy)
    } else {
        parse_namespace(text).map(Scope::Namespace)
    }
}

/// An event kind as the CLI spells it: `activated`, `rolled-back`, …
pub fn parse_event_kind(text: &str) -> Result<proto::EventKind, String> {
    let name = format!("EVENT_KIND_{}", text.to_ascii_uppercase().replace('-', "_"));
    proto::EventKind::from_str_name(&name)
        .filter(|kind| *kind != proto::EventKind::Unspecified)
        .ok_or_else(|| {
            format!(
                "{text:?} is not an event kind: use one of {}",
                event_kind_names().join(", ")
            )
        })
}

/// Every event kind as the CLI spells it, read from the API's enum so that
/// a new kind is offered as soon as it exists.
fn event_kind_names() -> Vec<String> {
    (1..)
        .map_while(|number| proto::EventKind::try_from(number).ok())
        .map(|kind| {
            kind.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_ascii_lowercase()
                .replace('_', "-")
        })
        .collect()
}

/// The protobuf selector of an activation target.
pub fn activation_selector(selector: &VersionSelector) -> proto::activation_target::Selector {
    match selector {
        VersionSelector::Number(number) => proto::activation_target::Selector::Version(*number),
        VersionSelector::Label(label) => {
            proto::activation_target::Selector::Label(label.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_a_number_or_a_label() {
        let by_number = parse_target("payments/card-limits@3").unwrap();
        assert_eq!(by_number.policy.to_string(), "payments/card-limits");
        assert_eq!(by_number.selector, VersionSelector::Number(3));
        let by_label = parse_target("payments/card-limits@1.2.0").unwrap();
        assert_eq!(by_label.selector.to_string(), "label 1.2.0");
    }

    #[test]
    fn bad_targets_say_how_to_write_them() {
        for (text, expected) in [
            ("payments/card-limits", "names no version"),
            ("card-limits@1", "not namespace/name"),
            ("payments/card-limits@1.2", "not a semantic version"),
            ("Payments/card-limits@1", "namespace"),
            ("payments/card-limits@0", "versions start at 1"),
        ] {
            let error = parse_target(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn expectations_are_version_numbers() {
        assert_eq!(
            parse_expectation("payments/limits@0")
                .unwrap()
                .active_version,
            0
        );
        assert!(parse_expectation("payments/limits@1.0.0").is_err());
    }

    #[test]
    fn event_kinds_are_spelt_in_kebab_case() {
        assert_eq!(
            parse_event_kind("rolled-back").unwrap(),
            proto::EventKind::RolledBack
        );
        assert!(parse_event_kind("unspecified").is_err());
        let refused = parse_event_kind("deleted").unwrap_err();
        for offered in [
            "draft-created",
            "rollout-approved",
            "schedule-already-active",
        ] {
            assert!(refused.contains(offered), "{refused}");
            assert!(parse_event_kind(offered).is_ok(), "{offered}");
        }
    }
}
