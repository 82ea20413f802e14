//! The subscription's history: the signed checkpoints it verifies, the
//! server's tree it follows by consistency proofs, and a declared restore
//! it takes once.

use super::*;

impl SubscriptionState {
    /// Verifies a checkpoint of the stream (a key unknown to the JWKS makes
    /// it fetch the JWKS once more) and takes it; the event when it ends a
    /// stale spell. One that does not verify ends the connection.
    pub(in crate::session) async fn checkpoint(
        &mut self,
        checkpoint: &proto::Checkpoint,
        client: &mut Client,
    ) -> Result<Option<Event>, Failure> {
        if self.freshness.holds(&checkpoint.jws) {
            return Ok(None);
        }
        let known = bundle::key_id(&checkpoint.jws).is_ok_and(|kid| self.jwks.knows(&kid));
        if !known {
            let _ = self.refresh_keys(client).await;
        }
        let claims = verify_checkpoint(&checkpoint.jws, &self.jwks).map_err(|error| {
            Failure::Transient(format!("a checkpoint does not verify: {error}"))
        })?;
        Ok(self.freshness.observe(claims, &checkpoint.jws))
    }

    /// The size of the server's tree as verified last (0: none yet).
    pub(in crate::session) fn verified_size(&self) -> u64 {
        self.tree.head.as_ref().map_or(0, |head| head.size)
    }

    /// Follows the server's log's tree from a checkpoint's note: the first
    /// one verified is remembered; a newer tree only with a consistency
    /// proof from the remembered one, the one the checkpoint carries or else
    /// fetched from the server; a tree that
    /// does not extend it only when the server proves that it records a
    /// restore (said by the event returned); anything else is a history
    /// refused. The tree remembered is cached.
    pub(in crate::session) async fn follow_tree(
        &mut self,
        checkpoint: &proto::Checkpoint,
        client: &mut Client,
        subscription: &Subscription,
    ) -> Result<Option<Event>, Failure> {
        if let Some(note) = self.cached_tree.take() {
            match verify_note(&note, self.tree.origin.as_deref(), &self.jwks) {
                Ok(head) => {
                    self.tree.origin = Some(head.origin.clone());
                    self.tree.head = Some(head);
                }
                Err(reason) => tracing::error!(%reason, "refusing the cached tree"),
            }
        }
        if checkpoint.note.is_empty()
            || self
                .tree
                .head
                .as_ref()
                .is_some_and(|head| head.note == checkpoint.note)
        {
            return Ok(None);
        }
        let offered = match verify_note(&checkpoint.note, self.tree.origin.as_deref(), &self.jwks) {
            Ok(head) => head,
            Err(_) => {
                // Perhaps a key rotated since the keys were fetched.
                self.refresh_keys(client).await?;
                verify_note(&checkpoint.note, self.tree.origin.as_deref(), &self.jwks)
                    .map_err(Failure::History)?
            }
        };
        let old_size = match self.tree.judge(&offered).map_err(Failure::History)? {
            Judgement::Same => return Ok(None),
            Judgement::ProveFrom(old_size) => old_size,
            Judgement::Diverges(reason) => {
                return self
                    .take_restore(offered, reason, client, subscription)
                    .await;
            }
        };
        let proof = if self.tree.head.is_none() {
            Vec::new()
        } else if let Some(carried) = carried_proof(checkpoint, old_size, offered.size) {
            carried
        } else {
            client
                .get_consistency_proof(proto::GetConsistencyProofRequest {
                    old_size,
                    new_size: offered.size,
                })
                .await
                .map_err(Failure::from_status)?
                .into_inner()
                .hashes
        };
        let proof = hashes(proof).map_err(Failure::History)?;
        if let Err(reason) = self.tree.extend(offered.clone(), &proof) {
            return self
                .take_restore(offered, reason, client, subscription)
                .await;
        }
        self.remember_tree(subscription).await;
        Ok(None)
    }

    /// Takes `offered`, a tree that does not extend the one verified last
    /// (`diverges` says how), when the server proves that it records a
    /// restore newer than any taken before; refuses it otherwise.
    async fn take_restore(
        &mut self,
        offered: TreeHead,
        diverges: String,
        client: &mut Client,
        subscription: &Subscription,
    ) -> Result<Option<Event>, Failure> {
        let (from_size, to_size) = (self.verified_size(), offered.size);
        let answer = client
            .get_restore_proof(proto::GetRestoreProofRequest { tree_size: to_size })
            .await;
        let answer = match answer {
            Ok(answer) => answer.into_inner().proof.unwrap_or_default(),
            // No restore recorded (or a server from before restores).
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unimplemented) => {
                return Err(Failure::History(diverges));
            }
            Err(status) => return Err(Failure::from_status(status)),
        };
        let restore = RestoreProof {
            canonical: answer.canonical_event,
            leaf_index: answer.leaf_index,
            tree_size: answer.tree_size,
            hashes: hashes(answer.hashes).map_err(Failure::History)?,
        };
        let reason = self
            .tree
            .restore(offered, &restore)
            .map_err(|refused| Failure::History(format!("{diverges}; {refused}")))?;
        self.remember_tree(subscription).await;
        tracing::warn!(
            namespace = %subscription.namespace,
            from_size,
            to_size,
            %reason,
            "took the server's restored history, as its operator declared"
        );
        Ok(Some(Event::HistoryRestored {
            reason,
            from_size,
            to_size,
        }))
    }

    /// Caches the tree verified last, and the last restore taken.
    async fn remember_tree(&self, subscription: &Subscription) {
        let Some(cache) = &self.cache else {
            return;
        };
        let saved = async {
            let Some(head) = &self.tree.head else {
                return Ok(());
            };
            cache.save_tree(&head.note).await?;
            match self.tree.restored_through {
                Some(leaf) => cache.save_restore(leaf).await,
                None => Ok(()),
            }
        };
        if let Err(error) = saved.await {
            tracing::warn!(%error, namespace = %subscription.namespace, "cannot cache the server's tree");
        }
    }
}

/// The proof a watch message's checkpoint carries, when it is the one from
/// the tree of `old_size` to the tree of `new_size`: checked as one asked of
/// the server would be, it spares the call.
fn carried_proof(
    checkpoint: &proto::Checkpoint,
    old_size: u64,
    new_size: u64,
) -> Option<Vec<Vec<u8>>> {
    checkpoint
        .consistency_proof
        .as_ref()
        .filter(|carried| (carried.old_size, carried.new_size) == (old_size, new_size))
        .map(|carried| carried.hashes.clone())
}

/// The 32-byte hashes of a proof the server sent.
fn hashes(proof: Vec<Vec<u8>>) -> Result<Vec<[u8; 32]>, String> {
    proof
        .into_iter()
        .map(<[u8; 32]>::try_from)
        .collect::<Result<_, _>>()
        .map_err(|_| "a proof of malformed hashes".to_owned())
}
