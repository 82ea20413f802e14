//! Active pointers and the revision counter: moving pointers under a new
//! revision (announced with NOTIFY on PostgreSQL), and the reads that fill
//! and catch up the in-memory index.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult, Order,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Statement, sea_query::Expr,
};

use super::entities::{events, policies};
use super::events::{NewEvent, bundle_sends};
use super::policies::{LockedPolicy, find_policy};
use super::rollouts::{find_rollout, live_rollouts, view};
use super::rows::{
    BundleRow, active_bundle, db_revision, db_version, revision, version, version_record,
};
use super::statement_runner::StatementRunner;
use super::transaction::{Repository, Transaction};
use super::versions::{find_version, no_such_version};
use crate::domain::rollout::{RevisionChange, RolloutState};
use crate::domain::{
    ActivationOutcome, ActivationPlan, ActiveBundle, Error, EventKind, Namespace, PolicyRef,
    RequestContext, Result, VersionRecord, VersionSelector,
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

/// Every pointer move after a revision (the placeholder), and every active
/// version signed again, with the bundle it sent.
fn moves_since(backend: DatabaseBackend) -> String {
    let kinds: Vec<String> = bundle_sends().map(|kind| format!("'{kind}'")).collect();
    // SQLite would pick the index on kind, which every activation ever
    // recorded matches, over the one on revision: named, the read costs
    // what changed since `after`, not the whole history.
    let (placeholder, index) = match backend {
        DatabaseBackend::Postgres => ("$1", ""),
        _ => ("?", " INDEXED BY events_revision"),
    };
    format!(
        "SELECT e.revision, p.namespace, p.name, v.version, v.label, v.digest, v.jws, v.key_id \
         FROM events e{index} \
         JOIN policies p ON p.id = e.policy_id \
         JOIN versions v ON v.policy_id = e.policy_id AND v.version = e.new_version \
         WHERE e.revision > {placeholder} AND e.kind IN ({}) \
         ORDER BY e.revision, e.id",
        kinds.join(", ")
    )
}

/// The revisions after `after` that changed a rollout, with the rollout.
async fn rollout_moves_since<C: ConnectionTrait>(
    db: &C,
    after: u64,
) -> Result<Vec<(u64, Namespace, String)>> {
    let kinds = EventKind::ALL
        .into_iter()
        .filter(|kind| kind.moves_a_rollout())
        .map(EventKind::as_str);
    let rows: Vec<(Option<i64>, Option<String>, Option<String>)> = events::Entity::find()
        .select_only()
        .column(events::Column::Revision)
        .column(events::Column::Namespace)
        .column(events::Column::RolloutId)
        .distinct()
        .filter(events::Column::Revision.gt(db_revision(after)))
        .filter(events::Column::Kind.is_in(kinds))
        .filter(events::Column::RolloutId.is_not_null())
        .order_by(events::Column::Revision, Order::Asc)
        .into_tuple()
        .all(db)
        .await?;
    rows.into_iter()
        .map(|row| match row {
            (Some(at), Some(namespace), Some(id)) => {
                Ok((revision(at), Namespace::parse("namespace", &namespace)?, id))
            }
            _ => Err(Error::Internal("a rollout event lacks its revision".into())),
        })
        .collect()
}

/// The active bundle of `policy`, sent again at revision `at`.
async fn stable_bundle<C: ConnectionTrait + StatementRunner>(
    db: &C,
    policy: &PolicyRef,
    at: u64,
) -> Result<Option<ActiveBundle>> {
    let row = find_policy(db, policy).await?;
    let Some(active) = row.active_version else {
        return Ok(None);
    };
    let selector = VersionSelector::Number(version(active));
    let model = find_version(db, row.id, &selector)
        .await?
        .ok_or_else(|| no_such_version(policy, &selector))?;
    active_bundle(&version_record(policy, None, model)?, at).map(Some)
}

pub(super) async fn current_revision<R: StatementRunner>(runner: &R) -> Result<u64> {
    let statement = Statement::from_string(
        runner.backend(),
        "SELECT revision FROM revision_counter WHERE id = 1",
    );
    let at: i64 = runner
        .value(statement)
        .await?
        .ok_or_else(|| Error::Internal("the revision counter row is missing".into()))?;
    Ok(revision(at))
}

impl Transaction {
    /// The revision in force, as this transaction reads it.
    pub(super) async fn revision_in_force(&self) -> Result<u64> {
        current_revision(&self.txn).await
    }

    /// The active bundles of `policies`, sent again at revision `at` (a
    /// rollout that ends without completing returns its cohort to them).
    pub async fn stable_bundles(
        &self,
        policies: &[LockedPolicy],
        at: u64,
    ) -> Result<Vec<ActiveBundle>> {
        let mut bundles = Vec::new();
        for policy in policies {
            if let Some(bundle) = stable_bundle(&self.txn, &policy.state.policy, at).await? {
                bundles.push(bundle);
            }
        }
        Ok(bundles)
    }

    /// Takes the next deployment-wide revision. The row lock this takes is
    /// what serializes activations across replicas
    /// (docs/src/contributing/design.md#replication): revision N+1 cannot
    /// commit before revision N. On PostgreSQL the revision is announced to
    /// every replica's listener at commit (see `replication`).
    pub async fn take_revision(&self) -> Result<u64> {
        self.advance_revision(1).await
    }

    /// Takes the next `count` revisions; the last of them.
    pub(super) async fn advance_revision(&self, count: u64) -> Result<u64> {
        let count = i64::try_from(count)
            .map_err(|_| Error::Internal(format!("{count} revisions at once")))?;
        let placeholder = match self.backend() {
            DatabaseBackend::Postgres => "$1",
            _ => "?",
        };
        let next: i64 = self
            .txn
            .value(Statement::from_sql_and_values(
                self.backend(),
                format!(
                    "UPDATE revision_counter SET revision = revision + {placeholder} WHERE id = 1 \
                     RETURNING revision"
                ),
                [count.into()],
            ))
            .await?
            .ok_or_else(|| Error::Internal("the revision counter row is missing".into()))?;
        let next = revision(next);
        self.took_revision(next);
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
    /// revision, each with its event. The namespaces of the moving policies
    /// must be locked: their active sets change. A plan that moves nothing writes
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
        for &index in &plan.moving {
            self.ensure_namespace_locked(&changes[index].1.policy.namespace)?;
        }
        let next = self.take_revision().await?;
        let mut changed = Vec::with_capacity(plan.moving.len());
        for &index in &plan.moving {
            let (policy, target) = changes[index];
            let pointer = policies::Entity::update_many()
                .col_expr(
                    policies::Column::ActiveVersion,
                    Expr::value(db_version(target.version)),
                )
                .col_expr(
                    policies::Column::ActiveRevision,
                    Expr::value(db_revision(next)),
                )
                .filter(policies::Column::Id.eq(policy.id));
            self.txn.run(pointer.build(self.backend())).await?;
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

    /// Every active bundle and live rollout, and the revision they are
    /// current at, read in one snapshot, to fill the in-memory index.
    #[tracing::instrument(name = "storage.load_active", skip_all)]
    pub async fn load_active(&self) -> Result<RevisionChange> {
        // One snapshot for both reads, so the bundles are exactly those of
        // the revision.
        let txn = self.snapshot().await?;
        let at = current_revision(&txn).await?;
        let rows = BundleRow::find_by_statement(Statement::from_string(
            txn.get_database_backend(),
            ACTIVE_BUNDLES,
        ))
        .all(&txn)
        .await?;
        let mut rollouts = Vec::new();
        for rollout in live_rollouts(&txn).await? {
            rollouts.push(view(&txn, rollout).await?);
        }
        txn.commit().await?;
        let bundles = rows
            .into_iter()
            .map(BundleRow::into_bundle)
            .collect::<Result<_>>()?;
        Ok(RevisionChange {
            revision: at,
            bundles,
            rollouts,
        })
    }

    /// What every revision after `after` changed, oldest first: what a
    /// replica applies to catch up. Rollouts are read as they are now, and
    /// a rollout that ended without completing sends its policies' stable
    /// bundles again at its ending revision.
    #[tracing::instrument(name = "storage.changes_since", skip_all)]
    pub async fn changes_since(&self, after: u64) -> Result<Vec<RevisionChange>> {
        let backend = self.db.get_database_backend();
        let rows = BundleRow::find_by_statement(Statement::from_sql_and_values(
            backend,
            moves_since(backend),
            [db_revision(after).into()],
        ))
        .all(&self.db)
        .await?;
        let mut changes: BTreeMap<u64, RevisionChange> = BTreeMap::new();
        for row in rows {
            let bundle = row.into_bundle()?;
            changes
                .entry(bundle.revision)
                .or_insert_with(|| RevisionChange {
                    revision: bundle.revision,
                    ..RevisionChange::default()
                })
                .bundles
                .push(bundle);
        }
        for (at, namespace, id) in rollout_moves_since(&self.db, after).await? {
            let rollout = find_rollout(&self.db, &namespace, &id, false).await?;
            let resend = matches!(
                rollout.state,
                RolloutState::Aborted | RolloutState::RolledBack
            );
            let policies: Vec<PolicyRef> = rollout.policies().cloned().collect();
            let entry = changes.entry(at).or_insert_with(|| RevisionChange {
                revision: at,
                ..RevisionChange::default()
            });
            if resend {
                for policy in &policies {
                    if let Some(bundle) = stable_bundle(&self.db, policy, at).await? {
                        entry.bundles.push(bundle);
                    }
                }
            }
            entry.rollouts.push(view(&self.db, rollout).await?);
        }
        Ok(changes.into_values().collect())
    }
}
