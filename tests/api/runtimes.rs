//! The fleet view (docs/src/contributing/design.md#runtimes-and-rollouts):
//! identified runtimes, their reports, ListRuntimes and GetPolicyStatus,
//! across replicas.

use std::{collections::HashMap, time::Duration};

use policyhub::grpc::{
    proto::{
        self, ApplyState, EventKind, RuntimeState, bundle_service_client::BundleServiceClient,
    },
    watch_message::WatchActiveResponse,
};
use serde_json::json;
use tonic::{Code, Streaming, transport::Channel};

use crate::helpers::{
    Backend, TestApp, TestDatabase, expect_code, free_port, next_message, spawn_binary_server_on,
    spawn_on, terminate,
};

crate::on_both_backends!(
    reports_show_in_the_fleet_view_and_the_policy_status,
    list_policies_carries_each_active_label_and_fleet_counts,
    a_thousand_runtimes_report_and_every_count_is_exact,
    a_rejected_version_is_not_sent_again,
    bad_runtime_requests_are_refused_and_change_nothing,
);

/// Opens a stream as runtime `id` with `labels`.
async fn watch_as(
    client: &BundleServiceClient<Channel>,
    namespace: &str,
    names: &[&str],
    id: &str,
    labels: &[(&str, &str)],
) -> Result<Streaming<WatchActiveResponse>, tonic::Status> {
    Ok(client
        .clone()
        .watch_active(proto::WatchActiveRequest {
            namespace: namespace.into(),
            names: names.iter().map(|name| name.to_string()).collect(),
            since_revision: 0,
            runtime: Some(proto::RuntimeIdentity {
                id: id.into(),
                labels: labels
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
            }),
        })
        .await?
        .into_inner())
}

fn applied(name: &str, version: u32) -> proto::PolicyApplyStatus {
    proto::PolicyApplyStatus {
        name: name.into(),
        version,
        state: ApplyState::Applied as i32,
        ..Default::default()
    }
}

fn rejected(name: &str, version: u32, error: &str) -> proto::PolicyApplyStatus {
    proto::PolicyApplyStatus {
        name: name.into(),
        version,
        state: ApplyState::Rejected as i32,
        error: error.into(),
        ..Default::default()
    }
}

async fn report(
    client: &BundleServiceClient<Channel>,
    namespace: &str,
    id: &str,
    revision: u64,
    policies: Vec<proto::PolicyApplyStatus>,
) -> Result<proto::ReportStatusResponse, tonic::Status> {
    Ok(client
        .clone()
        .report_status(proto::ReportStatusRequest {
            namespace: namespace.into(),
            runtime_id: id.into(),
            revision,
            policies,
        })
        .await?
        .into_inner())
}

/// Sends `requests` on one ReportStatusStream: the answers in order, and
/// the status that ended the stream, if it was not OK.
async fn report_on_stream(
    client: &BundleServiceClient<Channel>,
    requests: Vec<proto::ReportStatusRequest>,
) -> (Vec<proto::ReportStatusResponse>, Option<tonic::Status>) {
    let opened = client
        .clone()
        .report_status_stream(futures::stream::iter(requests))
        .await;
    let mut replies = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut answers = Vec::new();
    loop {
        match replies.message().await {
            Ok(Some(answer)) => answers.push(answer),
            Ok(None) => return (answers, None),
            Err(status) => return (answers, Some(status)),
        }
    }
}

async fn list(app: &TestApp, request: proto::ListRuntimesRequest) -> Vec<proto::Runtime> {
    let mut runtimes = Vec::new();
    let mut request = request;
    loop {
        let page = app
            .policy
            .clone()
            .list_runtimes(request.clone())
            .await
            .expect("list runtimes")
            .into_inner();
        runtimes.extend(page.runtimes);
        if page.next_page_token.is_empty() {
            return runtimes;
        }
        request.page_token = page.next_page_token;
    }
}

fn in_namespace(namespace: &str) -> proto::ListRuntimesRequest {
    proto::ListRuntimesRequest {
        namespace: namespace.into(),
        ..Default::default()
    }
}

async fn policy_status(
    app: &TestApp,
    namespace: &str,
    name: &str,
) -> proto::GetPolicyStatusResponse {
    app.policy
        .clone()
        .get_policy_status(proto::GetPolicyStatusRequest {
            namespace: namespace.into(),
            name: name.into(),
        })
        .await
        .expect("policy status")
        .into_inner()
}

