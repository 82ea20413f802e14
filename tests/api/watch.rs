//! The WatchActive guarantees (docs/src/contributing/design.md#watch), each
//! on a real server.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::future::join_all;
use policyhub::grpc::proto::{self, WatchEventKind};
use serde_json::json;
use tonic::{Code, transport::Endpoint};

use crate::helpers::{
    Backend, TestApp, TestDatabase, bundles_of, next_message, policyhub_binary, spawn_app,
    spawn_on, target,
};

crate::on_both_backends!(
    the_first_message_is_a_snapshot_of_the_namespace,
    resuming_delivers_exactly_the_changed_policies_in_one_message,
    an_atomic_two_policy_activation_arrives_in_one_message,
    revisions_strictly_increase_on_a_stream,
    a_client_ahead_of_the_server_gets_a_reset_snapshot,
    a_slow_subscriber_gets_one_coalesced_update_and_delays_no_one,
    a_namespace_above_four_mebibytes_arrives_whole_in_parts,
);

async fn the_first_message_is_a_snapshot_of_the_namespace(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    app.release("payments", "fraud", json!({"score": 1}), true)
        .await;
    app.release("payments", "draft-only", json!({}), false)
        .await;
    app.release("search", "ranking", json!({}), true).await;
    let mut stream = app.watch("payments", &[], 0).await;
    let snapshot = next_message(&mut stream).await;
    assert_eq!(snapshot.kind(), WatchEventKind::Snapshot);
    assert_eq!(snapshot.revision, 3);
    assert!(!snapshot.reset);
    assert_eq!(
        bundles_of(&snapshot),
        [
            ("payments/fraud".into(), 1, 2),
            ("payments/limits".into(), 1, 1)
        ]
    );
    // Bundles arrive signed.
    assert!(
        snapshot
            .decode_bundles()
            .unwrap()
            .iter()
            .all(|bundle| bundle.jws.split('.').count() == 3)
    );

    let mut one = app.watch("payments", &["limits"], 0).await;
    assert_eq!(
        bundles_of(&next_message(&mut one).await),
        [("payments/limits".into(), 1, 1)]
    );
    let mut empty = app.watch("nobody-here", &[], 0).await;
    let message = next_message(&mut empty).await;
    assert_eq!(
        (message.kind(), message.revision, message.bundles.len()),
        (WatchEventKind::Snapshot, 3, 0)
    );
    assert_eq!(
        app.try_watch("Not_A_Namespace", &[], 0)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

/// 20 policies of ~900 KB: a snapshot of about 24 MiB reaches a stock tonic
/// client and grpcurl, both with their default 4 MiB receive limit, as parts
/// of one revision, the last one complete.
async fn a_namespace_above_four_mebibytes_arrives_whole_in_parts(app: TestApp) {
    let filler = "x".repeat(900 * 1024);
    for n in 0..20 {
        app.release(
            "big",
            &format!("p{n:02}"),
            json!({"n": n, "filler": filler}),
            true,
        )
        .await;
    }
    let mut stream = app.watch("big", &[], 0).await;
    let mut names = BTreeSet::new();
    let mut parts = 0;
    loop {
        let part = next_message(&mut stream).await;
        assert_eq!((part.kind(), part.revision), (WatchEventKind::Snapshot, 20));
        parts += 1;
        for (name, _, _) in bundles_of(&part) {
            assert!(names.insert(name), "a bundle arrives once");
        }
        if part.complete {
            break;
        }
    }
    assert_eq!(names.len(), 20);
    assert!(
        parts >= 6,
        "about 24 MiB needs at least six parts, got {parts}"
    );

    // grpcurl's default receive limit is 4 MB as well; it prints every part
    // until its deadline ends the stream.
    let output = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-max-time",
            "5",
            "-d",
            r#"{"namespace": "big"}"#,
        ])
        .arg(app.address.to_string())
        .arg("policyhub.v1.BundleService/WatchActive")
        .output()
        .expect("grpcurl is not on PATH: run the tests with ./scripts/test, which installs it");
    let printed = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("ResourceExhausted") && !stderr.contains("larger than max"),
        "grpcurl received every part: {stderr}"
    );
    assert_eq!(
        printed.matches(r#""namespace": "big""#).count(),
        20,
        "grpcurl printed every bundle once; stderr: {stderr}"
    );
    assert_eq!(printed.matches(r#""complete": true"#).count(), 1);
}

async fn resuming_delivers_exactly_the_changed_policies_in_one_message(app: TestApp) {
    for name in ["a", "b", "c"] {
        app.release("team", name, json!({"v": 1}), true).await;
    }
    // The client saw revision 3, then went away while three activations
    // moved a twice and b once.
    app.release("team", "a", json!({"v": 2}), true).await;
    app.release("team", "a", json!({"v": 3}), true).await;
    app.release("team", "b", json!({"v": 2}), true).await;
    let mut stream = app.watch("team", &[], 3).await;
    let update = next_message(&mut stream).await;
    assert_eq!(update.kind(), WatchEventKind::Update);
    assert_eq!(update.revision, 6);
    assert_eq!(
        bundles_of(&update),
        [("team/a".into(), 3, 5), ("team/b".into(), 2, 6)]
    );
    // Caught up: resuming at the current revision is an empty update.
    let mut current = app.watch("team", &[], 6).await;
    let message = next_message(&mut current).await;
    assert_eq!(
        (message.kind(), message.revision, message.bundles.len()),
        (WatchEventKind::Update, 6, 0)
    );
    // And the stream goes on with what comes next.
    app.release("team", "c", json!({"v": 2}), true).await;
    assert_eq!(
        bundles_of(&next_message(&mut current).await),
        [("team/c".into(), 2, 7)]
    );
}

async fn an_atomic_two_policy_activation_arrives_in_one_message(app: TestApp) {
    for name in ["a", "b"] {
        app.release("team", name, json!({"v": 1}), true).await;
        app.release("team", name, json!({"v": 2}), false).await;
    }
    let mut stream = app.watch("team", &[], 0).await;
    next_message(&mut stream).await;
    let response = app
        .try_activate(vec![target("team", "a", 2), target("team", "b", 2)])
        .await
        .unwrap();
    let update = next_message(&mut stream).await;
    assert_eq!(update.revision, response.revision);
    assert_eq!(
        bundles_of(&update),
        [
            ("team/a".into(), 2, response.revision),
            ("team/b".into(), 2, response.revision)
        ]
    );
}

async fn revisions_strictly_increase_on_a_stream(app: TestApp) {
    for name in ["a", "b", "c", "d"] {
        app.release("team", name, json!({"v": 0}), true).await;
    }
    let mut stream = app.watch("team", &[], 0).await;
    let mut last = next_message(&mut stream).await.revision;
    let writers = ["a", "b", "c", "d"].map(|name| {
        let app = &app;
        async move {
            for v in 1..=5 {
                app.release("team", name, json!({ "v": v }), true).await;
            }
        }
    });
    join_all(writers).await;
    let mut seen = BTreeSet::new();
    while last < 24 {
        let message = next_message(&mut stream).await;
        assert!(
            message.revision > last,
            "revision {} after {last}",
            message.revision
        );
        for (_, _, revision) in bundles_of(&message) {
            assert!(revision <= message.revision && revision > last);
            seen.insert(revision);
        }
        last = message.revision;
    }
    assert_eq!(last, 24);
    assert!(seen.contains(&24));
}

async fn a_client_ahead_of_the_server_gets_a_reset_snapshot(app: TestApp) {
    app.release("team", "a", json!({"v": 1}), true).await;
    let mut stream = app.watch("team", &[], 100).await;
    let message = next_message(&mut stream).await;
    assert_eq!(message.kind(), WatchEventKind::Snapshot);
    assert!(message.reset);
    assert_eq!(message.revision, 1);
    assert_eq!(bundles_of(&message), [("team/a".into(), 1, 1)]);
}

async fn a_slow_subscriber_gets_one_coalesced_update_and_delays_no_one(app: TestApp) {
    // Large bundles, and a client with small HTTP/2 windows that stops
    // reading: the transport pushes back within a message or two.
    let body = |v: u32| json!({ "v": v, "padding": "x".repeat(40 * 1024) });
    app.release("team", "big", body(0), true).await;
    let slow_channel = Endpoint::from_shared(format!("http://{}", app.address))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut slow =
        policyhub::grpc::proto::bundle_service_client::BundleServiceClient::new(slow_channel)
            .watch_active(policyhub::grpc::proto::WatchActiveRequest {
                namespace: "team".into(),
                names: Vec::new(),
                since_revision: 0,
                runtime: None,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        next_message(&mut slow).await.kind(),
        WatchEventKind::Snapshot
    );

    let mut prompt = app.watch("team", &[], 0).await;
    next_message(&mut prompt).await;
    let mut slowest_delivery = Duration::ZERO;
    for v in 1..=20 {
        let started = Instant::now();
        let response = app.release("team", "big", body(v), true).await;
        assert_eq!(response.version, v + 1);
        let update = next_message(&mut prompt).await;
        assert_eq!(
            bundles_of(&update)[0].1,
            v + 1,
            "the prompt subscriber is served every update"
        );
        slowest_delivery = slowest_delivery.max(started.elapsed());
    }
    assert!(
        slowest_delivery < Duration::from_secs(5),
        "{slowest_delivery:?}"
    );

    // The slow subscriber now reads: a few messages the transport had
    // buffered, then one update coalescing everything up to revision 21.
    let mut messages = Vec::new();
    loop {
        let message = next_message(&mut slow).await;
        let revision = message.revision;
        messages.push(message);
        if revision == 21 {
            break;
        }
    }
    assert!(
        messages.len() <= 4,
        "{} messages: the slow subscriber was queued for",
        messages.len()
    );
    let last = messages.last().unwrap();
    assert_eq!(last.kind(), WatchEventKind::Update);
    assert_eq!(
        bundles_of(last),
        [("team/big".into(), 21, 21)],
        "the latest state"
    );
    let before_last = messages
        .iter()
        .rev()
        .nth(1)
        .map_or(1, |message| message.revision);
    assert!(
        21 - before_last > 1,
        "the last update coalesced several revisions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_messages_arrive_when_idle() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, |settings| {
        settings.watch.heartbeat_interval = Duration::from_millis(200)
    })
    .await;
    app.release("team", "a", json!({"v": 1}), true).await;
    let mut stream = app.watch("team", &[], 0).await;
    next_message(&mut stream).await;
    for _ in 0..3 {
        let started = Instant::now();
        let progress = next_message(&mut stream).await;
        assert_eq!(
            (progress.kind(), progress.revision),
            (WatchEventKind::Progress, 1)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Another namespace's activation advances the revision a progress
    // reports (one progress may already be on its way).
    app.release("other", "x", json!({}), true).await;
    loop {
        let progress = next_message(&mut stream).await;
        assert_eq!(
            progress.kind(),
            WatchEventKind::Progress,
            "nothing of namespace other"
        );
        if progress.revision == 2 {
            break;
        }
        assert_eq!(progress.revision, 1);
    }
}

/// Clients derive their missed-heartbeat deadline from the interval the
/// stream's response header announces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_announces_the_heartbeat_interval() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, |settings| {
        settings.watch.heartbeat_interval = Duration::from_millis(250)
    })
    .await;
    let response = app
        .bundle
        .clone()
        .watch_active(proto::WatchActiveRequest {
            namespace: "team".into(),
            ..Default::default()
        })
        .await
        .expect("watch");
    let announced = response
        .metadata()
        .get(policyhub_runtime::HEARTBEAT_INTERVAL_HEADER)
        .expect("the header is sent");
    assert_eq!(announced.to_str().unwrap(), "250");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_unavailable() {
    let app = spawn_app(Backend::Sqlite).await;
    app.release("team", "a", json!({"v": 1}), true).await;
    let mut stream = app.watch("team", &[], 0).await;
    next_message(&mut stream).await;
    let stopping = tokio::spawn(app.stop());
    let status = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends promptly")
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("reconnect with since_revision 1"),
        "{}",
        status.message()
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server drains and stops")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_command_prints_and_verifies_each_update() {
    let app = spawn_app(Backend::Sqlite).await;
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    let mut child = Command::new(policyhub_binary())
        .args([
            "watch",
            "--server",
            &format!("http://{}", app.address),
            "--namespace",
            "payments",
            "--output",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut next_line = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .expect("a line within ten seconds")
            .expect("the command is running");
        serde_json::from_str(&line).expect("one JSON object per line")
    };
    let snapshot = next_line().await;
    assert_eq!(snapshot["source"], "server");
    assert_eq!(snapshot["bundles"][0]["version"], 1);
    assert_eq!(snapshot["bundles"][0]["verified"], true);
    app.release("payments", "limits", json!({"max": 2}), true)
        .await;
    let update = next_line().await;
    assert_eq!(update["revision"].as_u64(), Some(2));
    assert_eq!(update["bundles"][0]["version"], 2);
    assert_eq!(update["bundles"][0]["changed"], true);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Two servers on one PostgreSQL database, sharing a signing key, as two
/// replicas behind a load balancer would.
async fn two_replicas(
    configure_b: impl FnOnce(&mut policyhub::config::Settings),
) -> (TestApp, TestApp, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("signing.pem");
    policyhub::signing::write_new_key(&key).unwrap();
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let key_a = key.clone();
    let a = spawn_on(database, move |settings| {
        settings.signing.key_files = vec![key_a]
    })
    .await;
    let b = spawn_on(replica, move |settings| {
        settings.signing.key_files = vec![key];
        settings.watch.catch_up_interval = Duration::from_millis(300);
        configure_b(settings);
    })
    .await;
    (a, b, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_on_one_replica_reaches_a_watcher_on_another() {
    let (a, b, _keys) = two_replicas(|_| {}).await;
    let mut watcher = b.watch("team", &[], 0).await;
    assert_eq!(next_message(&mut watcher).await.revision, 0);
    let started = Instant::now();
    a.release("team", "x", json!({"v": 1}), true).await;
    let update = next_message(&mut watcher).await;
    assert_eq!(bundles_of(&update), [("team/x".into(), 1, 1)]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // B serves GetActive for what A activated.
    assert_eq!(b.get_active("team", "x").await.unwrap().version, 1);

    // Kill B's listening connection: the next activation still arrives.
    let admin = sea_orm::Database::connect(std::env::var("POLICYHUB_TEST_DATABASE_URL").unwrap())
        .await
        .unwrap();
    let database = b.database.url.rsplit('/').next().unwrap().to_owned();
    use sea_orm::ConnectionTrait;
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}' AND application_name = '{}'",
            policyhub::storage::LISTENER_APPLICATION_NAME
        ))
        .await
        .unwrap();
    a.release("team", "x", json!({"v": 2}), true).await;
    let update = next_message(&mut watcher).await;
    assert_eq!(bundles_of(&update), [("team/x".into(), 2, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notifications_the_catch_up_read_still_delivers() {
    let (a, b, _keys) = two_replicas(|settings| settings.watch.listen_notifications = false).await;
    let mut watcher = b.watch("team", &[], 0).await;
    next_message(&mut watcher).await;
    for v in 1..=3 {
        a.release("team", "x", json!({ "v": v }), true).await;
    }
    let mut last = 0;
    while last < 3 {
        let message = next_message(&mut watcher).await;
        assert!(message.revision > last);
        last = message.revision;
    }
    assert_eq!(b.get_active("team", "x").await.unwrap().version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_activations_on_two_replicas_are_seen_alike_on_both() {
    let (a, b, _keys) = two_replicas(|_| {}).await;
    let mut on_a = a.watch("team", &[], 0).await;
    let mut on_b = b.watch("team", &[], 0).await;
    next_message(&mut on_a).await;
    next_message(&mut on_b).await;
    // Twenty policies, each activated once, half through each replica, all
    // at the same time.
    let writes = (0..20).map(|n| {
        let replica = if n % 2 == 0 { &a } else { &b };
        async move {
            replica
                .release("team", &format!("p{n}"), json!({ "n": n }), true)
                .await
        }
    });
    join_all(writes).await;
    let mut deliveries = Vec::new();
    for stream in [&mut on_a, &mut on_b] {
        let mut bundles = Vec::new();
        let mut last = 0;
        while last < 20 {
            let message = next_message(stream).await;
            assert!(message.revision > last, "revisions only increase");
            for bundle in bundles_of(&message) {
                assert!(
                    bundle.2 > last && bundle.2 <= message.revision,
                    "no revision split or reordered"
                );
                bundles.push(bundle);
            }
            last = message.revision;
        }
        deliveries.push(bundles);
    }
    let revisions: Vec<u64> = deliveries[0].iter().map(|bundle| bundle.2).collect();
    assert_eq!(
        revisions,
        (1..=20).collect::<Vec<u64>>(),
        "every revision, in order, no gaps"
    );
    assert_eq!(
        deliveries[0], deliveries[1],
        "both replicas' watchers saw the same"
    );
}

/// A replica cut off from PostgreSQL (a proxy in between closes every link)
/// stops vouching for its revision: its stream ends with UNAVAILABLE naming
/// the revision to resume from, new streams are refused, and it serves again
/// once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_postgres_stops_vouching() {
    let (database, proxy) = crate::helpers::postgres_behind_proxy().await;
    let app = spawn_on(database, |settings| {
        settings.watch.catch_up_interval = Duration::from_millis(200);
        settings.watch.vouch_timeout = Duration::from_millis(1000);
        settings.watch.heartbeat_interval = Duration::from_millis(200);
    })
    .await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let mut stream = app.watch("team", &[], 0).await;
    assert_eq!(next_message(&mut stream).await.revision, 1);

    proxy.cut();
    let cut_at = Instant::now();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
            Ok(Ok(Some(_progress))) => continue,
            Ok(Err(status)) => break status,
            other => panic!("the stream ends with a status: {other:?}"),
        }
    };
    println!(
        "the cut-off replica ended its stream after {:?}",
        cut_at.elapsed()
    );
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(
        ended.message().contains("since_revision 1"),
        "{}",
        ended.message()
    );
    assert_eq!(
        app.try_watch("team", &[], 1).await.unwrap_err().code(),
        Code::Unavailable,
        "no new stream while cut off"
    );

    proxy.restore();
    let served_again = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if app.try_watch("team", &[], 1).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        served_again.is_ok(),
        "serves again once the database answers"
    );
}
