//! Validated requests and their outcomes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    ActivePointer, Digest, Error, Label, PolicyBody, PolicyRef, PolicySchema, Requirement, Result,
    VersionRecord, VersionSelector,
};

/// Who is asking, and under which request id; recorded in every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// Authenticated subject.
    pub actor: String,
    /// The caller's `x-request-id`, or one the server generated.
    pub request_id: String,
}

/// A client-chosen key that makes a mutation safe to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

/// Fingerprint of a request: the digest of its canonical JSON. Two requests
/// with the same fingerprint are the same request.
pub fn fingerprint(method: &str, command: &impl Serialize) -> Digest {
    let value = serde_json::json!({ "method": method, "command": command });
    Digest::of_canonical(super::body::canonical_json(&value).as_bytes())
}

/// Create the next draft of a policy.
#[derive(Debug, Clone, Serialize)]
pub struct DraftCommand {
    /// The policy; created by its first draft.
    pub policy: PolicyRef,
    /// The document.
    pub body: PolicyBody,
    /// Free text describing the change.
    pub change_notes: String,
    /// Other policies of the namespace the version needs active beside it.
    pub requirements: Vec<Requirement>,
}

/// What a draft did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftOutcome {
    /// The new draft.
    pub version: VersionRecord,
    /// The open draft it superseded.
    pub superseded_version: Option<u32>,
}

/// Discard the open draft.
#[derive(Debug, Clone, Serialize)]
pub struct DiscardCommand {
    /// The policy.
    pub policy: PolicyRef,
    /// The draft to discard; `None` for the open one.
    pub version: Option<u32>,
    /// Why.
    pub reason: String,
}

/// Publish a draft, optionally activating it.
#[derive(Debug, Clone, Serialize)]
pub struct PublishCommand {
    /// The policy.
    pub policy: PolicyRef,
    /// The draft to publish; `None` for the open one.
    pub version: Option<u32>,
    /// Release label.
    pub label: Option<Label>,
    /// Also activate it in the same transaction.
    pub activate: bool,
    /// With `activate`: compare-and-swap on the active version.
    pub expected_active_version: ExpectedActive,
    /// Why.
    pub reason: String,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishOutcome {
    /// The published version.
    pub version: VersionRecord,
    /// The label was already released with the same digest; nothing new was
    /// published.
    pub already_published: bool,
    /// The activation, when requested.
    pub activation: Option<ActivationOutcome>,
}

/// A compare-and-swap on a policy's active pointer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedActive {
    /// Whatever is active.
    #[default]
    Any,
    /// Only when nothing is active.
    Nothing,
    /// Only when this version is active.
    Version(u32),
    /// Only when the pointer last moved at this revision (and, when given,
    /// to this version): etcd's `mod_revision` compare. Unlike a version,
    /// which can be active twice (a rollback, then a re-activation), a
    /// revision names one move of the pointer.
    Moved {
        /// The revision of the pointer's last move.
        revision: u64,
        /// The version it moved to, when the caller names it too.
        version: Option<u32>,
    },
}

impl ExpectedActive {
    /// From the wire's `optional uint32 expected_active_version` and
    /// `optional uint64 expected_active_revision`, where 0 expects nothing
    /// active (as etcd compares a missing key's version with 0).
    pub fn from_wire(version: Option<u32>, revision: Option<u64>) -> Self {
        match (version, revision) {
            (None, None) => ExpectedActive::Any,
            (Some(0), None | Some(0)) | (None, Some(0)) => ExpectedActive::Nothing,
            (Some(version), None) => ExpectedActive::Version(version),
            (version, Some(revision)) => ExpectedActive::Moved { revision, version },
        }
    }

    /// Whether `active` meets the expectation.
    pub fn admits(self, active: Option<ActivePointer>) -> bool {
        match self {
            ExpectedActive::Any => true,
            ExpectedActive::Nothing => active.is_none(),
            ExpectedActive::Version(version) => {
                active.is_some_and(|pointer| pointer.version == version)
            }
            ExpectedActive::Moved { revision, version } => active.is_some_and(|pointer| {
                pointer.revision == revision && version.is_none_or(|v| v == pointer.version)
            }),
        }
    }
}

/// One policy to point at a published version.
#[derive(Debug, Clone, Serialize)]
pub struct ActivationTarget {
    /// The policy.
    pub policy: PolicyRef,
    /// The published version.
    pub version: VersionSelector,
    /// Compare-and-swap on the active version.
    pub expected_active_version: ExpectedActive,
}

/// Activate several policies at once.
#[derive(Debug, Clone, Serialize)]
pub struct ActivateCommand {
    /// Distinct policies, all moved under one revision or none.
    pub targets: Vec<ActivationTarget>,
    /// Why.
    pub reason: String,
}

