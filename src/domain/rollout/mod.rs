//! Rollouts (docs/src/contributing/design.md#runtimes-and-rollouts): a target
//! set moves through the fleet step by step. The rules are pure functions
//! here: validating a plan, which runtimes a step's cohort holds, what a
//! controller tick does, and which transitions each state allows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::impact::ImpactReport;
use super::{
    ActiveBundle, Digest, Error, ExpectedActive, Namespace, PolicyName, PolicyRef, Result,
    VersionSelector,
};

mod alerts;
mod analysis;
mod cohort;
mod plan;
mod tick;

pub use alerts::{ACTION_LABEL, Alert, AlertAction, MAX_ALERTS, ensure_alert_count};
pub use analysis::{
    Analysis, DEFAULT_CONSECUTIVE_ERROR_LIMIT, DEFAULT_PROMETHEUS, MAX_ANALYSES, Measurement,
    MeasurementPhase, MetricsSource, QUERY_VARIABLES, QueryAnswer, QueryFacts, Verdict, judge,
    measure, render_query, validate_analyses,
};
pub use cohort::{Progress, ProgressTally, bucket, progress};
pub use plan::{plan_targets, validate_plan, validate_start};
pub use tick::{Tick, ensure_control, tick};

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
    /// Analyses measured while this step runs, beside the rollout's own.
    #[serde(default)]
    pub analyses: Vec<Analysis>,
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
    /// Analyses measured in every step.
    pub analyses: Vec<Analysis>,
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
    /// Analyses measured in every step, beside each step's own.
    #[serde(default)]
    pub analyses: Vec<Analysis>,
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
    /// Paused by the controller itself (a step failed, or a requirement
    /// moved out of range as it completed), not by an operator: what
    /// waits for a person without anyone having asked for it.
    #[serde(default)]
    pub self_paused: bool,
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
    /// In a namespace with an impact gate, the report it was admitted on.
    #[serde(default)]
    pub impact: Option<ImpactReport>,
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
        self.self_paused = false;
    }

    /// The controller pauses it, `because` its own rule says so.
    pub fn pause_itself(&mut self, because: String) {
        self.halt(RolloutState::Paused, because);
        self.self_paused = true;
    }

    /// Runs again; the current step bakes from `now`.
    pub fn resume(&mut self, now: DateTime<Utc>) {
        self.state = RolloutState::Running;
        self.halted_because.clear();
        self.self_paused = false;
        self.step_started_at = now;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::runtime::{
        ApplyState, PolicyOutcome, RuntimeId, RuntimeLabels, RuntimeRecord,
    };

    pub(crate) fn step(percentage: u32, bake_secs: u64) -> RolloutStep {
        RolloutStep {
            percentage,
            label_selector: String::new(),
            bake: Duration::from_secs(bake_secs),
            analyses: Vec::new(),
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

    pub(crate) fn rollout(steps: Vec<RolloutStep>) -> Rollout {
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
            analyses: Vec::new(),
            state: RolloutState::Running,
            step: 0,
            step_started_at: now,
            created_by: "alice".into(),
            created_at: now,
            reason: String::new(),
            halted_because: String::new(),
            self_paused: false,
            start_at: None,
            required_approvals: 0,
            approvals: Vec::new(),
            impact: None,
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
        assert_eq!(tick(&scheduled, &[], &[], now), Tick::Wait);
        assert_eq!(tick(&scheduled, &[], &[], later), Tick::Begin);
        assert!(validate_start(Some(now + chrono::TimeDelta::days(91)), now).is_err());
    }

    #[test]
    fn only_the_controllers_own_pause_marks_a_rollout_self_paused() {
        let now = Utc::now();
        let mut paused = rollout(vec![step(100, 60)]);
        paused.pause_itself("rt-0 had not applied it".into());
        assert_eq!(paused.state, RolloutState::Paused);
        assert!(paused.self_paused);
        paused.resume(now);
        assert!(!paused.self_paused);
        paused.pause_itself("rt-0 had not applied it".into());
        paused.halt(RolloutState::Aborted, "abort by alice".into());
        assert!(!paused.self_paused);
        let mut by_operator = rollout(vec![step(100, 60)]);
        by_operator.halt(RolloutState::Paused, "pause by alice: wait".into());
        assert!(!by_operator.self_paused);
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
                    reported_at: None,
                },
            )]
            .into(),
        };
        let healthy = vec![record("a", ApplyState::Applied)];
        assert_eq!(tick(&plan, &healthy, &[], Utc::now()), Tick::Wait);
        let later = Utc::now() + chrono::TimeDelta::hours(2);
        assert_eq!(tick(&plan, &healthy, &[], later), Tick::Advance);
        let rejected = vec![
            record("a", ApplyState::Applied),
            record("b", ApplyState::Rejected),
        ];
        match tick(&plan, &rejected, &[], Utc::now()) {
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
        assert_eq!(tick(&last, &healthy, &[], Utc::now()), Tick::Complete);
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
        assert_eq!(tick(&deadline, &silent, &[], Utc::now()), Tick::Wait);
        assert!(matches!(
            tick(&deadline, &silent, &[], later),
            Tick::Fail(_)
        ));
    }
}
