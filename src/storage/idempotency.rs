//! Idempotency records, and the write transaction that honours them: a
//! mutation's key, the fingerprint of its request and its outcome, so a
//! retried request gets the first outcome
//! (docs/src/contributing/design.md#domain).

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryTrait};
use serde::{Serialize, de::DeserializeOwned};
use tracing::Instrument;

use super::entities::idempotency_records;
use super::errors::is_unique_violation;
use super::rows::now;
use super::statement_runner::StatementRunner;
use super::transaction::{Repository, Transaction, span};
use crate::domain::{Digest, Error, IdempotencyKey, RequestContext, Result, fingerprint};

/// A mutation's idempotency key and the fingerprint of its request.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The RPC, so one key may serve different methods.
    method: &'static str,
    /// The client's key.
    key: String,
    /// Digest of the canonical request.
    fingerprint: Digest,
}

impl IdempotencyClaim {
    /// The claim of `command` under the caller's key, if it gave one.
    pub fn new(
        method: &'static str,
        key: Option<IdempotencyKey>,
        command: &impl Serialize,
    ) -> Option<Self> {
        key.map(|IdempotencyKey(key)| IdempotencyClaim {
            method,
            key,
            fingerprint: fingerprint(method, command),
        })
    }

    /// The recorded outcome of this request, if it was seen; a different
    /// request under the same key is refused.
    pub(super) async fn replay<T: DeserializeOwned, R: StatementRunner>(
        &self,
        runner: &R,
    ) -> Result<Option<T>> {
        let recorded =
            idempotency_records::Entity::find_by_id((self.method.to_owned(), self.key.clone()));
        let Some(record) = runner.one(recorded).await? else {
            return Ok(None);
        };
        if record.fingerprint != self.fingerprint.as_str() {
            return Err(Error::AlreadyExists(format!(
                "idempotency key {:?} was already used for a different {} request",
                self.key, self.method
            )));
        }
        serde_json::from_str(&record.response)
            .map(Some)
            .map_err(|error| {
                Error::Internal(format!("stored idempotent response is unreadable: {error}"))
            })
    }

    /// Records the outcome; `false` when a concurrent request with the same
    /// key recorded first.
    pub(super) async fn record<T: Serialize, R: StatementRunner>(
        &self,
        runner: &R,
        context: &RequestContext,
        outcome: &T,
    ) -> Result<bool> {
        let response = serde_json::to_string(outcome)
            .map_err(|error| Error::Internal(format!("cannot record the response: {error}")))?;
        let row = idempotency_records::Entity::insert(idempotency_records::ActiveModel {
            method: Set(self.method.to_owned()),
            key: Set(self.key.clone()),
            fingerprint: Set(self.fingerprint.to_string()),
            actor: Set(context.actor.clone()),
            response: Set(response),
            created_at: Set(now()),
        });
        let inserted = runner.run(row.build(runner.backend())).await;
        match inserted {
            Err(error) if is_unique_violation(&error) => Ok(false),
            other => other.map(|_| true).map_err(Error::from),
        }
    }
}

impl Repository {
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
            self.commit_signed(transaction).await?;
            Ok(outcome)
        }
        .instrument(span(operation))
        .await
    }

    /// The recorded outcome of `claim`'s request, if it was seen; a
    /// different request under the same key is refused. For a mutation
    /// whose checks ask another service first: a retry is answered without
    /// asking again.
    pub async fn replayed<T: DeserializeOwned>(
        &self,
        claim: Option<&IdempotencyClaim>,
    ) -> Result<Option<T>> {
        match claim {
            Some(claim) => claim.replay(&self.db).await,
            None => Ok(None),
        }
    }

    /// Deletes the idempotency records created before `cutoff`; returns how
    /// many. Idempotency records are bookkeeping, not history: the events
    /// and versions they point at stay.
    pub async fn forget_idempotency_records(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let deleted = idempotency_records::Entity::delete_many()
            .filter(idempotency_records::Column::CreatedAt.lt(cutoff))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected)
    }
}
