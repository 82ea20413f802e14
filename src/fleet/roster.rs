//! One namespace's runtimes as this replica sees them, kept up to date one
//! runtime at a time, with the counts that fleet reads answer from.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::domain::{
    PolicyName,
    rollout::{Progress, ProgressTally, Rollout},
    runtime::{PolicyStatus, PolicyTally, RuntimeId, RuntimeRecord, RuntimeState},
};
use crate::storage::ReplicaHeartbeats;

/// Most progress tallies a namespace keeps: one per live rollout step
/// asked about lately.
const KEPT_PROGRESS: usize = 8;

/// A namespace's stored rows, and every replica's heartbeat, as read at
/// `read` and patched since by this replica's flushes.
#[derive(Default)]
pub(super) struct Stored {
    pub read: Option<Instant>,
    pub records: HashMap<RuntimeId, RuntimeRecord>,
    pub heartbeats: ReplicaHeartbeats,
}

/// Every runtime of a namespace with its state, ordered by id: the stored
/// rows of every replica overlaid with this replica's records, as seen
/// when it was made.
#[derive(Debug, Default)]
pub struct FleetView {
    runtimes: Vec<(RuntimeRecord, RuntimeState)>,
}

impl FleetView {
    /// Every runtime with its state.
    pub fn runtimes(&self) -> &[(RuntimeRecord, RuntimeState)] {
        &self.runtimes
    }

    /// Runtime `id`, if the namespace has it.
    pub fn runtime(&self, id: &RuntimeId) -> Option<&(RuntimeRecord, RuntimeState)> {
        self.runtimes
            .binary_search_by(|(record, _)| record.id.cmp(id))
            .ok()
            .map(|at| &self.runtimes[at])
    }

    /// The runtimes that count for rollout cohorts: every one not stale.
    pub fn not_stale(&self) -> impl Iterator<Item = &RuntimeRecord> + Clone {
        self.runtimes
            .iter()
            .filter(|(_, state)| *state != RuntimeState::Stale)
            .map(|(record, _)| record)
    }
}

/// A namespace's runtimes, each as the stored row and this replica's record
/// combine, with its state; and what they applied, counted.
#[derive(Default)]
pub(super) struct Roster {
    pub stored: Stored,
    /// A refresh of `stored` is under way.
    pub refreshing: bool,
    /// When a read last used it.
    pub read: Option<Instant>,
    /// When every state was last computed anew.
    pub swept: Option<Instant>,
    runtimes: BTreeMap<RuntimeId, (RuntimeRecord, RuntimeState)>,
    policies: PolicyTally,
    /// Progress of live rollout steps, with when each was last asked for.
    progress: Vec<(ProgressTally, Instant)>,
    /// The view made since the last change, with when.
    view: Option<(Instant, Arc<FleetView>)>,
}

/// Cohorts count runtimes that are not stale.
fn in_cohorts(record: &RuntimeRecord, state: RuntimeState) -> Option<&RuntimeRecord> {
    (state != RuntimeState::Stale).then_some(record)
}

impl Roster {
    /// Sets runtime `id` to `next` (`None`: gone) and moves every count.
    pub fn set(&mut self, id: &RuntimeId, next: Option<(RuntimeRecord, RuntimeState)>) {
        let held = self.runtimes.get_mut(id);
        if held.as_deref() == next.as_ref() {
            return;
        }
        let previous = match (held, next) {
            (Some(held), Some(next)) => Some(std::mem::replace(held, next)),
            (None, Some(next)) => {
                self.runtimes.insert(id.clone(), next);
                None
            }
            (Some(_), None) => self.runtimes.remove(id),
            (None, None) => None,
        };
        if let Some((record, state)) = previous {
            self.policies.remove(&record, state);
        }
        let now = self.runtimes.get(id);
        if let Some((record, state)) = now {
            self.policies.add(record, *state);
        }
        for (tally, _) in &mut self.progress {
            tally.update(
                id,
                now.and_then(|(record, state)| in_cohorts(record, *state)),
            );
        }
        self.view = None;
    }

    /// Computes every runtime's state anew with `state` (states move with
    /// time alone: a silent runtime turns stale) and moves the counts of
    /// those whose state changed.
    pub fn sweep(&mut self, state: impl Fn(&RuntimeRecord, &ReplicaHeartbeats) -> RuntimeState) {
        for (id, (record, held)) in &mut self.runtimes {
            let now = state(record, &self.stored.heartbeats);
            if now == *held {
                continue;
            }
            self.policies.remove(record, *held);
            self.policies.add(record, now);
            for (tally, _) in &mut self.progress {
                tally.update(id, in_cohorts(record, now));
            }
            *held = now;
            self.view = None;
        }
        self.swept = Some(Instant::now());
    }

    /// The fleet's outcome for `name`, whose active version is `active`.
    pub fn policy_status(&self, name: &PolicyName, active: u32) -> PolicyStatus {
        self.policies.status(name, active)
    }

    /// The progress of live `rollout`'s current step, from a tally kept and
    /// moved with each change; the tally asked for least lately goes when
    /// more than [`KEPT_PROGRESS`] are.
    pub fn progress(&mut self, rollout: &Rollout) -> Progress {
        let now = Instant::now();
        if let Some((tally, asked)) = self
            .progress
            .iter_mut()
            .find(|(tally, _)| tally.counts(rollout))
        {
            *asked = now;
            return tally.progress();
        }
        let mut tally = ProgressTally::new(rollout);
        for (id, (record, state)) in &self.runtimes {
            tally.update(id, in_cohorts(record, *state));
        }
        let progress = tally.progress();
        if self.progress.len() == KEPT_PROGRESS {
            let oldest = (0..self.progress.len())
                .min_by_key(|&index| self.progress[index].1)
                .expect("a full list");
            self.progress.swap_remove(oldest);
        }
        self.progress.push((tally, now));
        progress
    }

    /// How many progress tallies it keeps.
    #[cfg(test)]
    pub fn tallies(&self) -> usize {
        self.progress.len()
    }

    /// Every runtime with its state, each record as `observe` shows it; the
    /// view made last while nothing changed and it is younger than
    /// `max_age`.
    pub fn view(
        &mut self,
        max_age: Duration,
        observe: impl Fn(&RuntimeRecord, &ReplicaHeartbeats) -> RuntimeRecord,
    ) -> Arc<FleetView> {
        if let Some((made, view)) = &self.view
            && made.elapsed() < max_age
        {
            return view.clone();
        }
        let runtimes = self
            .runtimes
            .values()
            .map(|(record, state)| (observe(record, &self.stored.heartbeats), *state))
            .collect();
        let view = Arc::new(FleetView { runtimes });
        self.view = Some((Instant::now(), view.clone()));
        view
    }
}
