//! Recurring schedules: entries fire on their cron patterns as ordinary
//! activations, a refused firing pauses the schedule with the reason, the
//! most recent missed firing fires once after downtime, and on several
//! replicas each firing fires once. Patterns with seconds keep the tests
//! short; the daylight-saving arithmetic is checked against known dates in
//! the domain's unit tests.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use policyhub::grpc::proto::{
    self, EventKind, policy_service_client::PolicyServiceClient, schedule_target_request::Selector,
};
use serde_json::json;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::cli::policyhub;
use crate::helpers::{
    Backend, TestApp, TestDatabase, expect_code, free_port, publish_request, spawn_on, target,
};
use crate::rollout_binary::{seed, serve};
use crate::rollouts::{start_request, step};
use crate::runtime_library::kill_9;

crate::on_both_backends!(
    entries_fire_on_their_patterns_and_pause_resume_and_delete_work,
    a_refused_firing_pauses_the_schedule_with_the_reason,
    a_resume_applies_the_entry_in_force_once,
    a_firing_of_what_is_already_active_is_recorded,
    bad_schedules_are_refused_and_change_nothing,
);

/// An entry of team/limits at `version`.
fn entry(name: &str, cron: &str, version: u32) -> proto::ScheduleEntryRequest {
    proto::ScheduleEntryRequest {
        name: name.into(),
        cron: cron.into(),
        time_zone: "UTC".into(),
        targets: vec![proto::ScheduleTargetRequest {
            name: "limits".into(),
            selector: Some(Selector::Version(version)),
        }],
    }
}

fn request(name: &str, entries: Vec<proto::ScheduleEntryRequest>) -> proto::SetScheduleRequest {
    proto::SetScheduleRequest {
        namespace: "team".into(),
        name: name.into(),
        entries,
        paused: false,
        reason: "follow the calendar".into(),
    }
}

async fn set(
    policy: &PolicyServiceClient<Channel>,
    request: proto::SetScheduleRequest,
) -> Result<proto::Schedule, Status> {
    Ok(policy.clone().set_schedule(request).await?.into_inner())
}

async fn get(policy: &PolicyServiceClient<Channel>, name: &str) -> Result<proto::Schedule, Status> {
    Ok(policy
        .clone()
        .get_schedule(proto::GetScheduleRequest {
            namespace: "team".into(),
            name: name.into(),
        })
        .await?
        .into_inner())
}

fn control(name: &str) -> proto::ScheduleControlRequest {
    proto::ScheduleControlRequest {
        namespace: "team".into(),
        name: name.into(),
        reason: "maintenance".into(),
    }
}

