//! The event log's Merkle tree in storage: `log_hashes` holds its stored
//! hashes (C2SP tlog-tiles order), written in the transaction that records
//! the event, under the chain's lock, so the tree's leaves are the chain's
//! events in id order. A root or a proof reads a few dozen rows by key.
//! Events written before the tree existed are appended at start.

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait,
};

use super::chain::head;
use super::entities::{events, log_hashes, log_origin};
use super::events::{bundle_sends, record};
use super::policies::find_policy;
use super::rows::{db_revision, db_version, revision};
use super::statement_runner::StatementRunner;
use super::transaction::{Repository, Transaction};
use super::versions::{find_version, no_such_version};
use crate::domain::log::{self, Hash, LeafIndex, Reads, TreeSize};
use crate::domain::{
    Error, EventKind, EventRecord, PolicyRef, Result, Revision, VersionSelector, VersionState,
    chain,
};

/// How many leaves the tree has.
pub(super) async fn tree_size<R: StatementRunner>(runner: &R) -> Result<u64> {
    let last_leaf = log_hashes::Entity::find()
        .select_only()
        .column(log_hashes::Column::Id)
        .filter(log_hashes::Column::EventId.is_not_null())
        .order_by(log_hashes::Column::Id, Order::Desc)
        .limit(1);
    let last_leaf: Option<i64> = runner.value(last_leaf.build(runner.backend())).await?;
    Ok(last_leaf.map_or(0, |position| log::size_after_leaf_at(revision(position))))
}

/// `compute` over the stored hashes it reads.
pub(super) async fn over_tree<R: StatementRunner, T>(
    runner: &R,
    compute: impl Fn(&Reads) -> Result<T>,
) -> Result<T> {
    let needed = Reads::needed(&compute);
    let mut known = HashMap::with_capacity(needed.len());
    if !needed.is_empty() {
        let stored = log_hashes::Entity::find()
            .filter(log_hashes::Column::Id.is_in(needed.iter().map(|index| db_revision(*index))));
        let rows = runner.all(stored).await?;
        for row in rows {
            let hash = <[u8; 32]>::try_from(row.hash.as_slice()).map_err(|_| {
                Error::DataLoss(format!("the log's stored hash {} is not 32 bytes", row.id))
            })?;
            known.insert(revision(row.id), Hash(hash));
        }
        if let Some(missing) = needed.iter().find(|index| !known.contains_key(index)) {
            return Err(Error::DataLoss(format!(
                "the log's stored hash {missing} is missing"
            )));
        }
    }
    Reads::with(known, compute)
}

/// The root of the tree of its first `size` leaves.
pub(super) async fn tree_root<R: StatementRunner>(runner: &R, size: u64) -> Result<Hash> {
    over_tree(runner, |reads| log::root(size, reads)).await
}

impl Transaction {
    /// Appends event `event_id`, whose canonical form is `canonical`, as
    /// the tree's next leaf; the chain's lock is held.
    pub(super) async fn log_append(&self, event_id: u64, canonical: &[u8]) -> Result<()> {
        let index = tree_size(&self.txn).await?;
        let leaf = log::leaf_hash(canonical);
        let hashes = over_tree(&self.txn, |reads| log::appended(index, leaf, reads)).await?;
        let first = log::leaf_position(index);
        let rows = hashes
            .into_iter()
            .enumerate()
            .map(|(offset, hash)| log_hashes::ActiveModel {
                id: Set(db_revision(first + offset as u64)),
                hash: Set(hash.0.to_vec()),
                event_id: Set((offset == 0).then(|| db_revision(event_id))),
            });
        let rows = log_hashes::Entity::insert_many(rows);
        self.txn.run(rows.build(self.backend())).await?;
        Ok(())
    }
}

impl Repository {
    /// Appends the events written before the tree existed to it, in id
    /// order; returns how many.
    pub async fn grow_log(&self) -> Result<usize> {
        self.write("grow_log", async |tx| {
            // The chain's lock first: replicas starting together append once.
            tx.chain_tip().await?;
            let last_leaf: Option<Option<i64>> = log_hashes::Entity::find()
                .select_only()
                .column(log_hashes::Column::EventId)
                .filter(log_hashes::Column::EventId.is_not_null())
                .order_by(log_hashes::Column::Id, Order::Desc)
                .into_tuple()
                .one(&tx.txn)
                .await?;
            let after = last_leaf.flatten().unwrap_or(0);
            let missing = events::Entity::find()
                .filter(events::Column::Id.gt(after))
                .order_by(events::Column::Id, Order::Asc)
                .all(&tx.txn)
                .await?;
            let mut previous = head(&tx.txn, Some(after + 1)).await?;
            for row in &missing {
                let event = record(row.clone())?;
                let canonical = chain::canonical(&previous, &event);
                tx.log_append(event.id, canonical.as_bytes()).await?;
                previous = event.hash;
            }
            Ok(missing.len())
        })
        .await
    }

    /// Settles the origin line of this deployment's log: `configured`, or
    /// else the one made with the database. Set once, for every clone.
    pub async fn settle_log_origin(&self, configured: Option<&str>) -> Result<String> {
        let origin = match configured {
            Some(origin) => origin.to_owned(),
            None => log_origin::Entity::find_by_id(1)
                .one(&self.db)
                .await?
                .map(|row| row.origin)
                .ok_or_else(|| Error::DataLoss("the log's origin is missing".into()))?,
        };
        Ok(self.checkpoints.origin.get_or_init(|| origin).clone())
    }

