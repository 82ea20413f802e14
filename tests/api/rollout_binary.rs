//! Rollouts against the real server binary: runtimes built on the runtime
//! library follow a rollout and reject it, a rollout survives kill -9, a
//! scheduled one fires across a restart, and a second PostgreSQL replica
//! takes over when the driving one dies.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{
        self, RolloutState, bundle_service_client::BundleServiceClient,
        policy_service_client::PolicyServiceClient,
    },
};
use policyhub_runtime::{State, Subscription};
use serde_json::json;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::helpers::{
    Backend, Reaped, TestDatabase, bundles_of, free_port, next_message, spawn_binary_server_on,
    terminate,
};
use crate::rollouts::{in_step, open_runtimes, start_request, step, until};

/// The real server on `database` at `port`, its controller ticking every
/// 100 ms.
pub(crate) async fn serve(
    port: u16,
    database: &TestDatabase,
) -> (Reaped, PolicyServiceClient<Channel>) {
    let env = [
        ("POLICYHUB_DATABASE_URL", database.url.clone()),
        ("POLICYHUB_ROLLOUTS__TICK_INTERVAL", "100ms".to_owned()),
    ];
    let (server, channel) = spawn_binary_server_on(port, database.data_dir.path(), &env).await;
    (server, PolicyServiceClient::new(channel))
}

/// team/limits: version 1 active, version 2 published.
pub(crate) async fn seed(policy: &mut PolicyServiceClient<Channel>) {
    for (body, activate) in [(json!({"max": 1}), true), (json!({"max": 2}), false)] {
        policy
            .draft(proto::DraftRequest {
                namespace: "team".into(),
                name: "limits".into(),
                body: Some(json_to_struct(&body)),
                ..Default::default()
            })
            .await
            .expect("draft");
        policy
            .publish(proto::PublishRequest {
                namespace: "team".into(),
                name: "limits".into(),
                activate,
                ..Default::default()
            })
            .await
            .expect("publish");
    }
}

/// What the application of one library runtime was handed and holds.
#[derive(Debug, Default, Clone)]
struct Application {
    /// Each version of team/limits `apply` was called with, in order.
    offered: Vec<u32>,
    /// The version in force: the last one the application accepted.
    holds: u32,
}

/// Applications by runtime id.
type Applications = Arc<Mutex<BTreeMap<String, Application>>>;

/// `count` runtimes built on the runtime library, named `rt-0`…, following
/// team/limits; their application refuses version `refused`.
fn library_runtimes(
    endpoint: &str,
    count: usize,
    refused: u32,
) -> (Vec<JoinHandle<()>>, Applications) {
    let applications = Applications::default();
    let tasks = (0..count)
        .map(|n| {
            let id = format!("rt-{n}");
            let subscription = Subscription::new(endpoint, "team")
                .names(["limits"])
                .runtime(id.clone(), [])
                .backoff(Duration::from_millis(100), Duration::from_secs(1));
            let applications = applications.clone();
            tokio::spawn(async move {
                let apply = move |state: &State| {
                    let version = state
                        .bundles
                        .get("limits")
                        .map_or(0, |bundle| bundle.version);
                    let mut applications = applications.lock().unwrap();
                    let application = applications.entry(id.clone()).or_default();
                    application.offered.push(version);
                    if version == refused {
                        return Err(format!("max {version} is more than this runtime allows"));
                    }
                    application.holds = version;
                    Ok(())
                };
                let mut events = std::pin::pin!(subscription.events_validated(apply));
                while let Some(Ok(_)) = events.next().await {}
            })
        })
        .collect();
    (tasks, applications)
}

/// Waits until every one of `count` applications holds `version`.
async fn until_all_hold(applications: &Applications, count: usize, version: u32) {
    for _ in 0..150 {
        let holding = applications
            .lock()
            .unwrap()
            .values()
            .filter(|application| application.holds == version)
            .count();
        if holding == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "not every runtime holds version {version}: {:?}",
        applications.lock().unwrap()
    );
}

