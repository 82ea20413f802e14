//! The application: the one facade every transport calls, reads included.
//! Each operation loads what it touches from storage, lets the domain
//! decide, signs, writes in one transaction, and applies what moved to the
//! in-memory index before the reply goes out.

mod alerts;
mod analyses;
mod archive;
mod carried;
mod decisions;
mod fleet;
mod impact;
mod lifecycle;
mod log;
mod reads;
mod rego;
mod rollouts;
mod schedules;
mod subscriptions;
mod witnessed;

pub use crate::opa::OpaBundle;
pub use crate::storage::Term;
pub use alerts::AlertedRollouts;
pub use rollouts::Control;
pub use schedules::ScheduleControl;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use prost::bytes::Bytes;
use tempfile::NamedTempFile;

use crate::config::{RolloutSettings, ScheduleSettings};
use crate::domain::chain::Checkpoint;
use crate::domain::log::ConsistencyProof;
use crate::domain::rollout::{MetricsSource, RevisionChange};
use crate::domain::{
    ActivationOutcome, ActiveBundle, Error, EventKind, RequestContext, Result, VersionRecord,
};
use crate::fleet::Fleet;
use crate::signing::{Jwk, KeySource, SigningKey};
use crate::storage::{KeyUse, NewEvent, Repository};
use crate::watch::{ActiveIndex, Encode, IndexedBundle, Instruments};

/// How a checkpoint goes on the wire, with the proof that its tree extends
/// the one carried before it: handed in by the transport.
pub type EncodeCheckpoint = fn(&Checkpoint, Option<&ConsistencyProof>) -> Bytes;

/// How long an activation that committed after revisions the index lacks
/// waits for them to be applied before it reads them back (see `applied`).
const WAIT_FOR_EARLIER_REVISIONS: Duration = Duration::from_millis(20);

/// What `GetActive` found.
#[derive(Debug, Clone)]
pub enum ActiveView {
    /// The signed bundle active now, as the index encoded it once for its
    /// version, and the newest checkpoint (encoded, as watch messages
    /// carry it), which proves it.
    Current(Arc<IndexedBundle>, Option<Bytes>),
    /// The signed bundle active at a past point, and the checkpoint that
    /// proves it.
    Signed(ActiveBundle, Option<Checkpoint>),
    /// Nothing is active and the caller asked for the open draft instead.
    UnsignedDraft(VersionRecord),
}

/// The policy hub: every operation the gRPC services expose.
#[derive(Clone)]
pub struct PolicyHub {
    repository: Repository,
    index: ActiveIndex,
    /// Where the keys come from, for rotation and reloads.
    key_source: Arc<KeySource>,
    /// The key that signs new versions and every public key that ever
    /// signed; swapped whole when keys rotate.
    keys: Arc<ArcSwap<Keys>>,
    /// Held while revisions are applied to the index, so that they are
    /// applied whole and in order whichever path delivers them.
    applier: Arc<tokio::sync::Mutex<()>>,
    /// The `iss` claim of the bundles this hub signs.
    bundle_issuer: String,
    /// Approvals rollouts need, per namespace.
    rollout_settings: Arc<RolloutSettings>,
    /// How often a schedule's entry may fire at most.
    schedule_settings: Arc<ScheduleSettings>,
    /// Which runtimes watch, and what each applied.
    fleet: Fleet,
    /// How a checkpoint goes on the wire, handed in by the transport.
    encode_checkpoint: EncodeCheckpoint,
    /// The checkpoint watch messages carry (see `carried`).
    carried: Arc<tokio::sync::Mutex<carried::CarriedTree>>,
    /// With witnesses, what holds revisions until their checkpoint is
    /// witnessed (see `witnessed`).
    witnesses: Option<Arc<witnessed::WitnessGate>>,
    /// The Prometheus servers rollouts' analyses query, when the
    /// deployment configures any.
    metrics_source: Option<Arc<dyn MetricsSource>>,
    /// The analyses' measurements being taken.
    measuring: Arc<analyses::Measuring>,
    /// The namespaces served to OPA, whose policies are Rego policies,
    /// and their bundles.
    opa: Arc<rego::Opa>,
}

/// The signing key, the JWKS and the revoked keys, which change together.
struct Keys {
    signer: SigningKey,
    /// Every key that signed and is not revoked.
    jwks: Vec<Jwk>,
    /// The ids of the revoked keys.
    revoked: Vec<String>,
}

/// What revoking a signing key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedKey {
    /// The revoked key.
    pub key_id: String,
    /// The key that signed its versions again.
    pub signing_key_id: String,
    /// How many versions were signed again.
    pub re_signed_versions: u32,
    /// The revision that sent the active ones again, if any was.
    pub revision: Option<u64>,
    /// The key was revoked before: nothing changed.
    pub already_revoked: bool,
}

