//! Rollouts (docs/src/contributing/design.md#runtimes-and-rollouts): starting
//! one, an operator's controls, and the controller's decisions, each one
//! transaction that re-reads the rollout under its row lock, lets the domain
//! decide and applies what runtimes are now sent to the index.

use crate::domain::rollout::{
    self, RevisionChange, Rollout, RolloutState, RolloutView, StartRolloutCommand, Tick,
};
use crate::domain::{
    Error, EventKind, ExpectedActive, IdempotencyKey, Namespace, PointerChange, PolicyRef,
    RequestContext, Result, VersionRecord, VersionSelector, lifecycle,
};
use crate::storage::{IdempotencyClaim, LockedPolicy, NewEvent, Term, Transaction};

use super::PolicyHub;
use super::lifecycle::ensure_requirements;
use super::rego::BundleGuard;

/// What an operator asks of a live rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Halt: the cohort keeps what it has.
    Pause,
    /// Go on; the current step bakes again from now.
    Resume,
    /// Complete now.
    Promote,
    /// Stop; the cohort gets the stable versions again.
    Abort,
    /// One more approval.
    Approve,
}

impl Control {
    fn verb(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Promote => "promote",
            Control::Abort => "abort",
            Control::Approve => "approve",
        }
    }
}

/// Records one event per target of `rollout`.
async fn record(
    tx: &Transaction,
    context: &RequestContext,
    rollout: &Rollout,
    policies: &[LockedPolicy],
    kind: EventKind,
    revision: Option<u64>,
    reason: &str,
) -> Result<()> {
    for (policy, target) in policies.iter().zip(&rollout.targets) {
        let event = NewEvent {
            previous_version: target.stable_version,
            new_version: Some(target.version),
            revision,
            rollout_id: Some(&rollout.id),
            ..NewEvent::new(kind, reason)
        };
        tx.record_event(context, Some(policy), event).await?;
    }
    Ok(())
}

/// Locks the rollout's policies, in its target order.
async fn lock_targets(tx: &Transaction, rollout: &Rollout) -> Result<Vec<LockedPolicy>> {
    let names: Vec<&PolicyRef> = rollout.policies().collect();
    tx.lock_policies(&names).await
}

/// The controller halts the rollout for an operator, saying why.
async fn pause(
    tx: &Transaction,
    context: &RequestContext,
    rollout: &mut Rollout,
    why: String,
) -> Result<()> {
    rollout.pause_itself(why.clone());
    tx.save_rollout(rollout).await?;
    let policies = lock_targets(tx, rollout).await?;
    record(
        tx,
        context,
        rollout,
        &policies,
        EventKind::RolloutPaused,
        None,
        &why,
    )
    .await
}

/// The candidates become the active pointers: an ordinary activation under
/// a new revision, after which the rollout has ended.
async fn complete(
    tx: &Transaction,
    guard: BundleGuard<'_>,
    context: &RequestContext,
    rollout: &mut Rollout,
    reason: &str,
) -> Result<RevisionChange> {
    let mut policies = lock_targets(tx, rollout).await?;
    let mut versions: Vec<VersionRecord> = Vec::with_capacity(policies.len());
    for (policy, target) in policies.iter_mut().zip(&rollout.targets) {
        policy.state.rollout = None;
        let selector = VersionSelector::Number(target.version);
        versions.push(tx.version(policy, &selector).await?.record);
    }
    let changes: Vec<PointerChange<'_>> = policies
        .iter()
        .zip(&versions)
        .map(|(policy, target)| PointerChange {
            policy: &policy.state,
            target,
            expected: ExpectedActive::Any,
        })
        .collect();
    let plan = lifecycle::plan_activation(EventKind::Activated, &changes)?;
    guard.check(tx, &versions).await?;
    // The policies it requires may have moved since the start. Nothing is
    // written before both checks, so a refusal leaves the rollout as it was.
    let moves: Vec<_> = policies.iter().zip(&versions).collect();
    ensure_requirements(tx, &moves).await?;
    tx.hold_policies(&policies, None).await?;
    let why = format!("rollout {} completed: {reason}", rollout.id);
    let outcome = tx
        .move_pointers(context, EventKind::Activated, &why, &moves, plan)
        .await?;
    rollout.halt(RolloutState::Completed, String::new());
    tx.save_rollout(rollout).await?;
    let revision = Some(outcome.revision);
    record(
        tx,
        context,
        rollout,
        &policies,
        EventKind::RolloutCompleted,
        revision,
        reason,
    )
    .await?;
    Ok(RevisionChange {
        revision: outcome.revision,
        bundles: outcome.changed,
        rollouts: vec![ended(rollout)],
    })
}

