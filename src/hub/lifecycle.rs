//! The lifecycle operations (docs/src/contributing/design.md#domain), each
//! one transaction: load what the request touches, let the domain decide,
//! sign, write, and apply what moved to the index before the reply goes out.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{
    ActivateCommand, ActivationOutcome, DiscardCommand, DraftCommand, DraftOutcome, Error,
    EventKind, ExpectedActive, IdempotencyKey, Label, Namespace, PointerChange, PolicyBody,
    PolicyRef, PolicySchema, PolicySummary, Publication, PublishCommand, PublishOutcome,
    PublishPlan, RequestContext, Requirement, Result, RollbackCommand, SchemaViolation,
    SetSchemaCommand, VersionRecord, VersionSelector, VersionState, ensure_acyclic,
    ensure_met_after, ensure_satisfiable, lifecycle,
};
use crate::signing::{self, SigningKey};
use crate::storage::{
    IdempotencyClaim, KeyUse, LockedPolicy, NewEvent, StoredVersion, Transaction,
};

use super::PolicyHub;

impl PolicyHub {
    /// Creates the next draft; supersedes the open one.
    #[tracing::instrument(name = "hub.draft", skip_all)]
    pub async fn draft(
        &self,
        command: DraftCommand,
        context: &RequestContext,
        key: Option<IdempotencyKey>,
    ) -> Result<DraftOutcome> {
        self.check_rego(&command.policy.namespace, &command.body)?;
        let claim = IdempotencyClaim::new("Draft", key, &command);
        self.repository
            .write_once("draft", claim.as_ref(), context, async |tx| {
                // Only a draft with requirements adds edges to the graph, so
                // only such a draft can close a cycle; one without removes
                // edges at most, which cannot make another's check wrong.
                if !command.requirements.is_empty() {
                    tx.lock_namespaces([&command.policy.namespace]).await?;
                }
                let policy = tx.lock_or_create_policy(&command.policy).await?;
                if !command.requirements.is_empty() {
                    let graph = tx.requirement_graph(&command.policy.namespace).await?;
                    ensure_acyclic(&command.policy.name, &command.requirements, &graph)?;
                }
                let notes = command.change_notes;
                new_draft(
                    tx,
                    context,
                    &policy,
                    command.body,
                    notes,
                    command.requirements,
                )
                .await
            })
            .await
    }

    /// Discards a draft.
    #[tracing::instrument(name = "hub.discard_draft", skip_all)]
    pub async fn discard_draft(
        &self,
        command: DiscardCommand,
        context: &RequestContext,
    ) -> Result<VersionRecord> {
        self.repository
            .write("discard_draft", async |tx| {
                let policy = tx.lock_policy(&command.policy).await?;
                let found = tx.named_or_open_draft(&policy, command.version).await?;
                let draft = lifecycle::ensure_draft(&command.policy, found, "discard")?;
                lifecycle::ensure_transition(&draft.record, VersionState::Discarded, "discard")?;
                let discarded = tx
                    .finish_draft(draft, VersionState::Discarded, None)
                    .await?;
                let event = NewEvent {
                    new_version: Some(discarded.version),
                    ..NewEvent::new(EventKind::DraftDiscarded, &command.reason)
                };
                tx.record_event(context, Some(&policy), event).await?;
                Ok(discarded)
            })
            .await
    }

    /// Validates, signs and publishes a draft; activates it when asked.
    #[tracing::instrument(name = "hub.publish", skip_all)]
    pub async fn publish(
        &self,
        command: PublishCommand,
        context: &RequestContext,
        key: Option<IdempotencyKey>,
    ) -> Result<PublishOutcome> {
        let claim = IdempotencyClaim::new("Publish", key, &command);
        self.judge_publication(&command, claim.as_ref()).await?;
        let keys = self.keys();
        let outcome = self
            .repository
            .write_once("publish", claim.as_ref(), context, async |tx| {
                tx.lock_signing_keys(&[(keys.signer.key_id(), KeyUse::Signs)])
                    .await?;
                if command.activate {
                    tx.lock_namespaces([&command.policy.namespace]).await?;
                }
                let policy = tx.lock_policy(&command.policy).await?;
                let found = tx.named_or_open_draft(&policy, command.version).await?;
                let draft = lifecycle::ensure_draft(&command.policy, found, "publish")?;
                let released = match &command.label {
                    Some(label) => tx
                        .find_version(&policy, &VersionSelector::Label(label.clone()))
                        .await?
                        .map(|released| released.record),
                    None => None,
                };
                let plan = lifecycle::plan_publish(
                    &policy.state,
                    &draft.record,
                    command.label.as_ref(),
                    released,
                )?;
                let (version, already_published) = match plan {
                    PublishPlan::AlreadyReleased(released) => (*released, true),
                    PublishPlan::Release => {
                        let label = command.label.clone();
                        let reason = &command.reason;
                        let signer = &keys.signer;
                        let published = self
                            .release(tx, context, signer, &policy, draft, label, reason)
                            .await?;
                        (published, false)
                    }
                };
                let activation = if command.activate {
                    let expected = [command.expected_active_version].into_iter();
                    let (policies, versions) = ([policy], [version.clone()]);
                    let reason = &command.reason;
                    let kind = EventKind::Activated;
                    self.bundle_guard().check(tx, &versions).await?;
                    let activation =
                        move_to(tx, context, kind, reason, &policies, &versions, expected).await?;
                    self.prepare_opa_bundles(activation.revision, &activation.changed);
                    Some(activation)
                } else {
                    None
                };
                let active = version.active || activation.is_some();
                Ok(PublishOutcome {
                    version: VersionRecord { active, ..version },
                    already_published,
                    activation,
                })
            })
            .await?;
        if let Some(activation) = &outcome.activation {
            self.activated(activation).await;
        }
        Ok(outcome)
    }

