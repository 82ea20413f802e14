//! Reads of policies and versions outside any write: single versions and
//! the keyset-paged listings.

use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, FromQueryResult, JoinType, Order,
    QueryFilter, QueryOrder, QuerySelect, RelationDef, sea_query::Expr,
};

use super::entities::{policies, versions};
use super::events::in_scope;
use super::paging::Paging;
use super::policies::find_policy;
use super::rows::{db_version, policy_ref, revision, version, version_record};
use super::statement_runner::StatementRunner;
use super::transaction::{Repository, Transaction};
use super::versions::{find_version, no_such_version, open_draft};
use crate::domain::{
    Error, NamespaceScope, Page, PolicyRef, PolicySummary, Result, VersionRecord, VersionSelector,
    VersionState,
};

#[derive(FromQueryResult)]
struct VersionCounts {
    policy_id: i64,
    latest: Option<i32>,
    draft: Option<i32>,
    active_label: Option<String>,
}

/// Summaries of some policies with one query for all their versions: a
/// listing of any length costs two queries, the page's rows and this one.
async fn summaries<C: ConnectionTrait>(
    db: &C,
    rows: Vec<policies::Model>,
) -> Result<Vec<PolicySummary>> {
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let draft = format!(
        "MAX(CASE WHEN versions.state = '{}' THEN versions.version END)",
        VersionState::Draft.as_str()
    );
    // One version per policy matches, so MAX is that version's label.
    let active_label =
        "MAX(CASE WHEN versions.version = policies.active_version THEN versions.label END)";
    let policy: RelationDef = versions::Entity::belongs_to(policies::Entity)
        .from(versions::Column::PolicyId)
        .to(policies::Column::Id)
        .into();
    let counts = versions::Entity::find()
        .select_only()
        .column(versions::Column::PolicyId)
        .column_as(versions::Column::Version.max(), "latest")
        .column_as(Expr::cust(draft), "draft")
        .column_as(Expr::cust(active_label), "active_label")
        .join(JoinType::InnerJoin, policy)
        .filter(versions::Column::PolicyId.is_in(ids))
        .group_by(versions::Column::PolicyId)
        .into_model::<VersionCounts>()
        .all(db)
        .await?;
    rows.into_iter()
        .map(|row| {
            let count = counts.iter().find(|count| count.policy_id == row.id);
            Ok(PolicySummary {
                policy: policy_ref(&row)?,
                active: row
                    .active_version
                    .zip(row.active_revision)
                    .map(|(active, at)| (version(active), revision(at))),
                active_label: count.and_then(|count| count.active_label.clone()),
                draft_version: count.and_then(|count| count.draft).map(version),
                latest_version: count.and_then(|count| count.latest).map_or(0, version),
                // The document only: a listing compiles no schema.
                schema: row
                    .schema
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|error| {
                        Error::Internal(format!("stored schema is not json: {error}"))
                    })?,
            })
        })
        .collect()
}

/// The summary of one policy; NOT_FOUND when there is none.
async fn summary<C: ConnectionTrait + StatementRunner>(
    db: &C,
    policy: &PolicyRef,
) -> Result<PolicySummary> {
    let row = find_policy(db, policy).await?;
    Ok(summaries(db, vec![row])
        .await?
        .pop()
        .expect("one policy in, one summary out"))
}

impl Transaction {
    /// The summary of one policy, as this transaction sees it.
    pub async fn summary(&self, policy: &PolicyRef) -> Result<PolicySummary> {
        summary(&self.txn, policy).await
    }
}

impl Repository {
    /// The summary of one policy, as a listing shows it.
    #[tracing::instrument(name = "storage.summary", skip_all)]
    pub async fn summary(&self, policy: &PolicyRef) -> Result<PolicySummary> {
        summary(&self.db, policy).await
    }

    /// One version.
    #[tracing::instrument(name = "storage.get_version", skip_all)]
    pub async fn get_version(
        &self,
        policy: &PolicyRef,
        selector: &VersionSelector,
    ) -> Result<VersionRecord> {
        let row = find_policy(&self.db, policy).await?;
        let model = find_version(&self.db, row.id, selector)
            .await?
            .ok_or_else(|| no_such_version(policy, selector))?;
        version_record(policy, row.active_version.map(version), model)
    }

    /// The open draft of a policy, if any.
    #[tracing::instrument(name = "storage.open_draft", skip_all)]
    pub async fn open_draft(&self, policy: &PolicyRef) -> Result<Option<VersionRecord>> {
        let row = find_policy(&self.db, policy).await?;
        open_draft(&self.db, row.id)
            .await?
            .map(|model| version_record(policy, row.active_version.map(version), model))
            .transpose()
    }

    /// Versions of a policy, newest first; the page token is the last
    /// version number returned.
    #[tracing::instrument(name = "storage.list_versions", skip_all)]
    pub async fn list_versions(
        &self,
        policy: &PolicyRef,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<VersionRecord>> {
        let paging = Paging::new("versions", policy, page_size);
        let below: Option<u32> = paging.position(page_token)?;
        let row = find_policy(&self.db, policy).await?;
        let mut query = versions::Entity::find().filter(versions::Column::PolicyId.eq(row.id));
        if let Some(below) = below {
            query = query.filter(versions::Column::Version.lt(db_version(below)));
        }
        let mut rows = query
            .order_by(versions::Column::Version, Order::Desc)
            .limit(paging.limit())
            .all(&self.db)
            .await?;
        let next_page_token = paging.finish(&mut rows, |last| last.version.to_string());
        let items = rows
            .into_iter()
            .map(|model| version_record(policy, row.active_version.map(version), model))
            .collect::<Result<_>>()?;
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Policies ordered by namespace and name; the page token is the last
    /// `namespace/name` returned.
    #[tracing::instrument(name = "storage.list_policies", skip_all)]
    pub async fn list_policies(
        &self,
        scope: &NamespaceScope,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<PolicySummary>> {
        let paging = Paging::new("policies", scope, page_size);
        let after: Option<String> = paging.position(page_token)?;
        let mut query =
            policies::Entity::find().filter(in_scope(policies::Column::Namespace, scope));
        if let Some(after) = after {
            let Some((after_namespace, after_name)) = after.split_once('/') else {
                return Err(Error::invalid(
                    "page_token",
                    format!("{after:?} is not a page token this server issued"),
                ));
            };
            query = query.filter(
                Condition::any()
                    .add(policies::Column::Namespace.gt(after_namespace))
                    .add(
                        Condition::all()
                            .add(policies::Column::Namespace.eq(after_namespace))
                            .add(policies::Column::Name.gt(after_name)),
                    ),
            );
        }
        let mut rows = query
            .order_by(policies::Column::Namespace, Order::Asc)
            .order_by(policies::Column::Name, Order::Asc)
            .limit(paging.limit())
            .all(&self.db)
            .await?;
        let next_page_token = paging.finish(&mut rows, |last| {
            format!("{}/{}", last.namespace, last.name)
        });
        Ok(Page {
            items: summaries(&self.db, rows).await?,
            next_page_token,
        })
    }
}
