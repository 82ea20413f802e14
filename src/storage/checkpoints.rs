//! Signed checkpoints of the chain. Every commit that makes a revision
//! durable writes one, of its newest revision, just before it commits,
//! signed by the hook the hub installs (on SQLite the writer signs one per
//! group commit, see `writer`); `refresh_checkpoint` writes one when the
//! newest is old. A
//! replica serves only checkpoints it committed or read back, so one that
//! cannot reach its database serves an ever older one.

use std::sync::atomic::Ordering;

use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait,
};

use super::chain::{locked_tip, tip};
use super::cosignatures::with_cosignatures;
use super::entities::events;
use super::entities::{checkpoint_cosignatures, checkpoints};
use super::events::record as event_record;
use super::log::{over_tree, tree_root, tree_size};
use super::paging::Paging;
use super::rows::{db_revision, now, revision};
use super::statement_runner::{StatementRunner, Txn};
use super::transaction::{CheckpointSigner, Checkpoints, Repository, Transaction};
use crate::domain::chain::Checkpoint;
use crate::domain::log::{self, Hash, TreeExtension};
use crate::domain::{AsOf, Error, Page, Result, chain};
use crate::signing::CheckpointClaims;

fn record(row: checkpoints::Model) -> Checkpoint {
    Checkpoint {
        id: revision(row.id),
        revision: revision(row.revision),
        last_event_id: revision(row.last_event_id),
        chain_head: row.chain_head,
        at: row.at,
        key_id: row.key_id,
        jws: row.jws,
        note: row.note,
    }
}

/// The newest checkpoint as signed (without cosignatures).
pub(super) async fn newest<R: StatementRunner>(runner: &R) -> Result<Option<Checkpoint>> {
    let newest = checkpoints::Entity::find().order_by(checkpoints::Column::Id, Order::Desc);
    Ok(runner.one(newest).await?.map(record))
}

/// Every checkpoint as signed (without cosignatures), oldest first.
pub(super) async fn all_checkpoints<C: ConnectionTrait>(db: &C) -> Result<Vec<Checkpoint>> {
    Ok(checkpoints::Entity::find()
        .order_by(checkpoints::Column::Id, Order::Asc)
        .all(db)
        .await?
        .into_iter()
        .map(record)
        .collect())
}

/// Checks that the log from the newest checkpoint on extends it: the
/// checkpoint's last event still hashes to the head it signed, every event
/// since links to it, and the tree its stored hashes make extends the tree
/// its note signed, grown by exactly those events' leaves. DATA_LOSS
/// naming the break otherwise. Returns the tree's size and root now, which
/// the next checkpoint signs, and the proof that it extends the tree the
/// newest checkpoint signed (none when that tree is empty or none).
pub(super) async fn extends_last_checkpoint<R: StatementRunner>(
    runner: &R,
) -> Result<((u64, Hash), Option<TreeExtension>)> {
    let Some(checkpoint) = newest(runner).await? else {
        let size = tree_size(runner).await?;
        return Ok(((size, tree_root(runner, size).await?), None));
    };
    let last = db_revision(checkpoint.last_event_id);
    let before = tip(runner, Some(last)).await?;
    let since = events::Entity::find()
        .filter(events::Column::Id.gte(last))
        .order_by(events::Column::Id, Order::Asc);
    let since = runner
        .all(since)
        .await?
        .into_iter()
        .map(event_record)
        .collect::<Result<Vec<_>>>()?;
    chain::extends(&checkpoint, (before.0, &before.1), &since).map_err(|why| {
        Error::DataLoss(format!(
            "the event log does not extend the last signed checkpoint (revision {}, event {}): \
             {why}",
            checkpoint.revision, checkpoint.last_event_id
        ))
    })?;
    let size = tree_size(runner).await?;
    // A checkpoint signed before the tree existed signed no tree to extend.
    let Some(note) = &checkpoint.note else {
        return Ok(((size, tree_root(runner, size).await?), None));
    };
    let (signed_size, signed_root) = log::signed_tree(note)?;
    let unextended = |why: String| {
        Error::DataLoss(format!(
            "the log's tree does not extend the last signed checkpoint's (revision {}, a tree of \
             {signed_size}): {why}",
            checkpoint.revision
        ))
    };
    // The chain above proved these events, and so their canonical forms.
    let mut previous = checkpoint.chain_head.as_str();
    let mut leaves = Vec::new();
    for event in since
        .iter()
        .filter(|event| event.id > checkpoint.last_event_id)
    {
        leaves.push(log::leaf_hash(chain::canonical(previous, event).as_bytes()));
        previous = &event.hash;
    }
    let grown_size = signed_size + leaves.len() as u64;
    if size != grown_size {
        return Err(unextended(format!(
            "it holds {size} leaves, the events since make {grown_size}"
        )));
    }
    let grown = over_tree(runner, |reads| {
        log::grown_from(signed_size, signed_root, &leaves, reads)
    })
    .await?;
    if let Some(why) = grown.unproven {
        return Err(unextended(why));
    }
    let extension = grown.proof.map(|proof| TreeExtension {
        from: (signed_size, signed_root),
        to: (grown.size, grown.root),
        proof,
    });
    Ok(((grown.size, grown.root), extension))
}

