//! Rollouts (docs/src/contributing/design.md#runtimes-and-rollouts): a
//! version moves through the identified runtimes step by step, each runtime's
//! stream carrying the candidate exactly when the current cohort holds it,
//! and rolls itself back when runtimes reject it. Runtimes here are raw watch
//! streams with runtime ids, reporting through ReportStatus; `rollout_binary`
//! has runtimes built on the library.

use std::{collections::BTreeSet, time::Duration};

use policyhub::domain::{rollout::bucket, runtime::RuntimeId};
use policyhub::grpc::{
    proto::{
        self, ApplyState, RolloutState, bundle_service_client::BundleServiceClient,
        policy_service_client::PolicyServiceClient,
    },
    watch_message::WatchActiveResponse,
};
use serde_json::json;
use tonic::{Code, Streaming, transport::Channel};

use crate::helpers::{Backend, TestApp, bundles_of, expect_code, next_message, target};
use crate::schedules::sample;

crate::on_both_backends!(
    a_rollout_moves_through_its_cohort_step_by_step_and_completes,
    rejections_roll_the_cohort_back_within_a_tick,
    a_missed_apply_deadline_rolls_the_cohort_back,
    pause_resume_promote_and_abort_do_what_they_say,
    bad_rollout_requests_are_refused_and_change_nothing,
    a_runtime_that_resumes_mid_rollout_gets_its_cohorts_view_in_one_update,
    a_scheduled_rollout_waits_for_its_start_time,
);

/// A runtime: its id and its open stream.
pub(crate) struct Runtime {
    pub(crate) id: String,
    pub(crate) stream: Streaming<WatchActiveResponse>,
}

/// Opens `count` identified streams on team/limits, each past its SNAPSHOT.
async fn runtimes(app: &TestApp, count: usize) -> Vec<Runtime> {
    open_runtimes(&app.bundle, count).await
}

/// Opens `count` streams named `rt-0`… on team/limits through `bundle`,
/// each past its SNAPSHOT of version 1.
pub(crate) async fn open_runtimes(
    bundle: &BundleServiceClient<Channel>,
    count: usize,
) -> Vec<Runtime> {
    let mut opened = Vec::with_capacity(count);
    for n in 0..count {
        let id = format!("rt-{n}");
        let mut stream = bundle
            .clone()
            .watch_active(proto::WatchActiveRequest {
                namespace: "team".into(),
                names: vec!["limits".into()],
                since_revision: 0,
                runtime: Some(proto::RuntimeIdentity {
                    id: id.clone(),
                    labels: Default::default(),
                }),
            })
            .await
            .expect("watch")
            .into_inner();
        let snapshot = next_message(&mut stream).await;
        assert_eq!(bundles_of(&snapshot)[0].1, 1, "{id} starts on version 1");
        opened.push(Runtime { id, stream });
    }
    opened
}

/// team/limits: version 1 active, version 2 published.
async fn seed(app: &TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), false)
        .await;
}

pub(crate) fn step(percentage: u32, bake: Duration) -> proto::RolloutStep {
    proto::RolloutStep {
        percentage,
        label_selector: String::new(),
        bake: Some(bake.try_into().unwrap()),
        analyses: Vec::new(),
    }
}

pub(crate) fn start_request(steps: Vec<proto::RolloutStep>) -> proto::StartRolloutRequest {
    proto::StartRolloutRequest {
        namespace: "team".into(),
        targets: vec![proto::RolloutTargetRequest {
            name: "limits".into(),
            selector: Some(proto::rollout_target_request::Selector::Version(2)),
            expected_active_version: Some(1),
        }],
        steps,
        failure_rule: None,
        auto_rollback: None,
        reason: "canary the new limits".into(),
        idempotency_key: String::new(),
        start_at: None,
        analyses: Vec::new(),
    }
}

async fn start(app: &TestApp, request: proto::StartRolloutRequest) -> proto::Rollout {
    app.policy
        .clone()
        .start_rollout(request)
        .await
        .expect("start the rollout")
        .into_inner()
}