/// team/limits' events, oldest first.
async fn events(policy: &PolicyServiceClient<Channel>) -> Vec<proto::Event> {
    let mut events = policy
        .clone()
        .list_events(proto::ListEventsRequest {
            namespace: "team".into(),
            name: "limits".into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("list events")
        .into_inner()
        .events;
    events.sort_by_key(|event| event.id);
    events
}

/// The activations the controller made for schedule `name`: (entry, due
/// at, version).
async fn firings(policy: &PolicyServiceClient<Channel>, name: &str) -> Vec<(String, String, u32)> {
    let prefix = format!("schedule {name} entry ");
    events(policy)
        .await
        .into_iter()
        .filter(|event| event.kind() == EventKind::Activated)
        .filter(|event| event.actor == "system:schedule-controller")
        .filter_map(|event| {
            let rest = event.reason.strip_prefix(&prefix)?.to_owned();
            let entry = rest.split_whitespace().next()?.to_owned();
            let due = rest.rsplit_once("due at ")?.1.to_owned();
            Some((entry, due, event.new_version))
        })
        .collect()
}

/// Polls until `done` holds of `name`'s firings, every 100 ms for at most
/// 15 s.
async fn until_fired(
    policy: &PolicyServiceClient<Channel>,
    name: &str,
    done: impl Fn(&[(String, String, u32)]) -> bool,
) -> Vec<(String, String, u32)> {
    for _ in 0..150 {
        let fired = firings(policy, name).await;
        if done(&fired) {
            return fired;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the schedule did not fire as expected: {:?}",
        firings(policy, name).await
    );
}

/// Polls schedule `name` until it is paused.
async fn until_paused(policy: &PolicyServiceClient<Channel>, name: &str) -> proto::Schedule {
    for _ in 0..150 {
        let schedule = get(policy, name).await.expect("get the schedule");
        if schedule.paused {
            return schedule;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("schedule {name} did not pause");
}

fn kinds(events: &[proto::Event]) -> Vec<EventKind> {
    events.iter().map(|event| event.kind()).collect()
}

async fn entries_fire_on_their_patterns_and_pause_resume_and_delete_work(app: TestApp) {
    seed(&mut app.policy.clone()).await;
    // Version 1 on even seconds, version 2 on odd ones.
    let flip = request(
        "flip",
        vec![
            entry("even", "*/2 * * * * *", 1),
            entry("odd", "1-59/2 * * * * *", 2),
        ],
    );
    let saved = set(&app.policy, flip).await.expect("set the schedule");
    assert_eq!(saved.entries[1].targets[0].version, 2);
    assert!(saved.entries[1].targets[0].digest.starts_with("sha256:"));
    assert_eq!(saved.upcoming.len(), 5);
    for pair in saved.upcoming.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_ne!(
            a.entry, b.entry,
            "the entries alternate: {:?}",
            saved.upcoming
        );
        let gap = b.at.as_ref().unwrap().seconds - a.at.as_ref().unwrap().seconds;
        assert_eq!(gap, 1, "{:?}", saved.upcoming);
    }

    let fired = until_fired(&app.policy, "flip", |fired| fired.len() >= 3).await;
    for pair in fired.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "each firing once, in order: {fired:?}"
        );
        assert_ne!(
            pair[0].2, pair[1].2,
            "each firing moves the pointer: {fired:?}"
        );
    }
    for (entry, _, version) in &fired {
        assert_eq!(*version, if entry == "even" { 1 } else { 2 }, "{fired:?}");
    }
    let current = get(&app.policy, "flip").await.unwrap();
    let last = current.last_firing.expect("a last firing");
    assert!(last.revision > 0 && last.error.is_empty(), "{last:?}");

    // Paused, it does not fire; resumed, it does again.
    let paused = app
        .policy
        .clone()
        .pause_schedule(control("flip"))
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused && paused.upcoming.is_empty());
    assert!(
        paused.paused_because.contains("maintenance"),
        "{}",
        paused.paused_because
    );
    let count = firings(&app.policy, "flip").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(firings(&app.policy, "flip").await.len(), count, "paused");
    let again = expect_code(
        app.policy.clone().pause_schedule(control("flip")).await,
        Code::FailedPrecondition,
    );
    assert!(again.contains("it is paused"), "{again}");
    app.policy
        .clone()
        .resume_schedule(control("flip"))
        .await
        .unwrap();
    until_fired(&app.policy, "flip", |fired| fired.len() >= count + 2).await;

    // A manual activation is allowed beside the schedule.
    app.try_activate(vec![target("team", "limits", 2)])
        .await
        .expect("activate by hand");

    app.policy
        .clone()
        .delete_schedule(control("flip"))
        .await
        .unwrap();
    expect_code(get(&app.policy, "flip").await, Code::NotFound);
    let count = firings(&app.policy, "flip").await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(firings(&app.policy, "flip").await.len(), count, "deleted");
    let kinds = kinds(&events(&app.policy).await);
    for kind in [
        EventKind::ScheduleSet,
        EventKind::SchedulePaused,
        EventKind::ScheduleResumed,
        EventKind::ScheduleDeleted,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
}

/// Drafts and publishes team/`name` with `label`, requiring `requirements`.
async fn release(
    app: &TestApp,
    name: &str,
    label: &str,
    requirements: Vec<proto::Requirement>,
    activate: bool,
) {
    app.policy
        .clone()
        .draft(proto::DraftRequest {
            namespace: "team".into(),
            name: name.into(),
            body: Some(policyhub::grpc::convert::json_to_struct(
                &json!({"label": label}),
            )),
            requirements,
            ..Default::default()
        })
        .await
        .expect("draft");
    app.try_publish(publish_request("team", name, label, activate))
        .await
        .expect("publish");
}

async fn a_refused_firing_pauses_the_schedule_with_the_reason(app: TestApp) {
    seed(&mut app.policy.clone()).await;
    // A rollout holds team/limits: the firing is refused.
    let rollout = app
        .policy
        .clone()
        .start_rollout(start_request(vec![step(50, Duration::from_secs(3600))]))
        .await
        .expect("start a rollout")
        .into_inner();
    set(
        &app.policy,
        request("hold", vec![entry("every", "* * * * * *", 1)]),
    )
    .await
    .expect("set the schedule");
    let paused = until_paused(&app.policy, "hold").await;
    assert!(
        paused.paused_because.contains("entry every due at")
            && paused
                .paused_because
                .contains(&format!("rollout {}", rollout.id)),
        "{}",
        paused.paused_because
    );
    let last = paused.last_firing.expect("the refused firing");
    assert_eq!(last.revision, 0);
    assert!(last.error.contains("rollout"), "{}", last.error);
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 1);
    let reasons: Vec<String> = events(&app.policy)
        .await
        .into_iter()
        .filter(|event| event.kind() == EventKind::SchedulePaused)
        .map(|event| event.reason)
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("was refused"), "{reasons:?}");
    app.policy
        .clone()
        .abort_rollout(proto::RolloutControlRequest {
            namespace: "team".into(),
            id: rollout.id,
            reason: "make way".into(),
        })
        .await
        .expect("abort");

    // An unmet requirement: version 3 needs team/base ^2, and 1.0.0 is
    // active.
    release(&app, "base", "1.0.0", Vec::new(), true).await;
    release(&app, "base", "2.0.0", Vec::new(), false).await;
    let needs_base = vec![proto::Requirement {
        name: "base".into(),
        range: "^2".into(),
    }];
    release(&app, "limits", "3.0.0", needs_base, false).await;
    set(
        &app.policy,
        request("hold", vec![entry("every", "* * * * * *", 3)]),
    )
    .await
    .expect("replace the schedule");
    let paused = until_paused(&app.policy, "hold").await;
    assert!(
        paused.paused_because.contains("requires team/base ^2"),
        "{}",
        paused.paused_because
    );
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 1);

    // Resumed while still unmet: refused, and still paused.
    let message = expect_code(
        app.policy.clone().resume_schedule(control("hold")).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("cannot resume schedule hold: its entry in force, every"),
        "{message}"
    );
    assert!(get(&app.policy, "hold").await.unwrap().paused);

    // Met, and resumed: the entry in force is applied by the resume.
    let base = app.try_activate(vec![target("team", "base", 2)]).await;
    base.expect("activate base 2.0.0");
    app.policy
        .clone()
        .resume_schedule(control("hold"))
        .await
        .expect("resume");
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 3);
}

