//! Policy rows: locking them for a mutation, creating them with their first
//! draft or schema, and storing schemas.

use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
    sea_query::Expr,
};

use super::entities::policies;
use super::rows::policy_state;
use super::statement_runner::StatementRunner;
use super::transaction::Transaction;
use crate::domain::{Error, PolicyRef, PolicySchema, PolicyState, Result};

/// A policy row locked for the rest of a transaction, and what the domain
/// decides on.
#[derive(Debug, Clone)]
pub struct LockedPolicy {
    pub(super) id: i64,
    /// The policy as loaded.
    pub state: PolicyState,
}

pub(super) async fn find_policy<R: StatementRunner>(
    runner: &R,
    policy: &PolicyRef,
) -> Result<policies::Model> {
    runner
        .one(
            policies::Entity::find()
                .filter(policies::Column::Namespace.eq(policy.namespace.as_str()))
                .filter(policies::Column::Name.eq(policy.name.as_str())),
        )
        .await?
        .ok_or_else(|| missing(policy))
}

fn missing(policy: &PolicyRef) -> Error {
    Error::NotFound(format!("policy {policy} does not exist"))
}

impl Transaction {
    /// Whether the policy exists; under its namespace's lock the answer
    /// holds until the transaction ends (policies are created under it).
    pub async fn policy_exists(&self, policy: &PolicyRef) -> Result<bool> {
        self.ensure_namespace_locked(&policy.namespace)?;
        let count = policies::Entity::find()
            .filter(policies::Column::Namespace.eq(policy.namespace.as_str()))
            .filter(policies::Column::Name.eq(policy.name.as_str()))
            .count(&self.txn)
            .await?;
        Ok(count > 0)
    }

    /// Locks the policy row for the rest of the transaction (`FOR UPDATE`; a
    /// no-op on SQLite, where the writer lock is held instead).
    pub async fn lock_policy(&self, policy: &PolicyRef) -> Result<LockedPolicy> {
        self.rows_locked();
        let locked = policies::Entity::find()
            .filter(policies::Column::Namespace.eq(policy.namespace.as_str()))
            .filter(policies::Column::Name.eq(policy.name.as_str()))
            .lock_exclusive();
        let model = self.txn.one(locked).await?.ok_or_else(|| missing(policy))?;
        Ok(LockedPolicy {
            id: model.id,
            state: policy_state(&model)?,
        })
    }

    /// Locks several policies in one global order, so two multi-policy
    /// mutations never wait on each other in a cycle; returns them in the
    /// order asked.
    pub async fn lock_policies(&self, policies: &[&PolicyRef]) -> Result<Vec<LockedPolicy>> {
        let mut order: Vec<usize> = (0..policies.len()).collect();
        order.sort_by(|&a, &b| policies[a].cmp(policies[b]));
        let mut locked = vec![None; policies.len()];
        for index in order {
            locked[index] = Some(self.lock_policy(policies[index]).await?);
        }
        Ok(locked.into_iter().flatten().collect())
    }

    /// Locks the policy, creating it first when it does not exist. Creating
    /// one changes the namespace's set of policies, which its lock guards
    /// (an import judges the namespace empty under it): so a policy that
    /// does not exist yet is created under the namespace's lock, taken here
    /// before any row lock.
    pub async fn lock_or_create_policy(&mut self, policy: &PolicyRef) -> Result<LockedPolicy> {
        let exists = policies::Entity::find()
            .filter(policies::Column::Namespace.eq(policy.namespace.as_str()))
            .filter(policies::Column::Name.eq(policy.name.as_str()))
            .count(&self.txn)
            .await?
            > 0;
        if exists {
            return self.lock_policy(policy).await;
        }
        self.lock_namespaces([&policy.namespace]).await?;
        let row = policies::ActiveModel {
            id: NotSet,
            namespace: Set(policy.namespace.to_string()),
            name: Set(policy.name.to_string()),
            schema: Set(None),
            active_version: Set(None),
            active_revision: Set(None),
            created_at: Set(self.at()),
            rollout_id: Set(None),
        };
        policies::Entity::insert(row)
            .on_conflict_do_nothing_on([policies::Column::Namespace, policies::Column::Name])
            .exec_without_returning(&self.txn)
            .await?;
        self.lock_policy(policy).await
    }

    /// Stores (or with `None` removes) the policy's schema.
    pub async fn set_schema(
        &self,
        policy: &mut LockedPolicy,
        schema: Option<PolicySchema>,
    ) -> Result<()> {
        policies::Entity::update_many()
            .col_expr(
                policies::Column::Schema,
                Expr::value(schema.as_ref().map(PolicySchema::canonical)),
            )
            .filter(policies::Column::Id.eq(policy.id))
            .exec(&self.txn)
            .await?;
        policy.state.schema = schema;
        Ok(())
    }
}