/// Signs and writes in `txn` a checkpoint of the chain, whose tip is
/// `(last_event_id, chain_head)`, and of the log's tree (`tree`: its size
/// and root) as `txn` leaves them, at `revision_in_force`, the note under
/// `origin`.
async fn write_checkpoint(
    txn: &Txn,
    (last_event_id, chain_head): (u64, String),
    revision_in_force: u64,
    origin: &str,
    (tree_size, root): (u64, Hash),
    signer: &CheckpointSigner,
) -> Result<Checkpoint> {
    let at = now();
    let claims = CheckpointClaims::new(revision_in_force, last_event_id, chain_head, at);
    let body = log::checkpoint_body(origin, tree_size, root)?;
    let (jws, key_id, note) = signer(&claims, origin, &body)?;
    let row = checkpoints::ActiveModel {
        id: NotSet,
        revision: Set(db_revision(revision_in_force)),
        last_event_id: Set(db_revision(last_event_id)),
        chain_head: Set(claims.chain_head.clone()),
        at: Set(at),
        key_id: Set(key_id.clone()),
        jws: Set(jws.clone()),
        tree_size: Set(Some(db_revision(tree_size))),
        root_hash: Set(Some(log::encode_hash(&root))),
        note: Set(Some(note.clone())),
    };
    let insert = checkpoints::Entity::insert(row).into_query();
    let id = txn.insert_id(insert, checkpoints::Column::Id).await?;
    Ok(Checkpoint {
        id: revision(id),
        revision: revision_in_force,
        last_event_id,
        chain_head: claims.chain_head,
        at,
        key_id,
        jws,
        note: Some(note),
    })
}

