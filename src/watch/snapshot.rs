//! One revision of the index: the stable bundles per namespace, and the
//! candidates of live rollouts, which a runtime sees instead of the stable
//! bundle when the rollout's current cohort holds it.
//!
//! A runtime gets a candidate at the revision of the first step whose
//! cohort held it, so a step change reaches exactly the runtimes it adds,
//! and a resume from any revision is answered from the snapshot as for
//! stable bundles. A rollout that ends without completing sends its
//! policies' stable bundles again at its ending revision; one that
//! completes moves the active pointers, an ordinary activation.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use prost::bytes::Bytes;
use tokio::time::Instant;

use super::Encode;
use crate::domain::rollout::{RevisionChange, Rollout, RolloutView};
use crate::domain::runtime::{RuntimeId, RuntimeLabels};
use crate::domain::{ActiveBundle, Namespace, PolicyName, PolicyRef};

/// An active bundle with its protobuf encoding, made once per version and
/// shared by every stream.
#[derive(Debug, Clone)]
pub struct IndexedBundle {
    /// The bundle.
    pub bundle: ActiveBundle,
    /// `policyhub.v1.Bundle`, encoded.
    pub encoded: Bytes,
}

impl IndexedBundle {
    fn new(bundle: ActiveBundle, encode: Encode) -> Arc<Self> {
        Arc::new(IndexedBundle {
            encoded: encode(&bundle),
            bundle,
        })
    }
}

/// A live rollout's candidate for one policy, encoded once per step started
/// (the bundle carries the revision the runtime joined at).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The rollout.
    pub rollout: Arc<Rollout>,
    /// The candidate at each started step's revision, in step order.
    pub by_step: Vec<Arc<IndexedBundle>>,
}

impl Candidate {
    /// The candidate as a runtime that joined at `revision` receives it.
    fn joined_at(&self, revision: u64) -> Option<&Arc<IndexedBundle>> {
        self.by_step
            .iter()
            .find(|indexed| indexed.bundle.revision == revision)
    }
}

/// How many revisions of changed names a namespace keeps: a subscriber
/// further behind than that is answered by a look at every name.
const CHANGES_KEPT: usize = 256;

/// The active bundles of one namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceIndex {
    /// The last revision that changed what any subscriber of this namespace
    /// is sent, so that subscribers of quiet namespaces skip it at once.
    pub revision: u64,
    /// Active (stable) bundle per policy name.
    pub policies: BTreeMap<PolicyName, Arc<IndexedBundle>>,
    /// Candidates of live rollouts per policy name.
    pub candidates: BTreeMap<PolicyName, Candidate>,
    /// The names given a bundle (stable or candidate) at each revision, for
    /// the last [`CHANGES_KEPT`] such revisions: what a subscriber is sent
    /// is found among the names that changed after its cursor, not among
    /// every name of the namespace.
    changes: BTreeMap<u64, Vec<PolicyName>>,
    /// Every revision above this one that gave a bundle is in `changes`.
    changes_complete_above: u64,
}

/// A subscriber's memory of which step of each rollout it joined at, kept
/// across wakes: the cohort is decided once per rollout step (each step is a
/// new `Rollout`), not on every wake.
#[derive(Debug, Default)]
pub struct Cohorts {
    joined: HashMap<String, (Arc<Rollout>, Option<u64>)>,
}

/// Rollouts a subscriber remembers before it starts afresh.
const COHORTS_KEPT: usize = 64;

impl Cohorts {
    /// The revision `watcher` joined `rollout` at, if it is in the cohort.
    fn joined_at(&mut self, rollout: &Arc<Rollout>, watcher: &Watcher) -> Option<u64> {
        if let Some((known, joined)) = self.joined.get(&rollout.id)
            && Arc::ptr_eq(known, rollout)
        {
            return *joined;
        }
        if self.joined.len() >= COHORTS_KEPT {
            self.joined.clear();
        }
        let joined = rollout.joined_at(&watcher.id, &watcher.labels);
        self.joined
            .insert(rollout.id.clone(), (rollout.clone(), joined));
        joined
    }
}

/// The active bundles at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every change up to and including this revision is applied.
    pub revision: u64,
    /// When this revision was applied, for the delivery-time metric.
    pub applied_at: Option<Instant>,
    /// Per namespace; untouched namespaces are shared between snapshots.
    pub namespaces: BTreeMap<Namespace, Arc<NamespaceIndex>>,
}

/// An identified runtime, as its stream named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Its id.
    pub id: RuntimeId,
    /// Its labels.
    pub labels: RuntimeLabels,
}

/// Which policies a subscriber watches, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The namespace.
    pub namespace: Namespace,
    /// These policies only; empty for the whole namespace.
    pub names: Vec<PolicyName>,
    /// The runtime, when the stream named it; anonymous streams get the
    /// stable bundles only.
    pub watcher: Option<Watcher>,
}

