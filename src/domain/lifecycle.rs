//! The lifecycle rules (docs/src/contributing/design.md#domain) as pure
//! functions over loaded state: the application loads what a request touches,
//! asks these what to write, and storage writes it.

use super::{
    Activation, Error, EventKind, ExpectedActive, Label, PolicyRef, PolicySchema, Precondition,
    Result, VersionRecord, VersionState,
};

/// What a decision needs to know about one policy, as loaded (and locked)
/// in the transaction that will write the decision.
#[derive(Debug, Clone)]
pub struct PolicyState {
    /// The policy.
    pub policy: PolicyRef,
    /// The schema every version must satisfy to be published or activated.
    pub schema: Option<PolicySchema>,
    /// The active version and the revision that made it active.
    pub active: Option<ActivePointer>,
    /// The live rollout that holds the policy: no other rollout, activation
    /// or rollback may move it meanwhile.
    pub rollout: Option<String>,
}

/// Where a policy's active pointer points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivePointer {
    /// The active version.
    pub version: u32,
    /// The revision that made it active.
    pub revision: u64,
}

impl PolicyState {
    /// The active version, if any.
    pub fn active_version(&self) -> Option<u32> {
        self.active.map(|pointer| pointer.version)
    }

    /// Refuses to move a policy a live rollout holds.
    pub fn ensure_free(&self, operation: &str) -> Result<()> {
        match &self.rollout {
            None => Ok(()),
            Some(rollout) => Err(Error::refused_by(
                Precondition::Rollout,
                format!(
                    "cannot {operation} {}: rollout {rollout} is moving it; promote, abort or \
                     wait for that rollout first",
                    self.policy
                ),
            )),
        }
    }

    /// Refuses a body the policy's schema rejects.
    pub(super) fn check_schema(&self, version: &VersionRecord) -> Result<()> {
        match &self.schema {
            Some(schema) => schema.check(
                &format!("version {} of {}", version.version, self.policy),
                &version.body,
            ),
            None => Ok(()),
        }
    }
}

/// The draft a request acts on: the one it named (found, or the read
/// already said NOT_FOUND), else the open draft, which `found` is `None`
/// without.
pub fn ensure_draft<T>(policy: &PolicyRef, found: Option<T>, operation: &str) -> Result<T> {
    found.ok_or_else(|| Error::precondition(format!("{policy} has no open draft to {operation}")))
}

/// The number of a policy's next draft, given the highest ever created:
/// numbers are never reused.
pub fn next_version(latest: Option<u32>) -> u32 {
    latest.unwrap_or(0) + 1
}

/// Refuses to move a version to `next` unless its state allows it (only a
/// draft moves, and never back to a draft).
pub fn ensure_transition(
    record: &VersionRecord,
    next: VersionState,
    operation: &str,
) -> Result<()> {
    if record.state.can_become(next) {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "cannot {operation} version {} of {}: it is {}, only a draft can be {operation}ed",
        record.version,
        record.policy,
        record.state.as_str().to_lowercase()
    )))
}

/// What publishing a draft comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum PublishPlan {
    /// Sign the draft and release it.
    Release,
    /// The label was already released with the same content: that release
    /// is the answer, and the draft is left as it is.
    AlreadyReleased(Box<VersionRecord>),
}

/// Decides a publish: the draft must be a draft; a label already released
/// is the same release when the content is the same and a conflict
/// otherwise (released versions are immutable); the schema must pass.
/// `released` is the version already carrying `label`, if any.
pub fn plan_publish(
    policy: &PolicyState,
    draft: &VersionRecord,
    label: Option<&Label>,
    released: Option<VersionRecord>,
) -> Result<PublishPlan> {
    ensure_transition(draft, VersionState::Published, "publish")?;
    if let (Some(label), Some(released)) = (label, released) {
        if released.digest() == draft.digest() {
            return Ok(PublishPlan::AlreadyReleased(Box::new(released)));
        }
        return Err(Error::AlreadyExists(format!(
            "label {label} of {} was already released as version {} with digest {}, \
             and this draft's digest is {}: released versions are immutable, bump the version",
            policy.policy,
            released.version,
            released.digest(),
            draft.digest()
        )));
    }
    policy.check_schema(draft)?;
    Ok(PublishPlan::Release)
}

/// One policy's pointer to move, as requested.
#[derive(Debug, Clone)]
pub struct PointerChange<'a> {
    /// The policy, as loaded.
    pub policy: &'a PolicyState,
    /// The version to point at.
    pub target: &'a VersionRecord,
    /// The caller's compare-and-swap.
    pub expected: ExpectedActive,
}

/// What an activation transaction writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationPlan {
    /// One per change, in request order.
    pub activations: Vec<Activation>,
    /// The indexes of the changes whose pointer actually moves; empty when
    /// everything requested is already active, and then nothing is written.
    pub moving: Vec<usize>,
    /// With nothing moving: the revision at which the newest target became
    /// active, which the reply names.
    pub current_revision: u64,
}

