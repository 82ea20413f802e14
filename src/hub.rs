//! The application: the lifecycle operations of DESIGN §2 over the
//! repository, with the in-memory index kept current after every commit.

use std::sync::{Arc, RwLock};

use crate::domain::{
    ActivateCommand, ActivationOutcome, ActiveBundle, DiscardCommand, DraftCommand, DraftOutcome,
    Error, EventFilter, EventRecord, IdempotencyKey, NamespaceScope, Page, PolicyRef,
    PolicySummary, PublishCommand, PublishOutcome, RequestContext, Result, RollbackCommand,
    SchemaViolation, SetSchemaCommand, VersionRecord, VersionSelector, fingerprint,
};
use crate::signing::{Jwk, KeySource, SigningKey};
use crate::storage::{AsOf, IdempotencyClaim, Repository};
use crate::watch::{ActiveIndex, Encode, Instruments};

/// What `GetActive` found.
#[derive(Debug, Clone)]
pub enum ActiveView {
    /// The signed, active bundle.
    Signed(ActiveBundle),
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
    keys: Arc<RwLock<Arc<Keys>>>,
    /// Held while revisions are applied to the index, so that they are
    /// applied whole and in order whichever path delivers them.
    applier: Arc<tokio::sync::Mutex<()>>,
}

/// The signing key and the JWKS, which change together.
struct Keys {
    signer: SigningKey,
    jwks: Vec<Jwk>,
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
        .register_keys(&configured, signer.kid(), context, reason)
        .await?;
    let jwks = repository.signing_keys().await?;
    Ok(Keys { signer, jwks })
}

fn claim(
    method: &'static str,
    key: Option<IdempotencyKey>,
    command: &impl serde::Serialize,
) -> Option<IdempotencyClaim> {
    key.map(|IdempotencyKey(key)| IdempotencyClaim {
        method,
        key,
        fingerprint: fingerprint(method, command),
    })
}