impl NamespaceIndex {
    /// What `watcher` is sent for `name`: the candidate when it is in the
    /// current cohort of the rollout moving `name`, else the stable bundle.
    fn view<'a>(
        &'a self,
        name: &PolicyName,
        watcher: Option<&Watcher>,
        cohorts: &mut Cohorts,
    ) -> Option<&'a Arc<IndexedBundle>> {
        if let (Some(watcher), Some(candidate)) = (watcher, self.candidates.get(name))
            && let Some(indexed) = cohorts
                .joined_at(&candidate.rollout, watcher)
                .and_then(|revision| candidate.joined_at(revision))
        {
            return Some(indexed);
        }
        self.policies.get(name)
    }

    /// What `watcher` is sent of every policy, in name order: the
    /// candidate where a rollout's current cohort holds it, else the
    /// stable bundle (anonymous watchers get the stable bundles).
    pub fn bundles_for(
        &self,
        watcher: Option<&Watcher>,
    ) -> Vec<(&PolicyName, &Arc<IndexedBundle>)> {
        let mut cohorts = Cohorts::default();
        self.names()
            .into_iter()
            .filter_map(|name| Some((name, self.view(name, watcher, &mut cohorts)?)))
            .collect()
    }

    /// Every name holding a bundle or a candidate, in name order.
    fn names(&self) -> Vec<&PolicyName> {
        self.policies
            .keys()
            .chain(self.candidates.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The names given a bundle after `since`, in name order; `None` when
    /// `since` is older than the revisions kept.
    fn changed_after(&self, since: u64) -> Option<Vec<&PolicyName>> {
        (since >= self.changes_complete_above).then(|| {
            self.changes
                .range(since + 1..)
                .flat_map(|(_, names)| names)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
    }

    /// Records that `name` was given a bundle at `revision`.
    fn record(&mut self, revision: u64, name: &PolicyName) {
        let names = self.changes.entry(revision).or_default();
        if !names.contains(name) {
            names.push(name.clone());
        }
        while self.changes.len() > CHANGES_KEPT {
            if let Some((dropped, _)) = self.changes.pop_first() {
                self.changes_complete_above = self.changes_complete_above.max(dropped);
            }
        }
    }
}

impl Snapshot {
    /// The stable bundle of one policy.
    pub fn get(&self, policy: &PolicyRef) -> Option<&Arc<IndexedBundle>> {
        self.namespaces
            .get(&policy.namespace)?
            .policies
            .get(&policy.name)
    }

    /// What `watcher` is sent for one policy: the candidate when a rollout's
    /// current cohort holds it, else the stable bundle.
    pub fn get_for(&self, policy: &PolicyRef, watcher: &Watcher) -> Option<&Arc<IndexedBundle>> {
        self.namespaces.get(&policy.namespace)?.view(
            &policy.name,
            Some(watcher),
            &mut Cohorts::default(),
        )
    }

    /// Every bundle matching `selector`, in name order.
    pub fn matching(&self, selector: &Selector, cohorts: &mut Cohorts) -> Vec<Bytes> {
        self.select(selector, 0, false, cohorts)
    }

    /// The bundles matching `selector` whose view changed after `since`, in
    /// the order they changed (by revision, then name). The cost follows
    /// the names changed after `since`, not the size of the namespace.
    pub fn changed_since(
        &self,
        selector: &Selector,
        since: u64,
        cohorts: &mut Cohorts,
    ) -> Vec<Bytes> {
        self.select(selector, since, true, cohorts)
    }

    fn select(
        &self,
        selector: &Selector,
        since: u64,
        by_revision: bool,
        cohorts: &mut Cohorts,
    ) -> Vec<Bytes> {
        let Some(namespace) = self.namespaces.get(&selector.namespace) else {
            return Vec::new();
        };
        if namespace.revision <= since {
            return Vec::new();
        }
        let names: Vec<&PolicyName> = if !selector.names.is_empty() {
            selector.names.iter().collect()
        } else if let Some(changed) = by_revision
            .then(|| namespace.changed_after(since))
            .flatten()
        {
            changed
        } else {
            namespace.names()
        };
        let mut changed: Vec<&Arc<IndexedBundle>> = names
            .into_iter()
            .filter_map(|name| namespace.view(name, selector.watcher.as_ref(), cohorts))
            .filter(|entry| entry.bundle.revision > since)
            .collect();
        if by_revision {
            // Stable: equal revisions keep their name order.
            changed.sort_by_key(|entry| entry.bundle.revision);
        }
        changed
            .into_iter()
            .map(|entry| entry.encoded.clone())
            .collect()
    }

    /// Applies one revision's change (or, at start, the whole state).
    pub(super) fn change(&mut self, change: RevisionChange, encode: Encode) {
        for bundle in change.bundles {
            let namespace = self.namespace(&bundle.policy.namespace, change.revision);
            namespace.record(bundle.revision, &bundle.policy.name);
            namespace.policies.insert(
                bundle.policy.name.clone(),
                IndexedBundle::new(bundle, encode),
            );
        }
        for view in change.rollouts {
            self.show(view, change.revision, encode);
        }
    }

    /// Shows the candidates of a rollout that has begun, or drops those of
    /// one that ended.
    fn show(&mut self, view: RolloutView, revision: u64, encode: Encode) {
        let RolloutView {
            rollout,
            candidates,
        } = view;
        let namespace = self.namespace(&rollout.namespace, revision);
        for target in &rollout.targets {
            let held_by_it = namespace
                .candidates
                .get(&target.policy.name)
                .is_some_and(|candidate| candidate.rollout.id == rollout.id);
            if held_by_it {
                namespace.candidates.remove(&target.policy.name);
            }
        }
        if !rollout.state.has_begun() {
            return;
        }
        let rollout = Arc::new(rollout);
        for bundle in candidates {
            for &joined in &rollout.step_revisions {
                namespace.record(joined, &bundle.policy.name);
            }
            let by_step = rollout
                .step_revisions
                .iter()
                .map(|&joined| {
                    IndexedBundle::new(
                        ActiveBundle {
                            revision: joined,
                            ..bundle.clone()
                        },
                        encode,
                    )
                })
                .collect();
            namespace.candidates.insert(
                bundle.policy.name.clone(),
                Candidate {
                    rollout: rollout.clone(),
                    by_step,
                },
            );
        }
    }

    /// The namespace's index, to change at `revision`.
    fn namespace(&mut self, namespace: &Namespace, revision: u64) -> &mut NamespaceIndex {
        let index = Arc::make_mut(self.namespaces.entry(namespace.clone()).or_default());
        index.revision = index.revision.max(revision);
        index
    }
}
