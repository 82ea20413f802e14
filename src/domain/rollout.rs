//! Rollouts (DESIGN §9): a target set moves through the fleet step by step.
//! The rules are pure functions here: validating a plan, which runtimes a
//! step's cohort holds, what a controller tick does, and which transitions
//! each state allows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::lifecycle::{PointerChange, ensure_expected_active, ensure_published};
use super::runtime::{ApplyState, LabelSelector, RuntimeId, RuntimeLabels, RuntimeRecord};
use super::{
    ActiveBundle, Digest, Error, ExpectedActive, Namespace, PolicyName, PolicyRef, Result,
    VersionSelector,
};

/// Most steps of one rollout.
pub const MAX_STEPS: usize = 20;
/// Longest bake time of one step.
pub const MAX_BAKE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest apply deadline.
pub const MAX_APPLY_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    /// Waiting for approvals from principals other than its creator.
    PendingApproval,
    /// Approved (or needing none), waiting for its start time.
    Scheduled,
    /// Moving through its steps, baking the current one.
    Running,
    /// Halted by an operator, or by the failure rule without auto-rollback:
    /// the cohort keeps what it has, no step advances.
    Paused,
    /// The candidates became the active pointers.
    Completed,
    /// Stopped by an operator; the cohort went back to the stable versions.
    Aborted,
    /// Stopped by the failure rule; the cohort went back to the stable
    /// versions.
    RolledBack,
}

impl RolloutState {
    /// Every state.
    pub const ALL: [RolloutState; 7] = [
        RolloutState::PendingApproval,
        RolloutState::Scheduled,
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::Aborted,
        RolloutState::RolledBack,
    ];

    /// The name used in storage and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::PendingApproval => "PENDING_APPROVAL",
            RolloutState::Scheduled => "SCHEDULED",
            RolloutState::Running => "RUNNING",
            RolloutState::Paused => "PAUSED",
            RolloutState::Completed => "COMPLETED",
            RolloutState::Aborted => "ABORTED",
            RolloutState::RolledBack => "ROLLED_BACK",
        }
    }

    /// Whether the rollout still holds its policies.
    pub fn is_live(self) -> bool {
        !self.has_ended()
    }

    /// Whether it ended: completed, aborted or rolled back.
    pub fn has_ended(self) -> bool {
        matches!(
            self,
            RolloutState::Completed | RolloutState::Aborted | RolloutState::RolledBack
        )
    }

    /// Whether cohort runtimes are sent the candidates now.
    pub fn has_begun(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

impl std::str::FromStr for RolloutState {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        RolloutState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| Error::Internal(format!("unknown rollout state {text:?}")))
    }
}

/// One step: the share of the namespace's identified runtimes (optionally
/// only those a label selector matches) that get the candidates, and how
/// long it bakes before the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStep {
    /// 1 to 100.
    pub percentage: u32,
    /// Kubernetes selector text; empty for every runtime.
    pub label_selector: String,
    /// How long the step bakes before the next one starts.
    #[serde(with = "humantime_serde")]
    pub bake: Duration,
}

/// When a step's cohort fails the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FailureRule {
    /// More rejecting runtimes than this fail the step: a count…
    pub max_rejected: u32,
    /// …or, when above zero, a fraction of the cohort (0 < f ≤ 1).
    pub max_rejected_fraction: f64,
    /// A cohort runtime that has not applied the candidates this long after
    /// its step started counts as failed; zero: no deadline.
    #[serde(with = "humantime_serde")]
    pub apply_deadline: Duration,
}

/// One policy version a rollout moves, pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutTarget {
    /// The policy.
    pub policy: PolicyRef,
    /// The published version.
    pub version: u32,
    /// Its digest at start: what runtimes get is exactly this.
    pub digest: Digest,
    /// The stable version it replaces (the active one at start).
    pub stable_version: Option<u32>,
}

/// What `StartRollout` asks for, validated.
#[derive(Debug, Clone, Serialize)]
pub struct StartRolloutCommand {
    /// The namespace every target lives in.
    pub namespace: Namespace,
    /// Policies and the published versions to move them to.
    pub targets: Vec<(PolicyName, VersionSelector, ExpectedActive)>,
    /// The steps, percentages strictly increasing; the last need not be
    /// 100: completing the last step completes the rollout.
    pub steps: Vec<RolloutStep>,
    /// When a step fails.
    pub failure_rule: FailureRule,
    /// Return the cohort to the stable versions when a step fails (else
    /// pause).
    pub auto_rollback: bool,
    /// Why.
    pub reason: String,
    /// Begin no earlier than this; `None`: as soon as approved.
    pub start_at: Option<DateTime<Utc>>,
}

