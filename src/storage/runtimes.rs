//! The fleet view's rows: runtimes flushed in batches by the replica that
//! holds their streams, and each replica's heartbeat.
//!
//! A flush merges per-policy outcomes with what the row already holds (the
//! newest revision wins, at one revision the later report), under a row
//! lock on PostgreSQL, so a report that reached another replica is never
//! overwritten by an older view.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DeleteMany, EntityTrait,
    QueryFilter, QuerySelect, QueryTrait, sea_query::OnConflict,
};

use super::entities::{replicas, runtimes};
use super::transaction::Repository;
use crate::domain::{
    Error, Namespace, Result,
    runtime::{RuntimeId, RuntimeRecord},
};

/// The last heartbeat of every replica, by replica id.
pub type ReplicaHeartbeats = HashMap<String, DateTime<Utc>>;

async fn replica_heartbeats<C: ConnectionTrait>(db: &C) -> Result<ReplicaHeartbeats> {
    Ok(replicas::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|replica| (replica.id, replica.last_seen))
        .collect())
}

/// Sets `replica`'s last heartbeat to `at`.
async fn set_heartbeat<C: ConnectionTrait>(db: &C, replica: &str, at: DateTime<Utc>) -> Result<()> {
    replicas::Entity::insert(replicas::ActiveModel {
        id: Set(replica.to_owned()),
        last_seen: Set(at),
    })
    .on_conflict(
        OnConflict::column(replicas::Column::Id)
            .update_column(replicas::Column::LastSeen)
            .to_owned(),
    )
    .exec(db)
    .await?;
    Ok(())
}

/// Deletes the runtimes silent since before `forgotten`: disconnected
/// ones, and connected ones whose replica is forgotten too. It runs with
/// every heartbeat, so it seeks old rows by the index on `last_seen`
/// instead of reading every runtime.
fn forget_runtimes(forgotten: DateTime<Utc>) -> DeleteMany<runtimes::Entity> {
    let remembered_replicas = replicas::Entity::find()
        .select_only()
        .column(replicas::Column::Id)
        .into_query();
    runtimes::Entity::delete_many()
        .filter(runtimes::Column::LastSeen.lt(forgotten))
        .filter(
            Condition::any()
                .add(runtimes::Column::Connected.eq(false))
                .add(runtimes::Column::Replica.not_in_subquery(remembered_replicas)),
        )
}

/// Rows per transaction (and INSERT statement, well under SQLite's
/// bound-parameter limit). SQLite has one writer, and a flush holds it
/// for one transaction at a time: an `Activate` that comes during a flush
/// of ten thousand changed runtimes waits for at most one of them. In the
/// bench its p50 read 3.0× that of an `Activate` beside a quiet fleet
/// with 500 rows, 1.45× with 100, and 0.88× (a full run) once a chunk
/// written as it is had its statement made before it took the writer.
const ROWS_PER_TRANSACTION: usize = 100;

fn stored(error: impl std::fmt::Display) -> Error {
    Error::Internal(format!("stored runtime is invalid: {error}"))
}

fn to_record(model: runtimes::Model) -> Result<RuntimeRecord> {
    Ok(RuntimeRecord {
        namespace: Namespace::parse("namespace", &model.namespace).map_err(stored)?,
        id: RuntimeId::parse("runtime_id", &model.runtime_id).map_err(stored)?,
        subject: model.subject,
        labels: serde_json::from_str(&model.labels).map_err(stored)?,
        names: serde_json::from_str(&model.names).map_err(stored)?,
        connected: model.connected,
        replica: model.replica,
        last_seen: model.last_seen,
        applied_revision: u64::try_from(model.applied_revision).map_err(stored)?,
        policies: serde_json::from_str(&model.policies).map_err(stored)?,
    })
}

fn json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|error| Error::Internal(format!("cannot store a runtime: {error}")))
}

fn to_row(record: &RuntimeRecord) -> Result<runtimes::ActiveModel> {
    Ok(runtimes::ActiveModel {
        namespace: Set(record.namespace.as_str().to_owned()),
        runtime_id: Set(record.id.as_str().to_owned()),
        subject: Set(record.subject.clone()),
        labels: Set(json(&record.labels)?),
        names: Set(json(&record.names)?),
        connected: Set(record.connected),
        replica: Set(record.replica.clone()),
        last_seen: Set(record.last_seen),
        applied_revision: Set(i64::try_from(record.applied_revision).map_err(stored)?),
        policies: Set(json(&record.policies)?),
    })
}

