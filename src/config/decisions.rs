//! How long the decisions OPAs upload are kept
//! (docs/src/guides/decisions.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The retention of uploaded decisions, per namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionSettings {
    /// Most decisions a namespace keeps: an upload beyond it drops the
    /// oldest received.
    pub max_per_namespace: u64,
    /// Decisions received longer ago than this are dropped at the
    /// namespace's next upload and never listed.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for DecisionSettings {
    fn default() -> Self {
        DecisionSettings {
            max_per_namespace: 100_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}