impl PolicyHub {
    /// Loads and registers the signing keys and loads the active index from
    /// the database.
    pub async fn start(
        repository: Repository,
        key_source: KeySource,
        encode: Encode,
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
        let (revision, bundles) = repository.load_active().await?;
        tracing::info!(
            revision,
            active_policies = bundles.len(),
            signing_kid = keys.signer.kid(),
            "loaded the active index"
        );
        Ok(PolicyHub {
            repository,
            index: ActiveIndex::new(revision, bundles, encode, instruments),
            key_source: Arc::new(key_source),
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            applier: Arc::default(),
        })
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().expect("keys lock").clone()
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
        let new_kid = keys.signer.kid().to_owned();
        let previous =
            std::mem::replace(&mut *self.keys.write().expect("keys lock"), Arc::new(keys));
        tracing::info!(previous = previous.signer.kid(), signing_kid = %new_kid, "signing keys installed");
        Ok((previous.signer.kid().to_owned(), new_kid))
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
    async fn applied(&self, activation: &ActivationOutcome) {
        if self.index.revision() >= activation.revision {
            return;
        }
        let _applying = self.applier.lock().await;
        if self.index.revision() + 1 == activation.revision && !activation.changed.is_empty() {
            self.index
                .apply(activation.revision, activation.changed.clone());
            return;
        }
        if let Err(error) = self.catch_up_locked().await {
            // The commit stands; the next catch-up delivers it.
            tracing::warn!(%error, revision = activation.revision, "cannot catch up the active index");
        }
    }

    /// Applies every revision committed after the index's, in order.
    pub async fn catch_up(&self) -> Result<()> {
        let _applying = self.applier.lock().await;
        self.catch_up_locked().await
    }

    async fn catch_up_locked(&self) -> Result<()> {
        for (revision, bundles) in self
            .repository
            .activations_since(self.index.revision())
            .await?
        {
            self.index.apply(revision, bundles);
        }
        Ok(())
    }

    /// Creates the next draft.
    pub async fn draft(
        &self,
        command: DraftCommand,
        context: &RequestContext,
        key: Option<IdempotencyKey>,
    ) -> Result<DraftOutcome> {
        let claim = claim("Draft", key, &command);
        self.repository
            .draft(command, context, claim.as_ref())
            .await
    }

    /// Discards a draft.
    pub async fn discard_draft(
        &self,
        command: DiscardCommand,
        context: &RequestContext,
    ) -> Result<VersionRecord> {
        self.repository.discard_draft(command, context).await
    }

    /// Publishes a draft, activating it when asked.
    pub async fn publish(
        &self,
        command: PublishCommand,
        context: &RequestContext,
        key: Option<IdempotencyKey>,
    ) -> Result<PublishOutcome> {
        let claim = claim("Publish", key, &command);
        let outcome = self
            .repository
            .publish(command, context, claim.as_ref(), &self.keys().signer)
            .await?;
        if let Some(activation) = &outcome.activation {
            self.applied(activation).await;
        }
        Ok(outcome)
    }

    /// Activates one or several policies atomically.
    pub async fn activate(
        &self,
        command: ActivateCommand,
        context: &RequestContext,
        key: Option<IdempotencyKey>,
    ) -> Result<ActivationOutcome> {
        let claim = claim("Activate", key, &command);
        let outcome = self
            .repository
            .activate(command, context, claim.as_ref())
            .await?;
        self.applied(&outcome).await;
        Ok(outcome)
    }

    /// Rolls a policy back.
    pub async fn rollback(
        &self,
        command: RollbackCommand,
        context: &RequestContext,
    ) -> Result<ActivationOutcome> {
        let outcome = self.repository.rollback(command, context).await?;
        self.applied(&outcome).await;
        Ok(outcome)
    }

    /// Sets or removes a schema.
    pub async fn set_schema(
        &self,
        command: SetSchemaCommand,
        context: &RequestContext,
    ) -> Result<(PolicySummary, Vec<SchemaViolation>)> {
        self.repository.set_schema(command, context).await
    }

    /// One version.
    pub async fn get_version(
        &self,
        policy: &PolicyRef,
        selector: &VersionSelector,
    ) -> Result<VersionRecord> {
        self.repository.get_version(policy, selector).await
    }

    /// A page of versions, newest first.
    pub async fn list_versions(
        &self,
        policy: &PolicyRef,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<VersionRecord>> {
        self.repository
            .list_versions(policy, page_size, page_token)
            .await
    }

    /// A page of policies.
    pub async fn list_policies(
        &self,
        scope: &NamespaceScope,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<PolicySummary>> {
        self.repository
            .list_policies(scope, page_size, page_token)
            .await
    }

    /// A page of events, newest first.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<EventRecord>> {
        self.repository
            .list_events(filter, page_size, page_token)
            .await
    }

    /// The RFC 6902 patch from one version's body to another's.
    pub async fn diff(
        &self,
        policy: &PolicyRef,
        from: u32,
        to: u32,
    ) -> Result<(VersionRecord, VersionRecord, json_patch::Patch)> {
        let from = self
            .get_version(policy, &VersionSelector::Number(from))
            .await?;
        let to = self
            .get_version(policy, &VersionSelector::Number(to))
            .await?;
        let patch = json_patch::diff(from.body.value(), to.body.value());
        Ok((from, to, patch))
    }

    /// The active bundle now (from memory), or as of a past revision or
    /// instant (from the event log).
    pub async fn get_active(
        &self,
        policy: &PolicyRef,
        as_of: Option<AsOf>,
        allow_draft_fallback: bool,
    ) -> Result<ActiveView> {
        if let Some(as_of) = as_of {
            if let AsOf::Revision(revision) = as_of {
                let current = self.index.revision();
                if revision > current {
                    return Err(Error::invalid(
                        "as_of_revision",
                        format!("revision {revision} is ahead of the current revision {current}"),
                    ));
                }
            }
            return match self.repository.active_as_of(policy, as_of).await? {
                Some(bundle) => Ok(ActiveView::Signed(bundle)),
                None => Err(Error::NotFound(format!(
                    "no version of {policy} was active at that point"
                ))),
            };
        }
        if let Some(indexed) = self.index.snapshot().get(policy) {
            return Ok(ActiveView::Signed(indexed.bundle.clone()));
        }
        // The rare path: tell a missing policy from one with nothing active.
        let draft = self.repository.open_draft(policy).await?;
        match draft {
            Some(draft) if allow_draft_fallback => Ok(ActiveView::UnsignedDraft(draft)),
            _ if allow_draft_fallback => Err(Error::NotFound(format!(
                "{policy} has no active version and no open draft"
            ))),
            _ => Err(Error::NotFound(format!(
                "{policy} has no active version (set allow_draft_fallback to get its open draft)"
            ))),
        }
    }

    /// The JWKS and the id of the key that signs new versions.
    pub fn signing_keys(&self) -> (Vec<Jwk>, String) {
        let keys = self.keys();
        (keys.jwks.clone(), keys.signer.kid().to_owned())
    }
}