fn ids(runtimes: &[proto::Runtime]) -> Vec<&str> {
    runtimes.iter().map(|runtime| runtime.id.as_str()).collect()
}

async fn reports_show_in_the_fleet_view_and_the_policy_status(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), true).await;
    app.release("team", "other", json!({}), true).await;
    let mut eu = watch_as(&app.bundle, "team", &[], "eu-1", &[("region", "eu")])
        .await
        .unwrap();
    let _us = watch_as(&app.bundle, "team", &[], "us-1", &[("region", "us")])
        .await
        .unwrap();
    let _other = watch_as(&app.bundle, "team", &["other"], "only-other", &[])
        .await
        .unwrap();
    assert_eq!(next_message(&mut eu).await.revision, 3);

    let response = report(&app.bundle, "team", "eu-1", 3, vec![applied("limits", 2)])
        .await
        .unwrap();
    assert_eq!(response.ignored, 0);
    // The same reports on a stream, answered in order: an older report
    // arriving late changes nothing.
    let on_stream = |id: &str, revision, policies| proto::ReportStatusRequest {
        namespace: "team".into(),
        runtime_id: id.into(),
        revision,
        policies,
    };
    let (answers, ended) = report_on_stream(
        &app.bundle,
        vec![
            on_stream(
                "us-1",
                3,
                vec![rejected("limits", 2, "max must be below 2")],
            ),
            on_stream("eu-1", 2, vec![applied("limits", 1)]),
        ],
    )
    .await;
    assert!(ended.is_none(), "{ended:?}");
    let ignored: Vec<u32> = answers.iter().map(|answer| answer.ignored).collect();
    assert_eq!(ignored, [0, 1]);
    let late = report(&app.bundle, "team", "eu-1", 2, vec![applied("limits", 1)])
        .await
        .unwrap();
    assert_eq!(late.ignored, 1);

    let all = list(&app, in_namespace("team")).await;
    assert_eq!(ids(&all), ["eu-1", "only-other", "us-1"]);
    let eu_view = &all[0];
    assert_eq!(eu_view.state(), RuntimeState::Connected);
    assert_eq!(eu_view.labels["region"], "eu");
    assert_eq!(eu_view.applied_revision, 3);
    assert_eq!(
        (eu_view.policies[0].version, eu_view.policies[0].state()),
        (2, ApplyState::Applied)
    );
    let european = list(
        &app,
        proto::ListRuntimesRequest {
            label_selector: "region=eu".into(),
            ..in_namespace("team")
        },
    )
    .await;
    assert_eq!(ids(&european), ["eu-1"]);
    let watching_limits = list(
        &app,
        proto::ListRuntimesRequest {
            name: "limits".into(),
            ..in_namespace("team")
        },
    )
    .await;
    assert_eq!(ids(&watching_limits), ["eu-1", "us-1"]);

    let status = policy_status(&app, "team", "limits").await;
    assert_eq!(
        (
            status.active_version,
            status.runtimes,
            status.applied,
            status.rejected,
            status.pending
        ),
        (2, 2, 1, 1, 0)
    );
    assert_eq!(status.versions[0].version, 2);
    assert_eq!(
        status.versions[0].rejections[0].error,
        "max must be below 2"
    );
    assert_eq!(status.versions[0].rejections[0].runtime_ids, ["us-1"]);

    // A closed stream shows as disconnected.
    drop(eu);
    let disconnected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let runtimes = list(
                &app,
                proto::ListRuntimesRequest {
                    states: vec![RuntimeState::Disconnected as i32],
                    ..in_namespace("team")
                },
            )
            .await;
            if !runtimes.is_empty() {
                return runtimes;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the closed stream shows as disconnected");
    assert_eq!(ids(&disconnected), ["eu-1"]);
}

