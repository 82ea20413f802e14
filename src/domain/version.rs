//! Versions, their states and labels.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Digest, Error, PolicyBody, PolicyRef, Requirement, Result};

/// Where a version row is in its lifecycle. Rows only move
/// `Draft -> Published | Superseded | Discarded`; every other state is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VersionState {
    /// Work in progress; at most one per policy.
    Draft,
    /// Immutable and signed; the only state that can be activated.
    Published,
    /// Replaced by a newer draft.
    Superseded,
    /// Abandoned.
    Discarded,
}

impl VersionState {
    /// Every state, in lifecycle order.
    pub const ALL: [VersionState; 4] = [
        VersionState::Draft,
        VersionState::Published,
        VersionState::Superseded,
        VersionState::Discarded,
    ];

    /// The name used in storage and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Draft => "DRAFT",
            VersionState::Published => "PUBLISHED",
            VersionState::Superseded => "SUPERSEDED",
            VersionState::Discarded => "DISCARDED",
        }
    }

    /// Whether a row in this state may move to `next`.
    pub fn can_become(self, next: VersionState) -> bool {
        self == VersionState::Draft && next != VersionState::Draft
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VersionState {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        VersionState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| Error::Internal(format!("unknown version state {text:?}")))
    }
}

/// A release label: a semantic version such as `1.5.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(semver::Version);

/// Longest release label (the column is 128 characters wide).
pub const MAX_LABEL_CHARS: usize = 128;

impl Label {
    /// Parses a label, naming `field` in the error.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        if text.chars().count() > MAX_LABEL_CHARS {
            return Err(Error::invalid(
                field,
                format!(
                    "label {} is {} characters long, at most {MAX_LABEL_CHARS} are allowed",
                    super::quoted(text),
                    text.chars().count()
                ),
            ));
        }
        let version = semver::Version::parse(text).map_err(|error| {
            Error::invalid(
                field,
                format!(
                    "label {} is not a semantic version such as 1.5.0: {error}",
                    super::quoted(text)
                ),
            )
        })?;
        if !version.build.is_empty() {
            // Build metadata does not take part in semver precedence, so
            // `1.0.0+a` and `1.0.0+b` would be different labels for the same
            // release.
            return Err(Error::invalid(
                field,
                format!(
                    "label {} must not carry build metadata (+…)",
                    super::quoted(text)
                ),
            ));
        }
        Ok(Label(version))
    }

    /// The semantic version, for range matching.
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl TryFrom<String> for Label {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        Label::parse("label", &text)
    }
}

impl From<Label> for String {
    fn from(label: Label) -> String {
        label.0.to_string()
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Names one version of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionSelector {
    /// By number.
    Number(u32),
    /// By release label.
    Label(Label),
}

impl fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSelector::Number(number) => write!(f, "version {number}"),
            VersionSelector::Label(label) => write!(f, "label {label}"),
        }
    }
}

/// The signature stamped on a version when it is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    /// Subject that published it.
    pub published_by: String,
    /// When.
    pub published_at: DateTime<Utc>,
    /// The signed bundle, JWS compact serialization.
    pub jws: String,
    /// Thumbprint of the signing key.
    pub key_id: String,
}

/// One version row as the domain sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Which policy.
    pub policy: PolicyRef,
    /// 1, 2, 3 … per policy.
    pub version: u32,
    /// Lifecycle state.
    pub state: VersionState,
    /// The document, its canonical form and digest.
    pub body: PolicyBody,
    /// Release label, given at publish.
    pub label: Option<Label>,
    /// Free text from the author.
    pub change_notes: String,
    /// Subject that created the draft.
    pub created_by: String,
    /// When the draft was created.
    pub created_at: DateTime<Utc>,
    /// Set once published.
    pub publication: Option<Publication>,
    /// Whether the policy's active pointer names this version.
    pub active: bool,
    /// Other policies of the namespace it needs active beside it.
    pub requirements: Vec<Requirement>,
}

impl VersionRecord {
    /// The digest of the body.
    pub fn digest(&self) -> &Digest {
        self.body.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_drafts_move_and_never_back_to_draft() {
        use VersionState::*;
        for next in [Published, Superseded, Discarded] {
            assert!(Draft.can_become(next));
        }
        assert!(!Draft.can_become(Draft));
        for final_state in [Published, Superseded, Discarded] {
            for next in [Draft, Published, Superseded, Discarded] {
                assert!(!final_state.can_become(next), "{final_state} -> {next}");
            }
        }
    }

    #[test]
    fn labels_are_semantic_versions_without_build_metadata() {
        assert_eq!(Label::parse("label", "1.5.0").unwrap().to_string(), "1.5.0");
        assert!(Label::parse("label", "1.5.0-rc.1").is_ok());
        for bad in ["1.5", "v1.5.0", "", "1.0.0+build"] {
            assert!(Label::parse("label", bad).is_err(), "{bad}");
        }
    }
}
