//! Rollout rows: the plan and progress of each rollout as one JSON
//! document, the policies a live rollout holds, and the views the index
//! needs of the live ones.

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Expr,
};

use super::entities::{policies, rollout_measurements, rollouts};
use super::paging::Paging;
use super::policies::{LockedPolicy, find_policy};
use super::rows::{active_bundle, version_record};
use super::statement_runner::StatementRunner;
use super::transaction::{Repository, Transaction};
use super::versions::{find_version, no_such_version};
use crate::domain::rollout::{Measurement, Rollout, RolloutState, RolloutView};
use crate::domain::{Error, Namespace, Page, Result, VersionSelector};

fn to_row(rollout: &Rollout) -> Result<String> {
    serde_json::to_string(rollout)
        .map_err(|error| Error::Internal(format!("cannot store the rollout: {error}")))
}

pub(super) fn from_row(row: rollouts::Model) -> Result<Rollout> {
    serde_json::from_str(&row.spec).map_err(|error| {
        Error::Internal(format!("stored rollout {} is unreadable: {error}", row.id))
    })
}

fn measurement(row: rollout_measurements::Model) -> Result<Measurement> {
    Ok(Measurement {
        analysis: row.analysis,
        step: usize::try_from(row.step).map_err(|_| {
            Error::Internal(format!("measurement {} has step {}", row.id, row.step))
        })?,
        phase: row.phase.parse()?,
        value: row.value,
        success_condition: row.success_condition,
        message: row.message,
        taken_at: row.taken_at,
    })
}

/// The row of a measurement of `rollout`.
fn measurement_row(rollout: &str, taken: &Measurement) -> rollout_measurements::ActiveModel {
    rollout_measurements::ActiveModel {
        rollout_id: Set(rollout.to_owned()),
        analysis: Set(taken.analysis.clone()),
        step: Set(i32::try_from(taken.step).unwrap_or(i32::MAX)),
        phase: Set(taken.phase.as_str().to_owned()),
        // SQL has no NaN nor infinity to store; such a value judged
        // nothing (`QueryAnswer::NoData`).
        value: Set(taken.value.filter(|value| value.is_finite())),
        success_condition: Set(taken.success_condition.clone()),
        message: Set(taken.message.clone()),
        taken_at: Set(taken.taken_at),
        ..Default::default()
    }
}

/// Every measurement of each of `rollouts`, oldest first, by rollout.
pub(super) async fn measurements_of<C: ConnectionTrait>(
    db: &C,
    rollouts: &[String],
) -> Result<HashMap<String, Vec<Measurement>>> {
    let mut by_rollout: HashMap<String, Vec<Measurement>> = HashMap::new();
    // A bounded number of bound values per query, as for the inserts.
    for chunk in rollouts.chunks(500) {
        for row in rollout_measurements::Entity::find()
            .filter(rollout_measurements::Column::RolloutId.is_in(chunk.iter().cloned()))
            .order_by(rollout_measurements::Column::Id, Order::Asc)
            .all(db)
            .await?
        {
            let rollout = row.rollout_id.clone();
            by_rollout
                .entry(rollout)
                .or_default()
                .push(measurement(row)?);
        }
    }
    Ok(by_rollout)
}

fn not_found(namespace: &Namespace, id: &str) -> Error {
    Error::NotFound(format!(
        "rollout {} does not exist in namespace {namespace}",
        crate::domain::quoted(id)
    ))
}

/// The rollout `id` of `namespace`, locked (`FOR UPDATE`) inside a
/// transaction.
pub(super) async fn find_rollout<C: ConnectionTrait>(
    db: &C,
    namespace: &Namespace,
    id: &str,
    lock: bool,
) -> Result<Rollout> {
    let mut query = rollouts::Entity::find()
        .filter(rollouts::Column::Id.eq(id))
        .filter(rollouts::Column::Namespace.eq(namespace.as_str()));
    if lock {
        query = query.lock_exclusive();
    }
    query
        .one(db)
        .await?
        .ok_or_else(|| not_found(namespace, id))
        .and_then(from_row)
}