    /// The origin line of this deployment's log.
    pub fn log_origin(&self) -> Result<&str> {
        self.checkpoints.origin()
    }

    /// The leaf index of event `event_id` in the log's tree.
    pub async fn leaf_of(&self, event_id: u64) -> Result<LeafIndex> {
        let position: Option<i64> = log_hashes::Entity::find()
            .select_only()
            .column(log_hashes::Column::Id)
            .filter(log_hashes::Column::EventId.eq(db_revision(event_id)))
            .into_tuple()
            .one(&self.db)
            .await?;
        position
            .map(|position| LeafIndex::at_position(revision(position)))
            .ok_or_else(|| Error::NotFound(format!("event {event_id} is not in the log")))
    }

    /// The newest RESTORED event among the tree's first `size` leaves.
    pub async fn newest_restore_within(&self, size: TreeSize) -> Result<Option<u64>> {
        self.within_tree(size).await?;
        let restores: Vec<i64> = events::Entity::find()
            .select_only()
            .column(events::Column::Id)
            .filter(events::Column::Kind.eq(EventKind::Restored.as_str()))
            .order_by(events::Column::Id, Order::Desc)
            .into_tuple()
            .all(&self.db)
            .await?;
        for id in restores.into_iter().map(revision) {
            if self.leaf_of(id).await?.is_in(size) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Event `event_id`, its canonical form and its leaf's index.
    pub async fn event_leaf(&self, event_id: u64) -> Result<(EventRecord, String, LeafIndex)> {
        // Ids are stored in 63 bits: a larger one names no event.
        let unknown = || Error::NotFound(format!("event {event_id}"));
        let id = i64::try_from(event_id).map_err(|_| unknown())?;
        let row = events::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(unknown)?;
        let event = record(row)?;
        let previous = head(&self.db, Some(id)).await?;
        let canonical = chain::canonical(&previous, &event);
        Ok((event, canonical, self.leaf_of(event_id).await?))
    }

    /// The ids of the events that put version `version` of `policy` in a
    /// runtime's hands at `revision` (at most the current one): its
    /// PUBLISHED event, and the ACTIVATED or ROLLED_BACK event that made it
    /// active then, or the RE_SIGNED event that sent it again then.
    pub async fn bundle_events(
        &self,
        policy: &PolicyRef,
        version: u32,
        revision_made_active: Revision,
    ) -> Result<(u64, u64)> {
        let policy_id = find_policy(&self.db, policy).await?.id;
        let selector = VersionSelector::Number(version);
        let stored = find_version(&self.db, policy_id, &selector)
            .await?
            .ok_or_else(|| no_such_version(policy, &selector))?;
        if stored.state != VersionState::Published.as_str() {
            return Err(Error::precondition(format!(
                "version {version} of {policy} is {}, not published: it was never a bundle",
                stored.state
            )));
        }
        let of_version = || {
            events::Entity::find()
                .select_only()
                .column(events::Column::Id)
                .filter(events::Column::PolicyId.eq(policy_id))
                .filter(events::Column::NewVersion.eq(db_version(version)))
        };
        let published: Option<i64> = of_version()
            .filter(events::Column::Kind.eq(EventKind::Published.as_str()))
            .into_tuple()
            .one(&self.db)
            .await?;
        let activated: Option<i64> = of_version()
            .filter(events::Column::Kind.is_in(bundle_sends()))
            .filter(events::Column::Revision.eq(i64::from(revision_made_active)))
            .into_tuple()
            .one(&self.db)
            .await?;
        match (published, activated) {
            (Some(published), Some(activated)) => Ok((revision(published), revision(activated))),
            (None, _) => Err(Error::DataLoss(format!(
                "the log has no PUBLISHED event of version {version} of {policy}"
            ))),
            (_, None) => Err(Error::NotFound(format!(
                "version {version} of {policy} was not made active at revision {revision_made_active}"
            ))),
        }
    }

    /// The size of the log's tree now.
    pub async fn log_size(&self) -> Result<u64> {
        tree_size(&self.db).await
    }

    /// The inclusion proof of `leaf` in the tree of `size` leaves.
    #[tracing::instrument(name = "storage.prove_inclusion", skip_all)]
    pub async fn prove_inclusion(&self, size: TreeSize, leaf: LeafIndex) -> Result<Vec<Hash>> {
        self.within_tree(size).await?;
        leaf.ensure_in(size)?;
        over_tree(&self.db, |reads| log::prove_inclusion(size, leaf, reads)).await
    }

    /// The consistency proof from the tree of `old_size` leaves to the
    /// one of `new_size`.
    #[tracing::instrument(name = "storage.prove_consistency", skip_all)]
    pub async fn prove_consistency(
        &self,
        old_size: TreeSize,
        new_size: TreeSize,
    ) -> Result<Vec<Hash>> {
        self.within_tree(new_size).await?;
        if old_size > new_size {
            return Err(Error::invalid(
                "old_size",
                format!("{old_size} is larger than the new size {new_size}"),
            ));
        }
        over_tree(&self.db, |reads| {
            log::prove_consistency(old_size, new_size, reads)
        })
        .await
    }

    /// INVALID_ARGUMENT unless the log's tree has grown to `size` leaves.
    async fn within_tree(&self, size: TreeSize) -> Result<()> {
        let now = tree_size(&self.db).await?;
        if size.get() > now {
            return Err(Error::invalid(
                "tree_size",
                format!("the log's tree has {now} leaves, not {size}"),
            ));
        }
        Ok(())
    }
}
