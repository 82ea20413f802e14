//! The public keys that ever signed: stored once, never removed. A revoked
//! key stays stored (its KEY_REVOKED event says so) but leaves the keys
//! that verify, and the versions it signed are signed again.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, sea_query::Expr,
};

use super::entities::{events, policies, signing_keys, versions};
use super::events::NewEvent;
use super::rows::{active_bundle, db_revision, policy_ref, version, version_record};
use super::statement_runner::StatementRunner;
use super::transaction::{LockMode, Repository, Transaction};
use crate::domain::{ActiveBundle, Error, EventKind, PolicyRef, RequestContext, Result};
use crate::signing::Jwk;

/// The ids of the revoked keys, in the order they were revoked.
async fn revoked_key_ids<C: ConnectionTrait>(db: &C) -> Result<Vec<String>> {
    let ids: Vec<Option<String>> = events::Entity::find()
        .select_only()
        .column(events::Column::KeyId)
        .filter(events::Column::Kind.eq(EventKind::KeyRevoked.as_str()))
        .order_by(events::Column::Id, Order::Asc)
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().flatten().collect())
}

/// The advisory lock class of signing keys (see the lock order in
/// `transaction`), apart from the namespaces' class.
const SIGNING_KEY_LOCK_CLASS: i32 = 0x7068_6b79;

/// Every public key that ever signed and is not revoked, oldest first.
async fn signing_keys<C: ConnectionTrait>(db: &C) -> Result<Vec<Jwk>> {
    let revoked: HashSet<String> = revoked_key_ids(db).await?.into_iter().collect();
    let rows = signing_keys::Entity::find()
        .order_by(signing_keys::Column::CreatedAt, Order::Asc)
        .order_by(signing_keys::Column::KeyId, Order::Asc)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|row| !revoked.contains(&row.key_id))
        .map(|row| Jwk::from_x(row.public_key))
        .collect())
}

/// What a transaction does with a signing key it locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    /// Signs with it: many may at once.
    Signs,
    /// Revokes it: alone, once every transaction signing with it ended.
    Revokes,
}

/// What revoking a key changed.
#[derive(Debug, Default)]
pub struct Revocation {
    /// How many versions were signed again.
    pub re_signed: u32,
    /// The revision that sends the active ones again, when one was taken.
    pub revision: Option<u64>,
    /// The active versions signed again, as that revision sends them.
    pub changed: Vec<ActiveBundle>,
}

impl Transaction {
    /// Stores the public keys not stored yet: a stored key is history, and
    /// the database refuses an insert that collides with it.
    pub async fn store_public_keys(&self, keys: &[Jwk]) -> Result<()> {
        let stored: HashSet<String> = signing_keys::Entity::find()
            .select_only()
            .column(signing_keys::Column::KeyId)
            .into_tuple::<String>()
            .all(&self.txn)
            .await?
            .into_iter()
            .collect();
        for key in keys.iter().filter(|key| !stored.contains(&key.kid)) {
            signing_keys::Entity::insert(signing_keys::ActiveModel {
                key_id: Set(key.kid.clone()),
                public_key: Set(key.x.clone()),
                created_at: Set(self.at()),
            })
            .exec_without_returning(&self.txn)
            .await?;
        }
        Ok(())
    }

    /// Whether a key with this id was ever stored.
    pub async fn key_stored(&self, key_id: &str) -> Result<bool> {
        Ok(signing_keys::Entity::find_by_id(key_id.to_owned())
            .one(&self.txn)
            .await?
            .is_some())
    }

    /// The ids of the revoked keys.
    pub async fn revoked_key_ids(&self) -> Result<Vec<String>> {
        revoked_key_ids(&self.txn).await
    }

    /// Every public key that ever signed and is not revoked, as this
    /// transaction reads them: those other replicas registered included.
    pub async fn signing_keys(&self) -> Result<Vec<Jwk>> {
        signing_keys(&self.txn).await
    }

    /// Locks signing keys for the rest of the transaction, before any
    /// namespace or row lock, in order of id: shared to sign with one,
    /// exclusive to revoke one. On SQLite the writer lock serializes
    /// instead, and the lock only records that it was asked for.
    pub async fn lock_signing_keys(&mut self, keys: &[(&str, KeyUse)]) -> Result<()> {
        if self.holds_later_locks() {
            return Err(Error::Internal(
                "a signing key lock was asked for after a namespace or row lock".into(),
            ));
        }
        let mut keys = keys.to_vec();
        keys.sort_unstable_by_key(|(key_id, _)| *key_id);
        for (key_id, key_use) in keys {
            let mode = match key_use {
                KeyUse::Signs => LockMode::Shared,
                KeyUse::Revokes => LockMode::Exclusive,
            };
            self.advisory_lock(SIGNING_KEY_LOCK_CLASS, key_id, mode)
                .await?;
            self.signing_keys.insert(key_id.to_owned());
        }
        Ok(())
    }

    /// Refuses to sign with `key_id` once it is revoked, by this replica or
    /// another: read under the key's lock, so a revocation either committed
    /// before and is seen, or waits for this transaction and then signs
    /// again what it signed.
    pub async fn ensure_signs(&self, key_id: &str) -> Result<()> {
        if !self.signing_keys.contains(key_id) {
            return Err(Error::Internal(format!(
                "signing with key {key_id} without its lock"
            )));
        }
        if self.revoked_key_ids().await?.iter().any(|id| id == key_id) {
            return Err(Error::precondition(format!(
                "this replica's signing key {key_id} was revoked: configure another to sign \
                 and restart the replica"
            )));
        }
        Ok(())
    }