/// Roll a policy back.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackCommand {
    /// The policy.
    pub policy: PolicyRef,
    /// The version to return to; `None` for the previously active one.
    pub to_version: Option<u32>,
    /// Why; required.
    pub reason: String,
    /// Compare-and-swap on the active version.
    pub expected_active_version: ExpectedActive,
    /// Copy the target forward as a new version instead of moving the
    /// pointer back to it.
    pub restore: bool,
}

/// Set or remove a policy's schema.
#[derive(Debug, Clone)]
pub struct SetSchemaCommand {
    /// The policy; created if needed.
    pub policy: PolicyRef,
    /// The schema, `None` to remove it.
    pub schema: Option<PolicySchema>,
    /// Why.
    pub reason: String,
    /// Change nothing; only say which versions the schema would reject.
    pub dry_run: bool,
}

/// How one policy's pointer moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    /// The policy.
    pub policy: PolicyRef,
    /// Version now active.
    pub version: u32,
    /// Version active before.
    pub previous_version: Option<u32>,
}

/// What an activation transaction did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationOutcome {
    /// The revision of the transaction; when nothing moved, the revision at
    /// which the newest target became active.
    pub revision: u64,
    /// One per target, in request order.
    pub activations: Vec<Activation>,
    /// The bundles whose pointer moved, for the in-memory index. Not kept
    /// with an idempotent reply: a replay moves nothing.
    #[serde(skip)]
    pub changed: Vec<ActiveBundle>,
}

impl ActivationOutcome {
    /// Whether any pointer moved (an activation of what is already active
    /// moves nothing and takes no revision).
    pub fn moved(&self) -> bool {
        self.activations
            .iter()
            .any(|activation| activation.previous_version != Some(activation.version))
    }
}

/// A policy's active signed bundle, as held in memory and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveBundle {
    /// The policy.
    pub policy: PolicyRef,
    /// Active version.
    pub version: u32,
    /// Its label.
    pub label: Option<Label>,
    /// Its digest.
    pub digest: Digest,
    /// The JWS, shared by every reader instead of copied.
    pub jws: Arc<str>,
    /// Signing key.
    pub key_id: String,
    /// Revision at which it became active.
    pub revision: u64,
}

/// A policy's pointers, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySummary {
    /// The policy.
    pub policy: PolicyRef,
    /// Active version and the revision that made it active.
    pub active: Option<(u32, u64)>,
    /// The active version's label, if it has one.
    pub active_label: Option<String>,
    /// Open draft.
    pub draft_version: Option<u32>,
    /// Highest version ever created.
    pub latest_version: u32,
    /// The schema document.
    pub schema: Option<serde_json::Value>,
}

/// A revision a request names, within what the log holds: revisions are
/// stored in 63 bits, so a larger number names none and is refused where
/// it enters, never handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(u64);

impl Revision {
    /// The largest revision the log can hold.
    pub const MAX: u64 = i64::MAX as u64;

    /// `value`, sent as `field`, as a revision; INVALID_ARGUMENT above
    /// [`Revision::MAX`].
    pub fn parse(field: &str, value: u64) -> Result<Revision> {
        if value > Revision::MAX {
            return Err(Error::invalid(
                field,
                format!(
                    "revision {value} is past any the log can hold (at most {})",
                    Revision::MAX
                ),
            ));
        }
        Ok(Revision(value))
    }

    /// Its number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<Revision> for i64 {
    fn from(revision: Revision) -> i64 {
        // At most `Revision::MAX`, by construction.
        revision.0 as i64
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// When `GetActive` should look.
#[derive(Debug, Clone, Copy)]
pub enum AsOf {
    /// Once this revision was applied.
    Revision(Revision),
    /// At this instant.
    Time(chrono::DateTime<chrono::Utc>),
}

/// A page of results and the token for the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass back for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Which namespaces a listing covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Every namespace (and deployment-wide events).
    #[default]
    All,
    /// One namespace.
    One(super::Namespace),
    /// These namespaces only: what a caller may read.
    Among(Vec<super::Namespace>),
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Which namespaces.
    pub scope: NamespaceScope,
    /// Only this policy name (with a namespace).
    pub name: Option<super::PolicyName>,
    /// Only these kinds; empty for all.
    pub kinds: Vec<super::EventKind>,
    /// Only this actor, exactly.
    pub actor: Option<String>,
    /// Only events at or after this instant.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events at or before this instant; never before `since`.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What storage writes as a signed 64-bit number: a revision past it
    /// is refused where it enters.
    #[test]
    fn a_revision_is_at_most_what_the_log_holds() {
        let largest = Revision::parse("as_of_revision", i64::MAX as u64).unwrap();
        assert_eq!(i64::from(largest), i64::MAX);
        for past in [i64::MAX as u64 + 1, u64::MAX] {
            let refused = Revision::parse("as_of_revision", past).unwrap_err();
            assert!(
                matches!(&refused, Error::InvalidArgument(violations) if violations[0].field == "as_of_revision"),
                "{refused:?}"
            );
        }
        assert_eq!(Revision::parse("revision", 7).unwrap().get(), 7);
    }
}