/// The rollout ends without completing: every runtime watching its
/// policies is sent the stable bundles again under a new revision.
async fn end(
    tx: &Transaction,
    context: &RequestContext,
    rollout: &mut Rollout,
    state: RolloutState,
    because: String,
) -> Result<RevisionChange> {
    let policies = lock_targets(tx, rollout).await?;
    tx.hold_policies(&policies, None).await?;
    let revision = tx.take_revision().await?;
    let bundles = tx.stable_bundles(&policies, revision).await?;
    let kind = match state {
        RolloutState::RolledBack => EventKind::RolloutRolledBack,
        _ => EventKind::RolloutAborted,
    };
    rollout.halt(state, because);
    tx.save_rollout(rollout).await?;
    let reason = rollout.halted_because.clone();
    record(
        tx,
        context,
        rollout,
        &policies,
        kind,
        Some(revision),
        &reason,
    )
    .await?;
    Ok(RevisionChange {
        revision,
        bundles,
        rollouts: vec![ended(rollout)],
    })
}

/// The first step begins: a new revision, and its cohort gets the
/// candidates.
async fn begin(
    tx: &Transaction,
    context: &RequestContext,
    rollout: &mut Rollout,
    reason: &str,
) -> Result<RevisionChange> {
    let policies = lock_targets(tx, rollout).await?;
    let revision = tx.take_revision().await?;
    rollout.begin(revision, tx.at());
    tx.save_rollout(rollout).await?;
    let kind = EventKind::RolloutStarted;
    record(
        tx,
        context,
        rollout,
        &policies,
        kind,
        Some(revision),
        reason,
    )
    .await?;
    Ok(RevisionChange {
        revision,
        bundles: Vec::new(),
        rollouts: vec![tx.rollout_view(rollout.clone()).await?],
    })
}

/// The view of an ended rollout: the index drops its candidates.
fn ended(rollout: &Rollout) -> RolloutView {
    RolloutView {
        rollout: rollout.clone(),
        candidates: Vec::new(),
    }
}

