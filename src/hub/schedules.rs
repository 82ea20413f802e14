//! Schedules: saving one (its targets pinned under the policies' locks),
//! an operator's controls, and the controller's firings, each one
//! transaction that re-reads the schedule under its row lock.

use chrono::SecondsFormat::Secs;

use crate::domain::schedule::{self, Entry, Firing, FiringOutcome, Schedule, SetScheduleCommand};
use crate::domain::{
    ActivationOutcome, Error, EventKind, ExpectedActive, Namespace, PolicyRef, RequestContext,
    Result, ScheduleName, VersionSelector,
};
use crate::storage::{NewEvent, Transaction};

use super::PolicyHub;
use super::lifecycle::move_to;
use super::rego::BundleGuard;

/// What an operator asks of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleControl {
    /// Stop firing.
    Pause,
    /// Fire again.
    Resume,
    /// Remove it; what it activated stays active.
    Delete,
}

impl ScheduleControl {
    fn verb(self) -> &'static str {
        match self {
            ScheduleControl::Pause => "pause",
            ScheduleControl::Resume => "resume",
            ScheduleControl::Delete => "delete",
        }
    }
}

/// `what`, and why when a reason was given.
fn because(what: String, reason: &str) -> String {
    match reason {
        "" => what,
        reason => format!("{what}: {reason}"),
    }
}

/// Records one event of `kind` per policy of `policies`.
async fn record(
    tx: &Transaction,
    context: &RequestContext,
    policies: &[&PolicyRef],
    kind: EventKind,
    reason: &str,
) -> Result<()> {
    for policy in tx.lock_policies(policies).await? {
        tx.record_event(context, Some(&policy), NewEvent::new(kind, reason))
            .await?;
    }
    Ok(())
}

/// Refuses a target naming a policy that does not exist as a bad field of
/// the request, not a missing resource: the request names the schedule,
/// which is there to be saved. `policies` are the command's, each once.
async fn ensure_policies_exist(
    tx: &Transaction,
    command: &SetScheduleCommand,
    policies: &[PolicyRef],
) -> Result<()> {
    for policy in policies {
        if tx.policy_exists(policy).await? {
            continue;
        }
        let field = command
            .entries
            .iter()
            .enumerate()
            .find_map(|(index, entry)| {
                let at = entry
                    .targets
                    .iter()
                    .position(|(name, _)| name == &policy.name)?;
                Some(format!("entries[{index}].targets[{at}]"))
            })
            .expect("every policy of the command is some entry's target");
        return Err(Error::invalid(
            field,
            format!("policy {policy} does not exist"),
        ));
    }
    Ok(())
}

/// What the events of `firing` of `schedule` say: the schedule, the entry,
/// its pattern and when it was due.
fn firing_reason(schedule: &Schedule, entry: &Entry, firing: &Firing) -> String {
    format!(
        "schedule {} entry {} ({} in {}) due at {}",
        schedule.name,
        entry.name,
        entry.cron,
        entry.time_zone,
        firing.at.to_rfc3339_opts(Secs, true)
    )
}

/// Records, for each policy of `outcome` whose version was already active,
/// that the firing moved nothing: an activation of what is active takes no
/// revision and writes no ACTIVATED event, and the log should still show
/// that the schedule fired. Says whether anything moved.
async fn record_unmoved(
    tx: &Transaction,
    context: &RequestContext,
    outcome: &ActivationOutcome,
    reason: &str,
) -> Result<FiringOutcome> {
    let unmoved: Vec<_> = outcome
        .activations
        .iter()
        .filter(|activation| activation.previous_version == Some(activation.version))
        .collect();
    let policies: Vec<&PolicyRef> = unmoved
        .iter()
        .map(|activation| &activation.policy)
        .collect();
    let locked = tx.lock_policies(&policies).await?;
    for (policy, activation) in locked.iter().zip(&unmoved) {
        let why = format!(
            "{reason}: version {} was already active, nothing moved",
            activation.version
        );
        let event = NewEvent {
            new_version: Some(activation.version),
            ..NewEvent::new(EventKind::ScheduleAlreadyActive, &why)
        };
        tx.record_event(context, Some(policy), event).await?;
    }
    Ok(if outcome.moved() {
        FiringOutcome::Applied
    } else {
        FiringOutcome::AlreadyActive
    })
}

/// A resume refused because the entry in force cannot be activated: the
/// refusal's own kind, saying what was being resumed.
fn not_resumed(schedule: &Schedule, entry: &Entry, error: Error) -> Error {
    match error {
        Error::FailedPrecondition {
            message,
            kind,
            violations,
        } => Error::FailedPrecondition {
            message: format!(
                "cannot resume schedule {}: its entry in force, {}, cannot be activated: {message}",
                schedule.name, entry.name
            ),
            kind,
            violations,
        },
        other => other,
    }
}