/// Stores the public keys and records a rotation when the signer is new.
async fn register(
    repository: &Repository,
    keys: Vec<SigningKey>,
    context: &RequestContext,
    reason: &str,
) -> Result<Keys> {
    let mut keys = keys.into_iter();
    let signer = keys
        .next()
        .ok_or_else(|| Error::precondition("at least one signing key is needed"))?;
    let mut configured = vec![signer.jwk().clone()];
    configured.extend(keys.map(|key| key.jwk().clone()));
    repository
        .write("register_keys", async |tx| {
            if tx
                .revoked_key_ids()
                .await?
                .iter()
                .any(|revoked| revoked == signer.key_id())
            {
                return Err(Error::precondition(format!(
                    "signing key {} was revoked: configure another to sign",
                    signer.key_id()
                )));
            }
            tx.store_public_keys(&configured).await?;
            if tx.last_rotated_key().await?.as_deref() != Some(signer.key_id()) {
                let event = NewEvent {
                    key_id: Some(signer.key_id().to_owned()),
                    ..NewEvent::new(EventKind::KeyRotated, reason)
                };
                tx.record_event(context, None, event).await?;
            }
            Ok(())
        })
        .await?;
    let jwks = repository.signing_keys().await?;
    let revoked = repository.revoked_key_ids().await?;
    Ok(Keys {
        signer,
        jwks,
        revoked,
    })
}