/// How a flushed record combines with the stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// This replica holds the runtime's stream: its view of the connection
    /// wins, outcomes merge.
    StreamHere,
    /// Only a report reached this replica: the stored connection stays,
    /// outcomes merge.
    ReportOnly,
    /// This replica alone writes the row, and the record holds everything
    /// the row does (this replica's last flush wrote it): written as it
    /// is, without reading the row back.
    Own,
}

/// What a flush changed in the stored rows.
#[derive(Debug)]
pub struct Saved {
    /// The runtimes the heartbeat forgot, before the records were written.
    pub forgotten: Vec<(Namespace, RuntimeId)>,
    /// The records written, each merged with its stored row (but those
    /// [`Flush::Own`]).
    pub merged: Vec<RuntimeRecord>,
}

/// Writes `rows`, each over the stored row of its runtime if any.
fn upsert(rows: Vec<runtimes::ActiveModel>) -> sea_orm::InsertMany<runtimes::ActiveModel> {
    runtimes::Entity::insert_many(rows).on_conflict(
        OnConflict::columns([runtimes::Column::Namespace, runtimes::Column::RuntimeId])
            .update_columns([
                runtimes::Column::Subject,
                runtimes::Column::Labels,
                runtimes::Column::Names,
                runtimes::Column::Connected,
                runtimes::Column::Replica,
                runtimes::Column::LastSeen,
                runtimes::Column::AppliedRevision,
                runtimes::Column::Policies,
            ])
            .to_owned(),
    )
}

/// The stored rows of the runtimes of `records` but those [`Flush::Own`],
/// locked until `txn` ends.
async fn stored_rows<C: ConnectionTrait>(
    txn: &C,
    records: &[(RuntimeRecord, Flush)],
) -> Result<HashMap<(Namespace, RuntimeId), RuntimeRecord>> {
    let read = records.iter().filter(|(_, flush)| *flush != Flush::Own);
    let keys = read.fold(Condition::any(), |keys, (record, _)| {
        keys.add(
            Condition::all()
                .add(runtimes::Column::Namespace.eq(record.namespace.as_str()))
                .add(runtimes::Column::RuntimeId.eq(record.id.as_str())),
        )
    });
    let rows = runtimes::Entity::find()
        .filter(keys)
        .lock_exclusive()
        .all(txn)
        .await?;
    rows.into_iter()
        .map(|row| {
            let record = to_record(row)?;
            Ok(((record.namespace.clone(), record.id.clone()), record))
        })
        .collect()
}