/// One principal's approval of a rollout (bound to its pinned targets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Its id (a UUID): part of every cohort hash.
    pub id: String,
    /// The namespace.
    pub namespace: Namespace,
    /// What it moves.
    pub targets: Vec<RolloutTarget>,
    /// Its steps.
    pub steps: Vec<RolloutStep>,
    /// When a step fails.
    pub failure_rule: FailureRule,
    /// Roll back (rather than pause) when a step fails.
    pub auto_rollback: bool,
    /// Where it is.
    pub state: RolloutState,
    /// The current step, from 0.
    pub step: usize,
    /// The revision each started step took, in order: a runtime receives
    /// the candidates at the revision of the first step whose cohort holds
    /// it.
    pub step_revisions: Vec<u64>,
    /// When the current step started (or the rollout resumed).
    pub step_started_at: DateTime<Utc>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Why it was started.
    pub reason: String,
    /// Why it ended or halted, when it did: who, or which runtimes rejected
    /// what.
    pub halted_because: String,
    /// Begin no earlier than this.
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    /// Approvals needed before it may begin (the namespace's setting when it
    /// was created).
    #[serde(default)]
    pub required_approvals: u32,
    /// The approvals so far.
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

/// What one revision changed in what runtimes are sent: pointer moves (and
/// stable bundles sent again when a rollout ends without completing), and
/// the rollouts whose cohorts changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionChange {
    /// The revision.
    pub revision: u64,
    /// Bundles runtimes outside any cohort get at this revision.
    pub bundles: Vec<ActiveBundle>,
    /// Rollouts whose view changed: live ones with their candidates, ended
    /// ones to drop.
    pub rollouts: Vec<RolloutView>,
}

/// A rollout as the index needs it: the plan, and the candidates' bundles.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    /// The rollout, at this revision.
    pub rollout: Rollout,
    /// The candidate bundles (their revision is not used: a runtime gets a
    /// candidate at the revision it joined the cohort).
    pub candidates: Vec<ActiveBundle>,
}

