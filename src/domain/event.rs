//! The append-only audit log.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};

use super::{Error, Result};

/// What a recorded mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A draft version was created.
    DraftCreated,
    /// An open draft was replaced by a newer one.
    DraftSuperseded,
    /// An open draft was discarded.
    DraftDiscarded,
    /// A draft was published and signed.
    Published,
    /// The active pointer moved forward.
    Activated,
    /// The active pointer moved back.
    RolledBack,
    /// The JSON Schema was set or removed.
    SchemaSet,
    /// A new signing key started to sign.
    KeyRotated,
    /// A rollout started its first step.
    RolloutStarted,
    /// A rollout started its next step.
    RolloutAdvanced,
    /// A rollout was paused.
    RolloutPaused,
    /// A paused rollout was resumed.
    RolloutResumed,
    /// A rollout completed (its ACTIVATED events record the move).
    RolloutCompleted,
    /// A rollout was aborted.
    RolloutAborted,
    /// A rollout's failure rule sent its cohort the stable versions.
    RolloutRolledBack,
    /// A rollout was created and waits for approvals or its start time.
    RolloutScheduled,
    /// A rollout was approved by one more principal.
    RolloutApproved,
    /// A schedule naming the policy was saved.
    ScheduleSet,
    /// A schedule naming the policy was paused, by an operator or by a
    /// refused firing.
    SchedulePaused,
    /// A schedule naming the policy was resumed.
    ScheduleResumed,
    /// A schedule naming the policy was deleted.
    ScheduleDeleted,
    /// A schedule's firing found the version it activates already active:
    /// nothing moved.
    ScheduleAlreadyActive,
    /// An archive was imported.
    Imported,
    /// A webhook subscription was disabled after failing repeatedly.
    SubscriptionDisabled,
    /// A runtime reported that it refused a version.
    RuntimeRejected,
    /// An operator declared the deployment restored from a backup.
    Restored,
    /// A signing key was revoked: it left the published keys, and every
    /// version it signed was signed again by the signing key.
    KeyRevoked,
    /// A version signed by a revoked key was signed again by the signing
    /// key; with a revision when it is active and so sent again.
    ReSigned,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 28] = [
        EventKind::DraftCreated,
        EventKind::DraftSuperseded,
        EventKind::DraftDiscarded,
        EventKind::Published,
        EventKind::Activated,
        EventKind::RolledBack,
        EventKind::SchemaSet,
        EventKind::KeyRotated,
        EventKind::RolloutStarted,
        EventKind::RolloutAdvanced,
        EventKind::RolloutPaused,
        EventKind::RolloutResumed,
        EventKind::RolloutCompleted,
        EventKind::RolloutAborted,
        EventKind::RolloutRolledBack,
        EventKind::RolloutScheduled,
        EventKind::RolloutApproved,
        EventKind::ScheduleSet,
        EventKind::SchedulePaused,
        EventKind::ScheduleResumed,
        EventKind::ScheduleDeleted,
        EventKind::ScheduleAlreadyActive,
        EventKind::Imported,
        EventKind::SubscriptionDisabled,
        EventKind::RuntimeRejected,
        EventKind::Restored,
        EventKind::KeyRevoked,
        EventKind::ReSigned,
    ];

    /// The name used in storage and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DraftCreated => "DRAFT_CREATED",
            EventKind::DraftSuperseded => "DRAFT_SUPERSEDED",
            EventKind::DraftDiscarded => "DRAFT_DISCARDED",
            EventKind::Published => "PUBLISHED",
            EventKind::Activated => "ACTIVATED",
            EventKind::RolledBack => "ROLLED_BACK",
            EventKind::SchemaSet => "SCHEMA_SET",
            EventKind::KeyRotated => "KEY_ROTATED",
            EventKind::RolloutStarted => "ROLLOUT_STARTED",
            EventKind::RolloutAdvanced => "ROLLOUT_ADVANCED",
            EventKind::RolloutPaused => "ROLLOUT_PAUSED",
            EventKind::RolloutResumed => "ROLLOUT_RESUMED",
            EventKind::RolloutCompleted => "ROLLOUT_COMPLETED",
            EventKind::RolloutAborted => "ROLLOUT_ABORTED",
            EventKind::RolloutRolledBack => "ROLLOUT_ROLLED_BACK",
            EventKind::RolloutScheduled => "ROLLOUT_SCHEDULED",
            EventKind::RolloutApproved => "ROLLOUT_APPROVED",
            EventKind::ScheduleSet => "SCHEDULE_SET",
            EventKind::SchedulePaused => "SCHEDULE_PAUSED",
            EventKind::ScheduleResumed => "SCHEDULE_RESUMED",
            EventKind::ScheduleDeleted => "SCHEDULE_DELETED",
            EventKind::ScheduleAlreadyActive => "SCHEDULE_ALREADY_ACTIVE",
            EventKind::Imported => "IMPORTED",
            EventKind::SubscriptionDisabled => "SUBSCRIPTION_DISABLED",
            EventKind::RuntimeRejected => "RUNTIME_REJECTED",
            EventKind::Restored => "RESTORED",
            EventKind::KeyRevoked => "KEY_REVOKED",
            EventKind::ReSigned => "RE_SIGNED",
        }
    }

    /// Whether events of this kind move an active pointer (and so carry a
    /// revision).
    pub fn moves_active_pointer(self) -> bool {
        matches!(self, EventKind::Activated | EventKind::RolledBack)
    }

    /// Whether events of this kind, with a revision, send their version
    /// again at it: a pointer move, or an active version signed again.
    pub fn sends_a_bundle(self) -> bool {
        self.moves_active_pointer() || self == EventKind::ReSigned
    }

    /// Whether events of this kind change what a rollout's runtimes are
    /// sent (and so carry a revision).
    pub fn moves_a_rollout(self) -> bool {
        matches!(
            self,
            EventKind::RolloutStarted
                | EventKind::RolloutAdvanced
                | EventKind::RolloutCompleted
                | EventKind::RolloutAborted
                | EventKind::RolloutRolledBack
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| Error::Internal(format!("unknown event kind {text:?}")))
    }
}

/// The longest actor an event can have: the longest subject a caller can
/// present, a client certificate's SPIFFE ID (a token's `sub` is shorter).
pub const MAX_ACTOR_BYTES: usize = 2048;

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Position in the log.
    pub id: u64,
    /// What happened.
    pub kind: EventKind,
    /// Namespace and name of the policy; the name is empty for an event of
    /// a namespace but of no policy in it (a namespace's subscription
    /// disabled), as in the API; `None` for deployment-wide events.
    pub policy: Option<(String, String)>,
    /// Subject that caused it.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Reason given by the actor.
    pub reason: String,
    /// Request that caused it.
    pub request_id: String,
    /// Version moved away from.
    pub previous_version: Option<u32>,
    /// Version concerned or moved to.
    pub new_version: Option<u32>,
    /// Revision of the activation.
    pub revision: Option<u64>,
    /// Signing key concerned.
    pub key_id: Option<String>,
    /// The rollout concerned.
    pub rollout_id: Option<String>,
    /// Its link in the hash chain (see `chain`); empty for an event written
    /// before the chain existed and not yet sealed.
    pub hash: String,
}