impl PolicyHub {
    /// Loads and registers the signing keys and loads the active index from
    /// the database.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        repository: Repository,
        fleet: Fleet,
        bundle_issuer: String,
        rollout_settings: RolloutSettings,
        schedule_settings: ScheduleSettings,
        key_source: KeySource,
        (encode, encode_checkpoint): (Encode, EncodeCheckpoint),
        instruments: Instruments,
    ) -> anyhow::Result<Self> {
        let system = RequestContext {
            actor: "system:policyhub".into(),
            request_id: "startup".into(),
        };
        let keys = register(
            &repository,
            key_source.load()?,
            &system,
            "the configured signing key signs new versions",
        )
        .await?;
        let keys = Arc::new(ArcSwap::from_pointee(keys));
        let signing = keys.clone();
        repository.sign_checkpoints_with(Arc::new(move |claims, origin, body| {
            let keys = signing.load_full();
            let jws = keys.signer.sign_checkpoint(claims)?;
            let note = keys.signer.sign_note(origin, body)?;
            Ok((jws, keys.signer.key_id().to_owned(), note))
        }));
        let state = repository.load_active().await?;
        tracing::info!(
            revision = state.revision,
            active_policies = state.bundles.len(),
            live_rollouts = state.rollouts.len(),
            "loaded the active index"
        );
        let hub = PolicyHub {
            repository,
            index: ActiveIndex::new(state, encode, instruments),
            key_source: Arc::new(key_source),
            keys,
            applier: Arc::default(),
            bundle_issuer,
            rollout_settings: Arc::new(rollout_settings),
            schedule_settings: Arc::new(schedule_settings),
            fleet,
            encode_checkpoint,
            carried: Arc::default(),
            witnesses: None,
            metrics_source: None,
            measuring: Arc::default(),
            opa: Arc::default(),
        };
        hub.repository.read_newest_checkpoint().await?;
        hub.show_checkpoint().await;
        Ok(hub)
    }

    /// Makes watch messages carry the newest checkpoint this replica holds;
    /// with witnesses, the newest witnessed one only (see `witnessed`).
    async fn show_checkpoint(&self) {
        if self.witnesses.is_some() {
            return;
        }
        if let Some(checkpoint) = self.repository.newest_checkpoint() {
            self.carry(&checkpoint).await;
        }
    }

    /// Signs a checkpoint unless the newest stored one is younger than
    /// `fresh_for` and states the log as it is (another replica's counts);
    /// watch messages carry it from then on. Fails while the database
    /// cannot be reached, so the checkpoint served ages.
    pub async fn refresh_checkpoint(&self, fresh_for: std::time::Duration) -> Result<Checkpoint> {
        let fresh_for = chrono::Duration::from_std(fresh_for)
            .map_err(|error| Error::Internal(format!("checkpoint interval: {error}")))?;
        let checkpoint = self.repository.refresh_checkpoint(fresh_for).await?;
        self.show_witnessed().await?;
        Ok(checkpoint)
    }

    /// A consistent copy of the database, taken while serving, staged in a
    /// file of `staging` that is removed when the returned handle drops;
    /// with the revision it holds.
    #[tracing::instrument(name = "hub.backup", skip_all)]
    pub async fn backup(&self, staging: &Path) -> Result<(NamedTempFile, u64)> {
        let file = tempfile::Builder::new()
            .prefix(".backup-")
            .suffix(".db")
            .tempfile_in(staging)
            .map_err(|error| {
                Error::Internal(format!(
                    "cannot stage a backup in {}: {error}",
                    staging.display()
                ))
            })?;
        let revision = self.repository.backup_into(file.path()).await?;
        Ok((file, revision))
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    /// Makes a new generated key sign; returns the old and the new key id.
    pub async fn rotate_signing_key(
        &self,
        context: &RequestContext,
        reason: &str,
    ) -> Result<(String, String)> {
        let new_key = self
            .key_source
            .rotate()
            .map_err(|error| Error::precondition(format!("{error:#}")))?;
        self.install(vec![new_key], context, reason).await
    }

    /// Revokes a key that no longer signs: it leaves the JWKS, every
    /// version it signed is signed again by the signing key (claims
    /// unchanged), and the active ones are sent again under one revision,
    /// after the JWKS changed, so a runtime that fetches the keys on seeing
    /// them learns of the revocation.
    pub async fn revoke_signing_key(
        &self,
        context: &RequestContext,
        key_id: &str,
        reason: &str,
    ) -> Result<RevokedKey> {
        let keys = self.keys();
        let signer = keys.signer.clone();
        if signer.key_id() == key_id {
            return Err(Error::precondition(format!(
                "signing key {key_id} signs new versions: rotate the signing key first"
            )));
        }
        let revocation = self
            .repository
            .write("revoke_signing_key", async |tx| {
                tx.lock_signing_keys(&[
                    (key_id, KeyUse::Revokes),
                    (signer.key_id(), KeyUse::Signs),
                ])
                .await?;
                if !tx.key_stored(key_id).await? {
                    return Err(Error::NotFound(format!("no signing key {key_id}")));
                }
                tx.ensure_signs(signer.key_id()).await?;
                tx.lock_namespaces_signed_by(key_id).await?;
                if tx.revoked_key_ids().await?.iter().any(|id| id == key_id) {
                    return Ok(None);
                }
                // A live rollout's cohort holds its candidate as sent: one
                // the key signed would be signed again in storage but not
                // sent to the cohort again.
                let live = tx.live_rollout_views().await?;
                if let Some(view) = live.iter().find(|view| {
                    view.candidates
                        .iter()
                        .any(|candidate| candidate.key_id == key_id)
                }) {
                    return Err(Error::precondition(format!(
                        "rollout {} of namespace {} has a candidate signed by key {key_id}: \
                         let it complete, or abort it, then revoke the key",
                        view.rollout.id, view.rollout.namespace
                    )));
                }
                // Read here, not from memory: a key another replica
                // registered since this one last read them verifies too.
                let verifying = crate::signing::Jwks {
                    keys: tx.signing_keys().await?,
                };
                let sign_again = |old_jws: &str| {
                    let claims = crate::signing::verify(old_jws, &verifying).map_err(|error| {
                        Error::DataLoss(format!("a stored bundle does not verify: {error}"))
                    })?;
                    Ok((signer.sign(&claims)?, signer.key_id().to_owned()))
                };
                tx.revoke_key(context, key_id, reason, sign_again)
                    .await
                    .map(Some)
            })
            .await?;
        let Some(revocation) = revocation else {
            return Ok(RevokedKey {
                key_id: key_id.to_owned(),
                signing_key_id: signer.key_id().to_owned(),
                re_signed_versions: 0,
                revision: None,
                already_revoked: true,
            });
        };
        self.refresh_jwks().await?;
        tracing::warn!(
            %key_id,
            signing_key_id = %signer.key_id(),
            re_signed_versions = revocation.re_signed,
            revision = ?revocation.revision,
            "signing key revoked"
        );
        if let Some(revision) = revocation.revision {
            self.applied(RevisionChange {
                revision,
                bundles: revocation.changed,
                rollouts: Vec::new(),
            })
            .await;
        }
        Ok(RevokedKey {
            key_id: key_id.to_owned(),
            signing_key_id: signer.key_id().to_owned(),
            re_signed_versions: revocation.re_signed,
            revision: revocation.revision,
            already_revoked: false,
        })
    }

    /// Re-reads the key files (on SIGHUP); returns the old and the new
    /// signing key id.
    pub async fn reload_keys(&self, context: &RequestContext) -> Result<(String, String)> {
        let keys = self.key_source.load().map_err(|error| {
            Error::precondition(format!("cannot reload the signing keys: {error:#}"))
        })?;
        self.install(keys, context, "the signing keys were reloaded")
            .await
    }

    async fn install(
        &self,
        keys: Vec<SigningKey>,
        context: &RequestContext,
        reason: &str,
    ) -> Result<(String, String)> {
        let keys = register(&self.repository, keys, context, reason).await?;
        let new_key_id = keys.signer.key_id().to_owned();
        let previous = self.keys.swap(Arc::new(keys));
        let previous_key_id = previous.signer.key_id().to_owned();
        tracing::info!(%previous_key_id, signing_key_id = %new_key_id, "signing keys installed");
        Ok((previous_key_id, new_key_id))
    }

    /// The in-memory index.
    pub fn index(&self) -> &ActiveIndex {
        &self.index
    }

    /// Brings the index up to a revision this replica just committed, before
    /// the reply goes out (so a caller reads its own write). The commit's own
    /// moves are applied directly when they are the next revision; otherwise
    /// another commit (here or on another replica) came first, and the index
    /// catches up from the event log in revision order: the index never
    /// advertises a revision before everything up to it is applied.
    async fn applied(&self, change: RevisionChange) {
        let revision = change.revision;
        if self.index.revision() >= revision {
            return;
        }
        self.witnessed(revision).await;
        if self.index.revision() + 1 < revision {
            // The revisions in between committed too: on SQLite in the same
            // group commit, whose callers apply them now; on PostgreSQL on
            // another replica, whose notification is on its way. Reading
            // them back is the fallback, not the rule.
            let earlier = self.index.reached(revision - 1);
            let _ = tokio::time::timeout(WAIT_FOR_EARLIER_REVISIONS, earlier).await;
        }
        let _applying = self.applier.lock().await;
        if self.index.revision() + 1 == revision {
            // The commit's checkpoint goes out with the revision.
            self.show_checkpoint().await;
            self.index.apply(change);
            return;
        }
        if let Err(error) = self.catch_up_locked(revision).await {
            // The commit stands; the next catch-up delivers it.
            tracing::warn!(%error, revision, "cannot catch up the active index");
        }
    }

    /// Applies an activation this replica just committed (see `applied`).
    async fn activated(&self, activation: &ActivationOutcome) {
        if activation.changed.is_empty() {
            return;
        }
        self.applied(RevisionChange {
            revision: activation.revision,
            bundles: activation.changed.clone(),
            rollouts: Vec::new(),
        })
        .await;
    }

    /// Applies every revision committed after the index's, in order.
    pub async fn catch_up(&self) -> Result<()> {
        let _applying = self.applier.lock().await;
        self.catch_up_locked(0).await
    }

    /// Applies the revisions committed after the index's that may be
    /// published (see `witnessed`), at least up to `waited`, which waited
    /// for its witnesses already.
    async fn catch_up_locked(&self, waited: u64) -> Result<()> {
        let changes = self.repository.changes_since(self.index.revision()).await?;
        if changes.is_empty() {
            if self.witnesses.is_some() {
                // Cosignatures another replica gathered since.
                self.show_witnessed().await?;
            }
            return Ok(());
        }
        // An import (here or on another replica) may bring the keys that
        // signed what it loaded.
        self.refresh_jwks().await?;
        self.repository.read_newest_checkpoint().await?;
        let publishable = self.show_witnessed().await?.max(waited);
        for change in changes {
            if change.revision > publishable {
                // Published by a later catch-up, once witnessed.
                break;
            }
            self.index.apply(change);
        }
        Ok(())
    }

    /// Serves every stored public key that is not revoked in the JWKS,
    /// and the revoked ones as such.
    async fn refresh_jwks(&self) -> Result<()> {
        let jwks = self.repository.signing_keys().await?;
        let revoked = self.repository.revoked_key_ids().await?;
        // Read, copy and swap again when an install came between, so that
        // neither is lost.
        self.keys.rcu(|keys| {
            if keys.jwks == jwks && keys.revoked == revoked {
                return Arc::clone(keys);
            }
            Arc::new(Keys {
                signer: keys.signer.clone(),
                jwks: jwks.clone(),
                revoked: revoked.clone(),
            })
        });
        Ok(())
    }

    /// The JWKS and the id of the key that signs new versions.
    pub fn signing_keys(&self) -> (Vec<Jwk>, String) {
        let keys = self.keys();
        (keys.jwks.clone(), keys.signer.key_id().to_owned())
    }

    /// The ids of the revoked keys, in the order they were revoked.
    pub fn revoked_key_ids(&self) -> Vec<String> {
        self.keys().revoked.clone()
    }
}