impl Repository {
    /// Records this replica's heartbeat, forgets what has been silent for
    /// longer than `forget_after`, and writes `records`, merging each with
    /// its stored row (but those [`Flush::Own`]). Each
    /// [`ROWS_PER_TRANSACTION`] records commit on their own: the write lock
    /// an activation waits for is never held for a whole fleet. Returns the
    /// runtimes forgotten and the merged records, so the caller learns of
    /// outcomes reported elsewhere.
    #[tracing::instrument(name = "storage.save_runtimes", skip_all, fields(runtimes = records.len()))]
    pub async fn save_runtimes(
        &self,
        replica: &str,
        records: Vec<(RuntimeRecord, Flush)>,
        forget_after: chrono::TimeDelta,
    ) -> Result<Saved> {
        let forgotten = self.record_heartbeat(replica, forget_after).await?;
        let mut merged = Vec::with_capacity(records.len());
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk = records.by_ref().take(ROWS_PER_TRANSACTION).collect();
            merged.extend(self.save_chunk(chunk).await?);
        }
        Ok(Saved { forgotten, merged })
    }

    /// Records `replica`'s heartbeat and forgets replicas and runtimes
    /// silent for longer than `forget_after`, in a transaction of its own;
    /// returns the runtimes forgotten.
    async fn record_heartbeat(
        &self,
        replica: &str,
        forget_after: chrono::TimeDelta,
    ) -> Result<Vec<(Namespace, RuntimeId)>> {
        let write = self.begin().await?;
        let now = write.at();
        set_heartbeat(&write.txn, replica, now).await?;
        // Forget replicas silent for longer than `forget_after` (a new id
        // every start), and runtimes silent for as long: a connected
        // runtime is seen as long as its replica is (its row's `last_seen`
        // may be older), so it goes once its replica has gone.
        let forgotten = now - forget_after;
        replicas::Entity::delete_many()
            .filter(replicas::Column::LastSeen.lt(forgotten))
            .exec(&write.txn)
            .await?;
        let forgotten = forget_runtimes(forgotten)
            .exec_with_returning(&write.txn)
            .await?
            .into_iter()
            .map(|row| {
                Ok((
                    Namespace::parse("namespace", &row.namespace).map_err(stored)?,
                    RuntimeId::parse("runtime_id", &row.runtime_id).map_err(stored)?,
                ))
            })
            .collect::<Result<_>>()?;
        write.txn.commit().await?;
        Ok(forgotten)
    }

    /// Writes one chunk of records in a transaction of its own, each merged
    /// with its stored row (but those [`Flush::Own`]); returns the merged
    /// records. A chunk written as it is has its statement made before the
    /// transaction takes the database's writer, which an activation may
    /// wait for.
    async fn save_chunk(&self, chunk: Vec<(RuntimeRecord, Flush)>) -> Result<Vec<RuntimeRecord>> {
        let backend = self.db.get_database_backend();
        if chunk.iter().all(|(_, flush)| *flush == Flush::Own) {
            let records: Vec<_> = chunk.into_iter().map(|(record, _)| record).collect();
            let rows = records.iter().map(to_row).collect::<Result<_>>()?;
            let statement = upsert(rows).build(backend);
            let write = self.begin().await?;
            write.txn.execute_raw(statement).await?;
            write.txn.commit().await?;
            return Ok(records);
        }
        let write = self.begin().await?;
        let mut stored = stored_rows(&write.txn, &chunk).await?;
        let mut rows = Vec::with_capacity(chunk.len());
        let mut merged = Vec::with_capacity(chunk.len());
        for (record, flush) in chunk {
            let key = (record.namespace.clone(), record.id.clone());
            let combined = match (stored.remove(&key), flush) {
                (_, Flush::Own) => record,
                // Another subject claimed the id since (this replica's
                // runtime went stale): the claim stands.
                (Some(row), Flush::StreamHere) if row.subject != record.subject => continue,
                (Some(row), Flush::StreamHere) => record.absorbing(&row),
                (Some(row), Flush::ReportOnly) => row.absorbing(&record),
                (None, Flush::StreamHere) => record,
                // The row is gone (never flushed by its holder): the
                // report cannot name a connection, so it waits for one.
                (None, Flush::ReportOnly) => continue,
            };
            rows.push(to_row(&combined)?);
            merged.push(combined);
        }
        if rows.is_empty() {
            write.txn.rollback().await?;
            return Ok(merged);
        }
        write.txn.execute_raw(upsert(rows).build(backend)).await?;
        write.txn.commit().await?;
        Ok(merged)
    }

    /// Every runtime of `namespace`.
    #[tracing::instrument(name = "storage.load_runtimes", skip_all)]
    pub async fn load_runtimes(&self, namespace: &Namespace) -> Result<Vec<RuntimeRecord>> {
        runtimes::Entity::find()
            .filter(runtimes::Column::Namespace.eq(namespace.as_str()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_record)
            .collect()
    }

    /// The last heartbeat of every replica that heartbeated lately.
    pub async fn replica_heartbeats(&self) -> Result<ReplicaHeartbeats> {
        replica_heartbeats(&self.db).await
    }

    /// Binds the runtime `claim.id` to `claim.subject` and its stream to
    /// `claim.replica`, unless another subject holds it: decided under the
    /// row's lock (the row is created first when absent), so two subjects
    /// opening streams of one id on two replicas at once cannot both win.
    /// `held` says whether a stored holder still holds the id, given every
    /// replica's heartbeat. Returns the holder's subject when the claim is
    /// refused.
    #[tracing::instrument(name = "storage.claim_runtime", skip_all)]
    pub async fn claim_runtime(
        &self,
        claim: &RuntimeRecord,
        held: impl FnOnce(&RuntimeRecord, &ReplicaHeartbeats) -> bool,
    ) -> Result<Option<String>> {
        let key = (claim.namespace.as_str(), claim.id.as_str());
        let transaction = self.begin().await?;
        let txn = &transaction.txn;
        runtimes::Entity::insert(to_row(claim)?)
            .on_conflict(
                OnConflict::columns([runtimes::Column::Namespace, runtimes::Column::RuntimeId])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        let stored = runtimes::Entity::find_by_id((key.0.to_owned(), key.1.to_owned()))
            .lock_exclusive()
            .one(txn)
            .await?
            .map(to_record)
            .transpose()?
            .ok_or_else(|| Error::Internal(format!("runtime {} vanished", claim.id)))?;
        if stored.subject != claim.subject && held(&stored, &replica_heartbeats(txn).await?) {
            transaction.txn.rollback().await?;
            return Ok(Some(stored.subject));
        }
        runtimes::Entity::update_many()
            .col_expr(runtimes::Column::Subject, claim.subject.clone().into())
            .col_expr(runtimes::Column::Replica, claim.replica.clone().into())
            .col_expr(runtimes::Column::Connected, true.into())
            .col_expr(runtimes::Column::LastSeen, transaction.at().into())
            .filter(runtimes::Column::Namespace.eq(key.0))
            .filter(runtimes::Column::RuntimeId.eq(key.1))
            .exec(txn)
            .await?;
        transaction.txn.commit().await?;
        Ok(None)
    }

    /// One runtime, as last flushed.
    pub async fn load_runtime(
        &self,
        namespace: &Namespace,
        id: &RuntimeId,
    ) -> Result<Option<RuntimeRecord>> {
        runtimes::Entity::find_by_id((namespace.as_str().to_owned(), id.as_str().to_owned()))
            .one(&self.db)
            .await?
            .map(to_record)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::runtime::RuntimeId;

    fn record(subject: &str, replica: &str) -> RuntimeRecord {
        RuntimeRecord {
            namespace: Namespace::parse("namespace", "team").unwrap(),
            id: RuntimeId::parse("runtime.id", "rt-1").unwrap(),
            subject: subject.into(),
            labels: Default::default(),
            names: Vec::new(),
            connected: true,
            replica: replica.into(),
            last_seen: Utc::now(),
            applied_revision: 0,
            policies: Default::default(),
        }
    }

    /// The heartbeat's forgetting, once a second, seeks old rows by the
    /// index on `last_seen` instead of reading every runtime, so what it
    /// costs does not grow with the fleet.
    #[tokio::test]
    async fn forgetting_seeks_old_rows_by_when_they_were_last_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        super::super::sqlite_repository(&path).await;
        let forget = forget_runtimes(Utc::now())
            .build(sea_orm::DbBackend::Sqlite)
            .to_string();
        let plan = super::super::sqlite_plan(&path, &forget).await;
        assert!(
            plan.contains("SEARCH runtimes USING INDEX runtimes_last_seen"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN runtimes"), "{plan}");
    }

    /// A connected runtime is forgotten once its replica is, however old
    /// its row's `last_seen`: the replica's heartbeat vouched for it until
    /// the replica went.
    #[tokio::test]
    async fn a_connected_runtime_is_forgotten_with_its_replica() {
        let dir = tempfile::tempdir().unwrap();
        let repository = super::super::sqlite_repository(&dir.path().join("fleet.db")).await;
        let forget = chrono::TimeDelta::hours(1);
        let heartbeat = async |id: &str, age: chrono::TimeDelta| {
            set_heartbeat(&repository.db, id, Utc::now() - age)
                .await
                .unwrap();
        };
        let mut connected = record("alice", "replica-a");
        connected.last_seen = Utc::now() - chrono::TimeDelta::hours(2);
        repository
            .save_runtimes(
                "replica-b",
                vec![(connected.clone(), Flush::StreamHere)],
                forget,
            )
            .await
            .unwrap();
        let held = || repository.load_runtime(&connected.namespace, &connected.id);

        // Dead for ten minutes, not yet forgotten: neither is its runtime.
        heartbeat("replica-a", chrono::TimeDelta::minutes(10)).await;
        repository
            .save_runtimes("replica-b", Vec::new(), forget)
            .await
            .unwrap();
        assert!(held().await.unwrap().is_some());

        heartbeat("replica-a", chrono::TimeDelta::hours(2)).await;
        repository
            .save_runtimes("replica-b", Vec::new(), forget)
            .await
            .unwrap();
        assert_eq!(held().await.unwrap(), None);
    }

    /// A replica whose runtime went stale and was claimed by another
    /// subject elsewhere does not write its old subject back.
    #[tokio::test]
    async fn a_flush_never_undoes_another_subjects_claim() {
        let dir = tempfile::tempdir().unwrap();
        let repository = super::super::sqlite_repository(&dir.path().join("fleet.db")).await;
        let forget = chrono::TimeDelta::hours(1);
        let old = record("alice", "replica-a");
        repository
            .save_runtimes("replica-a", vec![(old.clone(), Flush::StreamHere)], forget)
            .await
            .unwrap();
        let taken = repository
            .claim_runtime(&record("bob", "replica-b"), |_, _| false)
            .await
            .unwrap();
        assert_eq!(taken, None, "a stale holder gives the id up");
        repository
            .save_runtimes("replica-a", vec![(old, Flush::StreamHere)], forget)
            .await
            .unwrap();
        let team = Namespace::parse("namespace", "team").unwrap();
        let id = RuntimeId::parse("runtime.id", "rt-1").unwrap();
        let stored = repository.load_runtime(&team, &id).await.unwrap().unwrap();
        assert_eq!(
            (stored.subject.as_str(), stored.replica.as_str()),
            ("bob", "replica-b")
        );
        let refused = repository
            .claim_runtime(&record("alice", "replica-a"), |_, _| true)
            .await
            .unwrap();
        assert_eq!(refused.as_deref(), Some("bob"), "bob holds it now");
    }
}
