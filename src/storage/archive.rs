//! Export and import: an archive read in one snapshot, and loaded in one
//! transaction into namespaces that hold nothing yet.

use std::collections::BTreeMap;

use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, EntityTrait, Order, PaginatorTrait,
    QueryFilter, QueryOrder,
};

use super::chain::head;
use super::checkpoints::all_checkpoints;
use super::entities::{events, policies, rollouts, schedules, signing_keys, versions};
use super::events::{in_scope, record};
use super::pointers::current_revision;
use super::rows::{db_revision, db_version, policy_ref, requirements_text, version_record};
use super::transaction::{Repository, Transaction};
use crate::domain::archive::{
    Archive, ArchivedKey, ArchivedPolicy, ArchivedRollout, CheckedArchive,
};
use crate::domain::{
    Error, EventKind, EventRecord, NamespaceScope, PolicyRef, PolicySchema, Precondition,
    RequestContext, Result,
};
use crate::signing::Jwk;

/// What an import loaded.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Policies, versions and events loaded.
    pub policies: usize,
    /// Versions loaded.
    pub versions: usize,
    /// Events loaded.
    pub events: usize,
    /// The revision the loaded policies are active at (the deployment's
    /// newest).
    pub revision: u64,
}

impl Repository {
    /// The namespaces of `scope` (all of them: the whole log) as one
    /// archive, read in one snapshot.
    #[tracing::instrument(name = "storage.export", skip_all)]
    pub async fn export(&self, scope: &NamespaceScope) -> Result<Archive> {
        let txn = self.snapshot().await?;
        let whole = matches!(scope, NamespaceScope::All);
        let mut archive = Archive {
            scope: match scope {
                NamespaceScope::All => Vec::new(),
                NamespaceScope::One(namespace) => vec![namespace.clone()],
                NamespaceScope::Among(namespaces) => namespaces.clone(),
            },
            exported_at: Some(super::rows::now()),
            revision: current_revision(&txn).await?,
            chain_head: head(&txn, None).await?,
            log_origin: if whole {
                self.log_origin()?.to_owned()
            } else {
                String::new()
            },
            ..Archive::default()
        };
        for key in signing_keys::Entity::find()
            .order_by(signing_keys::Column::CreatedAt, Order::Asc)
            .all(&txn)
            .await?
        {
            archive.keys.push(ArchivedKey {
                jwk: Jwk::from_x(key.public_key),
                created_at: key.created_at,
            });
        }
        let rows = policies::Entity::find()
            .filter(in_scope(policies::Column::Namespace, scope))
            .order_by(policies::Column::Id, Order::Asc)
            .all(&txn)
            .await?;
        for row in rows {
            let policy = policy_ref(&row)?;
            let schema = row
                .schema
                .as_deref()
                .map(|text| {
                    let value = serde_json::from_str(text).map_err(|error| {
                        Error::Internal(format!(
                            "the stored schema of {policy} is unreadable: {error}"
                        ))
                    })?;
                    PolicySchema::parse("schema", value)
                })
                .transpose()?;
            let active = row.active_version.map(super::rows::version);
            for model in versions::Entity::find()
                .filter(versions::Column::PolicyId.eq(row.id))
                .order_by(versions::Column::Version, Order::Asc)
                .all(&txn)
                .await?
            {
                archive
                    .versions
                    .push(version_record(&policy, active, model)?);
            }
            archive.policies.push(ArchivedPolicy {
                policy,
                schema,
                created_at: row.created_at,
                active_version: active,
            });
        }
        let rows = rollouts::Entity::find()
            .filter(in_scope(rollouts::Column::Namespace, scope))
            .order_by(rollouts::Column::CreatedAt, Order::Asc)
            .all(&txn)
            .await?;
        let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
        let mut measurements = super::rollouts::measurements_of(&txn, &ids).await?;
        for row in rows {
            let (created_at, updated_at) = (row.created_at, row.updated_at);
            let measurements = measurements.remove(&row.id).unwrap_or_default();
            archive.rollouts.push(ArchivedRollout {
                rollout: super::rollouts::from_row(row)?,
                created_at,
                updated_at,
                measurements,
            });
        }
        let mut query = events::Entity::find();
        if !whole {
            query = query.filter(in_scope(events::Column::Namespace, scope));
        }
        for row in query
            .order_by(events::Column::Id, Order::Asc)
            .all(&txn)
            .await?
        {
            archive.events.push(record(row)?);
        }
        if whole {
            archive.checkpoints = all_checkpoints(&txn).await?;
        }
        txn.commit().await?;
        Ok(archive)
    }

