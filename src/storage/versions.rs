//! Version rows: finding them, creating drafts and finishing them. A version
//! row changes once, from DRAFT to its final state; the database's triggers
//! refuse anything else.

use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::Expr,
};

use super::entities::versions;
use super::policies::LockedPolicy;
use super::rows::{db_version, requirements_text, version, version_record};
use super::statement_runner::StatementRunner;
use super::transaction::Transaction;
use crate::domain::{
    Error, Label, PolicyRef, Publication, Result, VersionRecord, VersionSelector, VersionState,
};

/// A version loaded in a transaction, with the row it came from.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    id: i64,
    /// The version as the domain sees it.
    pub record: VersionRecord,
}

pub(super) async fn find_version<R: StatementRunner>(
    runner: &R,
    policy_id: i64,
    selector: &VersionSelector,
) -> Result<Option<versions::Model>> {
    let query = versions::Entity::find().filter(versions::Column::PolicyId.eq(policy_id));
    let query = match selector {
        VersionSelector::Number(number) => {
            query.filter(versions::Column::Version.eq(db_version(*number)))
        }
        VersionSelector::Label(label) => {
            query.filter(versions::Column::Label.eq(label.to_string()))
        }
    };
    Ok(runner.one(query).await?)
}

pub(super) fn no_such_version(policy: &PolicyRef, selector: &VersionSelector) -> Error {
    Error::NotFound(format!("{policy} has no {selector}"))
}

pub(super) async fn open_draft<C: ConnectionTrait>(
    db: &C,
    policy_id: i64,
) -> Result<Option<versions::Model>> {
    Ok(versions::Entity::find()
        .filter(versions::Column::PolicyId.eq(policy_id))
        .filter(versions::Column::State.eq(VersionState::Draft.as_str()))
        .one(db)
        .await?)
}

impl Transaction {
    fn stored(&self, policy: &LockedPolicy, model: versions::Model) -> Result<StoredVersion> {
        Ok(StoredVersion {
            id: model.id,
            record: version_record(&policy.state.policy, policy.state.active_version(), model)?,
        })
    }

    /// The version `selector` names, if it exists.
    pub async fn find_version(
        &self,
        policy: &LockedPolicy,
        selector: &VersionSelector,
    ) -> Result<Option<StoredVersion>> {
        find_version(&self.txn, policy.id, selector)
            .await?
            .map(|model| self.stored(policy, model))
            .transpose()
    }

    /// The version `selector` names; NOT_FOUND when it does not exist.
    pub async fn version(
        &self,
        policy: &LockedPolicy,
        selector: &VersionSelector,
    ) -> Result<StoredVersion> {
        self.find_version(policy, selector)
            .await?
            .ok_or_else(|| no_such_version(&policy.state.policy, selector))
    }

    /// The open draft, if any.
    pub async fn open_draft(&self, policy: &LockedPolicy) -> Result<Option<StoredVersion>> {
        open_draft(&self.txn, policy.id)
            .await?
            .map(|model| self.stored(policy, model))
            .transpose()
    }

    /// The version a request names (NOT_FOUND when there is none), or
    /// the open draft, if any.
    pub async fn named_or_open_draft(
        &self,
        policy: &LockedPolicy,
        version: Option<u32>,
    ) -> Result<Option<StoredVersion>> {
        match version {
            Some(number) => Ok(Some(
                self.version(policy, &VersionSelector::Number(number))
                    .await?,
            )),
            None => self.open_draft(policy).await,
        }
    }

    /// The highest version number the policy ever used.
    pub async fn latest_version(&self, policy: &LockedPolicy) -> Result<Option<u32>> {
        Ok(versions::Entity::find()
            .select_only()
            .column_as(versions::Column::Version.max(), "latest")
            .filter(versions::Column::PolicyId.eq(policy.id))
            .into_tuple::<Option<i32>>()
            .one(&self.txn)
            .await?
            .flatten()
            .map(version))
    }

    /// Stores a new draft.
    pub async fn insert_draft(&self, policy: &LockedPolicy, draft: &VersionRecord) -> Result<()> {
        let row = versions::ActiveModel {
            id: NotSet,
            policy_id: Set(policy.id),
            version: Set(db_version(draft.version)),
            state: Set(VersionState::Draft.as_str().to_owned()),
            body: Set(draft.body.canonical().to_owned()),
            digest: Set(draft.digest().to_string()),
            label: Set(None),
            change_notes: Set(draft.change_notes.clone()),
            created_by: Set(draft.created_by.clone()),
            created_at: Set(draft.created_at),
            published_by: Set(None),
            published_at: Set(None),
            jws: Set(None),
            key_id: Set(None),
            requirements: Set(requirements_text(&draft.requirements)),
        };
        versions::Entity::insert(row)
            .exec_without_returning(&self.txn)
            .await?;
        Ok(())
    }

    /// Moves a draft to its final state, with its publication when it is
    /// published; returns the version as it is now.
    pub async fn finish_draft(
        &self,
        draft: StoredVersion,
        state: VersionState,
        release: Option<(Publication, Option<Label>)>,
    ) -> Result<VersionRecord> {
        let mut update = versions::Entity::update_many()
            .col_expr(versions::Column::State, Expr::value(state.as_str()))
            .filter(versions::Column::Id.eq(draft.id))
            .filter(versions::Column::State.eq(VersionState::Draft.as_str()));
        let mut record = draft.record;
        if let Some((publication, label)) = release {
            update = update
                .col_expr(
                    versions::Column::Label,
                    Expr::value(label.as_ref().map(ToString::to_string)),
                )
                .col_expr(
                    versions::Column::PublishedBy,
                    Expr::value(publication.published_by.clone()),
                )
                .col_expr(
                    versions::Column::PublishedAt,
                    Expr::value(publication.published_at),
                )
                .col_expr(versions::Column::Jws, Expr::value(publication.jws.clone()))
                .col_expr(
                    versions::Column::KeyId,
                    Expr::value(publication.key_id.clone()),
                );
            record.label = label;
            record.publication = Some(publication);
        }
        let result = update.exec(&self.txn).await?;
        debug_assert_eq!(
            result.rows_affected, 1,
            "the draft row was locked with its policy"
        );
        record.state = state;
        Ok(record)
    }
}
