//! The store, and the write transaction every mutation runs in.
//!
//! A mutation locks what it changes in a fixed order — the policy rows
//! (sorted by namespace and name), then the revision counter — so concurrent
//! requests on several replicas serialize without deadlocks. SQLite has no
//! row locks; there a process-wide writer lock plays their part (SQLite
//! allows one writer anyway).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, TransactionTrait,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::Instrument;

use super::idempotency::IdempotencyClaim;
use super::rows::now;
use crate::domain::{Error, RequestContext, Result};

/// The policy store.
#[derive(Clone)]
pub struct Repository {
    pub(super) db: DatabaseConnection,
    /// Serializes write transactions on SQLite, which has a single writer and
    /// would otherwise fail concurrent upgrades from read to write locks with
    /// SQLITE_BUSY. `None` on PostgreSQL, where row locks do this job.
    sqlite_writer: Option<Arc<Mutex<()>>>,
}

/// An open write transaction, the instant it writes as, and on SQLite the
/// writer lock it holds.
pub struct Transaction {
    pub(super) txn: DatabaseTransaction,
    at: DateTime<Utc>,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl Transaction {
    /// The instant everything this transaction writes is stamped with.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    pub(super) fn backend(&self) -> DatabaseBackend {
        self.txn.get_database_backend()
    }
}

impl Repository {
    /// A repository over a migrated database.
    pub fn new(db: DatabaseConnection) -> Self {
        let sqlite_writer = (db.get_database_backend() == DatabaseBackend::Sqlite)
            .then(|| Arc::new(Mutex::new(())));
        Repository { db, sqlite_writer }
    }

    /// Whether the database answers, for health checks.
    pub async fn ping(&self) -> Result<()> {
        Ok(self.db.ping().await?)
    }

    pub(super) async fn begin(&self) -> Result<Transaction> {
        let writer = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        Ok(Transaction {
            txn: self.db.begin().await?,
            at: now(),
            _writer: writer,
        })
    }

    /// Runs `work` in one write transaction and commits when it succeeds;
    /// an error rolls everything back. Its span is `storage.<operation>`.
    pub async fn write<T>(
        &self,
        operation: &str,
        work: impl AsyncFnOnce(&mut Transaction) -> Result<T>,
    ) -> Result<T> {
        async {
            let mut transaction = self.begin().await?;
            let outcome = work(&mut transaction).await?;
            transaction.txn.commit().await?;
            Ok(outcome)
        }
        .instrument(span(operation))
        .await
    }

    /// [`write`](Self::write), at most once per idempotency claim: a request
    /// seen before gets its recorded outcome without `work` running, and a
    /// new outcome is recorded in the same commit. When a concurrent request
    /// with the same key commits first, this one is rolled back whole and
    /// the first one's outcome returned.
    pub async fn write_once<T: Serialize + DeserializeOwned>(
        &self,
        operation: &str,
        claim: Option<&IdempotencyClaim>,
        context: &RequestContext,
        work: impl AsyncFnOnce(&mut Transaction) -> Result<T>,
    ) -> Result<T> {
        let Some(claim) = claim else {
            return self.write(operation, work).await;
        };
        async {
            let mut transaction = self.begin().await?;
            if let Some(outcome) = claim.replay(&transaction.txn).await? {
                return Ok(outcome);
            }
            let outcome = work(&mut transaction).await?;
            if !claim.record(&transaction.txn, context, &outcome).await? {
                transaction.txn.rollback().await?;
                return claim
                    .replay(&self.db)
                    .await?
                    .ok_or_else(|| Error::Internal("an idempotency record vanished".into()));
            }
            transaction.txn.commit().await?;
            Ok(outcome)
        }
        .instrument(span(operation))
        .await
    }
}

impl Repository {
    /// Runs `work` unless another replica runs work under the same `key`
    /// now: on PostgreSQL, while this holds a transaction-scoped advisory
    /// lock (released when the transaction ends or its connection dies); on
    /// SQLite, with its single replica, always.
    pub async fn exclusively(
        &self,
        key: i64,
        work: impl AsyncFnOnce() -> Result<()>,
    ) -> Result<()> {
        if self.db.get_database_backend() != DatabaseBackend::Postgres {
            return work().await;
        }
        let lock = self.db.begin().await?;
        let held = lock
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_try_advisory_xact_lock($1)",
                [key.into()],
            ))
            .await?
            .map(|row| row.try_get_by_index::<bool>(0))
            .transpose()?
            .unwrap_or(false);
        if !held {
            lock.rollback().await?;
            return Ok(());
        }
        let outcome = work().await;
        lock.commit().await?;
        outcome
    }
}

/// The span of one write transaction, exported as `storage.<operation>`.
fn span(operation: &str) -> tracing::Span {
    let name = format!("storage.{operation}");
    tracing::info_span!("storage.write", otel.name = name.as_str())
}