    /// Moves the pointers of several policies under one revision, or none.
    #[tracing::instrument(name = "hub.activate", skip_all)]
    pub async fn activate(
        &self,
        command: ActivateCommand,
        context: &RequestContext,
        key: Option<IdempotencyKey>,
    ) -> Result<ActivationOutcome> {
        let claim = IdempotencyClaim::new("Activate", key, &command);
        let mut by_namespace: BTreeMap<&Namespace, Vec<_>> = BTreeMap::new();
        for target in &command.targets {
            by_namespace
                .entry(&target.policy.namespace)
                .or_default()
                .push((&target.policy.name, &target.version));
        }
        for (namespace, targets) in by_namespace {
            self.judge_targets(namespace, &targets, "activating", claim.as_ref())
                .await?;
        }
        // Every statement of an activation is on the direct SQLite connection.
        let outcome = self
            .repository
            .direct()
            .write_once("activate", claim.as_ref(), context, async |tx| {
                let names: Vec<_> = command
                    .targets
                    .iter()
                    .map(|target| &target.policy)
                    .collect();
                tx.lock_namespaces(names.iter().map(|name| &name.namespace))
                    .await?;
                let policies = tx.lock_policies(&names).await?;
                let mut versions = Vec::with_capacity(policies.len());
                for (target, policy) in command.targets.iter().zip(&policies) {
                    versions.push(tx.version(policy, &target.version).await?.record);
                }
                let expected = command
                    .targets
                    .iter()
                    .map(|target| target.expected_active_version);
                self.bundle_guard().check(tx, &versions).await?;
                let activation = move_to(
                    tx,
                    context,
                    EventKind::Activated,
                    &command.reason,
                    &policies,
                    &versions,
                    expected,
                )
                .await?;
                self.prepare_opa_bundles(activation.revision, &activation.changed);
                Ok(activation)
            })
            .await?;
        self.activated(&outcome).await;
        Ok(outcome)
    }

    /// Returns the pointer to an older published version.
    ///
    /// With `restore`, the target is copied forward instead (a new version
    /// with its body and requirements, validated against today's schema,
    /// signed and activated, its change notes naming the source), and the
    /// version it was restored from comes back beside the activation.
    #[tracing::instrument(name = "hub.rollback", skip_all)]
    pub async fn rollback(
        &self,
        command: RollbackCommand,
        context: &RequestContext,
    ) -> Result<(ActivationOutcome, Option<u32>)> {
        let keys = self.keys();
        let outcome = self
            .repository
            .write("rollback", async |tx| {
                if command.restore {
                    tx.lock_signing_keys(&[(keys.signer.key_id(), KeyUse::Signs)])
                        .await?;
                }
                tx.lock_namespaces([&command.policy.namespace]).await?;
                let policy = tx.lock_policy(&command.policy).await?;
                policy.state.ensure_free("roll back")?;
                let target = lifecycle::rollback_target(
                    &command.policy,
                    policy.state.active_version(),
                    tx.previously_active(&policy).await?,
                    command.to_version,
                )?;
                let mut version = tx
                    .version(&policy, &VersionSelector::Number(target))
                    .await?
                    .record;
                let mut reason = command.reason.clone();
                if command.restore {
                    let signer = &keys.signer;
                    version = self
                        .restore(tx, context, signer, &policy, version, &command.reason)
                        .await?;
                    reason = format!(
                        "restored version {target} as version {}: {reason}",
                        version.version
                    );
                }
                let expected = [command.expected_active_version].into_iter();
                let kind = EventKind::RolledBack;
                let (policies, versions) = ([policy], [version]);
                self.bundle_guard().check(tx, &versions).await?;
                let activation =
                    move_to(tx, context, kind, &reason, &policies, &versions, expected).await?;
                self.prepare_opa_bundles(activation.revision, &activation.changed);
                Ok((activation, command.restore.then_some(target)))
            })
            .await?;
        self.activated(&outcome.0).await;
        Ok(outcome)
    }