/// The server on `database` with its metrics port, as the tests of
/// schedules need it.
pub(crate) async fn with_metrics(backend: Backend) -> TestApp {
    spawn_on(TestDatabase::new(backend).await, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await
}

/// The ACTIVATED events that name schedule `name`, whoever made them.
async fn activations_of(policy: &PolicyServiceClient<Channel>, name: &str) -> Vec<proto::Event> {
    let prefix = format!("schedule {name} entry ");
    events(policy)
        .await
        .into_iter()
        .filter(|event| event.kind() == EventKind::Activated && event.reason.starts_with(&prefix))
        .collect()
}

/// A firing refused on "Friday" (a rollout held the policy), the rollout
/// aborted, the schedule resumed before the next firing: the resume puts
/// the entry in force ("weekend") in place at once, once, and a second
/// resume finds it already active and moves nothing.
async fn a_resume_applies_the_entry_in_force_once(app: TestApp) {
    seed(&mut app.policy.clone()).await;
    let rollout = app
        .policy
        .clone()
        .start_rollout(start_request(vec![step(50, Duration::from_secs(3600))]))
        .await
        .expect("start a rollout")
        .into_inner();
    let friday = Utc::now() + chrono::TimeDelta::seconds(2);
    let monday = friday + chrono::TimeDelta::days(3);
    let mut calendar = request("weekend-mode", vec![entry("weekday", &once_at(monday), 1)]);
    calendar.entries.push(entry("weekend", &once_at(friday), 2));
    set(&app.policy, calendar).await.expect("set the schedule");
    let paused = until_paused(&app.policy, "weekend-mode").await;
    assert!(
        paused.paused_because.contains("entry weekend"),
        "{}",
        paused.paused_because
    );
    app.policy
        .clone()
        .abort_rollout(proto::RolloutControlRequest {
            namespace: "team".into(),
            id: rollout.id,
            reason: "make way".into(),
        })
        .await
        .expect("abort");
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 1);

    let resumed = app
        .policy
        .clone()
        .resume_schedule(control("weekend-mode"))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 2);
    let last = resumed.last_firing.expect("the firing in force");
    assert_eq!(last.entry, "weekend");
    assert!(last.revision > 0 && last.error.is_empty(), "{last:?}");
    let applied = activations_of(&app.policy, "weekend-mode").await;
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(applied[0].reason.contains("entry weekend"), "{applied:?}");
    assert!(
        applied[0].reason.contains("in force when resumed"),
        "{applied:?}"
    );
    assert_eq!(applied[0].new_version, 2);

    // Not again on the next ticks.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(activations_of(&app.policy, "weekend-mode").await.len(), 1);
    let revision = app.get_active("team", "limits").await.unwrap().revision;

    // Paused and resumed again: already active, nothing moves.
    app.policy
        .clone()
        .pause_schedule(control("weekend-mode"))
        .await
        .expect("pause");
    app.policy
        .clone()
        .resume_schedule(control("weekend-mode"))
        .await
        .expect("resume again");
    assert_eq!(activations_of(&app.policy, "weekend-mode").await.len(), 1);
    let active = app.get_active("team", "limits").await.unwrap();
    assert_eq!((active.version, active.revision), (2, revision));
}