/// What a listing shows of each policy comes with it, so a client draws
/// the list from one call instead of two per policy.
async fn list_policies_carries_each_active_label_and_fleet_counts(app: TestApp) {
    app.draft("team", "limits", json!({"max": 1})).await;
    app.publish("team", "limits", "1.0.0", true).await;
    app.draft("team", "limits", json!({"max": 2})).await;
    app.publish("team", "limits", "1.1.0", true).await;
    app.draft("team", "limits", json!({"max": 3})).await;
    app.release("team", "unlabelled", json!({}), true).await;
    app.draft("team", "unreleased", json!({})).await;
    app.draft("ops", "limits", json!({})).await;
    app.publish("ops", "limits", "2.0.0", true).await;
    let _eu = watch_as(&app.bundle, "team", &[], "eu-1", &[])
        .await
        .unwrap();
    let _us = watch_as(&app.bundle, "team", &[], "us-1", &[])
        .await
        .unwrap();
    let _only = watch_as(&app.bundle, "team", &["limits"], "only-limits", &[])
        .await
        .unwrap();
    let revision = 4;
    report(
        &app.bundle,
        "team",
        "eu-1",
        revision,
        vec![applied("limits", 2)],
    )
    .await
    .unwrap();
    report(
        &app.bundle,
        "team",
        "us-1",
        revision,
        vec![rejected("limits", 2, "max must be below 2")],
    )
    .await
    .unwrap();

    // Pages of two, so one page spans both namespaces.
    let mut shown = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .policy
            .clone()
            .list_policies(proto::ListPoliciesRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list policies")
            .into_inner();
        for policy in page.policies {
            let fleet = policy.fleet.expect("the fleet's counts");
            shown.push((
                format!("{}/{}", policy.namespace, policy.name),
                policy.active_version,
                policy.active_label,
                policy.draft_version,
                (fleet.runtimes, fleet.applied, fleet.rejected, fleet.pending),
            ));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let label = String::from;
    assert_eq!(
        shown,
        [
            ("ops/limits".into(), 1, label("2.0.0"), 0, (0, 0, 0, 0)),
            ("team/limits".into(), 2, label("1.1.0"), 3, (3, 1, 1, 1)),
            ("team/unlabelled".into(), 1, label(""), 0, (2, 0, 0, 2)),
            ("team/unreleased".into(), 0, label(""), 1, (2, 0, 0, 2)),
        ]
    );
    let status = policy_status(&app, "team", "limits").await;
    assert_eq!(
        (
            status.runtimes,
            status.applied,
            status.rejected,
            status.pending
        ),
        (3, 1, 1, 1),
        "the listing counts as GetPolicyStatus does"
    );
}

async fn a_thousand_runtimes_report_and_every_count_is_exact(app: TestApp) {
    app.release("fleet", "limits", json!({"max": 1}), true)
        .await;
    app.release("fleet", "limits", json!({"max": 2}), true)
        .await;
    // HTTP/2 servers accept a bounded number of streams per connection:
    // ten connections of a hundred runtimes each.
    let mut clients = Vec::new();
    for _ in 0..10 {
        let channel = Channel::from_shared(format!("http://{}", app.address))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(BundleServiceClient::new(channel));
    }
    let mut streams = Vec::new();
    for n in 0..1000 {
        let client = &clients[n % clients.len()];
        let region = if n % 2 == 0 { "eu" } else { "us" };
        let mut stream = watch_as(
            client,
            "fleet",
            &[],
            &format!("rt-{n:04}"),
            &[("region", region)],
        )
        .await
        .expect("open a runtime stream");
        assert_eq!(next_message(&mut stream).await.revision, 2);
        streams.push(stream);
    }
    let reports = (0..1000).map(|n| {
        let client = clients[n % clients.len()].clone();
        async move {
            let id = format!("rt-{n:04}");
            let outcome = match n {
                0..700 => Some(applied("limits", 2)),
                700..850 => Some(rejected("limits", 2, "bad signature")),
                850..900 => Some(rejected("limits", 2, "too large")),
                _ => None,
            };
            if let Some(outcome) = outcome {
                report(&client, "fleet", &id, 2, vec![outcome])
                    .await
                    .unwrap();
            }
        }
    });
    futures::future::join_all(reports).await;

    let status = policy_status(&app, "fleet", "limits").await;
    assert_eq!(
        (
            status.runtimes,
            status.applied,
            status.rejected,
            status.pending
        ),
        (1000, 700, 200, 100)
    );
    let groups: HashMap<String, u32> = status.versions[0]
        .rejections
        .iter()
        .map(|group| (group.error.clone(), group.runtimes))
        .collect();
    assert_eq!(groups["bad signature"], 150);
    assert_eq!(groups["too large"], 50);
    assert_eq!(status.versions[0].rejections[0].runtime_ids.len(), 10);

    let everyone = list(
        &app,
        proto::ListRuntimesRequest {
            page_size: 300,
            ..in_namespace("fleet")
        },
    )
    .await;
    assert_eq!(everyone.len(), 1000);
    let mut sorted = ids(&everyone);
    sorted.dedup();
    assert_eq!(sorted.len(), 1000, "pages neither repeat nor skip");
    let us = list(
        &app,
        proto::ListRuntimesRequest {
            label_selector: "region=us".into(),
            ..in_namespace("fleet")
        },
    )
    .await;
    assert_eq!(us.len(), 500);

    // Persisted in batches: after a flush the rows hold every report.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let db = app.sql().await;
    let stored = sea_orm::ConnectionTrait::query_one_raw(
        &db,
        sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT CAST(COUNT(*) AS TEXT) AS n FROM runtimes WHERE namespace = 'fleet' \
             AND policies LIKE '%REJECTED%'",
        ),
    )
    .await
    .unwrap()
    .unwrap()
    .try_get::<String>("", "n")
    .unwrap();
    assert_eq!(stored, "200");
}

async fn a_rejected_version_is_not_sent_again(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let mut stream = watch_as(&app.bundle, "team", &[], "rt-1", &[])
        .await
        .unwrap();
    assert_eq!(next_message(&mut stream).await.revision, 1);
    let v2 = app.release("team", "limits", json!({"max": 2}), true).await;
    let update = next_message(&mut stream).await;
    assert_eq!((update.revision, update.bundles.len()), (2, 1));
    let refuse = || {
        report(
            &app.bundle,
            "team",
            "rt-1",
            2,
            vec![rejected("limits", v2.version, "refused by the runtime")],
        )
    };
    refuse().await.unwrap();
    // The stream moves on only when a pointer moves: nothing but progress.
    let quiet = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(quiet.is_err(), "nothing is resent: {quiet:?}");
    // The refusal is recorded in the log, by the runtime's principal, once:
    // reporting it again records nothing more.
    let recorded = rejections_recorded(&app, 1).await;
    assert_eq!(recorded[0].new_version, v2.version);
    assert_eq!(
        recorded[0].reason,
        format!(
            "runtime rt-1 rejected version {}: refused by the runtime",
            v2.version
        )
    );
    assert_eq!(recorded[0].actor, "anonymous");
    refuse().await.unwrap();
    // Resuming from the rejected revision does not resend it either.
    let mut resumed = app.watch("team", &[], 2).await;
    let first = next_message(&mut resumed).await;
    assert_eq!((first.revision, first.bundles.len()), (2, 0));
    // A new activation does reach the runtime.
    app.release("team", "limits", json!({"max": 3}), true).await;
    let next = next_message(&mut stream).await;
    assert_eq!((next.revision, next.bundles.len()), (3, 1));
    let status = policy_status(&app, "team", "limits").await;
    assert_eq!(status.versions.len(), 1);
    assert_eq!(status.versions[0].rejected, 1);
    assert_eq!((status.active_version, status.pending), (3, 1));
    assert_eq!(rejections_recorded(&app, 1).await.len(), 1, "recorded once");
}

/// The RUNTIME_REJECTED events of team/limits, once there are `count` of
/// them (the fleet records them with its flush, every second here), and a
/// flush later, so that one more would show.
async fn rejections_recorded(app: &TestApp, count: usize) -> Vec<proto::Event> {
    let recorded = || async {
        app.events("team", "limits")
            .await
            .into_iter()
            .filter(|event| event.kind() == EventKind::RuntimeRejected)
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorded().await.len() < count && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    recorded().await
}

async fn bad_runtime_requests_are_refused_and_change_nothing(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let _stream = watch_as(&app.bundle, "team", &[], "rt-1", &[])
        .await
        .unwrap();
    let before = app.db_state().await;
    let long_error = "e".repeat(1025);
    let cases: Vec<(&str, proto::ReportStatusRequest, Code)> = vec![
        (
            "bad runtime id",
            proto::ReportStatusRequest {
                namespace: "team".into(),
                runtime_id: "Not_An_Id".into(),
                revision: 1,
                policies: vec![applied("limits", 1)],
            },
            Code::InvalidArgument,
        ),
        (
            "revision 0",
            proto::ReportStatusRequest {
                namespace: "team".into(),
                runtime_id: "rt-1".into(),
                revision: 0,
                policies: vec![applied("limits", 1)],
            },
            Code::InvalidArgument,
        ),
        (
            "unspecified state",
            proto::ReportStatusRequest {
                namespace: "team".into(),
                runtime_id: "rt-1".into(),
                revision: 1,
                policies: vec![proto::PolicyApplyStatus {
                    name: "limits".into(),
                    version: 1,
                    ..Default::default()
                }],
            },
            Code::InvalidArgument,
        ),
        (
            "rejection without a reason",
            proto::ReportStatusRequest {
                namespace: "team".into(),
                runtime_id: "rt-1".into(),
                revision: 1,
                policies: vec![rejected("limits", 1, " ")],
            },
            Code::InvalidArgument,
        ),
        (
            "error text too long",
            proto::ReportStatusRequest {
                namespace: "team".into(),
                runtime_id: "rt-1".into(),
                revision: 1,
                policies: vec![rejected("limits", 1, &long_error)],
            },
            Code::InvalidArgument,
        ),
        (
            "a policy twice",
            proto::ReportStatusRequest {
                namespace: "team".into(),
                runtime_id: "rt-1".into(),
                revision: 1,
                policies: vec![applied("limits", 1), applied("limits", 1)],
            },
            Code::InvalidArgument,
        ),
        (
            "no stream opened",
            proto::ReportStatusRequest {
                namespace: "team".into(),
                runtime_id: "never-connected".into(),
                revision: 1,
                policies: vec![applied("limits", 1)],
            },
            Code::FailedPrecondition,
        ),
    ];
    for (what, request, code) in cases {
        let on_stream = report_on_stream(&app.bundle, vec![request.clone(), request.clone()]);
        let message = expect_code(app.bundle.clone().report_status(request).await, code);
        assert!(message.len() < 512, "{what}: bounded message: {message}");
        // On a stream, the first refusal ends it with the same status.
        let (answers, ended) = on_stream.await;
        assert!(answers.is_empty(), "{what}: {answers:?}");
        let ended = ended.unwrap_or_else(|| panic!("{what}: the stream ended OK"));
        assert_eq!(
            (ended.code(), ended.message()),
            (code, message.as_str()),
            "{what}"
        );
    }
    for (id, labels) in [
        ("UPPER", vec![]),
        ("ok-id", vec![("bad key", "v")]),
        (&"a".repeat(129) as &str, vec![]),
    ] {
        let refused = watch_as(&app.bundle, "team", &[], id, &labels).await;
        expect_code(refused, Code::InvalidArgument);
    }
    let bad_listings = [
        proto::ListRuntimesRequest {
            label_selector: "a b=c".into(),
            ..in_namespace("team")
        },
        proto::ListRuntimesRequest {
            states: vec![0],
            ..in_namespace("team")
        },
        proto::ListRuntimesRequest {
            page_token: "42".into(),
            ..in_namespace("team")
        },
        in_namespace("Bad_Namespace"),
    ];
    for request in bad_listings {
        expect_code(
            app.policy.clone().list_runtimes(request).await,
            Code::InvalidArgument,
        );
    }
    let status = app
        .policy
        .clone()
        .get_policy_status(proto::GetPolicyStatusRequest {
            namespace: "team".into(),
            name: "bad name!".into(),
        })
        .await;
    expect_code(status, Code::InvalidArgument);
    assert_eq!(app.db_state().await, before);
    let runtimes = list(&app, in_namespace("team")).await;
    assert_eq!(ids(&runtimes), ["rt-1"]);
    assert!(
        runtimes[0].policies.is_empty(),
        "no refused report was kept"
    );
}

/// SIGTERM ends an open ReportStatusStream with UNAVAILABLE, as it ends
/// watch streams, so the graceful drain does not wait on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_report_streams() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &[]).await;
    let mut replies = BundleServiceClient::new(channel)
        .report_status_stream(futures::stream::pending::<proto::ReportStatusRequest>())
        .await
        .unwrap()
        .into_inner();
    let stopped = tokio::spawn(terminate(server));
    let ended = tokio::time::timeout(Duration::from_secs(10), replies.message())
        .await
        .expect("the report stream ends within 10 s");
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the server exits within 10 s")
        .unwrap();
}

/// Two replicas on one PostgreSQL database: each lists the runtimes
/// connected to the other within two seconds, and a report that reaches the
/// replica not holding the stream is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_show_runtimes_connected_to_each_other_within_two_seconds() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let a = spawn_on(database, |_| {}).await;
    let b = spawn_on(replica, |_| {}).await;
    a.release("team", "limits", json!({"max": 1}), true).await;
    let mut on_a = watch_as(&a.bundle, "team", &[], "on-a", &[]).await.unwrap();
    next_message(&mut on_a).await;
    let mut on_b = watch_as(&b.bundle, "team", &[], "on-b", &[]).await.unwrap();
    next_message(&mut on_b).await;
    let started = std::time::Instant::now();
    let seen_by_both = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let from_a = list(&a, in_namespace("team")).await;
            let from_b = list(&b, in_namespace("team")).await;
            let connected = |runtimes: &[proto::Runtime]| {
                runtimes
                    .iter()
                    .filter(|runtime| runtime.state() == RuntimeState::Connected)
                    .count()
            };
            if connected(&from_a) == 2 && connected(&from_b) == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        seen_by_both.is_ok(),
        "both replicas list both runtimes as connected within 2 s"
    );
    println!(
        "both replicas saw both runtimes after {:?}",
        started.elapsed()
    );
    report(&b.bundle, "team", "on-a", 1, vec![applied("limits", 1)])
        .await
        .expect("a report through the other replica is accepted once the runtime is known");
    let kept = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if policy_status(&a, "team", "limits").await.applied == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        kept.is_ok(),
        "the replica holding the stream learns of the report"
    );
    // And a later flush of the holder does not overwrite it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(policy_status(&b, "team", "limits").await.applied, 1);
    drop((on_a, on_b));
}

