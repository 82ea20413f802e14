//! Which runtimes a step's cohort holds, and how the cohort fares.

use std::collections::HashMap;

use sha2::Digest as _;

use super::Rollout;
use crate::domain::PolicyRef;
use crate::domain::runtime::{ApplyState, LabelSelector, RuntimeId, RuntimeLabels, RuntimeRecord};

/// Where a runtime falls among 10,000 buckets for a rollout: the same for
/// the same rollout and runtime wherever and whenever it is computed.
pub fn bucket(rollout: &str, runtime: &RuntimeId) -> u32 {
    let hash = sha2::Sha256::new()
        .chain_update(rollout)
        .chain_update("/")
        .chain_update(runtime.as_str())
        .finalize();
    let head = u64::from_be_bytes(hash[..8].try_into().expect("eight bytes"));
    (head % 10_000) as u32
}

/// Who one step's cohort holds, its selector parsed once.
#[derive(Debug, Clone)]
struct Membership {
    selector: LabelSelector,
    /// Buckets below this are in.
    below: u32,
}

impl Membership {
    /// `None` when there is no such step (or its selector does not parse).
    fn of(rollout: &Rollout, step: usize) -> Option<Self> {
        let step = rollout.steps.get(step)?;
        let selector = LabelSelector::parse("label_selector", &step.label_selector).ok()?;
        Some(Membership {
            selector,
            below: step.percentage * 100,
        })
    }

    fn holds(&self, rollout: &str, runtime: &RuntimeId, labels: &RuntimeLabels) -> bool {
        self.selector.matches(labels) && bucket(rollout, runtime) < self.below
    }
}

impl Rollout {
    /// Whether `step`'s cohort holds the runtime: its bucket falls below the
    /// step's percentage and the step's selector matches its labels.
    /// Anonymous streams are in no cohort.
    pub fn in_step(&self, step: usize, runtime: &RuntimeId, labels: &RuntimeLabels) -> bool {
        Membership::of(self, step).is_some_and(|step| step.holds(&self.id, runtime, labels))
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
        let Some(step) = Membership::of(self, self.step) else {
            return Vec::new();
        };
        fleet
            .into_iter()
            .filter(|runtime| step.holds(&self.id, &runtime.id, &runtime.labels))
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

/// Where a cohort runtime stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Applied every candidate it watches.
    Applied,
    /// Rejected a candidate.
    Rejected,
    /// Neither yet.
    Pending,
}

impl Standing {
    fn of(rollout: &Rollout, runtime: &RuntimeRecord) -> Self {
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
        let mut all_applied = true;
        for outcome in outcomes {
            match outcome {
                Some(ApplyState::Rejected) => return Standing::Rejected,
                Some(ApplyState::Applied) => {}
                None => all_applied = false,
            }
        }
        if all_applied {
            Standing::Applied
        } else {
            Standing::Pending
        }
    }
}

impl Progress {
    fn count(&mut self, standing: Standing, add: bool) {
        let count = match standing {
            Standing::Applied => &mut self.applied,
            Standing::Rejected => &mut self.rejected,
            Standing::Pending => &mut self.pending,
        };
        if add {
            *count += 1;
            self.cohort += 1;
        } else {
            *count -= 1;
            self.cohort -= 1;
        }
    }
}

/// The progress of one step of a rollout, kept up to date one runtime at a
/// time: a change of one runtime costs one look at that runtime, not a pass
/// over the fleet.
#[derive(Debug, Clone)]
pub struct ProgressTally {
    rollout: Rollout,
    step: Option<Membership>,
    /// Where each runtime of the cohort stands.
    members: HashMap<RuntimeId, Standing>,
    progress: Progress,
}

impl ProgressTally {
    /// An empty tally of `rollout`'s current step.
    pub fn new(rollout: &Rollout) -> Self {
        ProgressTally {
            rollout: rollout.clone(),
            step: Membership::of(rollout, rollout.step),
            members: HashMap::new(),
            progress: Progress::default(),
        }
    }

    /// Whether the tally counts `rollout`'s current step.
    pub fn counts(&self, rollout: &Rollout) -> bool {
        self.rollout.id == rollout.id
            && self.rollout.step == rollout.step
            && self.rollout.steps == rollout.steps
            && self.rollout.targets == rollout.targets
    }

    /// Counts `runtime` as it is now; `None` counts it out (gone, or stale).
    pub fn update(&mut self, id: &RuntimeId, runtime: Option<&RuntimeRecord>) {
        let Some(step) = &self.step else {
            return;
        };
        let standing = runtime
            .filter(|runtime| step.holds(&self.rollout.id, id, &runtime.labels))
            .map(|runtime| Standing::of(&self.rollout, runtime));
        let previous = match (standing, self.members.get_mut(id)) {
            (Some(standing), Some(held)) => Some(std::mem::replace(held, standing)),
            (Some(standing), None) => {
                self.members.insert(id.clone(), standing);
                None
            }
            (None, Some(_)) => self.members.remove(id),
            (None, None) => None,
        };
        if previous != standing {
            if let Some(previous) = previous {
                self.progress.count(previous, false);
            }
            if let Some(standing) = standing {
                self.progress.count(standing, true);
            }
        }
    }

    /// The step's progress.
    pub fn progress(&self) -> Progress {
        self.progress
    }
}

/// The current step's progress among `fleet`, the namespace's runtimes not
/// stale, counted anew.
pub fn progress<'a>(
    rollout: &Rollout,
    fleet: impl IntoIterator<Item = &'a RuntimeRecord>,
) -> Progress {
    let mut tally = ProgressTally::new(rollout);
    for runtime in fleet {
        tally.update(&runtime.id, Some(runtime));
    }
    tally.progress()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::runtime::tests::record;

    fn runtime(id: &str, outcome: Option<ApplyState>, rollout: &Rollout) -> RuntimeRecord {
        record(
            id,
            outcome.map(|state| (rollout.targets[0].version, state, "")),
        )
    }

    /// A tally moved through changes counts what a tally made anew from the
    /// same runtimes counts.
    #[test]
    fn a_tally_follows_each_change_of_a_runtime() {
        use crate::domain::rollout::tests::{rollout, step};

        let rollout = rollout(vec![step(100, 0)]);
        let (a, b, c) = (
            runtime("a", Some(ApplyState::Applied), &rollout),
            runtime("b", Some(ApplyState::Rejected), &rollout),
            runtime("c", None, &rollout),
        );
        let mut tally = ProgressTally::new(&rollout);
        for runtime in [&a, &b, &c] {
            tally.update(&runtime.id, Some(runtime));
        }
        let expected = Progress {
            cohort: 3,
            applied: 1,
            rejected: 1,
            pending: 1,
        };
        assert_eq!(tally.progress(), expected);

        let c_applied = runtime("c", Some(ApplyState::Applied), &rollout);
        tally.update(&c_applied.id, Some(&c_applied));
        tally.update(&b.id, None);
        assert_eq!(tally.progress(), progress(&rollout, [&a, &c_applied]));
        assert_eq!(tally.progress().applied, 2);
        assert!(tally.counts(&rollout));
        let mut next = rollout.clone();
        next.step += 1;
        assert!(!tally.counts(&next), "another step is another tally");
    }
}
