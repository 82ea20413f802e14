//! The lifecycle rules of DESIGN §2 as small pure functions, so that the
//! storage transaction that enforces them reads as a sequence of checks.

use super::{Error, PolicyRef, Result, VersionRecord, VersionState};

/// Only a draft can be published or discarded.
pub fn ensure_draft(record: &VersionRecord, operation: &str) -> Result<()> {
    if record.state == VersionState::Draft {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "cannot {operation} version {} of {}: it is {}, only a draft can be {operation}ed",
        record.version,
        record.policy,
        record.state.as_str().to_lowercase()
    )))
}

/// Only a published version can be active.
pub fn ensure_published(record: &VersionRecord) -> Result<()> {
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

/// Compare-and-swap on the active pointer; `Some(0)` expects nothing active.
pub fn ensure_expected_active(
    policy: &PolicyRef,
    expected: Option<u32>,
    actual: Option<u32>,
) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let actual_number = actual.unwrap_or(0);
    if expected == actual_number {
        return Ok(());
    }
    let describe = |number: u32| match number {
        0 => "no version".to_owned(),
        number => format!("version {number}"),
    };
    Err(Error::Aborted(format!(
        "{policy}: expected {} to be active, but {} is",
        describe(expected),
        describe(actual_number)
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
    fn compare_and_swap_treats_zero_as_nothing_active() {
        assert!(ensure_expected_active(&policy(), None, Some(3)).is_ok());
        assert!(ensure_expected_active(&policy(), Some(0), None).is_ok());
        assert!(ensure_expected_active(&policy(), Some(3), Some(3)).is_ok());
        let error = ensure_expected_active(&policy(), Some(2), Some(3)).unwrap_err();
        assert_eq!(
            error,
            Error::Aborted(
                "payments/limits: expected version 2 to be active, but version 3 is".into()
            )
        );
        assert!(matches!(
            ensure_expected_active(&policy(), Some(0), Some(1)),
            Err(Error::Aborted(_))
        ));
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
