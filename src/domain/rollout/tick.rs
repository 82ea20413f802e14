//! The controller's decision for one rollout at one instant.

use chrono::{DateTime, Utc};

use super::analysis::{Measurement, Verdict, judge};
use super::{Rollout, RolloutState};
use crate::domain::runtime::{ApplyState, RuntimeRecord};
use crate::domain::{Error, Result};

/// What a controller tick decides for a running rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Tick {
    /// Nothing to do yet.
    Wait,
    /// The start time came: begin the first step.
    Begin,
    /// The step baked and the cohort holds: start the next step.
    Advance,
    /// The last step baked: the candidates become the active pointers.
    Complete,
    /// The cohort failed, or an analysis did: why, naming the runtimes,
    /// or the analysis with its value and condition.
    Fail(String),
    /// An analysis could not judge: the rollout waits for a person, why
    /// naming the analysis and what Prometheus answered.
    Pause(String),
}

/// One controller decision: fail when too many cohort runtimes rejected a
/// candidate or missed the apply deadline, or an analysis failed; pause
/// when an analysis was inconclusive or could not measure; else advance
/// once the step has baked and its analyses with a count passed.
/// `measurements` are the rollout's, of any step.
pub fn tick<'a>(
    rollout: &Rollout,
    fleet: impl IntoIterator<Item = &'a RuntimeRecord>,
    measurements: &[Measurement],
    now: DateTime<Utc>,
) -> Tick {
    if rollout.state == RolloutState::Scheduled {
        return match rollout.start_at {
            Some(start_at) if start_at > now => Tick::Wait,
            _ => Tick::Begin,
        };
    }
    if rollout.state != RolloutState::Running {
        return Tick::Wait;
    }
    let cohort = rollout.cohort(fleet);
    let elapsed = (now - rollout.step_started_at).to_std().unwrap_or_default();
    let deadline_passed = !rollout.failure_rule.apply_deadline.is_zero()
        && elapsed >= rollout.failure_rule.apply_deadline;
    let mut failed = Vec::new();
    for runtime in &cohort {
        let mut problems = Vec::new();
        for target in &rollout.targets {
            if !runtime.watches(&target.policy.name) {
                continue;
            }
            match runtime.policies.get(&target.policy.name) {
                Some(outcome)
                    if outcome.version == target.version
                        && outcome.state == ApplyState::Rejected =>
                {
                    problems.push(format!(
                        "rejected {} version {}: {}",
                        target.policy, target.version, outcome.error
                    ));
                }
                Some(outcome)
                    if outcome.version == target.version
                        && outcome.state == ApplyState::Applied => {}
                _ if deadline_passed => problems.push(format!(
                    "had not applied {} version {} after {}",
                    target.policy,
                    target.version,
                    humantime::format_duration(rollout.failure_rule.apply_deadline)
                )),
                _ => {}
            }
        }
        if !problems.is_empty() {
            failed.push(format!("{} {}", runtime.id, problems.join("; ")));
        }
    }
    let allowed = if rollout.failure_rule.max_rejected_fraction > 0.0 {
        (rollout.failure_rule.max_rejected_fraction * cohort.len() as f64).floor() as usize
    } else {
        rollout.failure_rule.max_rejected as usize
    };
    if failed.len() > allowed {
        return Tick::Fail(format!(
            "{} of {} cohort runtimes failed (at most {allowed} allowed): {}",
            failed.len(),
            cohort.len(),
            failed.join(", ")
        ));
    }
    let mut holding = false;
    for analysis in rollout.analyses_in_force() {
        match judge(analysis, &rollout.judged(analysis, measurements)) {
            Verdict::Failed(why) => return Tick::Fail(why),
            Verdict::Inconclusive(why) | Verdict::Errored(why) => return Tick::Pause(why),
            Verdict::Running => holding |= analysis.count > 0,
            Verdict::Successful => {}
        }
    }
    let step = &rollout.steps[rollout.step];
    if elapsed < step.bake || holding {
        return Tick::Wait;
    }
    if rollout.step + 1 < rollout.steps.len() {
        Tick::Advance
    } else {
        Tick::Complete
    }
}

/// Refuses an operator's control in a state that does not allow it.
pub fn ensure_control(rollout: &Rollout, control: &str, allowed: &[RolloutState]) -> Result<()> {
    if allowed.contains(&rollout.state) {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "cannot {control} rollout {}: it is {}",
        rollout.id,
        rollout.state.as_str().to_lowercase().replace('_', " ")
    )))
}