/// Decides a rollout's targets as `Activate` would decide the move, and
/// pins each by digest: no live rollout may hold the policy, the target
/// must be published, meet the compare-and-swap and the schema; some other
/// version must be active (the stable one that runtimes outside the cohort
/// keep).
pub fn plan_targets(changes: &[PointerChange<'_>]) -> Result<Vec<RolloutTarget>> {
    changes
        .iter()
        .map(|change| {
            let policy = change.policy;
            policy.ensure_free("start a rollout of")?;
            ensure_published(change.target)?;
            ensure_expected_active(&policy.policy, change.expected, policy.active_version())?;
            policy.check_schema(change.target)?;
            if policy.active.is_none() {
                return Err(Error::precondition(format!(
                    "nothing of {} is active yet: a rollout replaces a stable version, so \
                     activate the first one directly",
                    policy.policy
                )));
            }
            if policy.active_version() == Some(change.target.version) {
                return Err(Error::precondition(format!(
                    "version {} of {} is already active: there is nothing to roll out",
                    change.target.version, policy.policy
                )));
            }
            Ok(RolloutTarget {
                policy: policy.policy.clone(),
                version: change.target.version,
                digest: change.target.digest().clone(),
                stable_version: policy.active_version(),
            })
        })
        .collect()
}

/// Checks a scheduled start: in the past means now; at most 90 days ahead.
pub fn validate_start(start_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<()> {
    match start_at {
        Some(start_at) if start_at - now > MAX_START_DELAY => Err(Error::invalid(
            "start_at",
            format!("is {start_at}, at most 90 days ahead is allowed"),
        )),
        _ => Ok(()),
    }
}

/// Checks a plan before anything is written.
pub fn validate_plan(steps: &[RolloutStep], rule: &FailureRule) -> Result<()> {
    if steps.is_empty() {
        return Err(Error::invalid("steps", "a rollout needs at least one step"));
    }
    if steps.len() > MAX_STEPS {
        return Err(Error::invalid(
            "steps",
            format!("{} steps, at most {MAX_STEPS} are allowed", steps.len()),
        ));
    }
    let mut previous = 0;
    for (index, step) in steps.iter().enumerate() {
        let field = format!("steps[{index}]");
        if step.percentage == 0 || step.percentage > 100 {
            return Err(Error::invalid(
                format!("{field}.percentage"),
                format!("is {}, it must be 1 to 100", step.percentage),
            ));
        }
        if step.percentage <= previous {
            return Err(Error::invalid(
                format!("{field}.percentage"),
                format!(
                    "is {}, not above the previous step's {previous}: a step only adds runtimes",
                    step.percentage
                ),
            ));
        }
        previous = step.percentage;
        LabelSelector::parse(&format!("{field}.label_selector"), &step.label_selector)?;
        if step.bake > MAX_BAKE {
            return Err(Error::invalid(
                format!("{field}.bake"),
                format!(
                    "is {}, at most {} is allowed",
                    humantime::format_duration(step.bake),
                    humantime::format_duration(MAX_BAKE)
                ),
            ));
        }
    }
    if !(0.0..=1.0).contains(&rule.max_rejected_fraction) {
        return Err(Error::invalid(
            "failure_rule.max_rejected_fraction",
            format!("is {}, it must be 0 to 1", rule.max_rejected_fraction),
        ));
    }
    if rule.apply_deadline > MAX_APPLY_DEADLINE {
        return Err(Error::invalid(
            "failure_rule.apply_deadline",
            format!(
                "is {}, at most {} is allowed",
                humantime::format_duration(rule.apply_deadline),
                humantime::format_duration(MAX_APPLY_DEADLINE)
            ),
        ));
    }
    Ok(())
}

/// Where a runtime falls among 10,000 buckets for a rollout: the same for
/// the same rollout and runtime wherever and whenever it is computed.
pub fn bucket(rollout: &str, runtime: &RuntimeId) -> u32 {
    let hash = sha2::Sha256::digest(format!("{rollout}/{runtime}").as_bytes());
    let head = u64::from_be_bytes(hash[..8].try_into().expect("eight bytes"));
    (head % 10_000) as u32
}

impl Rollout {
    /// Whether `step`'s cohort holds the runtime: its bucket falls below the
    /// step's percentage and the step's selector matches its labels.
    /// Anonymous streams are in no cohort.
    pub fn in_step(&self, step: usize, runtime: &RuntimeId, labels: &RuntimeLabels) -> bool {
        let Some(step) = self.steps.get(step) else {
            return false;
        };
        let selected = LabelSelector::parse("label_selector", &step.label_selector)
            .is_ok_and(|selector| selector.matches(labels));
        selected && bucket(&self.id, runtime) < step.percentage * 100
    }

    /// The revision at which the runtime joined the current cohort, if it
    /// is in it: the first started step whose cohort held it and every step
    /// since.
    pub fn joined_at(&self, runtime: &RuntimeId, labels: &RuntimeLabels) -> Option<u64> {
        if !self.state.has_begun() || !self.in_step(self.step, runtime, labels) {
            return None;
        }
        let mut joined = None;
        for (step, revision) in self.step_revisions.iter().enumerate().rev() {
            if !self.in_step(step, runtime, labels) {
                break;
            }
            joined = Some(*revision);
        }
        joined
    }

    /// The policies the rollout moves.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyRef> {
        self.targets.iter().map(|target| &target.policy)
    }

    /// The cohort of the current step among `fleet`, the namespace's
    /// runtimes.
    pub fn cohort<'a>(&self, fleet: &'a [RuntimeRecord]) -> Vec<&'a RuntimeRecord> {
        fleet
            .iter()
            .filter(|runtime| self.in_step(self.step, &runtime.id, &runtime.labels))
            .collect()
    }
}