/// Every rollout that has not ended, oldest first.
pub(super) async fn live_rollouts<C: ConnectionTrait>(db: &C) -> Result<Vec<Rollout>> {
    let live = RolloutState::ALL
        .into_iter()
        .filter(|state| state.is_live())
        .map(RolloutState::as_str);
    rollouts::Entity::find()
        .filter(rollouts::Column::State.is_in(live))
        .order_by(rollouts::Column::CreatedAt, Order::Asc)
        .all(db)
        .await?
        .into_iter()
        .map(from_row)
        .collect()
}

/// What the index needs of a rollout: the plan and the candidates' bundles.
pub(super) async fn view<C: ConnectionTrait + StatementRunner>(
    db: &C,
    rollout: Rollout,
) -> Result<RolloutView> {
    let mut candidates = Vec::with_capacity(rollout.targets.len());
    for target in &rollout.targets {
        let policy = find_policy(db, &target.policy).await?;
        let selector = VersionSelector::Number(target.version);
        let model = find_version(db, policy.id, &selector)
            .await?
            .ok_or_else(|| no_such_version(&target.policy, &selector))?;
        let record = version_record(&target.policy, None, model)?;
        candidates.push(active_bundle(&record, 0)?);
    }
    Ok(RolloutView {
        rollout,
        candidates,
    })
}

impl Transaction {
    /// Every rollout that has not ended, with its candidates' bundles.
    pub async fn live_rollout_views(&self) -> Result<Vec<RolloutView>> {
        let mut views = Vec::new();
        for rollout in live_rollouts(&self.txn).await? {
            views.push(view(&self.txn, rollout).await?);
        }
        Ok(views)
    }

    /// Stores a new rollout.
    pub async fn insert_rollout(&self, rollout: &Rollout) -> Result<()> {
        rollouts::Entity::insert(rollouts::ActiveModel {
            id: Set(rollout.id.clone()),
            namespace: Set(rollout.namespace.to_string()),
            state: Set(rollout.state.as_str().to_owned()),
            spec: Set(to_row(rollout)?),
            created_at: Set(self.at()),
            updated_at: Set(self.at()),
        })
        .exec_without_returning(&self.txn)
        .await?;
        Ok(())
    }

    /// Stores a rollout as an archive holds it, with its own times and
    /// its measurements (oldest first).
    pub(super) async fn insert_archived_rollout(
        &self,
        rollout: &Rollout,
        created_at: chrono::DateTime<chrono::Utc>,
        updated_at: chrono::DateTime<chrono::Utc>,
        measurements: &[Measurement],
    ) -> Result<()> {
        rollouts::Entity::insert(rollouts::ActiveModel {
            id: Set(rollout.id.clone()),
            namespace: Set(rollout.namespace.to_string()),
            state: Set(rollout.state.as_str().to_owned()),
            spec: Set(to_row(rollout)?),
            created_at: Set(created_at),
            updated_at: Set(updated_at),
        })
        .exec_without_returning(&self.txn)
        .await?;
        // In statements of a bounded number of bound values: a long
        // rollout's measurements would pass SQLite's limit in one.
        for chunk in measurements.chunks(500) {
            rollout_measurements::Entity::insert_many(
                chunk
                    .iter()
                    .map(|taken| measurement_row(&rollout.id, taken)),
            )
            .exec_without_returning(&self.txn)
            .await?;
        }
        Ok(())
    }

    /// The rollout, locked for the rest of the transaction.
    pub async fn lock_rollout(&self, namespace: &Namespace, id: &str) -> Result<Rollout> {
        self.rows_locked();
        find_rollout(&self.txn, namespace, id, true).await
    }

    /// Stores a rollout's new state and progress.
    pub async fn save_rollout(&self, rollout: &Rollout) -> Result<()> {
        rollouts::Entity::update_many()
            .col_expr(rollouts::Column::State, Expr::value(rollout.state.as_str()))
            .col_expr(rollouts::Column::Spec, Expr::value(to_row(rollout)?))
            .col_expr(rollouts::Column::UpdatedAt, Expr::value(self.at()))
            .filter(rollouts::Column::Id.eq(rollout.id.as_str()))
            .exec(&self.txn)
            .await?;
        Ok(())
    }