impl PolicyHub {
    /// Starts a rollout: validates and pins its targets, holds its
    /// policies, and sends the first step's cohort the candidates.
    #[tracing::instrument(name = "hub.start_rollout", skip_all)]
    pub async fn start_rollout(
        &self,
        command: StartRolloutCommand,
        context: &RequestContext,
        key: Option<IdempotencyKey>,
    ) -> Result<Rollout> {
        rollout::validate_plan(&command.steps, &command.failure_rule)?;
        rollout::validate_start(command.start_at, chrono::Utc::now())?;
        let claim = IdempotencyClaim::new("StartRollout", key, &command);
        // A retry gets the first outcome before Prometheus is asked again:
        // the rollout started, whatever Prometheus says now.
        if let Some(started) = self.repository.replayed(claim.as_ref()).await? {
            return Ok(started);
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.check_analyses(&command, &id).await?;
        let targets: Vec<_> = command
            .targets
            .iter()
            .map(|(name, selector, _)| (name, selector))
            .collect();
        // A retry was answered above.
        let impact = self
            .judge_targets(&command.namespace, &targets, "rolling out", None)
            .await?;
        // The reply counts the first step's cohort.
        self.fleet.prepare(&command.namespace).await?;
        let mut change = None;
        let mut counting = None;
        let started = self
            .repository
            .write_once("start_rollout", claim.as_ref(), context, async |tx| {
                tx.lock_namespaces([&command.namespace]).await?;
                let names: Vec<PolicyRef> = command
                    .targets
                    .iter()
                    .map(|(name, _, _)| PolicyRef {
                        namespace: command.namespace.clone(),
                        name: name.clone(),
                    })
                    .collect();
                let policies = tx.lock_policies(&names.iter().collect::<Vec<_>>()).await?;
                let mut versions = Vec::with_capacity(policies.len());
                for ((_, selector, _), policy) in command.targets.iter().zip(&policies) {
                    versions.push(tx.version(policy, selector).await?.record);
                }
                let changes: Vec<PointerChange<'_>> = policies
                    .iter()
                    .zip(&versions)
                    .zip(&command.targets)
                    .map(|((policy, target), (_, _, expected))| PointerChange {
                        policy: &policy.state,
                        target,
                        expected: *expected,
                    })
                    .collect();
                let targets = rollout::plan_targets(&changes)?;
                // The cohort runs the candidates beside everyone's stable
                // versions, and completion makes them active for all.
                let moves: Vec<_> = policies.iter().zip(&versions).collect();
                ensure_requirements(tx, &moves).await?;
                self.bundle_guard().check(tx, &versions).await?;
                let required = self
                    .rollout_settings
                    .required_approvals(command.namespace.as_str());
                let waiting = rollout::waiting_state(required, 0, command.start_at, tx.at());
                let mut started = Rollout {
                    id: id.clone(),
                    namespace: command.namespace.clone(),
                    targets,
                    steps: command.steps.clone(),
                    failure_rule: command.failure_rule,
                    auto_rollback: command.auto_rollback,
                    analyses: command.analyses.clone(),
                    state: waiting.unwrap_or(RolloutState::Scheduled),
                    step: 0,
                    step_revisions: Vec::new(),
                    step_started_at: tx.at(),
                    created_by: context.actor.clone(),
                    created_at: tx.at(),
                    reason: command.reason.clone(),
                    halted_because: String::new(),
                    self_paused: false,
                    start_at: command.start_at,
                    required_approvals: required,
                    approvals: Vec::new(),
                    impact: impact.clone(),
                };
                // Counted once the rollout may start: a refused one leaves
                // no tally behind.
                if waiting.is_none() {
                    counting = Some(self.fleet.count_ahead(&started));
                }
                tx.insert_rollout(&started).await?;
                tx.hold_policies(&policies, Some(&started.id)).await?;
                if waiting.is_some() {
                    let kind = EventKind::RolloutScheduled;
                    record(
                        tx,
                        context,
                        &started,
                        &policies,
                        kind,
                        None,
                        &command.reason,
                    )
                    .await?;
                } else {
                    change = Some(begin(tx, context, &mut started, &command.reason).await?);
                }
                Ok(started)
            })
            .await?;
        self.apply_counted(change, counting).await;
        Ok(started)
    }

    /// An operator's control of a live rollout.
    #[tracing::instrument(name = "hub.control_rollout", skip_all, fields(control = control.verb()))]
    pub async fn control_rollout(
        &self,
        namespace: &Namespace,
        id: &str,
        control: Control,
        reason: &str,
        context: &RequestContext,
    ) -> Result<Rollout> {
        use RolloutState::{Paused, PendingApproval, Running, Scheduled};
        // The reply counts the rollout's progress.
        self.fleet.prepare(namespace).await?;
        let mut change = None;
        let mut counting = None;
        let controlled = self
            .repository
            .write(&format!("{}_rollout", control.verb()), async |tx| {
                tx.lock_namespaces([namespace]).await?;
                let mut controlled = tx.lock_rollout(namespace, id).await?;
                let allowed: &[RolloutState] = match control {
                    Control::Pause => &[Running],
                    Control::Resume => &[Paused],
                    Control::Promote => &[Running, Paused],
                    Control::Abort => &[PendingApproval, Scheduled, Running, Paused],
                    Control::Approve => &[PendingApproval],
                };
                rollout::ensure_control(&controlled, control.verb(), allowed)?;
                let by = format!("{} by {}: {reason}", control.verb(), context.actor);
                match control {
                    Control::Pause | Control::Resume => {
                        let kind = if control == Control::Pause {
                            controlled.halt(Paused, by);
                            EventKind::RolloutPaused
                        } else {
                            controlled.resume(tx.at());
                            EventKind::RolloutResumed
                        };
                        tx.save_rollout(&controlled).await?;
                        let policies = lock_targets(tx, &controlled).await?;
                        record(tx, context, &controlled, &policies, kind, None, reason).await?;
                    }
                    Control::Promote => {
                        change = Some(
                            complete(tx, self.bundle_guard(), context, &mut controlled, reason)
                                .await?,
                        );
                    }
                    Control::Abort if !controlled.state.has_begun() => {
                        // Nothing was sent yet: the stable versions stand.
                        let policies = lock_targets(tx, &controlled).await?;
                        tx.hold_policies(&policies, None).await?;
                        controlled.halt(RolloutState::Aborted, by);
                        tx.save_rollout(&controlled).await?;
                        let kind = EventKind::RolloutAborted;
                        record(tx, context, &controlled, &policies, kind, None, reason).await?;
                    }
                    Control::Abort => {
                        let state = RolloutState::Aborted;
                        change = Some(end(tx, context, &mut controlled, state, by).await?);
                    }
                    Control::Approve => {
                        controlled.approve(&context.actor, tx.at())?;
                        let waiting = rollout::waiting_state(
                            controlled.required_approvals,
                            controlled.approvals.len(),
                            controlled.start_at,
                            tx.at(),
                        );
                        if let Some(state) = waiting {
                            controlled.state = state;
                        }
                        tx.save_rollout(&controlled).await?;
                        let policies = lock_targets(tx, &controlled).await?;
                        let kind = EventKind::RolloutApproved;
                        record(tx, context, &controlled, &policies, kind, None, reason).await?;
                        if waiting.is_none() {
                            counting = Some(self.fleet.count_ahead(&controlled));
                            change = Some(begin(tx, context, &mut controlled, reason).await?);
                        }
                    }
                }
                Ok(controlled)
            })
            .await?;
        self.apply_counted(change, counting).await;
        Ok(controlled)
    }

    /// Applies a rollout's committed `change` once `counting`, the count of
    /// the step it begins, is done: the streams the change wakes would
    /// share the cores with the count the reply waits for.
    async fn apply_counted(
        &self,
        change: Option<RevisionChange>,
        counting: Option<tokio::task::JoinHandle<()>>,
    ) {
        if let Some(counting) = counting {
            // A count that failed is made again by the reply's read.
            let _ = counting.await;
        }
        if let Some(change) = change {
            self.applied(change).await;
        }
    }

    /// The rollouts that have not ended, for the controller.
    pub async fn live_rollouts(&self) -> Result<Vec<Rollout>> {
        self.repository.live_rollouts().await
    }

    /// Runs `work` as the leader of `key`'s role unless another replica
    /// leads it now (see `Repository::exclusively`).
    pub async fn exclusively(
        &self,
        key: i64,
        work: impl AsyncFnOnce(&Term) -> Result<()>,
    ) -> Result<()> {
        self.repository.exclusively(key, work).await
    }

    /// Carries out a controller decision about `seen`, unless the rollout
    /// moved since (another replica's controller, or an operator, acted
    /// first): the decision is re-checked under the rollout's row lock.
    #[tracing::instrument(name = "hub.drive_rollout", skip_all)]
    pub async fn drive_rollout(&self, seen: &Rollout, decision: Tick) -> Result<()> {
        let context = RequestContext {
            actor: "system:rollout-controller".into(),
            request_id: format!("rollout-{}", seen.id),
        };
        let mut change = None;
        self.repository
            .write("drive_rollout", async |tx| {
                tx.lock_namespaces([&seen.namespace]).await?;
                let mut current = tx.lock_rollout(&seen.namespace, &seen.id).await?;
                if current.state != seen.state || current.step != seen.step {
                    return Ok(());
                }
                change = match decision {
                    Tick::Wait => None,
                    Tick::Begin => {
                        Some(begin(tx, &context, &mut current, "its start time came").await?)
                    }
                    Tick::Advance => {
                        let revision = tx.take_revision().await?;
                        current.advance(revision, tx.at());
                        tx.save_rollout(&current).await?;
                        let policies = lock_targets(tx, &current).await?;
                        let reason =
                            format!("step {} of {}", current.step + 1, current.steps.len());
                        let kind = EventKind::RolloutAdvanced;
                        record(
                            tx,
                            &context,
                            &current,
                            &policies,
                            kind,
                            Some(revision),
                            &reason,
                        )
                        .await?;
                        Some(RevisionChange {
                            revision,
                            bundles: Vec::new(),
                            rollouts: vec![tx.rollout_view(current.clone()).await?],
                        })
                    }
                    Tick::Complete => {
                        match complete(
                            tx,
                            self.bundle_guard(),
                            &context,
                            &mut current,
                            "every step baked",
                        )
                        .await
                        {
                            // A requirement moved out of range meanwhile:
                            // the rollout waits for an operator.
                            Err(Error::FailedPrecondition { message, .. }) => {
                                pause(tx, &context, &mut current, message).await?;
                                None
                            }
                            completed => Some(completed?),
                        }
                    }
                    Tick::Fail(why) if current.auto_rollback => {
                        let state = RolloutState::RolledBack;
                        Some(end(tx, &context, &mut current, state, why).await?)
                    }
                    Tick::Fail(why) | Tick::Pause(why) => {
                        pause(tx, &context, &mut current, why).await?;
                        None
                    }
                };
                Ok(())
            })
            .await?;
        if let Some(change) = change {
            self.applied(change).await;
        }
        Ok(())
    }
}