/// Activates what `entry` pins, as Activate would: one revision, the same
/// checks; a version whose digest moved is refused.
async fn activate(
    tx: &mut Transaction,
    guard: BundleGuard<'_>,
    context: &RequestContext,
    entry: &Entry,
    reason: &str,
) -> Result<ActivationOutcome> {
    let names: Vec<&PolicyRef> = entry.policies().collect();
    let policies = tx.lock_policies(&names).await?;
    let mut versions = Vec::with_capacity(policies.len());
    for (target, policy) in entry.targets.iter().zip(&policies) {
        let selector = VersionSelector::Number(target.version);
        let record = tx.version(policy, &selector).await?.record;
        schedule::ensure_pinned(target, &record)?;
        versions.push(record);
    }
    let expected = std::iter::repeat(ExpectedActive::Any);
    guard.check(tx, &versions).await?;
    move_to(
        tx,
        context,
        EventKind::Activated,
        reason,
        &policies,
        &versions,
        expected,
    )
    .await
}

impl PolicyHub {
    /// Saves a schedule, creating or replacing it: pins every target by
    /// digest (each must be published) and refuses a policy another
    /// schedule of the namespace already names.
    #[tracing::instrument(name = "hub.set_schedule", skip_all)]
    pub async fn set_schedule(
        &self,
        command: SetScheduleCommand,
        context: &RequestContext,
    ) -> Result<Schedule> {
        let min_interval = chrono::TimeDelta::from_std(self.schedule_settings.min_interval)
            .map_err(|error| Error::Internal(format!("schedules.min_interval: {error}")))?;
        schedule::ensure_spaced(&command, min_interval)?;
        self.repository
            .write("set_schedule", async |tx| {
                let namespace = command.namespace.clone();
                tx.lock_namespaces([&namespace]).await?;
                let others: Vec<Schedule> = tx
                    .schedules_of(&namespace)
                    .await?
                    .into_iter()
                    .filter(|other| other.name != command.name)
                    .collect();
                let previous = tx.lock_schedule(&namespace, &command.name).await?;
                let names = command.policies();
                ensure_policies_exist(tx, &command, &names).await?;
                let locked = tx.lock_policies(&names.iter().collect::<Vec<_>>()).await?;
                let mut entries = Vec::with_capacity(command.entries.len());
                for (index, requested) in command.entries.iter().enumerate() {
                    let mut targets = Vec::with_capacity(requested.targets.len());
                    for (at, (name, selector)) in requested.targets.iter().enumerate() {
                        let policy = names
                            .iter()
                            .position(|locked| &locked.name == name)
                            .map(|position| &locked[position])
                            .expect("every target's policy is locked");
                        let field = format!("entries[{index}].targets[{at}]");
                        let record = match tx.version(policy, selector).await {
                            Ok(stored) => stored.record,
                            Err(Error::NotFound(missing)) => {
                                return Err(Error::invalid(field, missing));
                            }
                            Err(error) => return Err(error),
                        };
                        targets.push(schedule::pin(&field, &record)?);
                    }
                    entries.push(Entry {
                        name: requested.name.clone(),
                        cron: requested.cron.clone(),
                        time_zone: requested.time_zone.clone(),
                        targets,
                    });
                }
                let mut saved = Schedule::saved(command.clone(), entries, &context.actor, tx.at());
                if let Some(previous) = &previous {
                    saved.last = previous.last.clone();
                }
                saved.ensure_unclaimed(&others)?;
                let policies = saved.policies();
                match previous {
                    Some(_) => tx.save_schedule(&saved).await?,
                    None => tx.insert_schedule(&saved).await?,
                }
                let why = because(format!("schedule {} saved", saved.name), &saved.reason);
                record(tx, context, &policies, EventKind::ScheduleSet, &why).await?;
                Ok(saved)
            })
            .await
    }

