//! Decisions OPAs made and uploaded (docs/src/guides/decisions.md): what
//! impact analysis replays.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::runtime::RuntimeId;
use super::{Error, Result, canonical_json, refuse_nul};

/// Longest decision id kept (OPA's are UUIDs).
pub const MAX_DECISION_ID_BYTES: usize = 128;

/// Longest rule path kept.
pub const MAX_DECISION_PATH_BYTES: usize = 512;

/// A decision as uploaded: its input and result as canonical JSON, so that
/// equal values are equal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// OPA's id of the decision.
    pub id: String,
    /// The OPA that made it.
    pub runtime: RuntimeId,
    /// The rule path queried, `/`-separated, without `data/`.
    pub path: String,
    /// The input, when there was one.
    pub input: Option<String>,
    /// The result; `None` for an undefined decision.
    pub result: Option<String>,
    /// The revision of the namespace's bundle that made it, when the OPA
    /// named one of this server's.
    pub revision: Option<u64>,
    /// When the OPA made it.
    pub decided_at: DateTime<Utc>,
}

impl Decision {
    /// The decision `field` (`decisions[i]`) names, its id and path
    /// checked, the path without leading or trailing `/`.
    pub fn checked(mut self, field: &str) -> Result<Self> {
        bounded(
            &format!("{field}.decision_id"),
            &self.id,
            MAX_DECISION_ID_BYTES,
        )?;
        self.path = self.path.trim_matches('/').to_owned();
        bounded(
            &format!("{field}.path"),
            &self.path,
            MAX_DECISION_PATH_BYTES,
        )?;
        Ok(self)
    }
}

/// Refuses an empty text, one over `max` bytes, or one holding NUL.
fn bounded(field: &str, text: &str, max: usize) -> Result<()> {
    if text.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if text.len() > max {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, at most {max} are allowed", text.len()),
        ));
    }
    refuse_nul(field, text)
}

/// What keeping an upload did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    /// Decisions kept: those whose id the namespace did not hold.
    pub kept: u64,
    /// Decisions dropped because the namespace held more than its count.
    pub dropped_by_count: u64,
    /// Decisions dropped because they were received too long ago.
    pub dropped_by_age: u64,
}

/// A decision as stored: the upload's, and when it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    pub decision: Decision,
    pub received_at: DateTime<Utc>,
}

/// Which decisions a listing (or a replay) takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionFilter {
    /// Only this rule path.
    pub path: Option<String>,
    /// Only this result.
    pub result: Option<ResultMatch>,
    /// Only this OPA's.
    pub runtime: Option<RuntimeId>,
    /// Only those made with the bundle at this revision.
    pub revision: Option<u64>,
    /// Only those made at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only those made at or before this instant.
    pub until: Option<DateTime<Utc>>,
}

/// A result a listing matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultMatch {
    /// Undefined decisions.
    Undefined,
    /// Decisions whose result is this canonical JSON.
    Equals(String),
}

impl ResultMatch {
    /// `undefined`, or a JSON value, from `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        if text == "undefined" {
            return Ok(ResultMatch::Undefined);
        }
        serde_json::from_str::<Value>(text)
            .map(|value| ResultMatch::Equals(canonical_json(&value)))
            .map_err(|error| {
                Error::invalid(field, format!("is neither JSON nor \"undefined\": {error}"))
            })
    }
}