    /// Copies published `source` forward as the policy's next version: its
    /// body and requirements, validated against today's schema, signed and
    /// published; the change notes name the source.
    async fn restore(
        &self,
        tx: &Transaction,
        context: &RequestContext,
        signer: &SigningKey,
        policy: &LockedPolicy,
        source: VersionRecord,
        reason: &str,
    ) -> Result<VersionRecord> {
        let from = source.version;
        if source.publication.is_none() {
            return Err(Error::precondition(format!(
                "cannot restore version {from} of {}: it was never published",
                source.policy
            )));
        }
        // The copy adds the source's requirement edges back to the graph,
        // which may have changed since: judged as a draft is (the rollback
        // holds the namespace's lock).
        if !source.requirements.is_empty() {
            let graph = tx.requirement_graph(&source.policy.namespace).await?;
            ensure_acyclic(&source.policy.name, &source.requirements, &graph)?;
        }
        let notes = format!("Restored from version {from}: {reason}");
        let drafted = new_draft(tx, context, policy, source.body, notes, source.requirements)
            .await?
            .version;
        let draft = tx
            .version(policy, &VersionSelector::Number(drafted.version))
            .await?;
        if let PublishPlan::AlreadyReleased(_) =
            lifecycle::plan_publish(&policy.state, &draft.record, None, None)?
        {
            return Err(Error::Internal(
                "a restored version was already released".into(),
            ));
        }
        let reason = format!("restored from version {from}");
        self.release(tx, context, signer, policy, draft, None, &reason)
            .await
    }

    /// Sets or removes a schema; reports how the active version fares.
    #[tracing::instrument(name = "hub.set_schema", skip_all)]
    pub async fn set_schema(
        &self,
        command: SetSchemaCommand,
        context: &RequestContext,
    ) -> Result<(PolicySummary, Vec<SchemaViolation>)> {
        self.repository
            .write("set_schema", async |tx| {
                let mut policy = tx.lock_or_create_policy(&command.policy).await?;
                tx.set_schema(&mut policy, command.schema).await?;
                let event = NewEvent::new(EventKind::SchemaSet, &command.reason);
                tx.record_event(context, Some(&policy), event).await?;
                let violations = match (&policy.state.schema, policy.state.active_version()) {
                    (Some(schema), Some(active)) => {
                        let active = tx
                            .version(&policy, &VersionSelector::Number(active))
                            .await?;
                        schema.violations(&active.record.body)
                    }
                    _ => Vec::new(),
                };
                Ok((tx.summary(&command.policy).await?, violations))
            })
            .await
    }

    /// The published versions and the open draft of `policy` that
    /// `schema` would reject, newest first, each with its violations;
    /// changes nothing. None without a schema.
    #[tracing::instrument(name = "hub.schema_rejections", skip_all)]
    pub async fn schema_rejections(
        &self,
        policy: &PolicyRef,
        schema: Option<&PolicySchema>,
    ) -> Result<Vec<(VersionRecord, Vec<SchemaViolation>)>> {
        let mut rejected = Vec::new();
        let Some(schema) = schema else {
            return Ok(rejected);
        };
        let mut page_token = String::new();
        loop {
            let page = match self
                .repository
                .list_versions(policy, 500, &page_token)
                .await
            {
                Ok(page) => page,
                // A policy yet to be created has no version to reject.
                Err(Error::NotFound(_)) => return Ok(rejected),
                Err(error) => return Err(error),
            };
            for version in page.items {
                if matches!(version.state, VersionState::Published | VersionState::Draft) {
                    let violations = schema.violations(&version.body);
                    if !violations.is_empty() {
                        rejected.push((version, violations));
                    }
                }
            }
            match page.next_page_token {
                Some(next) => page_token = next,
                None => return Ok(rejected),
            }
        }
    }
}