    /// An operator's control of a schedule; a deleted one comes back as it
    /// was. A resume applies the entry in force now, in the same
    /// transaction, unless its versions are already active: a schedule whose
    /// Friday firing was refused is resumed into its weekend entry, not left
    /// on the weekday's until Monday. A resume whose activation is refused
    /// is refused, and the schedule stays paused.
    #[tracing::instrument(name = "hub.control_schedule", skip_all, fields(control = control.verb()))]
    pub async fn control_schedule(
        &self,
        namespace: &Namespace,
        name: &ScheduleName,
        control: ScheduleControl,
        reason: &str,
        context: &RequestContext,
    ) -> Result<Schedule> {
        let operation = format!("{}_schedule", control.verb());
        let (schedule, moved) = self
            .repository
            .write(&operation, async |tx| {
                let mut moved = None;
                tx.lock_namespaces([namespace]).await?;
                let mut current = tx.lock_existing_schedule(namespace, name).await?;
                let by = because(format!("{} by {}", control.verb(), context.actor), reason);
                let kind = match control {
                    ScheduleControl::Pause => {
                        current.ensure_paused(false, "pause")?;
                        current.pause(by.clone());
                        tx.save_schedule(&current).await?;
                        EventKind::SchedulePaused
                    }
                    ScheduleControl::Resume => {
                        current.ensure_paused(true, "resume")?;
                        let now = tx.at();
                        let in_force = current.in_force(now);
                        current.resume(now);
                        if let Some(firing) = in_force {
                            let entry = current
                                .entry(&firing.entry)
                                .expect("a firing names an entry of its schedule")
                                .clone();
                            let reason = format!(
                                "{}, in force when resumed by {}",
                                firing_reason(&current, &entry, &firing),
                                context.actor
                            );
                            let outcome =
                                activate(tx, self.bundle_guard(), context, &entry, &reason)
                                    .await
                                    .map_err(|error| not_resumed(&current, &entry, error))?;
                            current.fired(firing, outcome.revision, now);
                            moved = Some(outcome);
                        }
                        tx.save_schedule(&current).await?;
                        EventKind::ScheduleResumed
                    }
                    ScheduleControl::Delete => {
                        tx.delete_schedule(&current).await?;
                        EventKind::ScheduleDeleted
                    }
                };
                let why = format!("schedule {}: {by}", current.name);
                record(tx, context, &current.policies(), kind, &why).await?;
                Ok((current, moved))
            })
            .await?;
        if let Some(outcome) = moved {
            self.activated(&outcome).await;
        }
        Ok(schedule)
    }

    /// One schedule.
    pub async fn get_schedule(
        &self,
        namespace: &Namespace,
        name: &ScheduleName,
    ) -> Result<Schedule> {
        self.repository.get_schedule(namespace, name).await
    }

    /// The schedules of a namespace, by name.
    pub async fn list_schedules(&self, namespace: &Namespace) -> Result<Vec<Schedule>> {
        self.repository.list_schedules(namespace).await
    }

    /// How many schedules a refused firing paused and no operator has
    /// resumed since.
    pub async fn schedules_paused_by_refusal(&self) -> Result<usize> {
        let paused = self.repository.paused_schedules().await?;
        Ok(paused
            .iter()
            .filter(|schedule| schedule.paused_by_refusal)
            .count())
    }

    /// The schedules with a firing due now, for the controller.
    pub async fn due_schedules(&self) -> Result<Vec<Schedule>> {
        self.repository.due_schedules(chrono::Utc::now()).await
    }

    /// Fires the most recent due entry of `seen`, unless the schedule moved
    /// since (another replica fired it, or an operator changed it): the
    /// decision is re-checked under the schedule's row lock. A refused
    /// activation pauses the schedule with the reason, in the same
    /// transaction; one that finds its versions already active says so in
    /// the log. `None` when there was nothing to fire.
    #[tracing::instrument(name = "hub.fire_schedule", skip_all)]
    pub async fn fire_schedule(&self, seen: &Schedule) -> Result<Option<FiringOutcome>> {
        let context = RequestContext {
            actor: "system:schedule-controller".into(),
            request_id: format!("schedule-{}-{}", seen.namespace, seen.name),
        };
        let fired = self
            .repository
            .write("fire_schedule", async |tx| {
                tx.lock_namespaces([&seen.namespace]).await?;
                let Some(mut current) = tx.lock_schedule(&seen.namespace, &seen.name).await? else {
                    return Ok(None);
                };
                let now = tx.at();
                let due = current.due(now);
                let Some(firing) = due.filter(|_| current == *seen) else {
                    return Ok(None);
                };
                let entry = current
                    .entry(&firing.entry)
                    .expect("a due firing names an entry of its schedule")
                    .clone();
                let reason = firing_reason(&current, &entry, &firing);
                let fired = match activate(tx, self.bundle_guard(), &context, &entry, &reason).await
                {
                    Ok(outcome) => {
                        let said = record_unmoved(tx, &context, &outcome, &reason).await?;
                        current.fired(firing, outcome.revision, now);
                        (said, Some(outcome))
                    }
                    Err(
                        refusal @ (Error::FailedPrecondition { .. }
                        | Error::InvalidArgument(_)
                        | Error::NotFound(_)),
                    ) => {
                        current.refused(firing, &refusal, now);
                        let why = format!("schedule {}: {}", current.name, current.paused_because);
                        let policies: Vec<&PolicyRef> = entry.policies().collect();
                        record(tx, &context, &policies, EventKind::SchedulePaused, &why).await?;
                        (FiringOutcome::Refused, None)
                    }
                    Err(error) => return Err(error),
                };
                tx.save_schedule(&current).await?;
                Ok(Some(fired))
            })
            .await?;
        let Some((said, moved)) = fired else {
            return Ok(None);
        };
        if let Some(outcome) = moved {
            self.activated(&outcome).await;
        }
        Ok(Some(said))
    }
}
