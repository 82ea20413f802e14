//! The checkpoint watch messages carry. Each carries the proof that its
//! log's tree extends the tree of the checkpoint carried before it, made
//! once here for every stream (for a checkpoint this replica signed over
//! the one carried, the proof its signing checked, so that a commit's
//! revision goes out without a read of the stored hashes): a runtime that
//! verified that one follows the log without calling GetConsistencyProof
//! on every update, and one that verified another tree (it missed a
//! checkpoint, or resumed) calls it as before. A proof that cannot be made
//! (the database out of reach, a tree that does not extend the last one)
//! is left out, never guessed.

use super::PolicyHub;
use crate::domain::chain::Checkpoint;
use crate::domain::log::{ConsistencyProof, Hash, TreeSize, signed_tree};

/// The checkpoint carried now (none yet: zeros): its id and note length,
/// which only grow (a newer checkpoint, or the same with more
/// cosignatures), its tree (none: one from before the tree) and the proof
/// it carries.
#[derive(Debug, Default)]
pub(super) struct CarriedTree {
    shown: (u64, usize),
    tree: Option<(u64, Hash)>,
    proof: Option<ConsistencyProof>,
}

impl PolicyHub {
    /// Makes watch messages carry `checkpoint`, with the proof that its
    /// tree extends the one carried before, unless a newer checkpoint (or
    /// the same with as many cosignatures) is carried already. A newer
    /// checkpoint of the same tree (signed as the interval passed) keeps
    /// the proof carried, which proves its tree as well.
    pub(super) async fn carry(&self, checkpoint: &Checkpoint) {
        let mut carried = self.carried.lock().await;
        let note = checkpoint.note.as_deref();
        let shown = (checkpoint.id, note.map_or(0, str::len));
        if shown <= carried.shown {
            return;
        }
        let tree = note.and_then(|note| signed_tree(note).ok());
        let proof = match (carried.tree, tree) {
            (Some(before), Some(now)) if before == now => carried.proof.take(),
            (Some(before), Some(now)) => self.extension(before, now).await,
            _ => None,
        };
        self.index
            .set_checkpoint((self.encode_checkpoint)(checkpoint, proof.as_ref()));
        *carried = CarriedTree { shown, tree, proof };
    }

    /// The proof that the tree `new` (its size and root) extends the tree
    /// `old`, when it is larger: the one this replica made as it signed the
    /// checkpoint of `new` over the checkpoint of `old`, which a commit's
    /// revision then goes out with without a read of the stored hashes;
    /// otherwise made from them.
    async fn extension(&self, old: (u64, Hash), new: (u64, Hash)) -> Option<ConsistencyProof> {
        let (old_size, new_size) = (TreeSize::new(old.0)?, TreeSize::new(new.0)?);
        if old_size >= new_size {
            return None;
        }
        if let Some(hashes) = self.repository.signed_extension(old, new) {
            return Some(ConsistencyProof {
                old_size,
                new_size,
                hashes,
                checkpoint: None,
            });
        }
        self.consistency_proof(old_size, Some(new_size))
            .await
            .inspect_err(|error| {
                tracing::warn!(%error, old = old.0, new = new.0, "cannot prove the carried checkpoint's tree");
            })
            .ok()
    }
}