/// A firing of the version already active moves nothing and takes no
/// revision, but the log says it fired: a SCHEDULE_ALREADY_ACTIVE event
/// naming the entry, chained and exported like any other.
async fn a_firing_of_what_is_already_active_is_recorded(app: TestApp) {
    seed(&mut app.policy.clone()).await;
    let revision = app.get_active("team", "limits").await.unwrap().revision;
    set(
        &app.policy,
        request("same", vec![entry("keep", "* * * * * *", 1)]),
    )
    .await
    .expect("set the schedule");
    let mut recorded = Vec::new();
    for _ in 0..150 {
        recorded = events(&app.policy)
            .await
            .into_iter()
            .filter(|event| event.kind() == EventKind::ScheduleAlreadyActive)
            .collect();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = recorded.first().expect("a SCHEDULE_ALREADY_ACTIVE event");
    assert_eq!(event.actor, "system:schedule-controller");
    assert!(
        event
            .reason
            .starts_with("schedule same entry keep (* * * * * * in UTC) due at ")
            && event
                .reason
                .ends_with("version 1 was already active, nothing moved"),
        "{}",
        event.reason
    );
    assert_eq!((event.new_version, event.revision), (1, 0));
    assert!(
        firings(&app.policy, "same").await.is_empty(),
        "nothing moved"
    );
    let schedule = get(&app.policy, "same").await.unwrap();
    assert!(!schedule.paused);
    let last = schedule.last_firing.expect("a last firing");
    assert_eq!((last.revision, last.error.as_str()), (revision, ""));
    assert_eq!(
        app.get_active("team", "limits").await.unwrap().revision,
        revision
    );

    // The chain holds, on the server and in an export.
    app.policy
        .clone()
        .delete_schedule(control("same"))
        .await
        .unwrap();
    let verified = policyhub(&app, &["verify-log"]);
    assert!(
        verified.success().contains("signed checkpoints hold"),
        "{}",
        verified.stdout
    );
    let exported = policyhub(&app, &["export"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archive.jsonl");
    std::fs::write(&file, exported.success()).unwrap();
    let file = file.display().to_string();
    let offline = policyhub(&app, &["verify-log", "-f", &file]);
    assert!(
        offline.success().contains("signed checkpoints hold"),
        "{}",
        offline.stdout
    );
}

async fn bad_schedules_are_refused_and_change_nothing(app: TestApp) {
    seed(&mut app.policy.clone()).await;
    app.draft("team", "limits", json!({"max": 3})).await;
    let before = app.db_state().await;
    let good = || entry("weekend", "0 18 * * FRI", 2);
    let with = |change: &dyn Fn(&mut proto::SetScheduleRequest)| {
        let mut bad = request("weekend-mode", vec![good()]);
        change(&mut bad);
        bad
    };
    let cases: Vec<(&str, proto::SetScheduleRequest, &str)> = vec![
        (
            "malformed cron",
            with(&|r| r.entries[0].cron = "61 * * * *".into()),
            "entries[0].cron",
        ),
        (
            "three fields",
            with(&|r| r.entries[0].cron = "* * *".into()),
            "entries[0].cron",
        ),
        (
            "never fires",
            with(&|r| r.entries[0].cron = "0 0 31 2 *".into()),
            "never fires",
        ),
        (
            "unknown zone",
            with(&|r| r.entries[0].time_zone = "Mars/Olympus".into()),
            "entries[0].time_zone",
        ),
        (
            "empty zone",
            with(&|r| r.entries[0].time_zone = String::new()),
            "entries[0].time_zone",
        ),
        (
            "NUL in cron",
            with(&|r| r.entries[0].cron = "0 18 * * FRI\0".into()),
            "entries[0].cron",
        ),
        (
            "long pattern",
            with(&|r| r.entries[0].cron = "0 ".repeat(200)),
            "at most 256 bytes",
        ),
        (
            "a draft",
            with(&|r| r.entries[0].targets[0].selector = Some(Selector::Version(3))),
            "published versions only",
        ),
        (
            "no selector",
            with(&|r| r.entries[0].targets[0].selector = None),
            "entries[0].targets[0].version",
        ),
        (
            "bad label",
            with(&|r| r.entries[0].targets[0].selector = Some(Selector::Label("x".into()))),
            "entries[0].targets[0].version",
        ),
        (
            "no targets",
            with(&|r| r.entries[0].targets.clear()),
            "entries[0].targets",
        ),
        (
            "twice the same policy",
            with(&|r| {
                let twice = r.entries[0].targets[0].clone();
                r.entries[0].targets.push(twice)
            }),
            "already targeted",
        ),
        (
            "no entries",
            with(&|r| r.entries.clear()),
            "at least one entry",
        ),
        (
            "17 entries",
            with(&|r| {
                r.entries = (0..17)
                    .map(|n| entry(&format!("e{n}"), "0 18 * * FRI", 2))
                    .collect()
            }),
            "at most 16",
        ),
        (
            "same entry name",
            with(&|r| r.entries.push(good())),
            "already the name of entries[0]",
        ),
        (
            "bad entry name",
            with(&|r| r.entries[0].name = "Weekend".into()),
            "entries[0].name",
        ),
        (
            "bad schedule name",
            with(&|r| r.name = "weekend mode".into()),
            "schedule name",
        ),
        (
            "bad namespace",
            with(&|r| r.namespace = "Team".into()),
            "namespace",
        ),
    ];
    for (what, bad, says) in cases {
        let message = expect_code(set(&app.policy, bad).await, Code::InvalidArgument);
        assert!(message.contains(says), "{what}: {message}");
    }
    assert_eq!(app.db_state().await, before, "nothing was written");
    let listed = app
        .policy
        .clone()
        .list_schedules(proto::ListSchedulesRequest {
            namespace: "team".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.schedules.is_empty(), "{listed:?}");

    // A policy belongs to one schedule.
    set(&app.policy, request("weekend-mode", vec![good()]))
        .await
        .expect("a good schedule");
    let before = app.db_state().await;
    let message = expect_code(
        set(&app.policy, request("other", vec![good()])).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("already activated by schedule weekend-mode"),
        "{message}"
    );
    assert_eq!(app.db_state().await, before);
    expect_code(get(&app.policy, "other").await, Code::NotFound);
    let message = expect_code(
        app.policy
            .clone()
            .resume_schedule(control("weekend-mode"))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("not paused"), "{message}");
    expect_code(
        app.policy.clone().delete_schedule(control("nope")).await,
        Code::NotFound,
    );
}

/// A value of the exposition, 0 when the series is not there yet.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const APPLIED: &str = r#"policyhub_schedule_firings_total{outcome="applied"}"#;
const ALREADY_ACTIVE: &str = r#"policyhub_schedule_firings_total{outcome="already_active"}"#;
const REFUSED: &str = r#"policyhub_schedule_firings_total{outcome="refused"}"#;
const PAUSED_BY_REFUSAL: &str = "policyhub_schedules_paused_by_refusal";

/// The metrics of schedules count a firing applied, one already active and
/// one refused, and gauge the schedule the refusal paused; promtool accepts
/// the exposition. The counters are the process's, shared with the other
/// tests' servers, so they are compared before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_metrics_count_firings_by_outcome_and_the_self_paused() {
    let app = with_metrics(Backend::Sqlite).await;
    let address = app.metrics_address.expect("a metrics port");
    let before = crate::observability::scrape(address).await;
    seed(&mut app.policy.clone()).await;
    // Version 1 is active: "keep" finds it so, "apply" moves to 2, "back"
    // to 1.
    let keep_at = Utc::now() + chrono::TimeDelta::seconds(2);
    let mut calendar = request("metered", vec![entry("keep", &once_at(keep_at), 1)]);
    let apply_at = keep_at + chrono::TimeDelta::seconds(1);
    calendar.entries.push(entry("apply", &once_at(apply_at), 2));
    let back_at = apply_at + chrono::TimeDelta::seconds(1);
    calendar.entries.push(entry("back", &once_at(back_at), 1));
    set(&app.policy, calendar).await.expect("set the schedule");
    until_fired(&app.policy, "metered", |fired| fired.len() == 2).await;

    // A rollout holds team/limits: the next firing is refused.
    app.policy
        .clone()
        .start_rollout(start_request(vec![step(50, Duration::from_secs(3600))]))
        .await
        .expect("start a rollout");
    let refused_at = Utc::now() + chrono::TimeDelta::seconds(2);
    set(
        &app.policy,
        request("metered", vec![entry("refuse", &once_at(refused_at), 1)]),
    )
    .await
    .expect("replace the schedule");
    until_paused(&app.policy, "metered").await;

    let mut after = String::new();
    for _ in 0..100 {
        after = crate::observability::scrape(address).await;
        if sample(&after, PAUSED_BY_REFUSAL) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sample(&after, PAUSED_BY_REFUSAL) >= 1.0, "{after}");
    for (series, at_least) in [(APPLIED, 2.0), (ALREADY_ACTIVE, 1.0), (REFUSED, 1.0)] {
        assert!(
            sample(&after, series) >= sample(&before, series) + at_least,
            "{series}: {after}"
        );
    }
    assert!(
        after.contains("# TYPE policyhub_schedule_firings_total counter")
            && after.contains("# TYPE policyhub_schedules_paused_by_refusal gauge"),
        "{after}"
    );
    crate::helpers::promtool_accepts(&after);
}

/// An entry whose pattern fires more often than `schedules.min_interval`
/// (a minute by default) is refused naming it, and nothing is saved.
async fn a_pattern_firing_more_often_than_the_floor_is_refused(backend: Backend) {
    let app = spawn_on(TestDatabase::new(backend).await, |settings| {
        settings.schedules = policyhub::config::ScheduleSettings::default();
    })
    .await;
    seed(&mut app.policy.clone()).await;
    let before = app.db_state().await;
    let mut fast = request("fast", vec![entry("weekday", "0 0 * * MON", 1)]);
    fast.entries.push(entry("burst", "*/10 * * * * *", 2));
    let status = set(&app.policy, fast).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let violation = &status.get_details_bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "entries[1].cron");
    assert!(
        violation
            .description
            .contains("entry burst fires 10s apart")
            && violation.description.contains("at most once every 1m"),
        "{}",
        violation.description
    );
    assert_eq!(app.db_state().await, before, "nothing was written");
    set(
        &app.policy,
        request("calm", vec![entry("minutely", "* * * * *", 2)]),
    )
    .await
    .expect("once a minute is allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_firing_more_often_than_the_floor_is_refused_on_sqlite() {
    a_pattern_firing_more_often_than_the_floor_is_refused(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_firing_more_often_than_the_floor_is_refused_on_postgres() {
    a_pattern_firing_more_often_than_the_floor_is_refused(Backend::Postgres).await;
}

/// The field of the first violation of an INVALID_ARGUMENT status.
fn violated_field(result: Result<proto::Schedule, Status>) -> String {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a BadRequest")
        .field_violations[0]
        .field
        .clone()
}

/// A target naming a policy, a version or a label that does not exist is a
/// bad field of the request, over gRPC and over HTTP (400, not the 404 of
/// a missing route), and nothing is saved.
async fn a_target_that_does_not_exist_is_a_bad_field_and_changes_nothing(app: TestApp) {
    seed(&mut app.policy.clone()).await;
    let before = app.db_state().await;
    let mut missing_policy = request("weekend-mode", vec![entry("weekday", "0 0 * * MON", 1)]);
    let mut weekend = entry("weekend", "0 18 * * FRI", 2);
    weekend.targets.push(proto::ScheduleTargetRequest {
        name: "nope".into(),
        selector: Some(Selector::Version(1)),
    });
    missing_policy.entries.push(weekend);
    let missing_version = request("weekend-mode", vec![entry("weekday", "0 0 * * MON", 9)]);
    let mut missing_label = missing_version.clone();
    missing_label.entries[0].targets[0].selector = Some(Selector::Label("9.9.9".into()));
    for (bad, field) in [
        (missing_policy, "entries[1].targets[1]"),
        (missing_version, "entries[0].targets[0]"),
        (missing_label, "entries[0].targets[0]"),
    ] {
        assert_eq!(violated_field(set(&app.policy, bad).await), field);
    }
    let body = json!({
        "entries": [{
            "name": "weekend",
            "cron": "0 18 * * FRI",
            "timeZone": "UTC",
            "targets": [{"name": "limits", "version": 1}, {"name": "nope", "version": 1}],
        }],
        "reason": "calm weekends",
    })
    .to_string();
    let path = "/v1/namespaces/team/schedules/weekend-mode";
    let reply = crate::http::curl(&app, "PUT", path, Some(&body), &[crate::http::JSON]);
    assert_eq!(reply.status, 400, "{reply:?}");
    let violation = &reply.json["details"][0]["fieldViolations"][0];
    assert_eq!(violation["field"], "entries[0].targets[1]", "{reply:?}");
    assert!(
        violation["description"]
            .as_str()
            .is_some_and(|text| text.contains("team/nope does not exist")),
        "{reply:?}"
    );
    assert_eq!(app.db_state().await, before, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_does_not_exist_is_a_bad_field_and_changes_nothing_on_sqlite() {
    let app = crate::http::app(Backend::Sqlite, true).await;
    a_target_that_does_not_exist_is_a_bad_field_and_changes_nothing(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_does_not_exist_is_a_bad_field_and_changes_nothing_on_postgres() {
    let app = crate::http::app(Backend::Postgres, true).await;
    a_target_that_does_not_exist_is_a_bad_field_and_changes_nothing(app).await;
}

/// A six-field pattern (seconds first) that fires once a year, at `at`.
fn once_at(at: DateTime<Utc>) -> String {
    use chrono::Datelike;
    format!(
        "{} {} {} {} {} *",
        at.second(),
        at.minute(),
        at.hour(),
        at.day(),
        at.month()
    )
}

/// The server killed with SIGKILL before two firings, started again after
/// both: only the later fires, once.
async fn after_a_kill_9_the_most_recent_missed_firing_fires_once(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let port = free_port();
    let (server, mut policy) = serve(port, &database).await;
    seed(&mut policy).await;
    let first = Utc::now() + chrono::TimeDelta::seconds(3);
    let second = first + chrono::TimeDelta::seconds(1);
    let mut missed = request("missed", vec![entry("first", &once_at(first), 1)]);
    missed.entries.push(entry("second", &once_at(second), 2));
    set(&policy, missed).await.expect("set the schedule");
    kill_9(server);
    let after = (second - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(after).await;

    let (server, policy) = serve(port, &database).await;
    let fired = until_fired(&policy, "missed", |fired| !fired.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fired_later = firings(&policy, "missed").await;
    assert_eq!(fired_later, fired, "it fired once");
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(
        (fired[0].0.as_str(), fired[0].2),
        ("second", 2),
        "{fired:?}"
    );
    kill_9(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_the_most_recent_missed_firing_fires_once_on_sqlite() {
    after_a_kill_9_the_most_recent_missed_firing_fires_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_the_most_recent_missed_firing_fires_once_on_postgres() {
    after_a_kill_9_the_most_recent_missed_firing_fires_once(Backend::Postgres).await;
}

/// Two replicas on one PostgreSQL database, both running the controller:
/// the event log holds each firing once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_firing_exactly_once() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let one = spawn_on(database, |_| {}).await;
    let two = spawn_on(replica, |_| {}).await;
    seed(&mut one.policy.clone()).await;
    let flip = request(
        "flip",
        vec![
            entry("even", "*/2 * * * * *", 1),
            entry("odd", "1-59/2 * * * * *", 2),
        ],
    );
    set(&two.policy, flip).await.expect("set the schedule");
    let fired = until_fired(&one.policy, "flip", |fired| fired.len() >= 6).await;
    let mut due: Vec<&String> = fired.iter().map(|(_, at, _)| at).collect();
    due.sort();
    due.dedup();
    assert_eq!(due.len(), fired.len(), "a firing fired twice: {fired:?}");
    let seen_by_two = firings(&two.policy, "flip").await;
    assert!(seen_by_two.starts_with(&fired), "one log: {seen_by_two:?}");
}

/// The CLI saves a schedule from a YAML file, shows its next firings in its
/// zone and in UTC, lists, pauses and deletes it; a misspelt file is refused
/// before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_shows_lists_pauses_and_deletes_a_schedule() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    seed(&mut app.policy.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weekend-mode.yaml");
    std::fs::write(
        &file,
        "entries:\n\
         - name: weekday\n  cron: \"0 0 * * MON\"\n  timeZone: Europe/Berlin\n  targets: [{name: limits, version: 2}]\n\
         - name: weekend\n  cron: \"0 18 * * FRI\"\n  timeZone: Europe/Berlin\n  targets: [{name: limits, version: 1}]\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let shown = policyhub(
        &app,
        &[
            "set-policy-schedule",
            "team/weekend-mode",
            "-f",
            &file,
            "--reason",
            "calm weekends",
        ],
    );
    let text = shown.success();
    assert!(
        text.contains("weekday  0 0 * * MON   Europe/Berlin  limits v2"),
        "{text}"
    );
    // Five firings, each in its zone and in UTC: 18:00 CET is 17:00 UTC (or
    // 18:00 CEST, 16:00 UTC), Monday 00:00 is Sunday 23:00 or 22:00 UTC.
    let next: Vec<&str> = text
        .lines()
        .skip_while(|line| !line.starts_with("NEXT"))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect();
    assert_eq!(next.len(), 5, "{text}");
    for line in next {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, utc) = (fields[3], fields[5]);
        let expected = match (fields[0], fields[4]) {
            ("weekend", "CET") => ("18:00:00", "T17:00:00Z"),
            ("weekend", "CEST") => ("18:00:00", "T16:00:00Z"),
            ("weekday", "CET") => ("00:00:00", "T23:00:00Z"),
            ("weekday", "CEST") => ("00:00:00", "T22:00:00Z"),
            other => panic!("{other:?} in {line}"),
        };
        assert_eq!(local, expected.0, "{line}");
        assert!(utc.ends_with(expected.1), "{line}");
    }
    let json = policyhub(
        &app,
        &["get-policy-schedule", "team/weekend-mode", "-o", "json"],
    )
    .json();
    assert_eq!(json["entries"][1]["timeZone"], "Europe/Berlin");
    assert_eq!(json["upcoming"].as_array().unwrap().len(), 5);
    let listed = policyhub(&app, &["list-policy-schedules", "team"]);
    assert!(
        listed.success().contains("weekend-mode  2        active"),
        "{}",
        listed.stdout
    );
    let paused = policyhub(
        &app,
        &["pause-policy-schedule", "team/weekend-mode", "-o", "json"],
    );
    assert_eq!(paused.json()["paused"], true);
    let deleted = policyhub(&app, &["delete-policy-schedule", "team/weekend-mode"]);
    assert_eq!(
        deleted.success().trim(),
        "schedule team/weekend-mode deleted"
    );

    let misspelt = dir.path().join("misspelt.yaml");
    std::fs::write(&misspelt, "entries: [{name: e, crn: \"* * * * *\"}]\n").unwrap();
    let misspelt = misspelt.display().to_string();
    let refused = policyhub(&app, &["set-policy-schedule", "team/x", "-f", &misspelt]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("unrecognized field name 'crn'"),
        "{}",
        refused.stderr
    );
    let bad_zone = dir.path().join("bad-zone.yaml");
    std::fs::write(
        &bad_zone,
        "entries: [{name: e, cron: \"0 0 * * *\", timeZone: Mars/Olympus, targets: [{name: limits, version: 1}]}]\n",
    )
    .unwrap();
    let bad_zone = bad_zone.display().to_string();
    let refused = policyhub(&app, &["set-policy-schedule", "team/x", "-f", &bad_zone]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("is not a time zone"),
        "{}",
        refused.stderr
    );
    expect_code(get(&app.policy, "x").await, Code::NotFound);
}