impl PolicyHub {
    /// Signs `draft`, which the domain planned to release, and stores it as
    /// PUBLISHED under `label`, with its event; refused when nothing
    /// published meets one of its requirements.
    #[allow(clippy::too_many_arguments)]
    async fn release(
        &self,
        tx: &Transaction,
        context: &RequestContext,
        signer: &SigningKey,
        policy: &LockedPolicy,
        draft: StoredVersion,
        label: Option<Label>,
        reason: &str,
    ) -> Result<VersionRecord> {
        let requirements = &draft.record.requirements;
        let namespace = &policy.state.policy.namespace;
        // A draft written before its namespace was served to OPA was never
        // checked as Rego.
        self.check_rego(namespace, &draft.record.body)?;
        self.test_rego(namespace, &draft.record.body)?;
        let published = tx.published_labels(namespace, requirements).await?;
        ensure_satisfiable(requirements, &published)?;
        tx.ensure_signs(signer.key_id()).await?;
        let claims = signing::claims_for(
            &self.bundle_issuer,
            &policy.state.policy.to_string(),
            draft.record.version,
            label.as_ref().map(ToString::to_string),
            &draft.record.body,
            requirements,
            tx.at(),
        );
        let publication = Publication {
            published_by: context.actor.clone(),
            published_at: tx.at(),
            jws: signer.sign(&claims)?,
            key_id: signer.key_id().to_owned(),
        };
        let event = NewEvent {
            new_version: Some(draft.record.version),
            key_id: Some(publication.key_id.clone()),
            ..NewEvent::new(EventKind::Published, reason)
        };
        let published = tx
            .finish_draft(draft, VersionState::Published, Some((publication, label)))
            .await?;
        tx.record_event(context, Some(policy), event).await?;
        Ok(published)
    }
}

/// Stores the policy's next draft, superseding the open one, with its
/// events.
async fn new_draft(
    tx: &Transaction,
    context: &RequestContext,
    policy: &LockedPolicy,
    body: PolicyBody,
    change_notes: String,
    requirements: Vec<Requirement>,
) -> Result<DraftOutcome> {
    let next = lifecycle::next_version(tx.latest_version(policy).await?);
    let superseded = match tx.open_draft(policy).await? {
        Some(open) => {
            let open = tx
                .finish_draft(open, VersionState::Superseded, None)
                .await?;
            let event = NewEvent {
                previous_version: Some(open.version),
                new_version: Some(next),
                ..NewEvent::new(EventKind::DraftSuperseded, "superseded by a newer draft")
            };
            tx.record_event(context, Some(policy), event).await?;
            Some(open.version)
        }
        None => None,
    };
    let draft = VersionRecord {
        policy: policy.state.policy.clone(),
        version: next,
        state: VersionState::Draft,
        body,
        label: None,
        change_notes,
        created_by: context.actor.clone(),
        created_at: tx.at(),
        publication: None,
        active: false,
        requirements,
    };
    tx.insert_draft(policy, &draft).await?;
    let event = NewEvent {
        previous_version: superseded,
        new_version: Some(next),
        ..NewEvent::new(EventKind::DraftCreated, &draft.change_notes)
    };
    tx.record_event(context, Some(policy), event).await?;
    Ok(DraftOutcome {
        version: draft,
        superseded_version: superseded,
    })
}

/// Plans and writes the moves of `policies` to `versions`, in order.
pub(super) async fn move_to(
    tx: &mut Transaction,
    context: &RequestContext,
    kind: EventKind,
    reason: &str,
    policies: &[LockedPolicy],
    versions: &[VersionRecord],
    expected: impl Iterator<Item = ExpectedActive>,
) -> Result<ActivationOutcome> {
    let changes: Vec<PointerChange<'_>> = policies
        .iter()
        .zip(versions)
        .zip(expected)
        .map(|((policy, target), expected)| PointerChange {
            policy: &policy.state,
            target,
            expected,
        })
        .collect();
    let plan = lifecycle::plan_activation(kind, &changes)?;
    let changes: Vec<_> = policies.iter().zip(versions).collect();
    ensure_requirements(tx, &changes).await?;
    tx.move_pointers(context, kind, reason, &changes, plan)
        .await
}

/// Refuses moving `changes`' pointers when an active version's requirement
/// would be unmet afterwards, judging each namespace's active versions
/// after the whole change. The transaction holds those namespaces' locks,
/// so no other activation can change what this judges before it commits.
pub(super) async fn ensure_requirements(
    tx: &Transaction,
    changes: &[(&LockedPolicy, &VersionRecord)],
) -> Result<()> {
    let namespaces: BTreeSet<&Namespace> = changes
        .iter()
        .map(|(_, version)| &version.policy.namespace)
        .collect();
    for namespace in namespaces {
        let targets: Vec<&VersionRecord> = changes
            .iter()
            .map(|(_, version)| *version)
            .filter(|version| &version.policy.namespace == namespace)
            .collect();
        ensure_met_after(namespace, tx.active_releases(namespace).await?, &targets)?;
    }
    Ok(())
}