    /// Locks the namespace of every policy with a version `key_id` signed:
    /// where its revocation sends versions again, and where a rollout of
    /// such a version would start. Taken before the revocation reads the
    /// live rollouts and the revoked keys, so what it reads stays true
    /// until it commits.
    pub async fn lock_namespaces_signed_by(&mut self, key_id: &str) -> Result<()> {
        let policy_ids: Vec<i64> = versions::Entity::find()
            .select_only()
            .column(versions::Column::PolicyId)
            .distinct()
            .filter(versions::Column::KeyId.eq(key_id))
            .into_tuple()
            .all(&self.txn)
            .await?;
        let owners = policies::Entity::find()
            .filter(policies::Column::Id.is_in(policy_ids))
            .all(&self.txn)
            .await?;
        let namespaces = owners
            .iter()
            .map(|owner| Ok(policy_ref(owner)?.namespace))
            .collect::<Result<Vec<_>>>()?;
        self.lock_namespaces(namespaces.iter()).await
    }

    /// Revokes `revoked`: records KEY_REVOKED, then signs every version it
    /// signed again with `sign` (the claims of the old JWS to a new JWS and
    /// its key id), recording RE_SIGNED for each. The active ones are sent
    /// again under one new revision, their namespaces locked first.
    pub async fn revoke_key(
        &mut self,
        context: &RequestContext,
        revoked: &str,
        reason: &str,
        sign: impl Fn(&str) -> Result<(String, String)>,
    ) -> Result<Revocation> {
        let signed = versions::Entity::find()
            .filter(versions::Column::KeyId.eq(revoked))
            .order_by(versions::Column::Id, Order::Asc)
            .all(&self.txn)
            .await?;
        let policy_ids: BTreeSet<i64> = signed.iter().map(|row| row.policy_id).collect();
        let owners: BTreeMap<i64, policies::Model> = policies::Entity::find()
            .filter(policies::Column::Id.is_in(policy_ids))
            .all(&self.txn)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        let is_active = |row: &versions::Model| {
            owners
                .get(&row.policy_id)
                .is_some_and(|owner| owner.active_version == Some(row.version))
        };
        let any_active = signed.iter().any(is_active);
        let mut refs: BTreeMap<i64, PolicyRef> = BTreeMap::new();
        for (id, owner) in &owners {
            refs.insert(*id, policy_ref(owner)?);
        }
        // Sending an active version again changes its namespace's active
        // set: the same lock order as an activation.
        let active_namespaces: Vec<_> = signed
            .iter()
            .filter(|row| is_active(row))
            .map(|row| refs[&row.policy_id].namespace.clone())
            .collect();
        self.lock_namespaces(active_namespaces.iter()).await?;
        let to_lock: Vec<&PolicyRef> = refs.values().collect();
        let locked: BTreeMap<PolicyRef, _> = self
            .lock_policies(&to_lock)
            .await?
            .into_iter()
            .map(|policy| (policy.state.policy.clone(), policy))
            .collect();
        let revision = if any_active {
            Some(self.take_revision().await?)
        } else {
            None
        };
        let event = NewEvent {
            key_id: Some(revoked.to_owned()),
            revision,
            ..NewEvent::new(EventKind::KeyRevoked, reason)
        };
        self.record_event(context, None, event).await?;
        let mut revocation = Revocation {
            revision,
            ..Revocation::default()
        };
        for mut row in signed {
            let Some(old_jws) = row.jws.as_deref() else {
                continue;
            };
            let active = is_active(&row);
            let (jws, key_id) = sign(old_jws)?;
            let update = versions::Entity::update_many()
                .col_expr(versions::Column::Jws, Expr::value(jws.clone()))
                .col_expr(versions::Column::KeyId, Expr::value(key_id.clone()))
                .filter(versions::Column::Id.eq(row.id));
            self.txn.run(update.build(self.backend())).await?;
            let policy = &refs[&row.policy_id];
            let sent_at = revision.filter(|_| active);
            if let Some(at) = sent_at {
                // The active bundle was sent again at `at`: a watcher
                // resuming after the revision it had takes it, after a
                // restart too.
                let pointer = policies::Entity::update_many()
                    .col_expr(
                        policies::Column::ActiveRevision,
                        Expr::value(db_revision(at)),
                    )
                    .filter(policies::Column::Id.eq(row.policy_id));
                self.txn.run(pointer.build(self.backend())).await?;
            }
            let event = NewEvent {
                new_version: Some(version(row.version)),
                key_id: Some(key_id.clone()),
                revision: sent_at,
                ..NewEvent::new(EventKind::ReSigned, reason)
            };
            self.record_event(context, locked.get(policy), event)
                .await?;
            row.jws = Some(jws);
            row.key_id = Some(key_id);
            if let Some(at) = sent_at {
                let record = version_record(policy, None, row)?;
                revocation.changed.push(active_bundle(&record, at)?);
            }
            revocation.re_signed += 1;
        }
        Ok(revocation)
    }
}

impl Repository {
    /// Every public key that ever signed and is not revoked, oldest first.
    #[tracing::instrument(name = "storage.signing_keys", skip_all)]
    pub async fn signing_keys(&self) -> Result<Vec<Jwk>> {
        signing_keys(&self.db).await
    }

    /// The ids of the revoked keys, in the order they were revoked.
    #[tracing::instrument(name = "storage.revoked_key_ids", skip_all)]
    pub async fn revoked_key_ids(&self) -> Result<Vec<String>> {
        revoked_key_ids(&self.db).await
    }
}
