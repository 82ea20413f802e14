//! Runtime labels and label selectors, in Kubernetes syntax, so that a
//! selector an operator writes for kubectl works here unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// Most labels of one runtime.
pub const MAX_RUNTIME_LABELS: usize = 16;

/// Checks a Kubernetes label name or value: alphanumerics at both ends,
/// `-`, `_` and `.` in between, at most 63 characters.
fn is_label_segment(text: &str) -> bool {
    text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A Kubernetes label key: a name with an optional DNS-subdomain prefix, as
/// in `topology.kubernetes.io/region`.
fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    is_label_segment(part) && !part.contains('_') && part == part.to_lowercase()
                })
                && is_label_segment(name)
        }
        None => is_label_segment(key),
    }
}

/// The labels of a runtime, in Kubernetes label syntax.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeLabels(BTreeMap<String, String>);

impl RuntimeLabels {
    /// Parses labels, naming `field` in the errors.
    pub fn parse(field: &str, labels: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        if labels.len() > MAX_RUNTIME_LABELS {
            return Err(Error::invalid(
                field,
                format!(
                    "{} labels, at most {MAX_RUNTIME_LABELS} are allowed",
                    labels.len()
                ),
            ));
        }
        for (key, value) in &labels {
            if !is_label_key(key) {
                return Err(Error::invalid(
                    format!("{field}[{key:.63}]"),
                    "label key is not valid: at most 63 letters, digits, '-', '_' and '.', \
                     starting and ending with a letter or digit, with an optional DNS prefix and '/'",
                ));
            }
            if !value.is_empty() && !is_label_segment(value) {
                return Err(Error::invalid(
                    format!("{field}[{key}]"),
                    "label value is not valid: at most 63 letters, digits, '-', '_' and '.', \
                     starting and ending with a letter or digit",
                ));
            }
        }
        Ok(RuntimeLabels(labels))
    }

    /// The labels.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A Kubernetes equality-based label selector: `region=eu,tier!=canary,build,!legacy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses a selector; empty selects everything.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        let mut requirements = Vec::new();
        for term in text
            .split(',')
            .map(str::trim)
            .filter(|term| !term.is_empty())
        {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().into())
            } else {
                Requirement::Exists(term.into())
            };
            let (Requirement::Equals(key, _)
            | Requirement::NotEquals(key, _)
            | Requirement::Exists(key)
            | Requirement::NotExists(key)) = &requirement;
            if !is_label_key(key) {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{} is not a label requirement: use key=value, key!=value, key or !key",
                        super::quoted(term)
                    ),
                ));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &RuntimeLabels) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => labels.get(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value.as_str()),
            Requirement::Exists(key) => labels.get(key).is_some(),
            Requirement::NotExists(key) => labels.get(key).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_kubernetes_syntax() {
        let parse = |pairs: &[(&str, &str)]| {
            RuntimeLabels::parse(
                "labels",
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            )
        };
        assert!(parse(&[("region", "eu-west-1"), ("example.com/build", "")]).is_ok());
        assert!(parse(&[("bad key", "x")]).is_err());
        assert!(parse(&[("k", "-x")]).is_err());
        let many: Vec<(String, String)> = (0..17).map(|n| (format!("k{n}"), "v".into())).collect();
        assert!(RuntimeLabels::parse("labels", many).is_err());
    }

    #[test]
    fn selectors_match_like_kubernetes_equality_selectors() {
        let labels = RuntimeLabels::parse(
            "labels",
            [
                ("region".into(), "eu".into()),
                ("tier".into(), "web".into()),
            ],
        )
        .unwrap();
        let matches = |text: &str| LabelSelector::parse("s", text).unwrap().matches(&labels);
        assert!(matches(""));
        assert!(matches("region=eu"));
        assert!(matches("region==eu, tier"));
        assert!(matches("region!=us,!canary"));
        assert!(!matches("region=us"));
        assert!(!matches("tier,!region"));
        assert!(LabelSelector::parse("s", "a b=c").is_err());
    }
}
