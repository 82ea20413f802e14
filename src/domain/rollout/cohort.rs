//! Which runtimes a step's cohort holds, and how the cohort fares.

use sha2::Digest as _;

use super::Rollout;
use crate::domain::PolicyRef;
use crate::domain::runtime::{ApplyState, LabelSelector, RuntimeId, RuntimeLabels, RuntimeRecord};

/// Where a runtime falls among 10,000 buckets for a rollout: the same for
/// the same rollout and runtime wherever and whenever it is computed.
pub fn bucket(rollout: &str, runtime: &RuntimeId) -> u32 {
    let hash = sha2::Sha256::digest(format!("{rollout}/{runtime}").as_bytes());
    let head = u64::from_be_bytes(hash[..8].try_into().expect("eight bytes"));
    (head % 10_000) as u32
}

impl Rollout {
    /// Whether `step`'s cohort holds the runtime: its bucket falls below the
    /// step's percentage and the step's selector matches its labels.
    /// Anonymous streams are in no cohort.
    pub fn in_step(&self, step: usize, runtime: &RuntimeId, labels: &RuntimeLabels) -> bool {
        self.step_membership(step)
            .is_some_and(|is_member| is_member(runtime, labels))
    }

    /// Who `step`'s cohort holds, its selector parsed once; `None` when
    /// there is no such step (or its selector does not parse).
    fn step_membership(
        &self,
        step: usize,
    ) -> Option<impl Fn(&RuntimeId, &RuntimeLabels) -> bool + '_> {
        let step = self.steps.get(step)?;
        let selector = LabelSelector::parse("label_selector", &step.label_selector).ok()?;
        Some(move |runtime: &RuntimeId, labels: &RuntimeLabels| {
            selector.matches(labels) && bucket(&self.id, runtime) < step.percentage * 100
        })
    }

    /// The revision at which the runtime joined the current cohort, if it
    /// is in it: the first started step whose cohort held it and every step
    /// since.
    pub fn joined_at(&self, runtime: &RuntimeId, labels: &RuntimeLabels) -> Option<u64> {
        if !self.state.has_begun() || !self.in_step(self.step, runtime, labels) {
            return None;
        }
        let mut joined = None;
        for (step, revision) in self.step_revisions.iter().enumerate().rev() {
            if !self.in_step(step, runtime, labels) {
                break;
            }
            joined = Some(*revision);
        }
        joined
    }

    /// The policies the rollout moves.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyRef> {
        self.targets.iter().map(|target| &target.policy)
    }

    /// The cohort of the current step among `fleet`, the namespace's
    /// runtimes.
    pub fn cohort<'a>(
        &self,
        fleet: impl IntoIterator<Item = &'a RuntimeRecord>,
    ) -> Vec<&'a RuntimeRecord> {
        let Some(is_member) = self.step_membership(self.step) else {
            return Vec::new();
        };
        fleet
            .into_iter()
            .filter(|runtime| is_member(&runtime.id, &runtime.labels))
            .collect()
    }
}

/// How the current step's cohort fares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Runtimes in the cohort.
    pub cohort: u32,
    /// Those that applied every candidate they watch.
    pub applied: u32,
    /// Those that rejected a candidate.
    pub rejected: u32,
    /// The others.
    pub pending: u32,
}

/// The current step's progress among `fleet`, the namespace's runtimes.
pub fn progress<'a>(
    rollout: &Rollout,
    fleet: impl IntoIterator<Item = &'a RuntimeRecord>,
) -> Progress {
    let mut progress = Progress::default();
    for runtime in rollout.cohort(fleet) {
        progress.cohort += 1;
        let outcomes = rollout
            .targets
            .iter()
            .filter(|target| runtime.watches(&target.policy.name))
            .map(|target| {
                runtime
                    .policies
                    .get(&target.policy.name)
                    .filter(|outcome| outcome.version == target.version)
                    .map(|outcome| outcome.state)
            });
        let outcomes: Vec<Option<ApplyState>> = outcomes.collect();
        if outcomes.contains(&Some(ApplyState::Rejected)) {
            progress.rejected += 1;
        } else if outcomes
            .iter()
            .all(|outcome| *outcome == Some(ApplyState::Applied))
        {
            progress.applied += 1;
        } else {
            progress.pending += 1;
        }
    }
    progress
}
