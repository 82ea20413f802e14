//! The in-memory index of active bundles that serves `GetActive` without a
//! query per request.
//!
//! The index is a snapshot behind a `tokio::sync::watch` channel: readers
//! clone an `Arc` of the current snapshot, and a commit publishes a new one.
//! Every entry remembers the revision at which its policy's pointer last
//! moved, so "what changed after revision S" is a filter over the snapshot.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::watch;

use crate::domain::{ActiveBundle, PolicyRef};

/// The active bundles at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every activation up to and including this revision is applied.
    pub revision: u64,
    /// Active bundle of every policy that has one.
    pub bundles: BTreeMap<PolicyRef, ActiveBundle>,
}

/// Shared, cheaply cloned handle on the index.
#[derive(Debug, Clone)]
pub struct ActiveIndex {
    sender: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl ActiveIndex {
    /// An index holding `bundles` at `revision`.
    pub fn new(revision: u64, bundles: Vec<ActiveBundle>) -> Self {
        let bundles = bundles
            .into_iter()
            .map(|bundle| (bundle.policy.clone(), bundle))
            .collect();
        let (sender, _) = watch::channel(Arc::new(Snapshot { revision, bundles }));
        ActiveIndex {
            sender: Arc::new(sender),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.sender.borrow().clone()
    }

    /// The active bundle of one policy.
    pub fn get(&self, policy: &PolicyRef) -> Option<ActiveBundle> {
        self.sender.borrow().bundles.get(policy).cloned()
    }

    /// Applies the pointer moves committed at `revision`. Entries never go
    /// back: a move older than what the index holds is ignored, so applying
    /// the same commit twice (an idempotent replay) changes nothing.
    pub fn apply(&self, revision: u64, changed: &[ActiveBundle]) {
        self.sender.send_if_modified(|current| {
            let newer: Vec<&ActiveBundle> = changed
                .iter()
                .filter(|bundle| {
                    current
                        .bundles
                        .get(&bundle.policy)
                        .is_none_or(|held| held.revision < bundle.revision)
                })
                .collect();
            if newer.is_empty() && revision <= current.revision {
                return false;
            }
            let next = Arc::make_mut(current);
            next.revision = next.revision.max(revision);
            for bundle in newer {
                next.bundles.insert(bundle.policy.clone(), bundle.clone());
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Digest;

    fn bundle(name: &str, version: u32, revision: u64) -> ActiveBundle {
        ActiveBundle {
            policy: PolicyRef::parse("team", name).unwrap(),
            version,
            label: None,
            digest: Digest::of_canonical(b"{}"),
            jws: Arc::from("jws"),
            key_id: "kid".into(),
            revision,
        }
    }

    #[test]
    fn apply_moves_forward_only() {
        let index = ActiveIndex::new(0, Vec::new());
        index.apply(2, &[bundle("a", 2, 2)]);
        index.apply(1, &[bundle("a", 1, 1)]);
        let snapshot = index.snapshot();
        assert_eq!(snapshot.revision, 2);
        assert_eq!(
            snapshot.bundles[&PolicyRef::parse("team", "a").unwrap()].version,
            2
        );
    }
}
