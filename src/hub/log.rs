//! Proofs of the log's Merkle tree: an event's inclusion, a bundle's
//! events' inclusion, one tree's consistency with an older one, in the
//! tree of a given size or of the newest checkpoint; and the restores an
//! operator declares in it.

use std::time::Duration;

use crate::domain::log::{
    BundleProof, ConsistencyProof, InclusionProof, LeafIndex, TreeSize, signed_size,
};
use crate::domain::{Error, EventKind, EventRecord, PolicyRef, RequestContext, Result, Revision};
use crate::storage::NewEvent;

use super::PolicyHub;
use crate::domain::chain::Checkpoint;

impl PolicyHub {
    /// The tree `size` names: itself, or (none) the newest checkpoint's.
    async fn proven_tree(&self, size: Option<TreeSize>) -> Result<(TreeSize, Option<Checkpoint>)> {
        if let Some(size) = size {
            return Ok((size, None));
        }
        let newest = self.repository.read_newest_checkpoint().await?;
        let Some(note) = newest
            .as_ref()
            .and_then(|checkpoint| checkpoint.note.as_deref())
        else {
            return Err(Error::precondition(
                "no checkpoint of the log's tree is signed yet",
            ));
        };
        let Some(size) = TreeSize::new(signed_size(note)?) else {
            return Err(Error::precondition(
                "the newest checkpoint signs the empty log: no event is in it to prove",
            ));
        };
        Ok((size, newest))
    }

    /// Event `event_id` and the proof of its leaf in the tree of `tree_size`
    /// leaves (none: the newest checkpoint's). An event `readable` refuses is
    /// not found, before the tree is read: no answer about it differs from
    /// one about an event that does not exist.
    pub async fn inclusion_proof(
        &self,
        event_id: u64,
        tree_size: Option<TreeSize>,
        readable: impl Fn(&EventRecord) -> bool,
    ) -> Result<InclusionProof> {
        let leaf = self.repository.event_leaf(event_id).await?;
        if !readable(&leaf.0) {
            return Err(Error::NotFound(format!("event {event_id}")));
        }
        let (tree_size, checkpoint) = self.proven_tree(tree_size).await?;
        self.prove_leaf(leaf, tree_size, checkpoint).await
    }

    /// The PUBLISHED event of version `version` of `policy` and the event
    /// that made it active at `revision`, proven in the tree of
    /// `tree_size` leaves (none: the newest checkpoint's).
    pub async fn bundle_proof(
        &self,
        policy: &PolicyRef,
        version: u32,
        revision: Revision,
        tree_size: Option<TreeSize>,
    ) -> Result<BundleProof> {
        let current = self.repository.current_revision().await?;
        if revision.get() > current {
            return Err(Error::invalid(
                "revision",
                format!("revision {revision} is ahead of the current revision {current}"),
            ));
        }
        let (published, activated) = self
            .repository
            .bundle_events(policy, version, revision)
            .await?;
        let published = self.repository.event_leaf(published).await?;
        let activated = self.repository.event_leaf(activated).await?;
        let (tree_size, checkpoint) = self.proven_tree(tree_size).await?;
        Ok(BundleProof {
            published: self
                .prove_leaf(published, tree_size, checkpoint.clone())
                .await?,
            activated: self.prove_leaf(activated, tree_size, checkpoint).await?,
        })
    }

    /// An event's leaf (the event, its canonical form, its index), proven
    /// in the tree of `tree_size` leaves, whose checkpoint is `checkpoint`.
    async fn prove_leaf(
        &self,
        (event, canonical, leaf_index): (EventRecord, String, LeafIndex),
        tree_size: TreeSize,
        checkpoint: Option<Checkpoint>,
    ) -> Result<InclusionProof> {
        let hashes = self
            .repository
            .prove_inclusion(tree_size, leaf_index)
            .await?;
        Ok(InclusionProof {
            event,
            canonical,
            leaf_index,
            tree_size,
            hashes,
            checkpoint,
        })
    }

    /// The proof that the tree of `new_size` leaves (none: the newest
    /// checkpoint's) extends the one of `old_size`.
    pub async fn consistency_proof(
        &self,
        old_size: TreeSize,
        new_size: Option<TreeSize>,
    ) -> Result<ConsistencyProof> {
        let (new_size, checkpoint) = self.proven_tree(new_size).await?;
        let hashes = self
            .repository
            .prove_consistency(old_size, new_size)
            .await?;
        Ok(ConsistencyProof {
            old_size,
            new_size,
            hashes,
            checkpoint,
        })
    }

    /// Declares the deployment restored from a backup: a RESTORED event,
    /// and at once a checkpoint whose tree includes it (watch messages
    /// carry it from then on).
    #[tracing::instrument(name = "hub.record_restore", skip_all)]
    pub async fn record_restore(
        &self,
        context: &RequestContext,
        reason: &str,
    ) -> Result<(EventRecord, Checkpoint)> {
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "reason",
                "is required: say what was restored, and why",
            ));
        }
        let recorded = self
            .repository
            .write("record_restore", async |tx| {
                tx.record_event(context, None, NewEvent::new(EventKind::Restored, reason))
                    .await
            })
            .await?;
        let checkpoint = self.refresh_checkpoint(Duration::ZERO).await?;
        let (event, _, _) = self.repository.event_leaf(recorded).await?;
        Ok((event, checkpoint))
    }

    /// The newest restore recorded in the tree of `tree_size` leaves
    /// (none: the newest checkpoint's), with its inclusion proof.
    pub async fn restore_proof(&self, tree_size: Option<TreeSize>) -> Result<InclusionProof> {
        let (size, _) = self.proven_tree(tree_size).await?;
        let Some(event_id) = self.repository.newest_restore_within(size).await? else {
            return Err(Error::NotFound(format!(
                "no restore is recorded in the log's tree of {size} leaves"
            )));
        };
        self.inclusion_proof(event_id, tree_size, |_| true).await
    }
}
