//! The audit log: one event per change, written in the transaction that
//! makes the change, and the reads that replay history from it.

use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use super::entities::events;
use super::paging::Paging;
use super::policies::{LockedPolicy, find_policy};
use super::rows::{active_bundle, db_revision, db_version, revision, version, version_record};
use super::statement_runner::StatementRunner;
use super::transaction::{Repository, Transaction};
use super::versions::{find_version, no_such_version};
use crate::domain::{
    ActiveBundle, AsOf, Error, EventFilter, EventKind, EventRecord, Namespace, NamespaceScope,
    Page, PolicyRef, RequestContext, Result, VersionSelector, chain, runtime::Rejection,
};

/// What an event says, beyond who, when and which request.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// What happened.
    pub kind: EventKind,
    /// The version before, where one changed.
    pub previous_version: Option<u32>,
    /// The version after.
    pub new_version: Option<u32>,
    /// The revision a pointer move took.
    pub revision: Option<u64>,
    /// The signing key involved.
    pub key_id: Option<String>,
    /// The rollout involved.
    pub rollout_id: Option<&'a str>,
    /// Why, in the caller's words.
    pub reason: &'a str,
}

impl<'a> NewEvent<'a> {
    /// An event of `kind` saying nothing but why.
    pub fn new(kind: EventKind, reason: &'a str) -> Self {
        NewEvent {
            kind,
            previous_version: None,
            new_version: None,
            revision: None,
            key_id: None,
            rollout_id: None,
            reason,
        }
    }
}

/// An event row as the domain's record.
pub(super) fn record(row: events::Model) -> Result<EventRecord> {
    Ok(EventRecord {
        id: revision(row.id),
        kind: row.kind.parse()?,
        policy: row
            .namespace
            .map(|namespace| (namespace, row.name.unwrap_or_default())),
        actor: row.actor,
        at: row.at,
        reason: row.reason,
        request_id: row.request_id,
        previous_version: row.previous_version.map(version),
        new_version: row.new_version.map(version),
        revision: row.revision.map(revision),
        key_id: row.key_id,
        rollout_id: row.rollout_id,
        hash: row.hash.unwrap_or_default(),
    })
}

/// The event kinds that move an active pointer, as stored.
pub(super) fn pointer_moves() -> impl Iterator<Item = &'static str> {
    EventKind::ALL
        .into_iter()
        .filter(|kind| kind.moves_active_pointer())
        .map(EventKind::as_str)
}

/// The event kinds that send their version again at their revision (a
/// pointer move, or an active version signed again), as stored.
pub(super) fn bundle_sends() -> impl Iterator<Item = &'static str> {
    EventKind::ALL
        .into_iter()
        .filter(|kind| kind.sends_a_bundle())
        .map(EventKind::as_str)
}

/// The condition that a namespace column lies in a listing's scope.
pub(super) fn in_scope(column: impl ColumnTrait, scope: &NamespaceScope) -> Condition {
    match scope {
        NamespaceScope::All => Condition::all(),
        NamespaceScope::One(namespace) => Condition::all().add(column.eq(namespace.as_str())),
        NamespaceScope::Among(namespaces) => Condition::all()
            .add(column.is_in(namespaces.iter().map(|namespace| namespace.as_str()))),
    }
}

impl Transaction {
    /// Records an event about `policy` (or the deployment, with `None`);
    /// returns its id.
    pub async fn record_event(
        &self,
        context: &RequestContext,
        policy: Option<&LockedPolicy>,
        event: NewEvent<'_>,
    ) -> Result<u64> {
        let about = policy.map(|policy| {
            let name = &policy.state.policy;
            (name.namespace.to_string(), name.name.to_string())
        });
        let record = self.new_record(context, about, event);
        self.append_event(record, policy.map(|policy| policy.id))
            .await
    }