async fn library_runtimes_take_a_rollout_step_by_step(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let port = free_port();
    let (server, mut policy) = serve(port, &database).await;
    seed(&mut policy).await;
    let (tasks, applications) = library_runtimes(&format!("http://127.0.0.1:{port}"), 50, 0);
    until_all_hold(&applications, 50, 1).await;

    let started = policy
        .start_rollout(start_request(vec![
            step(20, Duration::from_secs(3)),
            step(100, Duration::ZERO),
        ]))
        .await
        .expect("start the rollout")
        .into_inner();
    let cohort: Vec<String> = (0..50)
        .map(|n| format!("rt-{n}"))
        .filter(|id| in_step(&started.id, id, 20))
        .collect();
    assert!(!cohort.is_empty(), "a 20 % step of 50 holds someone");
    // The library reports what its application applied: the first step's
    // progress counts the whole cohort as applied, during the bake.
    let baking = until(&policy, &started.id, |rollout| {
        let progress = rollout.progress.unwrap_or_default();
        rollout.step > 0 || (progress.cohort > 0 && progress.applied == progress.cohort)
    })
    .await;
    assert_eq!(baking.step, 0, "the cohort applied within the first bake");
    assert_eq!(baking.progress.unwrap().cohort, cohort.len() as u32);
    for (id, application) in applications.lock().unwrap().iter() {
        let expected = if cohort.contains(id) { 2 } else { 1 };
        assert_eq!(application.holds, expected, "{id}: {application:?}");
    }

    until(&policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Completed
    })
    .await;
    until_all_hold(&applications, 50, 2).await;
    for (id, application) in applications.lock().unwrap().iter() {
        let mut versions = application.offered.clone();
        versions.dedup();
        assert_eq!(versions, [1, 2], "{id} only ever went forwards");
    }
    for task in tasks {
        task.abort();
    }
    terminate(server).await;
}

