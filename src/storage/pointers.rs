//! Active pointers and the revision counter: moving pointers under a new
//! revision (announced with NOTIFY on PostgreSQL), and the reads that fill
//! and catch up the in-memory index.

use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult,
    IsolationLevel, QueryFilter, Statement, TransactionTrait, sea_query::Expr,
};

use super::entities::policies;
use super::events::{NewEvent, pointer_moves};
use super::policies::LockedPolicy;
use super::rows::{BundleRow, active_bundle, db_revision, db_version, revision};
use super::transaction::{Repository, Transaction};
use crate::domain::{
    ActivationOutcome, ActivationPlan, ActiveBundle, Error, EventKind, RequestContext, Result,
    VersionRecord,
};

/// The PostgreSQL notification channel that carries each committed
/// activation revision.
pub const REVISION_CHANNEL: &str = "policyhub_revisions";

/// The active bundle of every policy. Driven from `policies`, one index
/// lookup per active pointer: a LEFT JOIN keeps SQLite from scanning every
/// version row (JWS included) to find the active ones. An active pointer
/// always names an existing version (a foreign key of the data).
pub(super) const ACTIVE_BUNDLES: &str = "SELECT p.active_revision AS revision, p.namespace, p.name, \
     v.version, v.label, v.digest, v.jws, v.key_id \
     FROM policies p LEFT JOIN versions v ON v.policy_id = p.id AND v.version = p.active_version \
     WHERE p.active_version IS NOT NULL";

/// Every pointer move after a revision (the placeholder), with the bundle
/// it moved to.
fn moves_since(backend: DatabaseBackend) -> String {
    let kinds: Vec<String> = pointer_moves().map(|kind| format!("'{kind}'")).collect();
    let placeholder = match backend {
        DatabaseBackend::Postgres => "$1",
        _ => "?",
    };
    format!(
        "SELECT e.revision, p.namespace, p.name, v.version, v.label, v.digest, v.jws, v.key_id \
         FROM events e \
         JOIN policies p ON p.id = e.policy_id \
         JOIN versions v ON v.policy_id = e.policy_id AND v.version = e.new_version \
         WHERE e.revision > {placeholder} AND e.kind IN ({}) \
         ORDER BY e.revision, e.id",
        kinds.join(", ")
    )
}

async fn current_revision<C: ConnectionTrait>(db: &C) -> Result<u64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT revision FROM revision_counter WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| Error::Internal("the revision counter row is missing".into()))?;
    Ok(revision(row.try_get_by_index::<i64>(0)?))
}

impl Transaction {
    /// Takes the next deployment-wide revision. The row lock this takes is
    /// what serializes activations across replicas (DESIGN §5): revision N+1
    /// cannot commit before revision N. On PostgreSQL the revision is
    /// announced to every replica's listener at commit (see `replication`).
    async fn next_revision(&self) -> Result<u64> {
        let row = self
            .txn
            .query_one_raw(Statement::from_string(
                self.backend(),
                "UPDATE revision_counter SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            ))
            .await?
            .ok_or_else(|| Error::Internal("the revision counter row is missing".into()))?;
        let next = revision(row.try_get_by_index::<i64>(0)?);
        if self.backend() == DatabaseBackend::Postgres {
            self.txn
                .execute_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [REVISION_CHANNEL.into(), next.to_string().into()],
                ))
                .await?;
        }
        Ok(next)
    }

    /// Writes an activation plan: the pointers that move, under one new
    /// revision, each with its event. A plan that moves nothing writes
    /// nothing and takes no revision. `changes` are the plan's policies and
    /// targets, in its order.
    pub async fn move_pointers(
        &self,
        context: &RequestContext,
        kind: EventKind,
        reason: &str,
        changes: &[(&LockedPolicy, &VersionRecord)],
        plan: ActivationPlan,
    ) -> Result<ActivationOutcome> {
        if plan.moving.is_empty() {
            return Ok(ActivationOutcome {
                revision: plan.current_revision,
                activations: plan.activations,
                changed: Vec::new(),
            });
        }
        let next = self.next_revision().await?;
        let mut changed = Vec::with_capacity(plan.moving.len());
        for &index in &plan.moving {
            let (policy, target) = changes[index];
            policies::Entity::update_many()
                .col_expr(
                    policies::Column::ActiveVersion,
                    Expr::value(db_version(target.version)),
                )
                .col_expr(
                    policies::Column::ActiveRevision,
                    Expr::value(db_revision(next)),
                )
                .filter(policies::Column::Id.eq(policy.id))
                .exec(&self.txn)
                .await?;
            let event = NewEvent {
                previous_version: policy.state.active_version(),
                new_version: Some(target.version),
                revision: Some(next),
                ..NewEvent::new(kind, reason)
            };
            self.record_event(context, Some(policy), event).await?;
            changed.push(active_bundle(target, next)?);
        }
        Ok(ActivationOutcome {
            revision: next,
            activations: plan.activations,
            changed,
        })
    }
}

impl Repository {
    /// The current revision.
    #[tracing::instrument(name = "storage.current_revision", skip_all)]
    pub async fn current_revision(&self) -> Result<u64> {
        current_revision(&self.db).await
    }

    /// Every active bundle and the revision they are current at, in one
    /// query, to fill the in-memory index.
    #[tracing::instrument(name = "storage.load_active", skip_all)]
    pub async fn load_active(&self) -> Result<(u64, Vec<ActiveBundle>)> {
        // One snapshot for both reads, so the bundles are exactly those of
        // the revision (PostgreSQL's default isolation would let a commit in
        // between show through; SQLite transactions are snapshots already).
        let txn = match self.db.get_database_backend() {
            DatabaseBackend::Postgres => {
                self.db
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await?
            }
            _ => self.db.begin().await?,
        };
        let at = current_revision(&txn).await?;
        let rows = BundleRow::find_by_statement(Statement::from_string(
            txn.get_database_backend(),
            ACTIVE_BUNDLES,
        ))
        .all(&txn)
        .await?;
        txn.commit().await?;
        let bundles = rows
            .into_iter()
            .map(BundleRow::into_bundle)
            .collect::<Result<_>>()?;
        Ok((at, bundles))
    }

    /// The pointer moves of every revision after `after`, grouped by
    /// revision, oldest first: what a replica applies to catch up.
    #[tracing::instrument(name = "storage.activations_since", skip_all)]
    pub async fn activations_since(&self, after: u64) -> Result<Vec<(u64, Vec<ActiveBundle>)>> {
        let backend = self.db.get_database_backend();
        let rows = BundleRow::find_by_statement(Statement::from_sql_and_values(
            backend,
            moves_since(backend),
            [db_revision(after).into()],
        ))
        .all(&self.db)
        .await?;
        let mut revisions: Vec<(u64, Vec<ActiveBundle>)> = Vec::new();
        for row in rows {
            let bundle = row.into_bundle()?;
            match revisions.last_mut() {
                Some((last, bundles)) if *last == bundle.revision => bundles.push(bundle),
                _ => revisions.push((bundle.revision, vec![bundle])),
            }
        }
        Ok(revisions)
    }
}