    /// Records an event of `namespace` but of no policy in it (or of the
    /// deployment, with `None`), such as a namespace's subscription
    /// disabled, so that the namespace's readers and subscriptions hear it;
    /// returns its id.
    pub async fn record_namespace_event(
        &self,
        context: &RequestContext,
        namespace: Option<&Namespace>,
        event: NewEvent<'_>,
    ) -> Result<u64> {
        let about = namespace.map(|namespace| (namespace.to_string(), String::new()));
        let record = self.new_record(context, about, event);
        self.append_event(record, None).await
    }

    fn new_record(
        &self,
        context: &RequestContext,
        policy: Option<(String, String)>,
        event: NewEvent<'_>,
    ) -> EventRecord {
        EventRecord {
            id: 0,
            kind: event.kind,
            policy,
            actor: context.actor.clone(),
            at: self.at(),
            reason: event.reason.to_owned(),
            request_id: context.request_id.clone(),
            previous_version: event.previous_version,
            new_version: event.new_version,
            revision: event.revision,
            key_id: event.key_id,
            rollout_id: event.rollout_id.map(str::to_owned),
            hash: String::new(),
        }
    }

    /// Appends `record` to the log as it is (its id and hash aside), linked
    /// to the head of the chain, about the policy row `policy_id`; returns
    /// its id.
    pub(super) async fn append_event(
        &self,
        mut record: EventRecord,
        policy_id: Option<i64>,
    ) -> Result<u64> {
        let canonical = chain::canonical(&self.chain_tip().await?.1, &record);
        record.hash = chain::hash(&canonical);
        let hash = record.hash.clone();
        let (namespace, name) = record.policy.clone().unzip();
        // An event of a namespace but of no policy in it keeps no name.
        let name = name.filter(|name| !name.is_empty());
        let announced_namespace = namespace.clone();
        let row = events::ActiveModel {
            id: NotSet,
            kind: Set(record.kind.as_str().to_owned()),
            policy_id: Set(policy_id),
            namespace: Set(namespace),
            name: Set(name),
            actor: Set(record.actor),
            at: Set(record.at),
            reason: Set(record.reason),
            request_id: Set(record.request_id),
            previous_version: Set(record.previous_version.map(db_version)),
            new_version: Set(record.new_version.map(db_version)),
            revision: Set(record.revision.map(db_revision)),
            key_id: Set(record.key_id),
            rollout_id: Set(record.rollout_id),
            hash: Set(Some(record.hash)),
        };
        let insert = events::Entity::insert(row).into_query();
        let id = self.txn.insert_id(insert, events::Column::Id).await?;
        self.log_append(revision(id), canonical.as_bytes()).await?;
        self.enqueue_announcement(id, record.kind, announced_namespace)
            .await?;
        self.chain_appended(revision(id), hash);
        Ok(revision(id))
    }

    /// The version that was active before the policy's last pointer move.
    pub async fn previously_active(&self, policy: &LockedPolicy) -> Result<Option<u32>> {
        let last_move = events::Entity::find()
            .filter(events::Column::PolicyId.eq(policy.id))
            .filter(events::Column::Kind.is_in(pointer_moves()))
            .order_by(events::Column::Id, Order::Desc)
            .one(&self.txn)
            .await?;
        Ok(last_move
            .and_then(|event| event.previous_version)
            .map(version))
    }

    /// The key id of the last key rotation.
    pub async fn last_rotated_key(&self) -> Result<Option<String>> {
        // MAX(id) by kind is one seek in the index on events(kind, id),
        // whatever the planner makes of ORDER BY … LIMIT 1.
        let last_rotation_id: Option<i64> = events::Entity::find()
            .select_only()
            .column_as(events::Column::Id.max(), "id")
            .filter(events::Column::Kind.eq(EventKind::KeyRotated.as_str()))
            .into_tuple::<Option<i64>>()
            .one(&self.txn)
            .await?
            .flatten();
        Ok(match last_rotation_id {
            Some(id) => events::Entity::find_by_id(id)
                .one(&self.txn)
                .await?
                .and_then(|event| event.key_id),
            None => None,
        })
    }
}