    /// Loads `archive` (checked already) in one transaction; refused, with
    /// nothing written, when one of its namespaces holds anything. Its
    /// events join this deployment's chain after an IMPORTED event saying
    /// `source`, the revisions they took map in order to this deployment's
    /// next ones, and the keys that signed join the JWKS.
    #[tracing::instrument(name = "storage.import", skip_all)]
    pub async fn import(
        &self,
        context: &RequestContext,
        archive: CheckedArchive<'_>,
        source: &str,
    ) -> Result<Imported> {
        let namespaces = archive.namespaces();
        self.write("import", async |tx| {
            tx.lock_namespaces(&namespaces).await?;
            for namespace in &namespaces {
                tx.ensure_empty(namespace.as_str()).await?;
            }
            let keys: Vec<Jwk> = archive.keys.iter().map(|key| key.jwk.clone()).collect();
            tx.store_public_keys(&keys).await?;
            let revisions = tx.take_revisions(&archive.revisions()).await?;
            let mapped = |revision: Option<u64>| -> Result<Option<u64>> {
                revision
                    .map(|revision| {
                        revisions.get(&revision).copied().ok_or_else(|| {
                            Error::invalid("archive", format!("revision {revision} of no event"))
                        })
                    })
                    .transpose()
            };
            tx.append_event(
                EventRecord {
                    id: 0,
                    kind: EventKind::Imported,
                    policy: None,
                    actor: context.actor.clone(),
                    at: tx.at(),
                    reason: source.to_owned(),
                    request_id: context.request_id.clone(),
                    previous_version: None,
                    new_version: None,
                    revision: None,
                    key_id: None,
                    rollout_id: None,
                    hash: String::new(),
                },
                None,
            )
            .await?;
            // The check saw every version name an archived policy: `ids` holds
            // each one they index.
            let mut ids: BTreeMap<&PolicyRef, i64> = BTreeMap::new();
            for policy in &archive.policies {
                let id = policies::Entity::insert(policies::ActiveModel {
                    id: NotSet,
                    namespace: Set(policy.policy.namespace.to_string()),
                    name: Set(policy.policy.name.to_string()),
                    schema: Set(policy.schema.as_ref().map(PolicySchema::canonical)),
                    active_version: Set(None),
                    active_revision: Set(None),
                    created_at: Set(policy.created_at),
                    rollout_id: Set(None),
                })
                .exec(&tx.txn)
                .await?
                .last_insert_id;
                ids.insert(&policy.policy, id);
            }
            for version in &archive.versions {
                let publication = version.publication.as_ref();
                versions::Entity::insert(versions::ActiveModel {
                    id: NotSet,
                    policy_id: Set(ids[&version.policy]),
                    version: Set(db_version(version.version)),
                    state: Set(version.state.as_str().to_owned()),
                    body: Set(version.body.canonical().to_owned()),
                    digest: Set(version.digest().to_string()),
                    label: Set(version.label.as_ref().map(ToString::to_string)),
                    change_notes: Set(version.change_notes.clone()),
                    created_by: Set(version.created_by.clone()),
                    created_at: Set(version.created_at),
                    published_by: Set(publication.map(|p| p.published_by.clone())),
                    published_at: Set(publication.map(|p| p.published_at)),
                    jws: Set(publication.map(|p| p.jws.clone())),
                    key_id: Set(publication.map(|p| p.key_id.clone())),
                    requirements: Set(requirements_text(&version.requirements)),
                })
                .exec_without_returning(&tx.txn)
                .await?;
            }
            let by_name: BTreeMap<(&str, &str), i64> = ids
                .iter()
                .map(|(policy, id)| ((policy.namespace.as_str(), policy.name.as_str()), *id))
                .collect();
            let mut moved_at: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for event in &archive.events {
                let mut imported = event.clone();
                imported.revision = mapped(event.revision)?;
                let policy_id = match &event.policy {
                    Some((namespace, name)) => {
                        if event.kind.moves_active_pointer()
                            && let Some(revision) = imported.revision
                        {
                            moved_at.insert((namespace, name), revision);
                        }
                        by_name.get(&(namespace.as_str(), name.as_str())).copied()
                    }
                    None => None,
                };
                tx.append_event(imported, policy_id).await?;
            }
            for policy in &archive.policies {
                let Some(active) = policy.active_version else {
                    continue;
                };
                let key = (
                    policy.policy.namespace.as_str(),
                    policy.policy.name.as_str(),
                );
                let at = moved_at
                    .get(&key)
                    .copied()
                    .or(revisions.values().max().copied());
                policies::Entity::update(policies::ActiveModel {
                    id: Set(ids[&policy.policy]),
                    active_version: Set(Some(db_version(active))),
                    active_revision: Set(at.map(db_revision)),
                    ..Default::default()
                })
                .exec(&tx.txn)
                .await?;
            }
            for archived in &archive.rollouts {
                let mut rollout = archived.rollout.clone();
                rollout.step_revisions = rollout
                    .step_revisions
                    .iter()
                    .map(|revision| mapped(Some(*revision)).map(Option::unwrap_or_default))
                    .collect::<Result<_>>()?;
                tx.insert_archived_rollout(
                    &rollout,
                    archived.created_at,
                    archived.updated_at,
                    &archived.measurements,
                )
                .await?;
            }
            Ok(Imported {
                policies: archive.policies.len(),
                versions: archive.versions.len(),
                events: archive.events.len(),
                revision: tx.revision_in_force().await?,
            })
        })
        .await
    }
}

impl Transaction {
    /// Refuses when `namespace` holds a policy, a rollout or a schedule.
    async fn ensure_empty(&self, namespace: &str) -> Result<()> {
        let held = policies::Entity::find()
            .filter(policies::Column::Namespace.eq(namespace))
            .count(&self.txn)
            .await?
            + rollouts::Entity::find()
                .filter(rollouts::Column::Namespace.eq(namespace))
                .count(&self.txn)
                .await?
            + schedules::Entity::find()
                .filter(schedules::Column::Namespace.eq(namespace))
                .count(&self.txn)
                .await?;
        if held > 0 {
            return Err(Error::refused_by(
                Precondition::State,
                format!(
                    "namespace {namespace} is not empty: an archive is imported only into \
                     namespaces that hold nothing yet"
                ),
            ));
        }
        Ok(())
    }

    /// Takes one new revision per revision of `taken` (in order), announced
    /// like any other; the map from each to its new number.
    async fn take_revisions(&self, taken: &[u64]) -> Result<BTreeMap<u64, u64>> {
        if taken.is_empty() {
            return Ok(BTreeMap::new());
        }
        let last = self.advance_revision(taken.len() as u64).await?;
        let first = last + 1 - taken.len() as u64;
        Ok(taken
            .iter()
            .enumerate()
            .map(|(index, revision)| (*revision, first + index as u64))
            .collect())
    }
}