/// Decides an activation (or a rollback, `kind`): no live rollout may hold
/// a target's policy, every target must be published, pass its policy's
/// schema and meet the caller's compare-and-swap; pointers already at their
/// target do not move.
pub fn plan_activation(kind: EventKind, changes: &[PointerChange<'_>]) -> Result<ActivationPlan> {
    let operation = match kind {
        EventKind::RolledBack => "roll back",
        _ => "activate",
    };
    for change in changes {
        change.policy.ensure_free(operation)?;
        ensure_published(change.target)?;
        ensure_expected_active(&change.policy.policy, change.expected, change.policy.active)?;
        change.policy.check_schema(change.target)?;
    }
    let activations = changes
        .iter()
        .map(|change| Activation {
            policy: change.policy.policy.clone(),
            version: change.target.version,
            previous_version: change.policy.active_version(),
        })
        .collect();
    let moving = changes
        .iter()
        .enumerate()
        .filter(|(_, change)| change.policy.active_version() != Some(change.target.version))
        .map(|(index, _)| index)
        .collect();
    let current_revision = changes
        .iter()
        .filter_map(|change| change.policy.active.map(|pointer| pointer.revision))
        .max()
        .unwrap_or(0);
    Ok(ActivationPlan {
        activations,
        moving,
        current_revision,
    })
}

/// Only a published version can be active.
pub(super) fn ensure_published(record: &VersionRecord) -> Result<()> {
    if record.state == VersionState::Published {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "cannot activate version {} of {}: it is {}, only published versions can be active",
        record.version,
        record.policy,
        record.state.as_str().to_lowercase()
    )))
}

/// Compare-and-swap on the active pointer.
pub(super) fn ensure_expected_active(
    policy: &PolicyRef,
    expected: ExpectedActive,
    actual: Option<ActivePointer>,
) -> Result<()> {
    if expected.admits(actual) {
        return Ok(());
    }
    let wanted = match expected {
        ExpectedActive::Any => unreachable!("any active version is admitted"),
        ExpectedActive::Nothing => "no version".to_owned(),
        ExpectedActive::Version(number) => format!("version {number}"),
        ExpectedActive::Moved {
            revision,
            version: None,
        } => format!("the version activated at revision {revision}"),
        ExpectedActive::Moved {
            revision,
            version: Some(number),
        } => format!("version {number} as activated at revision {revision}"),
    };
    let found = match actual {
        None => "no version is".to_owned(),
        Some(pointer) => format!(
            "version {} is, activated at revision {}",
            pointer.version, pointer.revision
        ),
    };
    Err(Error::Aborted(format!(
        "{policy}: expected {wanted} to be active, but {found}"
    )))
}

/// The version a rollback returns to: `to_version` when given, otherwise the
/// version that was active before the current one (like `kubectl rollout
/// undo`, so two rollbacks in a row toggle between the last two versions).
pub fn rollback_target(
    policy: &PolicyRef,
    current: Option<u32>,
    previously_active: Option<u32>,
    to_version: Option<u32>,
) -> Result<u32> {
    let Some(current) = current else {
        return Err(Error::precondition(format!(
            "cannot roll back {policy}: no version is active"
        )));
    };
    let target = match (to_version, previously_active) {
        (Some(target), _) => target,
        (None, Some(previous)) => previous,
        (None, None) => {
            return Err(Error::precondition(format!(
                "cannot roll back {policy}: version {current} is the first version ever active; \
                 pass to_version"
            )));
        }
    };
    if target == current {
        return Err(Error::precondition(format!(
            "cannot roll back {policy} to version {target}: it is already active"
        )));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicyRef {
        PolicyRef::parse("payments", "limits").unwrap()
    }

    #[test]
    fn compare_and_swap_tells_nothing_active_from_any() {
        use ExpectedActive::*;
        let at = |version, revision| Some(ActivePointer { version, revision });
        assert!(ensure_expected_active(&policy(), Any, at(3, 3)).is_ok());
        assert!(ensure_expected_active(&policy(), Any, None).is_ok());
        assert!(ensure_expected_active(&policy(), Nothing, None).is_ok());
        assert!(ensure_expected_active(&policy(), Version(3), at(3, 5)).is_ok());
        let error = ensure_expected_active(&policy(), Version(2), at(3, 3)).unwrap_err();
        assert_eq!(
            error,
            Error::Aborted(
                "payments/limits: expected version 2 to be active, but version 3 is, \
                 activated at revision 3"
                    .into()
            )
        );
        for refused in [
            ensure_expected_active(&policy(), Nothing, at(1, 1)),
            ensure_expected_active(&policy(), Version(1), None),
        ] {
            assert!(matches!(refused, Err(Error::Aborted(_))), "{refused:?}");
        }
    }

    #[test]
    fn compare_and_swap_on_the_revision_tells_two_activations_of_one_version_apart() {
        let moved = |revision, version| ExpectedActive::Moved { revision, version };
        // Version 3 activated at revision 3, rolled back, activated again at 5.
        let now = Some(ActivePointer {
            version: 3,
            revision: 5,
        });
        assert!(ensure_expected_active(&policy(), moved(5, Some(3)), now).is_ok());
        assert!(ensure_expected_active(&policy(), moved(5, None), now).is_ok());
        for stale in [moved(3, Some(3)), moved(3, None), moved(5, Some(2))] {
            assert!(
                matches!(
                    ensure_expected_active(&policy(), stale, now),
                    Err(Error::Aborted(_))
                ),
                "{stale:?}"
            );
        }
        assert!(ensure_expected_active(&policy(), moved(5, None), None).is_err());
        assert_eq!(
            ExpectedActive::from_wire(None, Some(0)),
            ExpectedActive::Nothing
        );
        assert_eq!(
            ExpectedActive::from_wire(Some(3), Some(5)),
            moved(5, Some(3))
        );
    }

    #[test]
    fn rollback_defaults_to_the_previously_active_version() {
        assert_eq!(rollback_target(&policy(), Some(3), Some(2), None), Ok(2));
        assert_eq!(rollback_target(&policy(), Some(3), Some(2), Some(1)), Ok(1));
        for refused in [
            rollback_target(&policy(), None, None, Some(1)),
            rollback_target(&policy(), Some(1), None, None),
            rollback_target(&policy(), Some(3), Some(2), Some(3)),
        ] {
            assert!(
                matches!(refused, Err(Error::FailedPrecondition { .. })),
                "{refused:?}"
            );
        }
    }
}
