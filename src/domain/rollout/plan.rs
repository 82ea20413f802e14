//! Validating a rollout before anything is written.

use chrono::{DateTime, Utc};

use super::{
    FailureRule, MAX_APPLY_DEADLINE, MAX_BAKE, MAX_START_DELAY, MAX_STEPS, RolloutStep,
    RolloutTarget,
};
use crate::domain::lifecycle::{PointerChange, ensure_expected_active, ensure_published};
use crate::domain::runtime::LabelSelector;
use crate::domain::{Error, Result};

/// Decides a rollout's targets as `Activate` would decide the move, and
/// pins each by digest: no live rollout may hold the policy, the target
/// must be published, meet the compare-and-swap and the schema; some other
/// version must be active (the stable one that runtimes outside the cohort
/// keep).
pub fn plan_targets(changes: &[PointerChange<'_>]) -> Result<Vec<RolloutTarget>> {
    changes
        .iter()
        .map(|change| {
            let policy = change.policy;
            policy.ensure_free("start a rollout of")?;
            ensure_published(change.target)?;
            ensure_expected_active(&policy.policy, change.expected, policy.active)?;
            policy.check_schema(change.target)?;
            if policy.active.is_none() {
                return Err(Error::precondition(format!(
                    "nothing of {} is active yet: a rollout replaces a stable version, so \
                     activate the first one directly",
                    policy.policy
                )));
            }
            if policy.active_version() == Some(change.target.version) {
                return Err(Error::precondition(format!(
                    "version {} of {} is already active: there is nothing to roll out",
                    change.target.version, policy.policy
                )));
            }
            Ok(RolloutTarget {
                policy: policy.policy.clone(),
                version: change.target.version,
                digest: change.target.digest().clone(),
                stable_version: policy.active_version(),
            })
        })
        .collect()
}

/// Checks a scheduled start: in the past means now; at most 90 days ahead.
pub fn validate_start(start_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<()> {
    match start_at {
        Some(start_at) if start_at - now > MAX_START_DELAY => Err(Error::invalid(
            "start_at",
            format!("is {start_at}, at most 90 days ahead is allowed"),
        )),
        _ => Ok(()),
    }
}

/// Checks a plan before anything is written.
pub fn validate_plan(steps: &[RolloutStep], rule: &FailureRule) -> Result<()> {
    if steps.is_empty() {
        return Err(Error::invalid("steps", "a rollout needs at least one step"));
    }
    if steps.len() > MAX_STEPS {
        return Err(Error::invalid(
            "steps",
            format!("{} steps, at most {MAX_STEPS} are allowed", steps.len()),
        ));
    }
    let mut previous = 0;
    for (index, step) in steps.iter().enumerate() {
        let field = format!("steps[{index}]");
        if step.percentage == 0 || step.percentage > 100 {
            return Err(Error::invalid(
                format!("{field}.percentage"),
                format!("is {}, it must be 1 to 100", step.percentage),
            ));
        }
        if step.percentage <= previous {
            return Err(Error::invalid(
                format!("{field}.percentage"),
                format!(
                    "is {}, not above the previous step's {previous}: a step only adds runtimes",
                    step.percentage
                ),
            ));
        }
        previous = step.percentage;
        LabelSelector::parse(&format!("{field}.label_selector"), &step.label_selector)?;
        if step.bake > MAX_BAKE {
            return Err(Error::invalid(
                format!("{field}.bake"),
                format!(
                    "is {}, at most {} is allowed",
                    humantime::format_duration(step.bake),
                    humantime::format_duration(MAX_BAKE)
                ),
            ));
        }
    }
    if !(0.0..=1.0).contains(&rule.max_rejected_fraction) {
        return Err(Error::invalid(
            "failure_rule.max_rejected_fraction",
            format!("is {}, it must be 0 to 1", rule.max_rejected_fraction),
        ));
    }
    if rule.apply_deadline > MAX_APPLY_DEADLINE {
        return Err(Error::invalid(
            "failure_rule.apply_deadline",
            format!(
                "is {}, at most {} is allowed",
                humantime::format_duration(rule.apply_deadline),
                humantime::format_duration(MAX_APPLY_DEADLINE)
            ),
        ));
    }
    Ok(())
}
