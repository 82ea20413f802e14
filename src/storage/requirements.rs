//! What the rules on a namespace's active set need to read: each policy's
//! latest requirements, the releases of the required policies, and the
//! active versions of a namespace, with their bodies for the OPA bundle
//! they make together.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait, Func, Query, SelectStatement},
};

use super::entities::{policies, versions};
use super::rows::{label, requirements, version};
use super::statement_runner::StatementRunner;
use super::transaction::Transaction;
use crate::domain::{
    ActiveRelease, Label, Namespace, PolicyBody, PolicyName, Requirement, Result, VersionState,
};

struct ReleaseRow {
    name: String,
    version: i32,
    label: Option<String>,
    requirements: String,
}

fn policy_name(name: &str) -> Result<PolicyName> {
    PolicyName::parse("name", name)
}

impl Transaction {
    /// The policies each policy of `namespace` requires in its latest
    /// version (draft or not). Needs the namespace's lock.
    pub async fn requirement_graph(
        &self,
        namespace: &Namespace,
    ) -> Result<BTreeMap<PolicyName, Vec<PolicyName>>> {
        self.ensure_namespace_locked(namespace)?;
        let latest = Query::select()
            .expr(Func::max(Expr::col((
                versions::Entity,
                versions::Column::Version,
            ))))
            .from(versions::Entity)
            .and_where(
                Expr::col((versions::Entity, versions::Column::PolicyId))
                    .equals((policies::Entity, policies::Column::Id)),
            )
            .to_owned();
        let rows = self
            .releases(
                namespace,
                Expr::col((versions::Entity, versions::Column::Version))
                    .in_subquery(latest)
                    .and(Expr::col((versions::Entity, versions::Column::Requirements)).ne("[]")),
            )
            .await?;
        rows.into_iter()
            .map(|row| {
                let required = requirements(&row.requirements)?
                    .into_iter()
                    .map(|requirement| requirement.name)
                    .collect();
                Ok((policy_name(&row.name)?, required))
            })
            .collect()
    }

    /// The release labels of each policy `requirements` name that exists.
    /// Needs no lock: a published version stays published and keeps its
    /// label, so what this finds cannot be taken away before the commit.
    pub async fn published_labels(
        &self,
        namespace: &Namespace,
        requirements: &[Requirement],
    ) -> Result<BTreeMap<PolicyName, Vec<Label>>> {
        if requirements.is_empty() {
            return Ok(BTreeMap::new());
        }
        let names = requirements
            .iter()
            .map(|requirement| requirement.name.as_str());
        let existing = policies::Entity::find()
            .select_only()
            .column(policies::Column::Name)
            .filter(policies::Column::Namespace.eq(namespace.as_str()))
            .filter(policies::Column::Name.is_in(names.clone()))
            .into_tuple::<String>()
            .all(&self.txn)
            .await?;
        let mut labels = existing
            .iter()
            .map(|name| Ok((policy_name(name)?, Vec::new())))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let published = self
            .releases(
                namespace,
                Expr::col((policies::Entity, policies::Column::Name))
                    .is_in(names)
                    .and(
                        Expr::col((versions::Entity, versions::Column::State))
                            .eq(VersionState::Published.as_str()),
                    ),
            )
            .await?;
        for row in published {
            if let Some(release) = label(row.label.as_deref())? {
                labels
                    .entry(policy_name(&row.name)?)
                    .or_default()
                    .push(release);
            }
        }
        Ok(labels)
    }

    /// Every active version of `namespace`, with its label and requirements.
    /// Needs the namespace's lock.
    pub async fn active_releases(
        &self,
        namespace: &Namespace,
    ) -> Result<BTreeMap<PolicyName, ActiveRelease>> {
        self.ensure_namespace_locked(namespace)?;
        let rows = self.releases(namespace, is_active()).await?;
        rows.into_iter()
            .map(|row| {
                let release = ActiveRelease {
                    version: version(row.version),
                    label: label(row.label.as_deref())?,
                    requirements: requirements(&row.requirements)?,
                };
                Ok((policy_name(&row.name)?, release))
            })
            .collect()
    }

    /// The body of every active version of `namespace`, by policy name,
    /// as committed: what a decision on the namespace's active set reads
    /// (the in-memory index may lag another replica's commit). Needs the
    /// namespace's lock.
    pub async fn active_bodies(
        &self,
        namespace: &Namespace,
    ) -> Result<BTreeMap<PolicyName, PolicyBody>> {
        self.ensure_namespace_locked(namespace)?;
        let query = namespace_versions(namespace)
            .column((versions::Entity, versions::Column::Body))
            .and_where(is_active())
            .to_owned();
        let rows: Vec<(String, String)> = self.txn.values(self.txn.build(&query)).await?;
        rows.into_iter()
            .map(|(name, body)| Ok((policy_name(&name)?, PolicyBody::from_canonical(body)?)))
            .collect()
    }

    /// Versions of `namespace`'s policies that meet `condition`, with their
    /// policy's name.
    async fn releases(&self, namespace: &Namespace, condition: Expr) -> Result<Vec<ReleaseRow>> {
        let query = namespace_versions(namespace)
            .columns([
                (versions::Entity, versions::Column::Version),
                (versions::Entity, versions::Column::Label),
                (versions::Entity, versions::Column::Requirements),
            ])
            .and_where(condition)
            .to_owned();
        let rows: Vec<(String, i32, Option<String>, String)> =
            self.txn.values(self.txn.build(&query)).await?;
        Ok(rows
            .into_iter()
            .map(|(name, version, label, requirements)| ReleaseRow {
                name,
                version,
                label,
                requirements,
            })
            .collect())
    }
}

/// The versions of `namespace`'s policies, each with its policy's name
/// (the first column).
fn namespace_versions(namespace: &Namespace) -> SelectStatement {
    Query::select()
        .column((policies::Entity, policies::Column::Name))
        .from(versions::Entity)
        .inner_join(
            policies::Entity,
            Expr::col((policies::Entity, policies::Column::Id))
                .equals((versions::Entity, versions::Column::PolicyId)),
        )
        .and_where(
            Expr::col((policies::Entity, policies::Column::Namespace)).eq(namespace.as_str()),
        )
        .to_owned()
}

/// A version that is its policy's active one.
fn is_active() -> Expr {
    Expr::col((versions::Entity, versions::Column::Version))
        .equals((policies::Entity, policies::Column::ActiveVersion))
}
