//! Decisions OPAs upload (docs/src/guides/decisions.md): kept once per
//! namespace by decision id, dropped oldest first beyond the namespace's
//! retention, listed newest first.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, sea_query::OnConflict,
};

use super::entities::decisions;
use super::paging::Paging;
use super::transaction::Repository;
use crate::domain::decision::{Decision, DecisionFilter, Kept, ResultMatch, StoredDecision};
use crate::domain::runtime::RuntimeId;
use crate::domain::{Error, Namespace, Page, Result};

/// Rows per insert statement: ten columns each stay far below SQLite's
/// limit of bound parameters.
const ROWS_PER_INSERT: usize = 500;

/// How many decisions a namespace keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// At most this many.
    pub max_count: u64,
    /// None received before this.
    pub received_after: DateTime<Utc>,
}

fn stored(error: impl std::fmt::Display) -> Error {
    Error::Internal(format!("stored decision is invalid: {error}"))
}

impl Repository {
    /// Keeps `uploaded` for `namespace` (a decision whose id it holds stays
    /// as it is), then drops its decisions beyond `retention`, oldest first,
    /// in one transaction.
    #[tracing::instrument(name = "storage.keep_decisions", skip_all)]
    pub async fn keep_decisions(
        &self,
        namespace: &Namespace,
        uploaded: &[Decision],
        retention: Retention,
    ) -> Result<Kept> {
        let write = self.begin().await?;
        let received_at = write.at();
        let mut outcome = Kept::default();
        for chunk in uploaded.chunks(ROWS_PER_INSERT) {
            let rows = chunk.iter().map(|decision| decisions::ActiveModel {
                namespace: Set(namespace.as_str().to_owned()),
                decision_id: Set(decision.id.clone()),
                runtime_id: Set(decision.runtime.as_str().to_owned()),
                path: Set(decision.path.clone()),
                input: Set(decision.input.clone()),
                result: Set(decision.result.clone()),
                revision: Set(decision.revision.map(|revision| revision as i64)),
                decided_at: Set(decision.decided_at),
                received_at: Set(received_at),
                ..Default::default()
            });
            outcome.kept += decisions::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::columns([
                        decisions::Column::Namespace,
                        decisions::Column::DecisionId,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&write.txn)
                .await?;
        }
        let of_namespace = decisions::Column::Namespace.eq(namespace.as_str());
        outcome.dropped_by_age = decisions::Entity::delete_many()
            .filter(of_namespace.clone())
            .filter(decisions::Column::ReceivedAt.lt(retention.received_after))
            .exec(&write.txn)
            .await?
            .rows_affected;
        let newest_dropped: Option<i64> = decisions::Entity::find()
            .select_only()
            .column(decisions::Column::Id)
            .filter(of_namespace.clone())
            .order_by(decisions::Column::Id, Order::Desc)
            .offset(retention.max_count)
            .limit(1)
            .into_tuple()
            .one(&write.txn)
            .await?;
        if let Some(newest_dropped) = newest_dropped {
            outcome.dropped_by_count = decisions::Entity::delete_many()
                .filter(of_namespace)
                .filter(decisions::Column::Id.lte(newest_dropped))
                .exec(&write.txn)
                .await?
                .rows_affected;
        }
        write.txn.commit().await?;
        Ok(outcome)
    }

    /// A page of `namespace`'s decisions that `filter` takes, received
    /// after `received_after`, newest first.
    #[tracing::instrument(name = "storage.list_decisions", skip_all)]
    pub async fn list_decisions(
        &self,
        namespace: &Namespace,
        filter: &DecisionFilter,
        received_after: DateTime<Utc>,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<StoredDecision>> {
        let paging = Paging::new("decisions", &(namespace, filter), page_size);
        let before: Option<i64> = paging.position(page_token)?;
        let mut condition = Condition::all()
            .add(decisions::Column::Namespace.eq(namespace.as_str()))
            .add(decisions::Column::ReceivedAt.gt(received_after));
        if let Some(before) = before {
            condition = condition.add(decisions::Column::Id.lt(before));
        }
        if let Some(path) = &filter.path {
            condition = condition.add(decisions::Column::Path.eq(path.as_str()));
        }
        match &filter.result {
            Some(ResultMatch::Undefined) => {
                condition = condition.add(decisions::Column::Result.is_null());
            }
            Some(ResultMatch::Equals(result)) => {
                condition = condition.add(decisions::Column::Result.eq(result.as_str()));
            }
            None => {}
        }
        if let Some(runtime) = &filter.runtime {
            condition = condition.add(decisions::Column::RuntimeId.eq(runtime.as_str()));
        }
        if let Some(revision) = filter.revision {
            condition = condition.add(decisions::Column::Revision.eq(revision as i64));
        }
        if let Some(since) = filter.since {
            condition = condition.add(decisions::Column::DecidedAt.gte(since));
        }
        if let Some(until) = filter.until {
            condition = condition.add(decisions::Column::DecidedAt.lte(until));
        }
        let mut rows = decisions::Entity::find()
            .filter(condition)
            .order_by(decisions::Column::Id, Order::Desc)
            .limit(paging.limit())
            .all(&self.db)
            .await?;
        let next_page_token = paging.finish(&mut rows, |last| last.id.to_string());
        let items = rows
            .into_iter()
            .map(|row| {
                Ok(StoredDecision {
                    decision: Decision {
                        id: row.decision_id,
                        runtime: RuntimeId::parse("runtime_id", &row.runtime_id).map_err(stored)?,
                        path: row.path,
                        input: row.input,
                        result: row.result,
                        revision: row.revision.map(|revision| revision as u64),
                        decided_at: row.decided_at,
                    },
                    received_at: row.received_at,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Page {
            items,
            next_page_token,
        })
    }
}