/// The state a new or approved rollout waits in before it begins, or
/// `None` when it begins now.
pub fn waiting_state(
    required: u32,
    approvals: usize,
    start_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<RolloutState> {
    if approvals < required as usize {
        Some(RolloutState::PendingApproval)
    } else if start_at.is_some_and(|start_at| start_at > now) {
        Some(RolloutState::Scheduled)
    } else {
        None
    }
}

/// Longest wait before a scheduled start.
pub const MAX_START_DELAY: chrono::TimeDelta = chrono::TimeDelta::days(90);

impl Rollout {
    /// Begins the first step at `revision`.
    pub fn begin(&mut self, revision: u64, now: DateTime<Utc>) {
        self.state = RolloutState::Running;
        self.step = 0;
        self.step_revisions = vec![revision];
        self.step_started_at = now;
    }

    /// Records `by`'s approval. The creator cannot approve their own
    /// rollout, and one principal counts once.
    pub fn approve(&mut self, by: &str, now: DateTime<Utc>) -> Result<()> {
        ensure_control(self, "approve", &[RolloutState::PendingApproval])?;
        if by == self.created_by {
            return Err(Error::PermissionDenied(format!(
                "{by} started rollout {} and cannot approve it: another approver must",
                self.id
            )));
        }
        if self.approvals.iter().any(|approval| approval.by == by) {
            return Err(Error::AlreadyExists(format!(
                "{by} already approved rollout {}",
                self.id
            )));
        }
        self.approvals.push(Approval {
            by: by.to_owned(),
            at: now,
        });
        Ok(())
    }

    /// Starts the next step at `revision`.
    pub fn advance(&mut self, revision: u64, now: DateTime<Utc>) {
        self.step += 1;
        self.step_revisions.push(revision);
        self.step_started_at = now;
    }

    /// Halts or ends the rollout in `state`, saying why.
    pub fn halt(&mut self, state: RolloutState, because: String) {
        self.state = state;
        self.halted_because = because;
    }

    /// Runs again; the current step bakes from `now`.
    pub fn resume(&mut self, now: DateTime<Utc>) {
        self.state = RolloutState::Running;
        self.halted_because.clear();
        self.step_started_at = now;
    }
}

/// How the current step's cohort fares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Runtimes in the cohort.
    pub cohort: u32,
    /// Those that applied every candidate they watch.
    pub applied: u32,
    /// Those that rejected a candidate.
    pub rejected: u32,
    /// The others.
    pub pending: u32,
}

/// The current step's progress among `fleet`, the namespace's runtimes.
pub fn progress(rollout: &Rollout, fleet: &[RuntimeRecord]) -> Progress {
    let mut progress = Progress::default();
    for runtime in rollout.cohort(fleet) {
        progress.cohort += 1;
        let outcomes = rollout
            .targets
            .iter()
            .filter(|target| runtime.watches(&target.policy.name))
            .map(|target| {
                runtime
                    .policies
                    .get(&target.policy.name)
                    .filter(|outcome| outcome.version == target.version)
                    .map(|outcome| outcome.state)
            });
        let outcomes: Vec<Option<ApplyState>> = outcomes.collect();
        if outcomes.contains(&Some(ApplyState::Rejected)) {
            progress.rejected += 1;
        } else if outcomes
            .iter()
            .all(|outcome| *outcome == Some(ApplyState::Applied))
        {
            progress.applied += 1;
        } else {
            progress.pending += 1;
        }
    }
    progress
}

/// What a controller tick decides for a running rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Tick {
    /// Nothing to do yet.
    Wait,
    /// The start time came: begin the first step.
    Begin,
    /// The step baked and the cohort holds: start the next step.
    Advance,
    /// The last step baked: the candidates become the active pointers.
    Complete,
    /// The cohort failed: why, naming the runtimes.
    Fail(String),
}

/// One controller decision: fail when too many cohort runtimes rejected a
/// candidate or missed the apply deadline, else advance once the step has
/// baked.
pub fn tick(rollout: &Rollout, fleet: &[RuntimeRecord], now: DateTime<Utc>) -> Tick {
    if rollout.state == RolloutState::Scheduled {
        return match rollout.start_at {
            Some(start_at) if start_at > now => Tick::Wait,
            _ => Tick::Begin,
        };
    }
    if rollout.state != RolloutState::Running {
        return Tick::Wait;
    }
    let cohort = rollout.cohort(fleet);
    let elapsed = (now - rollout.step_started_at).to_std().unwrap_or_default();
    let deadline_passed = !rollout.failure_rule.apply_deadline.is_zero()
        && elapsed >= rollout.failure_rule.apply_deadline;
    let mut failed = Vec::new();
    for runtime in &cohort {
        let mut problems = Vec::new();
        for target in &rollout.targets {
            if !runtime.watches(&target.policy.name) {
                continue;
            }
            match runtime.policies.get(&target.policy.name) {
                Some(outcome)
                    if outcome.version == target.version
                        && outcome.state == ApplyState::Rejected =>
                {
                    problems.push(format!(
                        "rejected {} version {}: {}",
                        target.policy, target.version, outcome.error
                    ));
                }
                Some(outcome)
                    if outcome.version == target.version
                        && outcome.state == ApplyState::Applied => {}
                _ if deadline_passed => problems.push(format!(
                    "had not applied {} version {} after {}",
                    target.policy,
                    target.version,
                    humantime::format_duration(rollout.failure_rule.apply_deadline)
                )),
                _ => {}
            }
        }
        if !problems.is_empty() {
            failed.push(format!("{} {}", runtime.id, problems.join("; ")));
        }
    }
    let allowed = if rollout.failure_rule.max_rejected_fraction > 0.0 {
        (rollout.failure_rule.max_rejected_fraction * cohort.len() as f64).floor() as usize
    } else {
        rollout.failure_rule.max_rejected as usize
    };
    if failed.len() > allowed {
        return Tick::Fail(format!(
            "{} of {} cohort runtimes failed (at most {allowed} allowed): {}",
            failed.len(),
            cohort.len(),
            failed.join(", ")
        ));
    }
    let step = &rollout.steps[rollout.step];
    if elapsed < step.bake {
        return Tick::Wait;
    }
    if rollout.step + 1 < rollout.steps.len() {
        Tick::Advance
    } else {
        Tick::Complete
    }
}

