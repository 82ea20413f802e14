//! What the subscription holds between sessions, and its decisions: the
//! state in force and the one before, where to resume, the keys, the
//! cache, the reports not yet sent and the checkpoint's freshness.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use tonic::Code;

use super::connection::{Client, EventSink, Failure, Gone, fetch_keys};
use super::reporter::Reporter;
use crate::bundle::{self, Envelope, Jwks};
use crate::cache::Cache;
use crate::checkpoint::{Freshness, verify_checkpoint};
use crate::event::{Event, Validate};
use crate::proto::{
    self, ApplyState, Bundle, PolicyApplyStatus, ReportStatusRequest, WatchEventKind,
};
use crate::revoke::{Revocation, RevokeError};
use crate::state::{Revision, Source, State, VerifiedBundle};
use crate::subscription::Subscription;
use crate::tree::{Judgement, Remembered, RestoreProof, TreeHead, verify_note};

mod history;

/// What the subscription holds between sessions.
pub(super) struct SubscriptionState {
    /// The state in force.
    applied: State,
    /// The state in force before it, received in this run: what a
    /// revocation restores.
    previous: Option<State>,
    /// The newest revision applied or rejected: where to resume.
    pub(super) decided: u64,
    /// The keys that verify bundles; fetched from the server, never taken
    /// from the stream.
    pub(super) jwks: Jwks,
    /// The ids of the revoked keys, fetched with the keys: whatever they
    /// sign is refused, a replayed message and a cached state included.
    revoked: BTreeSet<String>,
    cache: Option<Cache>,
    /// Outcomes not yet reported, by policy, and their revision.
    pending_reports: BTreeMap<String, PolicyApplyStatus>,
    pending_revision: u64,
    /// The server's newest checkpoint, and whether it grew stale.
    pub(super) freshness: Freshness,
    /// The server's log's tree as verified last.
    tree: Remembered,
    /// The tree the cache remembers, verified once the keys are known.
    cached_tree: Option<String>,
}