    /// Marks the policies as held by `rollout` (or, with `None`, free).
    pub async fn hold_policies(
        &self,
        policies: &[LockedPolicy],
        rollout: Option<&str>,
    ) -> Result<()> {
        policies::Entity::update_many()
            .col_expr(
                policies::Column::RolloutId,
                Expr::value(rollout.map(str::to_owned)),
            )
            .filter(policies::Column::Id.is_in(policies.iter().map(|policy| policy.id)))
            .exec(&self.txn)
            .await?;
        Ok(())
    }

    /// The index's view of a rollout, as this transaction sees it.
    pub async fn rollout_view(&self, rollout: Rollout) -> Result<RolloutView> {
        view(&self.txn, rollout).await
    }
}

impl Repository {
    /// One rollout.
    #[tracing::instrument(name = "storage.get_rollout", skip_all)]
    pub async fn get_rollout(&self, namespace: &Namespace, id: &str) -> Result<Rollout> {
        find_rollout(&self.db, namespace, id, false).await
    }

    /// The rollouts of a namespace, newest first; the page token is the
    /// creation time and id of the last one returned.
    #[tracing::instrument(name = "storage.list_rollouts", skip_all)]
    pub async fn list_rollouts(
        &self,
        namespace: &Namespace,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<Rollout>> {
        let paging = Paging::new("rollouts", namespace, page_size);
        let before: Option<String> = paging.position(page_token)?;
        let mut query =
            rollouts::Entity::find().filter(rollouts::Column::Namespace.eq(namespace.as_str()));
        if let Some(before) = before {
            let Some(last) = rollouts::Entity::find_by_id(before.clone())
                .one(&self.db)
                .await?
            else {
                return Err(Error::invalid(
                    "page_token",
                    "names a rollout that does not exist",
                ));
            };
            query = query.filter(
                sea_orm::Condition::any()
                    .add(rollouts::Column::CreatedAt.lt(last.created_at))
                    .add(
                        sea_orm::Condition::all()
                            .add(rollouts::Column::CreatedAt.eq(last.created_at))
                            .add(rollouts::Column::Id.lt(before)),
                    ),
            );
        }
        let mut rows = query
            .order_by(rollouts::Column::CreatedAt, Order::Desc)
            .order_by(rollouts::Column::Id, Order::Desc)
            .limit(paging.limit())
            .all(&self.db)
            .await?;
        let next_page_token = paging.finish(&mut rows, |last| last.id.clone());
        Ok(Page {
            items: rows.into_iter().map(from_row).collect::<Result<_>>()?,
            next_page_token,
        })
    }

    /// Every rollout that has not ended, oldest first: what the controller
    /// drives.
    #[tracing::instrument(name = "storage.live_rollouts", skip_all)]
    pub async fn live_rollouts(&self) -> Result<Vec<Rollout>> {
        live_rollouts(&self.db).await
    }

    /// The index's view of a rollout.
    pub async fn rollout_view(&self, rollout: Rollout) -> Result<RolloutView> {
        view(&self.db, rollout).await
    }

    /// Records measurements of `rollout`'s analyses.
    #[tracing::instrument(name = "storage.record_measurements", skip_all)]
    pub async fn record_measurements(&self, rollout: &str, taken: &[Measurement]) -> Result<()> {
        if taken.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = taken
            .iter()
            .map(|taken| measurement_row(rollout, taken))
            .collect();
        self.write("record_measurements", async |tx| {
            rollout_measurements::Entity::insert_many(rows)
                .exec_without_returning(&tx.txn)
                .await?;
            Ok(())
        })
        .await
    }

    /// The newest `limit` measurements of `rollout` taken at `step` or, with
    /// `None`, at any step, oldest first.
    #[tracing::instrument(name = "storage.measurements", skip_all)]
    pub async fn measurements(
        &self,
        rollout: &str,
        step: Option<usize>,
        limit: u64,
    ) -> Result<Vec<Measurement>> {
        let mut query = rollout_measurements::Entity::find()
            .filter(rollout_measurements::Column::RolloutId.eq(rollout));
        if let Some(step) = step {
            let step = i32::try_from(step).unwrap_or(i32::MAX);
            query = query.filter(rollout_measurements::Column::Step.eq(step));
        }
        let mut rows = query
            .order_by(rollout_measurements::Column::Id, Order::Desc)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.reverse();
        rows.into_iter().map(measurement).collect()
    }
}