impl Repository {
    /// Records each runtime's refusal of a version as a RUNTIME_REJECTED
    /// event of its policy, by the runtime's principal, in one transaction.
    /// A policy that no longer exists is passed over.
    #[tracing::instrument(name = "storage.record_rejections", skip_all, fields(rejections = rejected.len()))]
    pub async fn record_rejections(&self, rejected: &[Rejection]) -> Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        self.write("record_rejections", async |tx| {
            for rejection in rejected {
                let policy = PolicyRef {
                    namespace: rejection.namespace.clone(),
                    name: rejection.policy.clone(),
                };
                let row = match find_policy(&tx.txn, &policy).await {
                    Ok(row) => row,
                    Err(Error::NotFound(_)) => continue,
                    Err(error) => return Err(error),
                };
                let record = EventRecord {
                    id: 0,
                    kind: EventKind::RuntimeRejected,
                    policy: Some((policy.namespace.to_string(), policy.name.to_string())),
                    actor: rejection.subject.clone(),
                    at: tx.at(),
                    reason: rejection.reason(),
                    request_id: format!("runtime-{}", rejection.runtime),
                    previous_version: None,
                    new_version: Some(rejection.version),
                    revision: None,
                    key_id: None,
                    rollout_id: None,
                    hash: String::new(),
                };
                tx.append_event(record, Some(row.id)).await?;
            }
            Ok(())
        })
        .await
    }

    /// The audit log, newest first; the page token is the last event id.
    #[tracing::instrument(name = "storage.list_events", skip_all)]
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<EventRecord>> {
        let paging = Paging::new("events", filter, page_size);
        let below: Option<i64> = paging.position(page_token)?;
        let mut query =
            events::Entity::find().filter(in_scope(events::Column::Namespace, &filter.scope));
        if let Some(name) = &filter.name {
            query = query.filter(events::Column::Name.eq(name.as_str()));
        }
        if !filter.kinds.is_empty() {
            query = query
                .filter(events::Column::Kind.is_in(filter.kinds.iter().map(|kind| kind.as_str())));
        }
        if let Some(actor) = &filter.actor {
            query = query.filter(events::Column::Actor.eq(actor.as_str()));
        }
        if let Some(since) = filter.since {
            query = query.filter(events::Column::At.gte(since));
        }
        if let Some(until) = filter.until {
            query = query.filter(events::Column::At.lte(until));
        }
        if let Some(below) = below {
            query = query.filter(events::Column::Id.lt(below));
        }
        let mut rows = query
            .order_by(events::Column::Id, Order::Desc)
            .limit(paging.limit())
            .all(&self.db)
            .await?;
        let next_page_token = paging.finish(&mut rows, |last| last.id.to_string());
        let items = rows.into_iter().map(record).collect::<Result<_>>()?;
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The bundle that was active at a past revision or instant, read from
    /// the event log.
    #[tracing::instrument(name = "storage.active_as_of", skip_all)]
    pub async fn active_as_of(
        &self,
        policy: &PolicyRef,
        as_of: AsOf,
    ) -> Result<Option<ActiveBundle>> {
        let row = find_policy(&self.db, policy).await?;
        let query = events::Entity::find()
            .filter(events::Column::PolicyId.eq(row.id))
            .filter(events::Column::Kind.is_in(pointer_moves()));
        let query = match as_of {
            AsOf::Revision(at) => query.filter(events::Column::Revision.lte(i64::from(at))),
            AsOf::Time(at) => query.filter(events::Column::At.lte(at)),
        };
        let Some(event) = query
            .order_by(events::Column::Revision, Order::Desc)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let (Some(moved_to), Some(moved_at)) = (event.new_version, event.revision) else {
            return Err(Error::Internal(format!(
                "activation event {} lacks its version",
                event.id
            )));
        };
        let selector = VersionSelector::Number(version(moved_to));
        let model = find_version(&self.db, row.id, &selector)
            .await?
            .ok_or_else(|| no_such_version(policy, &selector))?;
        let record = version_record(policy, None, model)?;
        active_bundle(&record, revision(moved_at)).map(Some)
    }
}