/// Refuses an operator's control in a state that does not allow it.
pub fn ensure_control(rollout: &Rollout, control: &str, allowed: &[RolloutState]) -> Result<()> {
    if allowed.contains(&rollout.state) {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "cannot {control} rollout {}: it is {}",
        rollout.id,
        rollout.state.as_str().to_lowercase().replace('_', " ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::runtime::PolicyOutcome;

    fn step(percentage: u32, bake_secs: u64) -> RolloutStep {
        RolloutStep {
            percentage,
            label_selector: String::new(),
            bake: Duration::from_secs(bake_secs),
        }
    }

    fn rule() -> FailureRule {
        FailureRule {
            max_rejected: 0,
            max_rejected_fraction: 0.0,
            apply_deadline: Duration::ZERO,
        }
    }

    fn runtime(id: &str) -> RuntimeId {
        RuntimeId::parse("id", id).unwrap()
    }

    fn rollout(steps: Vec<RolloutStep>) -> Rollout {
        let now = Utc::now();
        Rollout {
            id: "7c6f".into(),
            namespace: Namespace::parse("namespace", "team").unwrap(),
            targets: vec![RolloutTarget {
                policy: PolicyRef::parse("team", "limits").unwrap(),
                version: 2,
                digest: Digest::of_canonical(b"{}"),
                stable_version: Some(1),
            }],
            step_revisions: vec![10],
            steps,
            failure_rule: rule(),
            auto_rollback: true,
            state: RolloutState::Running,
            step: 0,
            step_started_at: now,
            created_by: "alice".into(),
            created_at: now,
            reason: String::new(),
            halted_because: String::new(),
            start_at: None,
            required_approvals: 0,
            approvals: Vec::new(),
        }
    }

    #[test]
    fn approvals_come_from_others_once_each_then_the_rollout_may_begin() {
        let now = Utc::now();
        let mut pending = Rollout {
            state: RolloutState::PendingApproval,
            required_approvals: 2,
            ..rollout(vec![step(10, 0)])
        };
        assert!(matches!(
            pending.approve("alice", now),
            Err(Error::PermissionDenied(_))
        ));
        pending.approve("bob", now).unwrap();
        assert!(matches!(
            pending.approve("bob", now),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(
            waiting_state(2, pending.approvals.len(), None, now),
            Some(RolloutState::PendingApproval)
        );
        pending.approve("carol", now).unwrap();
        let later = now + chrono::TimeDelta::minutes(5);
        assert_eq!(
            waiting_state(2, 2, Some(later), now),
            Some(RolloutState::Scheduled)
        );
        assert_eq!(waiting_state(2, 2, Some(now), now), None);
        let scheduled = Rollout {
            state: RolloutState::Scheduled,
            start_at: Some(later),
            ..pending
        };
        assert_eq!(tick(&scheduled, &[], now), Tick::Wait);
        assert_eq!(tick(&scheduled, &[], later), Tick::Begin);
        assert!(validate_start(Some(now + chrono::TimeDelta::days(91)), now).is_err());
    }

    #[test]
    fn plans_need_increasing_percentages_and_bounded_times() {
        assert!(validate_plan(&[step(10, 60), step(100, 0)], &rule()).is_ok());
        for (steps, field) in [
            (vec![], "steps"),
            (vec![step(0, 0)], "steps[0].percentage"),
            (vec![step(101, 0)], "steps[0].percentage"),
            (vec![step(50, 0), step(50, 0)], "steps[1].percentage"),
            (vec![step(10, 8 * 24 * 3600)], "steps[0].bake"),
        ] {
            match validate_plan(&steps, &rule()) {
                Err(Error::InvalidArgument(violations)) => {
                    assert_eq!(violations[0].field, field, "{steps:?}")
                }
                other => panic!("{steps:?}: {other:?}"),
            }
        }
        let mut bad_selector = step(10, 0);
        bad_selector.label_selector = "region in (eu".into();
        assert!(validate_plan(&[bad_selector], &rule()).is_err());
        let fraction = FailureRule {
            max_rejected_fraction: 1.5,
            ..rule()
        };
        assert!(validate_plan(&[step(10, 0)], &fraction).is_err());
    }

    #[test]
    fn cohorts_are_deterministic_and_only_grow() {
        let labels = RuntimeLabels::default();
        let mut plan = rollout(vec![step(10, 0), step(50, 0), step(100, 0)]);
        let ids: Vec<RuntimeId> = (0..1000).map(|n| runtime(&format!("rt-{n}"))).collect();
        let members = |plan: &Rollout, step| {
            ids.iter()
                .filter(|id| plan.in_step(step, id, &labels))
                .count()
        };
        let (ten, fifty, all) = (members(&plan, 0), members(&plan, 1), members(&plan, 2));
        assert!((60..=140).contains(&ten), "{ten}");
        assert!((420..=580).contains(&fifty), "{fifty}");
        assert_eq!(all, 1000);
        for id in &ids {
            if plan.in_step(0, id, &labels) {
                assert!(plan.in_step(1, id, &labels), "{id} left the cohort");
            }
        }
        // Joined at the revision of the first step that held it.
        plan.step = 1;
        plan.step_revisions = vec![10, 11];
        let early = ids.iter().find(|id| plan.in_step(0, id, &labels)).unwrap();
        let late = ids
            .iter()
            .find(|id| !plan.in_step(0, id, &labels) && plan.in_step(1, id, &labels))
            .unwrap();
        assert_eq!(plan.joined_at(early, &labels), Some(10));
        assert_eq!(plan.joined_at(late, &labels), Some(11));
        plan.state = RolloutState::Aborted;
        assert_eq!(plan.joined_at(early, &labels), None);
    }

    #[test]
    fn a_tick_fails_on_rejections_and_advances_after_the_bake() {
        let plan = rollout(vec![step(100, 3600), step(100, 0)]);
        let namespace = plan.namespace.clone();
        let record = |id: &str, state: ApplyState| RuntimeRecord {
            namespace: namespace.clone(),
            id: runtime(id),
            subject: "rt".into(),
            labels: RuntimeLabels::default(),
            names: Vec::new(),
            connected: true,
            replica: "r".into(),
            last_seen: Utc::now(),
            applied_revision: 10,
            policies: [(
                PolicyName::parse("name", "limits").unwrap(),
                PolicyOutcome {
                    version: 2,
                    state,
                    error: "bad rule".into(),
                    revision: 10,
                },
            )]
            .into(),
        };
        let healthy = vec![record("a", ApplyState::Applied)];
        assert_eq!(tick(&plan, &healthy, Utc::now()), Tick::Wait);
        let later = Utc::now() + chrono::TimeDelta::hours(2);
        assert_eq!(tick(&plan, &healthy, later), Tick::Advance);
        let rejected = vec![
            record("a", ApplyState::Applied),
            record("b", ApplyState::Rejected),
        ];
        match tick(&plan, &rejected, Utc::now()) {
            Tick::Fail(why) => assert!(
                why.contains("b rejected team/limits version 2: bad rule"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let last = Rollout {
            step: 1,
            ..plan.clone()
        };
        assert_eq!(tick(&last, &healthy, Utc::now()), Tick::Complete);
        let deadline = Rollout {
            failure_rule: FailureRule {
                apply_deadline: Duration::from_secs(60),
                ..rule()
            },
            ..plan
        };
        let silent = vec![RuntimeRecord {
            policies: Default::default(),
            ..record("c", ApplyState::Applied)
        }];
        assert_eq!(tick(&deadline, &silent, Utc::now()), Tick::Wait);
        assert!(matches!(tick(&deadline, &silent, later), Tick::Fail(_)));
    }
}