/// A runtime whose stream closed is DISCONNECTED, then STALE once silent
/// for `runtimes.stale_after`, and leaves the fleet view after
/// `runtimes.forget_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_runtime_becomes_stale_then_is_forgotten() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.runtimes.stale_after = Duration::from_secs(1);
        settings.runtimes.forget_after = Duration::from_secs(3);
    })
    .await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let mut stream = watch_as(&app.bundle, "team", &[], "rt-1", &[])
        .await
        .unwrap();
    next_message(&mut stream).await;
    let state = |runtimes: Vec<proto::Runtime>| runtimes[0].state();
    assert_eq!(
        state(list(&app, in_namespace("team")).await),
        RuntimeState::Connected
    );
    drop(stream);
    let became_stale = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = Vec::new();
        loop {
            let now = state(list(&app, in_namespace("team")).await);
            // The server learns of the close a moment after the client.
            if seen.is_empty() && now == RuntimeState::Connected {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if now == RuntimeState::Stale {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("stale within ten seconds");
    assert_eq!(
        became_stale,
        [RuntimeState::Disconnected, RuntimeState::Stale]
    );
    let status = policy_status(&app, "team", "limits").await;
    assert_eq!((status.runtimes, status.stale), (1, 1));
    let forgotten = tokio::time::timeout(Duration::from_secs(10), async {
        while !list(&app, in_namespace("team")).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        forgotten.is_ok(),
        "a long-silent runtime leaves the fleet view"
    );
}

/// `policyhub runtimes` and `policyhub status`, run as the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtimes_and_status_commands_show_the_fleet() {
    use crate::cli::policyhub;
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let _eu = watch_as(&app.bundle, "team", &[], "eu-1", &[("region", "eu")])
        .await
        .unwrap();
    let _us = watch_as(&app.bundle, "team", &[], "us-1", &[("region", "us")])
        .await
        .unwrap();
    report(&app.bundle, "team", "eu-1", 1, vec![applied("limits", 1)])
        .await
        .unwrap();
    report(
        &app.bundle,
        "team",
        "us-1",
        1,
        vec![rejected("limits", 1, "schema check failed")],
    )
    .await
    .unwrap();

    let listed = policyhub(&app, &["runtimes", "team", "--output", "json"]).json();
    let ids: Vec<&str> = listed["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|runtime| runtime["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["eu-1", "us-1"]);
    assert_eq!(
        listed["runtimes"][1]["policies"][0]["state"],
        "APPLY_STATE_REJECTED"
    );
    let selected = policyhub(&app, &["runtimes", "team", "-l", "region=us"]);
    let lines: Vec<&str> = selected.success().lines().collect();
    assert!(lines[0].starts_with("RUNTIME"), "{}", selected.stdout);
    assert_eq!(lines.len(), 2, "{}", selected.stdout);
    assert_eq!(
        lines[1].split_whitespace().take(3).collect::<Vec<_>>(),
        ["us-1", "connected", "1"],
        "{}",
        selected.stdout
    );

    let status = policyhub(&app, &["status", "team/limits", "--output", "json"]).json();
    assert_eq!(
        (
            &status["runtimes"],
            &status["applied"],
            &status["rejected"],
            &status["pending"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(null))
    );
    let text = policyhub(&app, &["status", "team/limits"]);
    assert!(
        text.success()
            .contains("2 runtime(s): 1 applied, 1 rejected, 0 pending, 0 stale"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains(r#"1 × "schema check failed""#),
        "{}",
        text.stdout
    );
    let refused = policyhub(&app, &["runtimes", "team", "-l", "a b"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--label-selector") && refused.stderr.contains("\nhint: "),
        "{}",
        refused.stderr
    );
}