async fn library_runtimes_that_refuse_a_version_roll_their_cohort_back(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let port = free_port();
    let (server, mut policy) = serve(port, &database).await;
    seed(&mut policy).await;
    let (tasks, applications) = library_runtimes(&format!("http://127.0.0.1:{port}"), 30, 2);
    until_all_hold(&applications, 30, 1).await;

    let started = policy
        .start_rollout(start_request(vec![step(50, Duration::from_secs(3600))]))
        .await
        .expect("start the rollout")
        .into_inner();
    let rolled_back = until(&policy, &started.id, |rollout| {
        rollout.state() != RolloutState::Running
    })
    .await;
    assert_eq!(rolled_back.state(), RolloutState::RolledBack);
    let cohort: Vec<String> = (0..30)
        .map(|n| format!("rt-{n}"))
        .filter(|id| in_step(&started.id, id, 50))
        .collect();
    assert!(cohort.len() >= 2, "{cohort:?}");
    let because = &rolled_back.halted_because;
    assert!(
        because.contains("more than this runtime allows"),
        "the application's reason reaches the rollout: {because}"
    );
    let named: Vec<&String> = cohort
        .iter()
        .filter(|id| because.contains(&format!("{id} rejected")))
        .collect();
    assert!(
        !named.is_empty(),
        "the rollback names the rejecting runtimes: {because}"
    );
    // Everyone holds the stable version. The runtimes named were offered
    // the candidate and refused it; nobody outside the cohort was ever
    // offered it. (A cohort runtime slower than the rollback may never see
    // it: its stream coalesces the candidate and the stable version back.)
    until_all_hold(&applications, 30, 1).await;
    {
        let applications = applications.lock().unwrap();
        for id in &named {
            assert!(applications[*id].offered.contains(&2), "{id}");
        }
        for (id, application) in applications.iter() {
            assert!(
                !application.offered.contains(&2) || cohort.contains(id),
                "{id} is outside the cohort: {application:?}"
            );
        }
    }
    for task in tasks {
        task.abort();
    }
    terminate(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_runtimes_take_a_rollout_step_by_step_on_sqlite() {
    library_runtimes_take_a_rollout_step_by_step(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_runtimes_take_a_rollout_step_by_step_on_postgres() {
    library_runtimes_take_a_rollout_step_by_step(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_runtimes_that_refuse_a_version_roll_their_cohort_back_on_sqlite() {
    library_runtimes_that_refuse_a_version_roll_their_cohort_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_runtimes_that_refuse_a_version_roll_their_cohort_back_on_postgres() {
    library_runtimes_that_refuse_a_version_roll_their_cohort_back(Backend::Postgres).await;
}

/// The controller's state is rows: a rollout started before a kill -9
/// completes after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_kill_9_of_the_server() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let port = free_port();
    let (mut server, mut policy) = serve(port, &database).await;
    seed(&mut policy).await;
    let started = policy
        .start_rollout(start_request(vec![
            step(10, Duration::from_secs(2)),
            step(100, Duration::ZERO),
        ]))
        .await
        .unwrap()
        .into_inner();
    server.kill().expect("SIGKILL");
    server.wait().unwrap();

    let (server, policy) = serve(port, &database).await;
    let completed = until(&policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Completed
    })
    .await;
    assert_eq!(completed.step_revisions.len(), 2, "both steps ran");
    terminate(server).await;
}

/// Two replicas on PostgreSQL: the one driving a rollout dies mid-bake, the
/// other takes over and completes it, and runtimes on the survivor saw every
/// cohort decision, made by either replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_takes_a_rollout_over_when_its_driver_is_killed() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let (mut driver, mut policy) = serve(free_port(), &database).await;
    seed(&mut policy).await;
    let port = free_port();
    let (survivor, survivor_policy) = serve(port, &replica).await;
    let bundle = BundleServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut fleet = open_runtimes(&bundle, 20).await;
    let started = policy
        .start_rollout(start_request(vec![
            step(30, Duration::from_secs(2)),
            step(100, Duration::ZERO),
        ]))
        .await
        .unwrap()
        .into_inner();
    // The first step, decided on the driver, reaches the survivor's cohort.
    for runtime in fleet.iter_mut() {
        if in_step(&started.id, &runtime.id, 30) {
            let update = next_message(&mut runtime.stream).await;
            assert_eq!(
                bundles_of(&update),
                vec![("team/limits".into(), 2, started.step_revisions[0])]
            );
        }
    }
    driver.kill().expect("SIGKILL");
    driver.wait().unwrap();

    let completed = until(&survivor_policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Completed
    })
    .await;
    let second = completed.step_revisions[1];
    for runtime in fleet.iter_mut() {
        let mut seen = Vec::new();
        while seen.last().map(|bundle: &(String, u32, u64)| bundle.1) != Some(2)
            || seen.last().map(|bundle| bundle.2) < Some(second)
        {
            seen.extend(bundles_of(&next_message(&mut runtime.stream).await));
        }
        if !in_step(&started.id, &runtime.id, 30) {
            // Outside the first cohort: version 2 from the second step on
            // (its update may coalesce with the completion's).
            assert_eq!(seen[0].1, 2, "{}", runtime.id);
            assert!(seen[0].2 >= second, "{}: {seen:?}", runtime.id);
        }
    }
    terminate(survivor).await;
}

/// A scheduled rollout fires on time although the server restarted while
/// it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rollout_fires_across_a_restart() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let port = free_port();
    let (mut server, mut policy) = serve(port, &database).await;
    seed(&mut policy).await;
    let at = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let mut request = start_request(vec![step(100, Duration::from_secs(3600))]);
    request.start_at = Some(policyhub::grpc::convert::timestamp(at));
    let scheduled = policy.start_rollout(request).await.unwrap().into_inner();
    server.kill().expect("SIGKILL");
    server.wait().unwrap();

    let (server, policy) = serve(port, &database).await;
    let running = until(&policy, &scheduled.id, |rollout| {
        rollout.state() == RolloutState::Running
    })
    .await;
    let began = running.step_started_at.unwrap();
    let late = began.seconds * 1_000 + i64::from(began.nanos) / 1_000_000 - at.timestamp_millis();
    assert!(
        (0..1_500).contains(&late),
        "began {late} ms after its start time"
    );
    terminate(server).await;
}