impl Checkpoints {
    /// Signs and writes in `txn` a checkpoint of the chain, whose tip `txn`
    /// holds the lock of (`tip`), at `revision_in_force`, once the log is
    /// seen to extend the newest checkpoint; refuses (DATA_LOSS, logged and
    /// counted) to sign over a history rewritten since. Only the check's
    /// own verdict refuses: a database that fails the reads (a connection
    /// lost mid-transaction) fails this transaction as any other error
    /// does, and says nothing of the history.
    pub(super) async fn sign(
        &self,
        txn: &Txn,
        tip: (u64, String),
        revision_in_force: u64,
        signer: &CheckpointSigner,
    ) -> Result<Checkpoint> {
        let (tree, extension) = match extends_last_checkpoint(txn).await {
            Ok(extended) => extended,
            Err(error @ Error::DataLoss(_)) => {
                self.refuse(&error);
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        let checkpoint =
            write_checkpoint(txn, tip, revision_in_force, self.origin()?, tree, signer).await?;
        *self.extension.lock().expect("extension lock") = extension;
        Ok(checkpoint)
    }

    /// Signs in `txn` a checkpoint of `revision_in_force`, the newest
    /// revision it holds, if one is to be signed (a signer is installed
    /// and the revision is one), and commits; returns once the commit is
    /// durable, holding the checkpoint as the newest. `known_tip` is the
    /// chain's tip as `txn` leaves it when the caller already read it
    /// under the chain's lock; without it, it is read so.
    pub(super) async fn commit_signed(
        &self,
        txn: Txn,
        revision_in_force: u64,
        known_tip: Option<(u64, String)>,
    ) -> Result<()> {
        let checkpoint = match self.signer() {
            Some(signer) if revision_in_force > 0 => {
                let tip = match known_tip {
                    Some(tip) => tip,
                    None => locked_tip(&txn).await?,
                };
                Some(self.sign(&txn, tip, revision_in_force, signer).await?)
            }
            _ => None,
        };
        txn.commit().await?;
        if let Some(checkpoint) = checkpoint {
            self.publish(checkpoint);
        }
        Ok(())
    }
}

impl Repository {
    /// Signs and writes a checkpoint of the chain as `tx` leaves it, at
    /// `revision_in_force` (see [`Checkpoints::sign`]).
    pub(super) async fn sign_checkpoint(
        &self,
        tx: &Transaction,
        revision_in_force: u64,
        signer: &CheckpointSigner,
    ) -> Result<Checkpoint> {
        // The chain's lock first: no event lands between the check and the
        // signature.
        let tip = tx.chain_tip().await?;
        self.checkpoints
            .sign(&tx.txn, tip, revision_in_force, signer)
            .await
    }

    /// How many checkpoints this replica refused to sign because the log
    /// does not extend the last signed one.
    pub fn refused_checkpoints(&self) -> u64 {
        self.checkpoints
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts refused checkpoints in `metric` too; set once, for every
    /// clone.
    pub fn count_refused_checkpoints_in(
        &self,
        metric: prometheus_client::metrics::counter::Counter,
    ) {
        let _ = self.checkpoints.refused_metric.set(metric);
    }

    /// Makes every revision's transaction sign a checkpoint with `signer`;
    /// set once, for every clone.
    pub fn sign_checkpoints_with(&self, signer: CheckpointSigner) {
        let _ = self.checkpoints.signer.set(signer);
    }

    /// The consistency proof from the tree `from` to the tree `to` (each
    /// its size and root), when this replica proved it as it last signed a
    /// checkpoint: no read of the stored hashes. A proof binds the two
    /// roots it was checked against, so one made in a transaction that then
    /// rolled back still proves what it says of them.
    pub fn signed_extension(&self, from: (u64, Hash), to: (u64, Hash)) -> Option<Vec<Hash>> {
        let extension = self.checkpoints.extension.lock().expect("extension lock");
        extension
            .as_ref()
            .filter(|extension| extension.from == from && extension.to == to)
            .map(|extension| extension.proof.clone())
    }

    /// The newest checkpoint this replica committed or read.
    pub fn newest_checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoints
            .newest
            .read()
            .expect("checkpoint lock")
            .clone()
    }

    /// Reads the newest checkpoint with its cosignatures from now on (with
    /// witnesses configured; without, nothing is read beyond the
    /// checkpoint); set once, for every clone.
    pub fn read_cosignatures(&self) {
        self.checkpoints
            .reads_cosignatures
            .store(true, Ordering::Relaxed);
    }

    /// Resolves when this replica committed or read a checkpoint newer
    /// than it held (for one waiter: the witnessing).
    pub async fn newer_checkpoint(&self) {
        self.checkpoints.newer.notified().await;
    }

    /// Reads the newest stored checkpoint, another replica's included, and
    /// holds it when it is newer.
    /// With witnesses (see `read_cosignatures`), with its cosignatures.
    pub async fn read_newest_checkpoint(&self) -> Result<Option<Checkpoint>> {
        if let Some(checkpoint) = newest(&self.db).await? {
            let checkpoint = match self.checkpoints.reads_cosignatures.load(Ordering::Relaxed) {
                true => with_cosignatures(&self.db, vec![checkpoint]).await?.pop(),
                false => Some(checkpoint),
            };
            self.checkpoints
                .publish(checkpoint.expect("the checkpoint read"));
        }
        Ok(self.newest_checkpoint())
    }

    /// Writes a checkpoint unless the newest stored one is younger than
    /// `fresh_for` and states the chain as it is; holds whichever is newest.
    #[tracing::instrument(name = "storage.refresh_checkpoint", skip_all)]
    pub async fn refresh_checkpoint(&self, fresh_for: chrono::Duration) -> Result<Checkpoint> {
        let Some(signer) = self.checkpoints.signer().cloned() else {
            return Err(crate::domain::Error::Internal(
                "checkpoints are refreshed before their signer is installed".into(),
            ));
        };
        let checkpoint = self
            .write("refresh_checkpoint", async |tx| {
                let (last_event_id, _) = tx.chain_tip().await?;
                let current = tx.revision_in_force().await?;
                if let Some(newest) = newest(&tx.txn).await?
                    && newest.at > tx.at() - fresh_for
                    && newest.revision == current
                    && newest.last_event_id == last_event_id
                {
                    return Ok(newest);
                }
                self.sign_checkpoint(tx, current, &signer).await
            })
            .await?;
        self.checkpoints.publish(checkpoint.clone());
        Ok(checkpoint)
    }

    /// The checkpoint that proves what was in force at `as_of`: the first
    /// one at or after it, or the newest when none is yet.
    #[tracing::instrument(name = "storage.proving_checkpoint", skip_all)]
    pub async fn proving_checkpoint(&self, as_of: AsOf) -> Result<Option<Checkpoint>> {
        let query = match as_of {
            AsOf::Revision(at) => {
                checkpoints::Entity::find().filter(checkpoints::Column::Revision.gte(i64::from(at)))
            }
            AsOf::Time(at) => checkpoints::Entity::find().filter(checkpoints::Column::At.gte(at)),
        };
        match query
            .order_by(checkpoints::Column::Id, Order::Asc)
            .one(&self.db)
            .await?
        {
            Some(row) => Ok(with_cosignatures(&self.db, vec![record(row)]).await?.pop()),
            None => self.read_newest_checkpoint().await,
        }
    }

    /// The checkpoints with their cosignatures, newest first; the page
    /// token is the last id.
    #[tracing::instrument(name = "storage.list_checkpoints", skip_all)]
    pub async fn list_checkpoints(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<Checkpoint>> {
        let paging = Paging::new("checkpoints", &(), page_size);
        let mut query = checkpoints::Entity::find();
        if let Some(below) = paging.position::<i64>(page_token)? {
            query = query.filter(checkpoints::Column::Id.lt(below));
        }
        let mut rows = query
            .order_by(checkpoints::Column::Id, Order::Desc)
            .limit(paging.limit())
            .all(&self.db)
            .await?;
        let next_page_token = paging.finish(&mut rows, |last| last.id.to_string());
        let items = rows.into_iter().map(record).collect();
        Ok(Page {
            items: with_cosignatures(&self.db, items).await?,
            next_page_token,
        })
    }

    /// The newest checkpoint that may go out to watch streams: cosigned by
    /// a witness, or signed at or before `cutoff` (its witnesses had their
    /// time); with its cosignatures.
    pub async fn witnessed_checkpoint(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Checkpoint>> {
        let cosigned: Option<i64> = checkpoint_cosignatures::Entity::find()
            .select_only()
            .column_as(checkpoint_cosignatures::Column::CheckpointId.max(), "id")
            .into_tuple::<Option<i64>>()
            .one(&self.db)
            .await?
            .flatten();
        let timed_out = checkpoints::Entity::find()
            .filter(checkpoints::Column::At.lte(cutoff))
            .order_by(checkpoints::Column::Id, Order::Desc)
            .one(&self.db)
            .await?;
        let row = match (cosigned, timed_out) {
            (Some(cosigned), Some(timed_out)) if timed_out.id >= cosigned => Some(timed_out),
            (Some(cosigned), _) => {
                checkpoints::Entity::find_by_id(cosigned)
                    .one(&self.db)
                    .await?
            }
            (None, timed_out) => timed_out,
        };
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(with_cosignatures(&self.db, vec![record(row)]).await?.pop())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::domain::log::{TreeSize, signed_tree};
    use crate::domain::{EventKind, RequestContext};
    use crate::storage::NewEvent;

    /// A checkpoint signed over the one before keeps the proof that its
    /// tree extends that one's, the very proof the stored hashes make: a
    /// commit's revision goes out with it without reading them. No proof
    /// is kept between trees other than those two.
    #[tokio::test]
    async fn a_signed_checkpoint_keeps_the_proof_that_its_tree_extends_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let repository = super::super::sqlite_repository(&dir.path().join("hub.db")).await;
        repository
            .settle_log_origin(Some("example.com/log"))
            .await
            .unwrap();
        repository.sign_checkpoints_with(Arc::new(|_, _, body| {
            Ok(("jws".into(), "key".into(), format!("{body}\n— test\n")))
        }));
        let context = RequestContext {
            actor: "test".into(),
            request_id: "test".into(),
        };
        let mut trees = Vec::new();
        for events in 1..=3 {
            repository
                .write("test", async |tx| {
                    tx.take_revision().await?;
                    for _ in 0..events {
                        let event = NewEvent::new(EventKind::SchemaSet, "test");
                        tx.record_event(&context, None, event).await?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
            let checkpoint = repository.newest_checkpoint().expect("signed");
            trees.push(signed_tree(checkpoint.note.as_deref().unwrap()).unwrap());
        }
        let (first, before, now) = (trees[0], trees[1], trees[2]);
        assert_eq!((before.0, now.0), (3, 6));
        let kept = repository
            .signed_extension(before, now)
            .expect("the proof kept");
        let made = repository
            .prove_consistency(TreeSize::new(3).unwrap(), TreeSize::new(6).unwrap())
            .await
            .unwrap();
        assert_eq!(kept, made);
        assert_eq!(repository.signed_extension(first, now), None);
        assert_eq!(repository.signed_extension(before, first), None);
        let other_root = (before.0, first.1);
        assert_eq!(repository.signed_extension(other_root, now), None);
    }
}