/// Rollout `id` of namespace team.
pub(crate) async fn get(policy: &PolicyServiceClient<Channel>, id: &str) -> proto::Rollout {
    policy
        .clone()
        .get_rollout(proto::GetRolloutRequest {
            namespace: "team".into(),
            id: id.into(),
        })
        .await
        .expect("get the rollout")
        .into_inner()
}

/// Polls rollout `id` until `done` holds, every 50 ms for at most 15 s.
pub(crate) async fn until(
    policy: &PolicyServiceClient<Channel>,
    id: &str,
    done: impl Fn(&proto::Rollout) -> bool,
) -> proto::Rollout {
    for _ in 0..300 {
        let rollout = get(policy, id).await;
        if done(&rollout) {
            return rollout;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rollout did not get there: {:?}", get(policy, id).await);
}

/// Whether the `percentage` step of rollout `id` holds runtime `runtime`:
/// hash(rollout id, runtime id) below the percentage, as the design says
/// (docs/src/contributing/design.md#runtimes-and-rollouts).
pub(crate) fn in_step(id: &str, runtime: &str, percentage: u32) -> bool {
    bucket(id, &RuntimeId::parse("id", runtime).unwrap()) < percentage * 100
}

/// The next message of a stream, or `None` when none comes within `wait`.
async fn message_within(
    stream: &mut Streaming<WatchActiveResponse>,
    wait: Duration,
) -> Option<WatchActiveResponse> {
    tokio::time::timeout(wait, stream.message())
        .await
        .ok()
        .map(|message| message.expect("healthy").expect("open"))
}

async fn report(app: &TestApp, runtime: &str, revision: u64, state: ApplyState, error: &str) {
    app.bundle
        .clone()
        .report_status(proto::ReportStatusRequest {
            namespace: "team".into(),
            runtime_id: runtime.into(),
            revision,
            policies: vec![proto::PolicyApplyStatus {
                name: "limits".into(),
                version: 2,
                state: state as i32,
                error: error.into(),
                ..Default::default()
            }],
        })
        .await
        .expect("report");
}

fn kinds(events: &[proto::Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|event| event.kind().as_str_name().trim_start_matches("EVENT_KIND_"))
        .collect()
}

async fn a_rollout_moves_through_its_cohort_step_by_step_and_completes(app: TestApp) {
    seed(&app).await;
    let mut fleet = runtimes(&app, 100).await;
    let started = start(
        &app,
        start_request(vec![
            step(10, Duration::from_secs(3)),
            step(50, Duration::from_secs(1)),
            step(100, Duration::ZERO),
        ]),
    )
    .await;
    assert_eq!(started.state(), RolloutState::Running);
    assert_eq!(started.targets[0].stable_version, 1);
    let first = started.step_revisions[0];

    // Step 1: exactly the hashed cohort gets version 2, at the step's revision.
    let cohort: BTreeSet<String> = fleet
        .iter()
        .filter(|runtime| in_step(&started.id, &runtime.id, 10))
        .map(|runtime| runtime.id.clone())
        .collect();
    assert!((3..=25).contains(&cohort.len()), "{} of 100", cohort.len());
    for runtime in &mut fleet {
        if cohort.contains(&runtime.id) {
            let update = next_message(&mut runtime.stream).await;
            assert_eq!(
                bundles_of(&update),
                vec![("team/limits".into(), 2, first)],
                "{}",
                runtime.id
            );
            report(&app, &runtime.id, first, ApplyState::Applied, "").await;
        }
    }
    // Runtimes in no cohort before the last step hear nothing meanwhile.
    for runtime in &mut fleet {
        if !in_step(&started.id, &runtime.id, 50) {
            let silent = message_within(&mut runtime.stream, Duration::from_millis(10)).await;
            assert!(
                silent.is_none(),
                "{} is outside the cohort: {silent:?}",
                runtime.id
            );
        }
    }
    let named = app
        .bundle
        .clone()
        .get_active(proto::GetActiveRequest {
            namespace: "team".into(),
            name: "limits".into(),
            runtime: Some(proto::RuntimeIdentity {
                id: cohort.iter().next().unwrap().clone(),
                labels: Default::default(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.version, 2, "GetActive answers for a named runtime");
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 1);
    let progress = get(&app.policy, &started.id).await.progress.unwrap();
    assert_eq!(
        (progress.cohort, progress.applied),
        (cohort.len() as u32, cohort.len() as u32)
    );

    // Step 2 after the bake: it adds runtimes and removes none.
    let second_step = until(&app.policy, &started.id, |rollout| rollout.step >= 1).await;
    let second = second_step.step_revisions[1];
    for runtime in &mut fleet {
        let joins = !cohort.contains(&runtime.id) && in_step(&started.id, &runtime.id, 50);
        if joins {
            let update = next_message(&mut runtime.stream).await;
            assert_eq!(
                bundles_of(&update),
                vec![("team/limits".into(), 2, second)],
                "{}",
                runtime.id
            );
        }
        assert!(
            !cohort.contains(&runtime.id) || in_step(&started.id, &runtime.id, 50),
            "a step only adds runtimes"
        );
    }

    // Every step baked: the candidate becomes the active pointer for all.
    let completed = until(&app.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Completed
    })
    .await;
    assert_eq!(completed.step, 2);
    // The rollout's row commits first; the replica's index follows it.
    let mut active = 0;
    for _ in 0..100 {
        active = app.get_active("team", "limits").await.unwrap().version;
        if active == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active, 2, "the candidate became the active pointer");
    for runtime in &mut fleet {
        let mut version = 0;
        while version != 2 {
            let update = next_message(&mut runtime.stream).await;
            version = bundles_of(&update)[0].1;
        }
    }
    let events = app.events("team", "limits").await;
    let kinds = kinds(&events);
    for kind in [
        "ROLLOUT_STARTED",
        "ROLLOUT_ADVANCED",
        "ACTIVATED",
        "ROLLOUT_COMPLETED",
    ] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    assert!(events.iter().any(|event| event.rollout_id == started.id));
}

async fn rejections_roll_the_cohort_back_within_a_tick(app: TestApp) {
    seed(&app).await;
    let mut fleet = runtimes(&app, 30).await;
    let started = start(
        &app,
        start_request(vec![step(50, Duration::from_secs(3600))]),
    )
    .await;
    let first = started.step_revisions[0];
    let cohort: Vec<String> = fleet
        .iter()
        .filter(|runtime| in_step(&started.id, &runtime.id, 50))
        .map(|runtime| runtime.id.clone())
        .collect();
    assert!(cohort.len() >= 2, "{cohort:?}");
    for runtime in fleet
        .iter_mut()
        .filter(|runtime| cohort.contains(&runtime.id))
    {
        next_message(&mut runtime.stream).await;
    }
    report(
        &app,
        &cohort[0],
        first,
        ApplyState::Rejected,
        "rule 7 does not parse",
    )
    .await;

    let rolled_back = until(&app.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::RolledBack
    })
    .await;
    assert!(
        rolled_back.halted_because.contains(&format!(
            "{} rejected team/limits version 2: rule 7 does not parse",
            cohort[0]
        )),
        "{}",
        rolled_back.halted_because
    );
    for runtime in &mut fleet {
        let update = next_message(&mut runtime.stream).await;
        let bundles = bundles_of(&update);
        assert_eq!(
            bundles[0].1, 1,
            "{} is back on the stable version",
            runtime.id
        );
        assert!(bundles[0].2 > first);
    }
    let events = app.events("team", "limits").await;
    let back = events
        .iter()
        .find(|event| event.kind() == proto::EventKind::RolloutRolledBack)
        .expect("a ROLLOUT_ROLLED_BACK event");
    assert!(back.reason.contains(&cohort[0]), "{}", back.reason);
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 1);
    // The policy is free again: a plain activation works.
    app.try_activate(vec![target("team", "limits", 2)])
        .await
        .unwrap();
}

async fn a_missed_apply_deadline_rolls_the_cohort_back(app: TestApp) {
    seed(&app).await;
    let _fleet = runtimes(&app, 10).await;
    let mut request = start_request(vec![step(100, Duration::from_secs(3600))]);
    request.failure_rule = Some(proto::FailureRule {
        apply_deadline: Some(Duration::from_millis(300).try_into().unwrap()),
        max_rejected_fraction: 0.5,
        ..Default::default()
    });
    let started = start(&app, request).await;
    let rolled_back = until(&app.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::RolledBack
    })
    .await;
    assert!(
        rolled_back
            .halted_because
            .contains("had not applied team/limits version 2"),
        "{}",
        rolled_back.halted_because
    );
}

async fn pause_resume_promote_and_abort_do_what_they_say(app: TestApp) {
    seed(&app).await;
    let control = |id: &str| proto::RolloutControlRequest {
        namespace: "team".into(),
        id: id.into(),
        reason: "by hand".into(),
    };
    let started = start(
        &app,
        start_request(vec![
            step(10, Duration::from_millis(200)),
            step(100, Duration::ZERO),
        ]),
    )
    .await;
    let paused = app
        .policy
        .clone()
        .pause_rollout(control(&started.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.state(), RolloutState::Paused);
    assert!(paused.halted_because.contains("by hand"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(&app.policy, &started.id).await.step,
        0,
        "a paused rollout does not advance"
    );
    let resumed = app
        .policy
        .clone()
        .resume_rollout(control(&started.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state(), RolloutState::Running);
    let promoted = app
        .policy
        .clone()
        .promote_rollout(control(&started.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.state(), RolloutState::Completed);
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 2);

    app.release("team", "limits", json!({"max": 3}), false)
        .await;
    let mut request = start_request(vec![step(50, Duration::from_secs(3600))]);
    request.targets[0].selector = Some(proto::rollout_target_request::Selector::Version(3));
    request.targets[0].expected_active_version = Some(2);
    let second = start(&app, request).await;
    let aborted = app
        .policy
        .clone()
        .abort_rollout(control(&second.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.state(), RolloutState::Aborted);
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 2);
    let kinds = kinds(&app.events("team", "limits").await);
    for kind in [
        "ROLLOUT_PAUSED",
        "ROLLOUT_RESUMED",
        "ROLLOUT_COMPLETED",
        "ROLLOUT_ABORTED",
    ] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let listed = app
        .policy
        .clone()
        .list_rollouts(proto::ListRolloutsRequest {
            namespace: "team".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed
        .rollouts
        .iter()
        .map(|rollout| rollout.id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec![second.id.as_str(), started.id.as_str()],
        "newest first"
    );
}

async fn bad_rollout_requests_are_refused_and_change_nothing(app: TestApp) {
    seed(&app).await;
    app.release("team", "fresh", json!({"max": 1}), false).await;
    let before = app.db_state().await;
    let refused = |request: proto::StartRolloutRequest| {
        let client = app.policy.clone();
        async move { client.clone().start_rollout(request).await }
    };
    let ok_steps = || vec![step(10, Duration::from_secs(60))];
    let mut unknown = start_request(ok_steps());
    unknown.targets[0].name = "nothing".into();
    expect_code(refused(unknown).await, Code::NotFound);
    for (steps, field) in [
        (vec![], "steps"),
        (
            vec![step(50, Duration::ZERO), step(50, Duration::ZERO)],
            "steps[1].percentage",
        ),
        (vec![step(0, Duration::ZERO)], "steps[0].percentage"),
        (
            vec![step(10, Duration::from_secs(8 * 24 * 3600))],
            "steps[0].bake",
        ),
    ] {
        let message = expect_code(refused(start_request(steps)).await, Code::InvalidArgument);
        assert!(message.starts_with(field), "{field}: {message}");
    }
    let mut fresh = start_request(ok_steps());
    fresh.targets[0].name = "fresh".into();
    fresh.targets[0].expected_active_version = None;
    fresh.targets[0].selector = Some(proto::rollout_target_request::Selector::Version(1));
    let message = expect_code(refused(fresh).await, Code::FailedPrecondition);
    assert!(
        message.contains("nothing of team/fresh is active yet"),
        "{message}"
    );
    let mut stale = start_request(ok_steps());
    stale.targets[0].expected_active_version = Some(7);
    expect_code(refused(stale).await, Code::Aborted);
    let unknown_id = app
        .policy
        .clone()
        .get_rollout(proto::GetRolloutRequest {
            namespace: "team".into(),
            id: "not-a-uuid".into(),
        })
        .await;
    expect_code(unknown_id, Code::InvalidArgument);
    assert_eq!(
        app.db_state().await,
        before,
        "refused requests write nothing"
    );

    // A live rollout holds its policy.
    let started = start(&app, start_request(ok_steps())).await;
    let message = expect_code(
        refused(start_request(ok_steps())).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains(&started.id), "{message}");
    let message = expect_code(
        app.try_activate(vec![target("team", "limits", 2)]).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains(&format!("rollout {}", started.id)),
        "{message}"
    );
    let rollback = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: "limits".into(),
            reason: "undo".into(),
            ..Default::default()
        })
        .await;
    let message = expect_code(rollback, Code::FailedPrecondition);
    assert!(message.contains(&started.id), "{message}");
    let resume = app
        .policy
        .clone()
        .resume_rollout(proto::RolloutControlRequest {
            namespace: "team".into(),
            id: started.id.clone(),
            reason: String::new(),
        })
        .await;
    let message = expect_code(resume, Code::FailedPrecondition);
    assert!(message.contains("it is running"), "{message}");
    let missing = app
        .policy
        .clone()
        .abort_rollout(proto::RolloutControlRequest {
            namespace: "team".into(),
            id: uuid::Uuid::new_v4().to_string(),
            reason: String::new(),
        })
        .await;
    expect_code(missing, Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_shows_pauses_lists_and_aborts_a_rollout() {
    use crate::cli::policyhub;
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
    seed(&app).await;
    let started = policyhub(
        &app,
        &[
            "rollout",
            "start",
            "team/limits@2",
            "--step",
            "10:1h",
            "--step",
            "100",
            "--expected-active-version",
            "team/limits@1",
            "--reason",
            "canary",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(started["state"], "ROLLOUT_STATE_RUNNING");
    assert_eq!(started["targets"][0]["stableVersion"], 1);
    let id = started["id"].as_str().unwrap().to_owned();
    let status = policyhub(&app, &["rollout", "status", "team", &id]);
    let text = status.success();
    assert!(text.contains("state: running, step 1 of 2 (10%"), "{text}");
    assert!(text.contains("cohort: 0 runtimes"), "{text}");
    let paused = policyhub(
        &app,
        &[
            "rollout",
            "pause",
            "team",
            &id,
            "--reason",
            "look first",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(paused["state"], "ROLLOUT_STATE_PAUSED");
    let listed = policyhub(&app, &["rollout", "list", "team", "-o", "json"]).json();
    assert_eq!(listed["rollouts"][0]["id"], id.as_str());
    let refused = policyhub(&app, &["rollout", "pause", "team", &id]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("it is paused"),
        "{}",
        refused.stderr
    );
    let aborted = policyhub(&app, &["rollout", "abort", "team", &id, "-o", "json"]).json();
    assert_eq!(aborted["state"], "ROLLOUT_STATE_ABORTED");
    let watched = policyhub(&app, &["rollout", "status", "team", &id, "--watch"]);
    assert!(
        watched.success().contains("state: aborted"),
        "a finished rollout ends the watch"
    );
    for usage in [
        vec!["rollout", "start", "team/limits@2", "--step", "ten"],
        vec!["rollout", "start", "team/limits@2"],
    ] {
        let run = policyhub(&app, &usage);
        assert_eq!(run.code, 2, "{usage:?}: {}", run.stderr);
    }
}

async fn a_runtime_that_resumes_mid_rollout_gets_its_cohorts_view_in_one_update(app: TestApp) {
    seed(&app).await;
    let steps = vec![
        step(10, Duration::from_millis(300)),
        step(60, Duration::from_secs(3600)),
    ];
    let started = start(&app, start_request(steps)).await;
    // Pick a runtime the second step adds; it was away the whole time.
    let id = (0..1000)
        .map(|n| format!("away-{n}"))
        .find(|id| !in_step(&started.id, id, 10) && in_step(&started.id, id, 60))
        .unwrap();
    let advanced = until(&app.policy, &started.id, |rollout| rollout.step == 1).await;
    let since = started.step_revisions[0] - 1;
    let mut stream = app
        .bundle
        .clone()
        .watch_active(proto::WatchActiveRequest {
            namespace: "team".into(),
            names: Vec::new(),
            since_revision: since,
            runtime: Some(proto::RuntimeIdentity {
                id: id.clone(),
                labels: Default::default(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    // The rollout reads as advanced once the step commits, and the index
    // applies the step a moment after the commit: a stream opened in
    // between starts at the revision before it, which holds nothing for
    // this runtime.
    let update = loop {
        let message = next_message(&mut stream).await;
        if message.revision >= advanced.step_revisions[1] {
            break message;
        }
        assert!(bundles_of(&message).is_empty(), "{message:?}");
    };
    assert_eq!(update.kind(), proto::WatchEventKind::Update);
    assert_eq!(
        bundles_of(&update),
        vec![("team/limits".into(), 2, advanced.step_revisions[1])],
        "one update with the candidate, at the step that added {id}"
    );
    // An anonymous stream resuming from the same revision has nothing new.
    let mut anonymous = app.watch("team", &[], since).await;
    let first = next_message(&mut anonymous).await;
    assert!(bundles_of(&first).is_empty(), "{first:?}");
}

async fn a_scheduled_rollout_waits_for_its_start_time(app: TestApp) {
    seed(&app).await;
    let mut request = start_request(vec![step(100, Duration::from_secs(3600))]);
    let at = chrono::Utc::now() + chrono::TimeDelta::milliseconds(700);
    request.start_at = Some(policyhub::grpc::convert::timestamp(at));
    let scheduled = start(&app, request).await;
    assert_eq!(scheduled.state(), RolloutState::Scheduled);
    assert!(
        scheduled.step_revisions.is_empty(),
        "nothing is sent before the start"
    );
    // It already holds its policy.
    expect_code(
        app.try_activate(vec![target("team", "limits", 2)]).await,
        Code::FailedPrecondition,
    );
    let running = until(&app.policy, &scheduled.id, |rollout| {
        rollout.state() == RolloutState::Running
    })
    .await;
    let began = running.step_started_at.unwrap();
    assert!(began.seconds * 1_000 + i64::from(began.nanos) / 1_000_000 >= at.timestamp_millis());
    let kinds = kinds(&app.events("team", "limits").await);
    assert!(
        kinds.contains(&"ROLLOUT_SCHEDULED") && kinds.contains(&"ROLLOUT_STARTED"),
        "{kinds:?}"
    );
    let mut far = start_request(vec![step(100, Duration::ZERO)]);
    far.start_at = Some(policyhub::grpc::convert::timestamp(
        chrono::Utc::now() + chrono::TimeDelta::days(91),
    ));
    let message = expect_code(
        app.policy.clone().start_rollout(far).await,
        Code::InvalidArgument,
    );
    assert!(message.starts_with("start_at"), "{message}");
}

const SELF_PAUSED: &str = "policyhub_rollouts_self_paused";

/// A rollout whose runtimes miss the apply deadline, without automatic
/// rollback, pauses itself and is counted by the gauge of rollouts that
/// paused themselves; promtool accepts the exposition. The gauge is the
/// process's, set by every test's server, so it is read until this
/// server's count shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_paused_itself_is_gauged() {
    let app = crate::schedules::with_metrics(Backend::Sqlite).await;
    let address = app.metrics_address.expect("a metrics port");
    seed(&app).await;
    let _fleet = runtimes(&app, 10).await;
    let mut request = start_request(vec![step(100, Duration::from_secs(3600))]);
    request.auto_rollback = Some(false);
    request.failure_rule = Some(proto::FailureRule {
        apply_deadline: Some(Duration::from_millis(300).try_into().unwrap()),
        max_rejected_fraction: 0.5,
        ..Default::default()
    });
    let started = start(&app, request).await;
    let paused = until(&app.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Paused
    })
    .await;
    assert!(
        paused.halted_because.contains("had not applied"),
        "{}",
        paused.halted_because
    );
    let mut exposition = String::new();
    for _ in 0..100 {
        exposition = crate::observability::scrape(address).await;
        if sample(&exposition, SELF_PAUSED) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sample(&exposition, SELF_PAUSED) >= 1.0, "{exposition}");
    assert!(
        exposition.contains("# TYPE policyhub_rollouts_self_paused gauge"),
        "{exposition}"
    );
    crate::helpers::promtool_accepts(&exposition);
}