impl SubscriptionState {
    /// Starts from the cache when there is a good one, and says so.
    pub(super) async fn start<F>(
        subscription: &Subscription,
        sink: &mut EventSink<F>,
    ) -> Result<Self, Gone>
    where
        F: Validate,
    {
        let cache = subscription
            .cache_dir
            .as_ref()
            .map(|dir| Cache::new(dir, &subscription.namespace, &subscription.names));
        let mut subscription_state = SubscriptionState {
            applied: State {
                namespace: subscription.namespace.clone(),
                ..State::default()
            },
            previous: None,
            decided: 0,
            jwks: Jwks::default(),
            revoked: BTreeSet::new(),
            cache,
            pending_reports: BTreeMap::new(),
            pending_revision: 0,
            freshness: Freshness::new(subscription.max_checkpoint_age),
            tree: Remembered {
                origin: subscription.log_origin.clone(),
                head: None,
                witnesses: subscription.witnesses.clone(),
                cosignatures: subscription.cosignatures,
                restored_through: None,
            },
            cached_tree: None,
        };
        let Some(cache) = &subscription_state.cache else {
            return Ok(subscription_state);
        };
        subscription_state.cached_tree = cache.load_tree().await.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the cached tree of the server's log");
            None
        });
        subscription_state.tree.restored_through =
            cache.load_restore().await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the cached restore of the server's log");
                None
            });
        let event = match cache.load().await {
            Ok(None) => return Ok(subscription_state),
            Ok(Some((state, jwks, revoked))) => match sink.validate.validate(&state).await {
                Ok(()) => {
                    tracing::info!(
                        revision = state.revision,
                        policies = state.bundles.len(),
                        path = %cache.path().display(),
                        "started from the cached state (verified again) until the server answers"
                    );
                    subscription_state.decided = state.revision;
                    subscription_state.applied = state.clone();
                    subscription_state.jwks = jwks;
                    subscription_state.revoked = revoked;
                    Event::FromCache(state)
                }
                Err(reason) => {
                    tracing::warn!(%reason, "the application refused the cached state");
                    Event::Rejected {
                        revision: state.revision,
                        reason: format!("the cached state was refused: {reason}"),
                    }
                }
            },
            Err(reason) => {
                tracing::error!(
                    path = %cache.path().display(),
                    %reason,
                    "refusing the cached state; starting without one"
                );
                Event::Rejected {
                    revision: 0,
                    reason: format!("the cached state does not verify: {reason}"),
                }
            }
        };
        sink.emit(event).await?;
        Ok(subscription_state)
    }

    /// Fetches the keys again. A revocation learned that concerns the
    /// state in force is written to the cache at once, so that the cached
    /// state it signed is not served again.
    pub(super) async fn refresh_keys(&mut self, client: &mut Client) -> Result<(), Failure> {
        let (jwks, revoked) = fetch_keys(client).await?;
        self.jwks = jwks;
        let learned: Vec<&String> = revoked.difference(&self.revoked).collect();
        if !learned.is_empty() {
            tracing::warn!(revoked = ?learned, "the server revoked signing keys");
        }
        let concerns_state = self
            .applied
            .bundles
            .values()
            .any(|held| learned.contains(&&held.key_id));
        self.revoked = revoked;
        if concerns_state {
            self.save(&self.applied).await;
        }
        Ok(())
    }

    /// The first of `bundles` signed by a revoked key, with the reason to
    /// refuse it. The session does not take the checkpoint of a message
    /// that carries one: an old message replayed carries an old checkpoint,
    /// which the revoked key may have signed too.
    pub(super) fn signed_by_revoked(&self, bundles: &[Bundle]) -> Option<String> {
        bundles.iter().find_map(|bundle| {
            let kid = bundle::key_id(&bundle.jws).ok()?;
            self.revoked.contains(&kid).then(|| {
                format!(
                    "{} version {} is {}",
                    bundle.name,
                    bundle.version,
                    revoked_key(&kid)
                )
            })
        })
    }

    /// Whether `revision` carries a version held in force signed by
    /// another key: the sign that the key which signed it may have been
    /// revoked, which the keys, fetched again, tell.
    fn re_signs_held(&self, revision: &Revision) -> bool {
        revision.bundles.iter().any(|bundle| {
            self.applied.bundles.get(&bundle.name).is_some_and(|held| {
                held.version == bundle.version
                    && held.digest == bundle.digest
                    && bundle::key_id(&bundle.jws).is_ok_and(|kid| kid != held.key_id)
            })
        })
    }

    /// Verifies one bundle of the stream; a key unknown to the JWKS makes
    /// it fetch the JWKS once more, a revoked one refuses it.
    async fn verify(
        &mut self,
        bundle: &Bundle,
        client: &mut Client,
        subscription: &Subscription,
    ) -> Result<VerifiedBundle, String> {
        let kid = bundle::key_id(&bundle.jws).map_err(|error| error.to_string())?;
        if !self.jwks.knows(&kid) && !self.revoked.contains(&kid) {
            let _ = self.refresh_keys(client).await;
        }
        if self.revoked.contains(&kid) {
            return Err(revoked_key(&kid));
        }
        if !subscription.names.is_empty() && !subscription.names.contains(&bundle.name) {
            return Err(format!(
                "{}/{} was not asked for",
                subscription.namespace, bundle.name
            ));
        }
        let envelope = Envelope {
            namespace: &subscription.namespace,
            name: &bundle.name,
            version: bundle.version,
            digest: &bundle.digest,
        };
        let claims = bundle::verify_envelope(&bundle.jws, &envelope, &self.jwks)?;
        Ok(VerifiedBundle {
            name: bundle.name.clone(),
            version: claims.ver,
            label: claims.label,
            digest: claims.digest,
            revision: bundle.revision,
            key_id: bundle.key_id.clone(),
            body: claims.body,
            jws: bundle.jws.clone(),
        })
    }

    /// Applies or rejects one whole revision; what the application is told,
    /// if anything (heartbeats and stale states tell it nothing).
    pub(super) async fn decide<F>(
        &mut self,
        revision: Revision,
        client: &mut Client,
        subscription: &Subscription,
        validate: &mut F,
    ) -> Option<Event>
    where
        F: Validate,
    {
        let is_snapshot = match revision.kind {
            WatchEventKind::Snapshot => true,
            WatchEventKind::Update => false,
            _ => {
                // A heartbeat: the cursor moves, nothing changes.
                self.decided = self.decided.max(revision.revision);
                return None;
            }
        };
        if self.is_stale(&revision) {
            if let Some(reason) = self.signed_by_revoked(&revision.bundles) {
                // Harmless as an old message, but someone sends what a
                // revoked key signed: said, though nothing changes.
                tracing::warn!(revision = revision.revision, %reason, "refused an old state");
                return Some(Event::Rejected {
                    revision: revision.revision,
                    reason,
                });
            }
            tracing::warn!(
                revision = revision.revision,
                applied = self.applied.revision,
                "ignoring a state not newer than the one applied"
            );
            return None;
        }
        if !is_snapshot && revision.bundles.is_empty() {
            self.decided = self.decided.max(revision.revision);
            return None;
        }
        if self.re_signs_held(&revision)
            && let Err(error) = self.refresh_keys(client).await
        {
            tracing::warn!(reason = %error.reason(), "cannot fetch the signing keys again");
        }
        let mut verified = Vec::with_capacity(revision.bundles.len());
        let mut failures = Vec::new();
        for bundle in &revision.bundles {
            match self.verify(bundle, client, subscription).await {
                Ok(good) => verified.push(good),
                Err(reason) => failures.push((bundle, reason)),
            }
        }
        let rejected_because = if failures.is_empty() {
            let mut candidate = if is_snapshot {
                State {
                    namespace: subscription.namespace.clone(),
                    ..State::default()
                }
            } else {
                self.applied.clone()
            };
            candidate.revision = revision.revision;
            candidate.source = Source::Server;
            candidate.verified_at = SystemTime::now();
            for bundle in verified {
                candidate.bundles.insert(bundle.name.clone(), bundle);
            }
            match validate.validate(&candidate).await {
                Ok(()) => {
                    self.report(&revision, ApplyState::Applied, |_| String::new());
                    self.save(&candidate).await;
                    let before = std::mem::replace(&mut self.applied, candidate);
                    self.previous = (before.revision > 0).then_some(before);
                    None
                }
                Err(reason) => Some(reason),
            }
        } else {
            let (bad, reason) = &failures[0];
            Some(format!(
                "{}/{} version {} does not verify: {reason}",
                subscription.namespace, bad.name, bad.version
            ))
        };
        // A reset snapshot is the whole of a server behind the cursor (one
        // restored from a backup): its revision is the cursor from now on,
        // or what that server takes up to the old cursor would never be
        // sent on a resume.
        self.decided = if revision.reset {
            revision.revision
        } else {
            self.decided.max(revision.revision)
        };
        let Some(reason) = rejected_because else {
            return Some(Event::Applied(self.applied.clone()));
        };
        {
            tracing::warn!(
                revision = revision.revision,
                %reason,
                "rejected a state; the previous one stays in force"
            );
            let failed: BTreeMap<&str, &str> = failures
                .iter()
                .map(|(bundle, reason)| (bundle.name.as_str(), reason.as_str()))
                .collect();
            self.report(&revision, ApplyState::Rejected, |name| {
                match failed.get(name) {
                    Some(own) => format!("does not verify: {own}"),
                    None => reason.clone(),
                }
            });
        }
        Some(Event::Rejected {
            revision: revision.revision,
            reason,
        })
    }

    /// Whether `revision` brings nothing newer than the state in force: an
    /// older revision, or the server's own revision in force again (a
    /// message replayed). A reset (a server behind the cursor) is new, and
    /// so is the server's state at the revision of one read from the cache.
    fn is_stale(&self, revision: &Revision) -> bool {
        let again = revision.revision == self.applied.revision
            && self.applied.revision > 0
            && self.applied.source == Source::Server;
        (revision.revision < self.applied.revision || again) && !revision.reset
    }

    /// Keeps `state` as the last-known-good one.
    async fn save(&self, state: &State) {
        if let Some(cache) = &self.cache
            && let Err(error) = cache.save(state, &self.jwks, &self.revoked).await
        {
            tracing::warn!(%error, path = %cache.path().display(), "cannot write the cache");
        }
    }

    /// Answers a revocation, and says what it changed.
    pub(super) async fn revoke<F>(
        &mut self,
        request: Revocation,
        sink: &EventSink<F>,
    ) -> Result<(), Gone>
    where
        F: Validate,
    {
        let Revocation {
            revision,
            reason,
            reply,
        } = request;
        let restored = self.take_back(revision, &reason).await;
        let event = restored.as_ref().ok().map(|state| Event::Revoked {
            revision,
            reason,
            restored: state.clone(),
        });
        // The caller may have given up waiting; the revocation stands.
        let _ = reply.send(restored);
        match event {
            Some(event) => sink.emit(event).await,
            None => Ok(()),
        }
    }

    /// Puts the state before the one in force back, reporting what it
    /// brought REJECTED; the state restored.
    async fn take_back(&mut self, revision: u64, reason: &str) -> Result<State, RevokeError> {
        if revision != self.applied.revision {
            return Err(RevokeError::NotInForce {
                asked: revision,
                held: self.applied.revision,
            });
        }
        let previous = self
            .previous
            .take()
            .ok_or(RevokeError::NothingToRestore(revision))?;
        let error: String = reason.chars().take(1000).collect();
        for bundle in self.applied.bundles.values() {
            let kept = previous
                .bundles
                .get(&bundle.name)
                .is_some_and(|before| before.version == bundle.version);
            if !kept {
                self.pending_reports.insert(
                    bundle.name.clone(),
                    PolicyApplyStatus {
                        name: bundle.name.clone(),
                        version: bundle.version,
                        state: ApplyState::Rejected as i32,
                        error: error.clone(),
                        revision,
                    },
                );
            }
        }
        self.pending_revision = self.pending_revision.max(revision);
        tracing::warn!(
            revision,
            restored = previous.revision,
            %reason,
            "the application took back the state in force; the one before is in force again"
        );
        self.save(&previous).await;
        self.applied = previous;
        Ok(self.applied.clone())
    }

    /// Queues the outcome of every bundle of `revision`.
    fn report(&mut self, revision: &Revision, state: ApplyState, error: impl Fn(&str) -> String) {
        for bundle in &revision.bundles {
            self.pending_reports.insert(
                bundle.name.clone(),
                PolicyApplyStatus {
                    name: bundle.name.clone(),
                    version: bundle.version,
                    state: state as i32,
                    error: error(&bundle.name).chars().take(1000).collect(),
                    revision: revision.revision,
                },
            );
        }
        self.pending_revision = self.pending_revision.max(revision.revision);
    }

    /// Whether outcomes wait to be reported.
    pub(super) fn reports_pending(&self) -> bool {
        !self.pending_reports.is_empty()
    }

    /// Sends the queued outcomes; keeps them for the next try on failure.
    pub(super) async fn flush_reports(
        &mut self,
        reporter: &mut Reporter,
        subscription: &Subscription,
    ) {
        let Some(runtime) = &subscription.runtime else {
            self.pending_reports.clear();
            return;
        };
        if self.pending_reports.is_empty() {
            return;
        }
        let request = ReportStatusRequest {
            namespace: subscription.namespace.clone(),
            runtime_id: runtime.id.clone(),
            revision: self.pending_revision,
            policies: self.pending_reports.values().cloned().collect(),
        };
        match reporter.send(request).await {
            Ok(()) => self.pending_reports.clear(),
            Err(status) => tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "cannot report the applied state; retrying later"
            ),
        }
    }
}

/// Why a bundle signed by `kid`, a revoked key, is refused.
fn revoked_key(kid: &str) -> String {
    format!("signed by revoked key {kid:?}")
}
