//! Decisions OPAs upload (docs/src/guides/decisions.md): kept once per
//! namespace by decision id, dropped oldest first beyond the namespace's
//! retention, listed newest first.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{Expr, ExprTrait as _, OnConflict},
};

use super::entities::{decision_counts, decisions};
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

/// Adds `change` to the count of decisions `namespace` keeps; the count
/// after it.
async fn count_kept(txn: &impl ConnectionTrait, namespace: &Namespace, change: i64) -> Result<i64> {
    decision_counts::Entity::insert(decision_counts::ActiveModel {
        namespace: Set(namespace.as_str().to_owned()),
        kept: Set(change),
    })
    .on_conflict(
        OnConflict::column(decision_counts::Column::Namespace)
            .value(
                decision_counts::Column::Kept,
                Expr::col((decision_counts::Entity, decision_counts::Column::Kept)).add(change),
            )
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await?;
    let counted = decision_counts::Entity::find_by_id(namespace.as_str().to_owned())
        .one(txn)
        .await?
        .ok_or_else(|| Error::Internal(format!("no count of the decisions of {namespace}")))?;
    Ok(counted.kept)
}

fn stored(error: impl std::fmt::Display) -> Error {
    Error::Internal(format!("stored decision is invalid: {error}"))
}

impl Repository {
    /// Keeps `uploaded` for `namespace` (a decision whose id it holds stays
    /// as it is), then drops its decisions beyond `retention`, oldest first,
    /// in one transaction. The namespace's count of decisions kept changes
    /// with them, so that dropping beyond the count walks only the rows it
    /// drops.
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
        let of_namespace = decisions::Column::Namespace.eq(namespace.as_str());
        outcome.dropped_by_age = decisions::Entity::delete_many()
            .filter(of_namespace.clone())
            .filter(decisions::Column::ReceivedAt.lt(retention.received_after))
            .exec(&write.txn)
            .await?
            .rows_affected;
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
        let kept = count_kept(
            &write.txn,
            namespace,
            outcome.kept as i64 - outcome.dropped_by_age as i64,
        )
        .await?;
        let beyond = kept - retention.max_count as i64;
        if beyond > 0 {
            let newest_dropped: Option<i64> = decisions::Entity::find()
                .select_only()
                .column(decisions::Column::Id)
                .filter(of_namespace.clone())
                .order_by(decisions::Column::Id, Order::Asc)
                .offset(beyond as u64 - 1)
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
                count_kept(&write.txn, namespace, -(outcome.dropped_by_count as i64)).await?;
            }
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

#[cfg(test)]
mod tests {
    use policyhub_migrations::MigratorTrait;
    use sea_orm::EntityTrait;

    use super::*;

    fn decision(id: &str) -> Decision {
        Decision {
            id: id.to_owned(),
            runtime: RuntimeId::parse("runtime_id", "opa-1").unwrap(),
            path: "payments/authz/allow".into(),
            input: Some("{\"amount\":1}".into()),
            result: Some("true".into()),
            revision: Some(1),
            decided_at: Utc::now(),
        }
    }

    fn keeping(max_count: u64) -> Retention {
        Retention {
            max_count,
            received_after: Utc::now() - chrono::TimeDelta::days(1),
        }
    }

    async fn kept_ids(repository: &Repository, namespace: &str) -> Vec<String> {
        decisions::Entity::find()
            .filter(decisions::Column::Namespace.eq(namespace))
            .order_by(decisions::Column::Id, Order::Asc)
            .all(&repository.db)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.decision_id)
            .collect()
    }

    /// A database holding decisions when the count arrives is counted from
    /// them; from then on the count follows what is kept and dropped, and
    /// bounds it.
    #[tokio::test]
    async fn the_count_starts_from_the_decisions_kept_and_bounds_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("policyhub.db").display());
        let db = super::super::connect(&url, 2).await.unwrap();
        let before_the_count = policyhub_migrations::Migrator::migrations().len() as u32 - 1;
        policyhub_migrations::Migrator::up(&db, Some(before_the_count))
            .await
            .unwrap();
        let row = |namespace: &str, id: &str| decisions::ActiveModel {
            namespace: Set(namespace.to_owned()),
            decision_id: Set(id.to_owned()),
            runtime_id: Set("opa-1".into()),
            path: Set("payments/authz/allow".into()),
            input: Set(None),
            result: Set(None),
            revision: Set(None),
            decided_at: Set(Utc::now()),
            received_at: Set(Utc::now()),
            ..Default::default()
        };
        let rows = [
            row("payments", "p-1"),
            row("payments", "p-2"),
            row("payments", "p-3"),
            row("billing", "b-1"),
            row("billing", "b-2"),
        ];
        decisions::Entity::insert_many(rows)
            .exec_without_returning(&db)
            .await
            .unwrap();
        super::super::migrate(&db).await.unwrap();
        let counts: Vec<(String, i64)> = decision_counts::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|count| (count.namespace, count.kept))
            .collect();
        assert_eq!(counts, [("billing".into(), 2), ("payments".into(), 3)]);

        let repository = Repository::open(db).await.unwrap();
        let payments = Namespace::parse("namespace", "payments").unwrap();
        let uploaded: Vec<Decision> = ["p-4", "p-5", "p-6", "p-7"].map(decision).into();
        let kept = repository
            .keep_decisions(&payments, &uploaded, keeping(5))
            .await
            .unwrap();
        assert_eq!((kept.kept, kept.dropped_by_count), (4, 2));
        assert_eq!(
            kept_ids(&repository, "payments").await,
            ["p-3", "p-4", "p-5", "p-6", "p-7"]
        );
        // Sent again: nothing new, nothing dropped.
        let again = repository
            .keep_decisions(&payments, &uploaded, keeping(5))
            .await
            .unwrap();
        assert_eq!((again.kept, again.dropped_by_count), (0, 0));
        // A lower bound drops down to it; another namespace is untouched.
        let lower = repository
            .keep_decisions(&payments, &[decision("p-8")], keeping(2))
            .await
            .unwrap();
        assert_eq!((lower.kept, lower.dropped_by_count), (1, 4));
        assert_eq!(kept_ids(&repository, "payments").await, ["p-7", "p-8"]);
        assert_eq!(kept_ids(&repository, "billing").await, ["b-1", "b-2"]);
        let payments_count = decision_counts::Entity::find_by_id("payments".to_owned())
            .one(&repository.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(payments_count.kept, 2);
    }
}
