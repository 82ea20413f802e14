//! Webhook deliveries, checked by a receiver of another language: each is
//! verified with the reference implementation of Standard Webhooks (the
//! Python `standardwebhooks`) and parsed with the CloudEvents SDK
//! (`cloudevents`) by `tests/webhooks/receiver.py`.

use std::time::{Duration, Instant};

use policyhub::config::Settings;
use policyhub::grpc::proto::{self, EventKind};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::helpers::{Backend, Reaped, TestApp, TestDatabase, bundles_of, spawn_on, stdout_lines};
use crate::subscriptions::{create_request, subscriptions};

/// The secret every test subscription signs with.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running `receiver.py`.
pub struct Receiver {
    _child: Reaped,
    lines: UnboundedReceiver<String>,
    /// Where it listens.
    pub url: String,
}

impl Receiver {
    /// A receiver answering as `plan` says (see receiver.py), waiting
    /// `hang_seconds` where the plan hangs.
    pub async fn start(plan: &[&str], hang_seconds: f64) -> Self {
        Self::start_with(&[], plan, hang_seconds).await
    }

    /// A receiver given `options` (such as `--chat`) too.
    pub async fn start_with(options: &[&str], plan: &[&str], hang_seconds: f64) -> Self {
        let mut child = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/webhooks/receiver.py"
            ))
            .arg("--secret")
            .arg(SECRET)
            .arg("--hang-seconds")
            .arg(hang_seconds.to_string())
            .args(options)
            .args(plan)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run python3 (PYTHONPATH holds standardwebhooks and cloudevents)");
        let mut lines = stdout_lines(&mut child);
        let first = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("the receiver starts")
            .expect("the receiver prints its port");
        let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
            .as_u64()
            .unwrap();
        Receiver {
            _child: Reaped(child),
            lines,
            url: format!("http://127.0.0.1:{port}/hook"),
        }
    }

    /// The next delivery it received, within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .ok()??;
        let delivery: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(delivery["verified"], true, "{delivery}");
        assert!(delivery.get("parse_error").is_none(), "{delivery}");
        Some(delivery)
    }

    /// Deliveries until `count` distinct webhook ids were answered 2xx,
    /// then any further one within a grace period (a repeat would show).
    pub async fn until_delivered(&mut self, count: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let delivered = |seen: &Vec<Value>| {
            let mut ids: Vec<&str> = seen
                .iter()
                .filter(|d| d["answer"] == "ok")
                .map(|d| d["webhook_id"].as_str().unwrap())
                .collect();
            ids.sort();
            ids.dedup();
            ids.len()
        };
        while delivered(&seen) < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(delivery) => seen.push(delivery),
                None => panic!(
                    "{} of {count} delivered in time: {seen:?}",
                    delivered(&seen)
                ),
            }
        }
        while let Some(delivery) = self.next(Duration::from_millis(500)).await {
            seen.push(delivery);
        }
        seen
    }
}

/// Settings for webhooks to loopback receivers, retried quickly.
pub fn webhook_settings(settings: &mut Settings) {
    let notifications = &mut settings.notifications;
    notifications.allow_http = true;
    notifications.allow_private_addresses = true;
    // Long enough that a loaded machine causes no repeat.
    notifications.timeout = Duration::from_secs(5);
    notifications.initial_retry_delay = Duration::from_millis(400);
    notifications.max_retry_delay = Duration::from_secs(2);
    notifications.poll_interval = Duration::from_millis(50);
}

/// Subscribes `url` to `kinds` of `namespace` (empty: deployment-wide).
pub async fn subscribe(app: &TestApp, namespace: &str, name: &str, url: &str, kinds: &[EventKind]) {
    subscriptions(app)
        .await
        .create_subscription(proto::CreateSubscriptionRequest {
            secret: SECRET.into(),
            ..create_request(namespace, name, url, kinds)
        })
        .await
        .expect("create the subscription");
}

/// Every event kind of the API.
fn every_kind() -> Vec<EventKind> {
    (1..)
        .map_while(|value| EventKind::try_from(value).ok())
        .collect()
}

/// The events of `kinds` after the first `skip` of the log, oldest first:
/// what a subscription created after those hears.
async fn events_after(app: &TestApp, skip: usize, kinds: &[EventKind]) -> Vec<proto::Event> {
    all_events(app)
        .await
        .into_iter()
        .skip(skip)
        .filter(|event| kinds.contains(&event.kind()))
        .collect()
}

/// A runtime of team refuses the active version of limits; returns once
/// the fleet's flush recorded it.
async fn refuse_the_active_version(app: &TestApp) {
    let mut bundle = app.bundle.clone();
    let mut stream = bundle
        .watch_active(proto::WatchActiveRequest {
            namespace: "team".into(),
            runtime: Some(proto::RuntimeIdentity {
                id: "rt-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a snapshot");
    let (_, active_version, _) = bundles_of(&first)[0].clone();
    bundle
        .report_status(proto::ReportStatusRequest {
            namespace: "team".into(),
            runtime_id: "rt-1".into(),
            revision: first.revision,
            policies: vec![proto::PolicyApplyStatus {
                name: "limits".into(),
                version: active_version,
                state: proto::ApplyState::Rejected as i32,
                error: "unknown field".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_events(app)
        .await
        .iter()
        .any(|event| event.kind() == EventKind::RuntimeRejected)
    {
        assert!(Instant::now() < deadline, "no RUNTIME_REJECTED recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of the log, oldest first.
async fn all_events(app: &TestApp) -> Vec<proto::Event> {
    let mut events = app
        .policy
        .clone()
        .list_events(proto::ListEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    events.reverse();
    events
}

/// The webhook ids delivered (answered 2xx), in the order received.
fn delivered_ids(deliveries: &[Value]) -> Vec<String> {
    deliveries
        .iter()
        .filter(|d| d["answer"] == "ok")
        .map(|d| d["webhook_id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids_of(events: &[proto::Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| format!("evt_{}", event.id))
        .collect()
}

macro_rules! on_both_backends_with_webhooks {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let database = $crate::helpers::TestDatabase::new($crate::helpers::Backend::Sqlite).await;
                    super::$scenario(database).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let database = $crate::helpers::TestDatabase::new($crate::helpers::Backend::Postgres).await;
                    super::$scenario(database).await;
                }
            )*
        }
    };
}

on_both_backends_with_webhooks!(
    every_event_is_delivered_once_in_order_signed_and_a_cloudevent,
    a_failing_endpoint_is_retried_with_growing_delays_and_nothing_is_skipped,
    a_dead_endpoint_is_disabled_and_delays_no_other_subscription,
    a_namespace_hears_that_its_own_subscription_was_disabled,
);

async fn every_event_is_delivered_once_in_order_signed_and_a_cloudevent(database: TestDatabase) {
    let app = spawn_on(database, webhook_settings).await;
    let mut receiver = Receiver::start(&["ok"], 0.0).await;
    let before = all_events(&app).await.len();
    subscribe(&app, "", "everything", &receiver.url, &every_kind()).await;
    let mut policy = app.policy.clone();
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), true).await;
    policy
        .rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: "limits".into(),
            reason: "too high".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    app.draft("team", "limits", json!({"max": 3})).await;
    app.draft("team", "limits", json!({"max": 4})).await;
    policy
        .discard_draft(proto::DiscardDraftRequest {
            namespace: "team".into(),
            name: "limits".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let schedule = proto::SetScheduleRequest {
        namespace: "team".into(),
        name: "weekend".into(),
        entries: vec![proto::ScheduleEntryRequest {
            name: "saturday".into(),
            cron: "0 0 * * 6".into(),
            time_zone: "UTC".into(),
            targets: vec![proto::ScheduleTargetRequest {
                name: "limits".into(),
                selector: Some(proto::schedule_target_request::Selector::Version(2)),
            }],
        }],
        paused: false,
        reason: "weekend limits".into(),
    };
    policy.set_schedule(schedule).await.unwrap();
    let control = proto::ScheduleControlRequest {
        namespace: "team".into(),
        name: "weekend".into(),
        reason: "by hand".into(),
    };
    policy.pause_schedule(control.clone()).await.unwrap();
    policy.resume_schedule(control.clone()).await.unwrap();
    policy.delete_schedule(control).await.unwrap();
    let rollout = policy
        .start_rollout(proto::StartRolloutRequest {
            namespace: "team".into(),
            targets: vec![proto::RolloutTargetRequest {
                name: "limits".into(),
                selector: Some(proto::rollout_target_request::Selector::Version(2)),
                expected_active_version: Some(1),
            }],
            steps: vec![proto::RolloutStep {
                percentage: 50,
                label_selector: String::new(),
                bake: Some(Duration::from_secs(3600).try_into().unwrap()),
                analyses: Vec::new(),
            }],
            reason: "canary".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let control = |reason: &str| proto::RolloutControlRequest {
        namespace: "team".into(),
        id: rollout.id.clone(),
        reason: reason.into(),
    };
    policy.pause_rollout(control("look")).await.unwrap();
    policy.resume_rollout(control("go on")).await.unwrap();
    policy.abort_rollout(control("enough")).await.unwrap();
    policy
        .rotate_signing_key(proto::RotateSigningKeyRequest {
            reason: "yearly".into(),
        })
        .await
        .unwrap();
    refuse_the_active_version(&app).await;
    policy
        .record_restore(proto::RecordRestoreRequest {
            reason: "restored last night's backup".into(),
        })
        .await
        .unwrap();

    let events = events_after(&app, before, &every_kind()).await;
    let expected = ids_of(&events);
    assert!(events.len() >= 20, "{events:?}");
    let deliveries = receiver
        .until_delivered(expected.len(), Duration::from_secs(30))
        .await;
    assert_eq!(delivered_ids(&deliveries), expected, "once each, in order");
    for (delivery, event) in deliveries.iter().zip(&events) {
        assert_eq!(delivery["id"], delivery["webhook_id"]);
        assert_eq!(delivery["content_type"], "application/cloudevents+json");
        let kind = event.kind().as_str_name().trim_start_matches("EVENT_KIND_");
        assert_eq!(delivery["data"]["kind"], kind, "{delivery}");
        assert_eq!(
            delivery["type"],
            format!("io.policyhub.{}", kind.to_lowercase().replace('_', ".")),
        );
    }
    let kinds: std::collections::BTreeSet<i32> = events.iter().map(|event| event.kind).collect();
    assert!(kinds.len() >= 15, "a broad range of kinds: {kinds:?}");
}

async fn a_failing_endpoint_is_retried_with_growing_delays_and_nothing_is_skipped(
    database: TestDatabase,
) {
    let app = spawn_on(database, |settings| {
        webhook_settings(settings);
        settings.notifications.timeout = Duration::from_secs(1);
    })
    .await;
    let mut receiver = Receiver::start(&["500", "500", "hang", "ok"], 2.0).await;
    let kinds = [
        EventKind::DraftCreated,
        EventKind::Published,
        EventKind::Activated,
    ];
    let before = all_events(&app).await.len();
    subscribe(&app, "team", "flaky", &receiver.url, &kinds).await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let events = events_after(&app, before, &kinds).await;
    assert_eq!(events.len(), 3);
    let deliveries = receiver.until_delivered(3, Duration::from_secs(30)).await;
    assert_eq!(
        delivered_ids(&deliveries),
        ids_of(&events),
        "nothing skipped"
    );
    let first = format!("evt_{}", events[0].id);
    let attempts: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["webhook_id"] == first.as_str())
        .collect();
    let answers: Vec<&str> = attempts
        .iter()
        .map(|d| d["answer"].as_str().unwrap())
        .collect();
    assert_eq!(answers, ["500", "500", "hang", "ok"]);
    let at = |index: usize| attempts[index]["received_at"].as_f64().unwrap();
    let gaps = [at(1) - at(0), at(2) - at(1), at(3) - at(2)];
    // Attempt n waits at least half its bound, 400 ms doubled per failure;
    // the hang adds the 1 s timeout.
    assert!(
        gaps[0] >= 0.2 && gaps[1] >= 0.4 && gaps[2] >= 1.0 + 0.8,
        "{gaps:?}"
    );
    assert!(gaps[2] > gaps[1] && gaps[1] + 0.05 > gaps[0], "{gaps:?}");

    let listed = subscriptions(&app)
        .await
        .list_deliveries(proto::ListDeliveriesRequest {
            namespace: "team".into(),
            name: "flaky".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let statuses: Vec<(u32, u32)> = listed
        .iter()
        .rev()
        .map(|d| (d.attempt, d.status_code))
        .collect();
    assert_eq!(statuses[..4], [(1, 500), (2, 500), (3, 0), (4, 204)]);
    assert!(
        listed
            .iter()
            .rev()
            .nth(2)
            .unwrap()
            .error
            .contains("timed out")
    );
}

async fn a_dead_endpoint_is_disabled_and_delays_no_other_subscription(database: TestDatabase) {
    let app = spawn_on(database, |settings| {
        webhook_settings(settings);
        settings.notifications.disable_after_failures = 3;
        settings.notifications.timeout = Duration::from_millis(500);
        settings.notifications.initial_retry_delay = Duration::from_millis(100);
    })
    .await;
    let mut dead = Receiver::start(&["hang"], 30.0).await;
    let mut healthy = Receiver::start(&["ok"], 0.0).await;
    let kinds = [EventKind::Activated];
    subscribe(&app, "team", "dead", &dead.url, &kinds).await;
    subscribe(&app, "team", "healthy", &healthy.url, &kinds).await;
    app.release("team", "limits", json!({"max": 0}), true).await;
    let mut latencies = Vec::new();
    for max in 1..=6 {
        let started = Instant::now();
        app.release("team", "limits", json!({ "max": max }), true)
            .await;
        healthy
            .next(Duration::from_secs(5))
            .await
            .expect("delivered");
        latencies.push(started.elapsed());
    }
    assert!(
        latencies
            .iter()
            .all(|latency| *latency < Duration::from_millis(600)),
        "the dead endpoint delays the healthy one: {latencies:?}"
    );

    let mut client = subscriptions(&app).await;
    let get = proto::GetSubscriptionRequest {
        namespace: "team".into(),
        name: "dead".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let disabled = loop {
        let found = client
            .get_subscription(get.clone())
            .await
            .unwrap()
            .into_inner();
        if !found.enabled {
            break found;
        }
        assert!(Instant::now() < deadline, "never disabled: {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(disabled.consecutive_failures, 3);
    assert!(
        disabled.disabled_reason.contains("3 failed attempts"),
        "{disabled:?}"
    );
    let mut seen_dead = 0;
    while dead.next(Duration::from_millis(200)).await.is_some() {
        seen_dead += 1;
    }
    assert_eq!(seen_dead, 3, "three attempts, then no more");
    let events = all_events(&app).await;
    assert!(
        events
            .iter()
            .any(|event| event.kind() == EventKind::SubscriptionDisabled
                && event.reason.contains("team/dead")),
        "{events:?}"
    );

    // Enabled again at a working endpoint, it delivers from where it stopped.
    let mut revived = Receiver::start(&["ok"], 0.0).await;
    client
        .update_subscription(proto::UpdateSubscriptionRequest {
            namespace: "team".into(),
            name: "dead".into(),
            url: revived.url.clone(),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let activations = events_after(&app, 0, &kinds).await;
    let deliveries = revived
        .until_delivered(activations.len(), Duration::from_secs(20))
        .await;
    assert_eq!(delivered_ids(&deliveries), ids_of(&activations));
}

/// A namespace's subscription disabled is an event of that namespace: its
/// readers find it by namespace, and the namespace's subscriptions to the
/// kind hear it (another namespace's do not).
async fn a_namespace_hears_that_its_own_subscription_was_disabled(database: TestDatabase) {
    let app = spawn_on(database, |settings| {
        webhook_settings(settings);
        settings.notifications.disable_after_failures = 2;
        settings.notifications.initial_retry_delay = Duration::from_millis(100);
    })
    .await;
    let dead = Receiver::start(&["500"], 0.0).await;
    let mut told = Receiver::start(&["ok"], 0.0).await;
    let mut elsewhere = Receiver::start(&["ok"], 0.0).await;
    let disabled = [EventKind::SubscriptionDisabled];
    subscribe(&app, "team", "dead", &dead.url, &[EventKind::Activated]).await;
    subscribe(&app, "team", "told", &told.url, &disabled).await;
    subscribe(&app, "other", "elsewhere", &elsewhere.url, &disabled).await;
    app.release("team", "limits", json!({"max": 1}), true).await;

    let delivery = told
        .next(Duration::from_secs(20))
        .await
        .expect("the namespace's subscription hears of the disabling");
    assert_eq!(
        delivery["data"]["kind"], "SUBSCRIPTION_DISABLED",
        "{delivery}"
    );
    assert_eq!(delivery["data"]["namespace"], "team", "{delivery}");
    assert_eq!(delivery["data"]["name"], "", "{delivery}");
    let reason = delivery["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("team/dead"), "{delivery}");

    let listed = app
        .policy
        .clone()
        .list_events(proto::ListEventsRequest {
            namespace: "team".into(),
            kinds: disabled.map(|kind| kind as i32).to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].namespace.as_str(), listed[0].name.as_str()),
        ("team", "")
    );
    assert_eq!(delivery["webhook_id"], format!("evt_{}", listed[0].id));
    assert!(
        elsewhere.next(Duration::from_millis(500)).await.is_none(),
        "another namespace hears nothing of it"
    );
}

/// The real binary on `data`, delivering to `url` with attempts that time
/// out after `timeout`, with a draft and its publication (two events) to
/// deliver; the server, its port and its environment, to start it again.
async fn delivering_binary_server(
    data: &std::path::Path,
    url: &str,
    timeout: &str,
) -> (Reaped, u16, [(&'static str, String); 4]) {
    let env = [
        ("POLICYHUB_NOTIFICATIONS__ALLOW_HTTP", "true".to_owned()),
        (
            "POLICYHUB_NOTIFICATIONS__ALLOW_PRIVATE_ADDRESSES",
            "true".to_owned(),
        ),
        ("POLICYHUB_NOTIFICATIONS__TIMEOUT", timeout.to_owned()),
        ("POLICYHUB_NOTIFICATIONS__POLL_INTERVAL", "50ms".to_owned()),
    ];
    let port = crate::helpers::free_port();
    let (server, channel) = crate::helpers::spawn_binary_server_on(port, data, &env).await;
    let mut client =
        proto::subscription_service_client::SubscriptionServiceClient::new(channel.clone());
    client
        .create_subscription(proto::CreateSubscriptionRequest {
            secret: SECRET.into(),
            ..create_request(
                "team",
                "siem",
                url,
                &[EventKind::DraftCreated, EventKind::Published],
            )
        })
        .await
        .unwrap();
    let mut policy = proto::policy_service_client::PolicyServiceClient::new(channel);
    policy
        .draft(proto::DraftRequest {
            namespace: "team".into(),
            name: "limits".into(),
            body: Some(policyhub::grpc::convert::json_to_struct(&json!({"max": 1}))),
            ..Default::default()
        })
        .await
        .unwrap();
    policy
        .publish(crate::helpers::publish_request("team", "limits", "", false))
        .await
        .unwrap();
    (server, port, env)
}

/// A server of the real binary killed with SIGKILL while a delivery is in
/// flight: after the restart the event is delivered again, under the same
/// webhook id, and every event committed before the kill arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_commit_and_delivery_loses_nothing_and_repeats_the_id() {
    let data = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(&["hang", "ok"], 60.0).await;
    let (server, port, env) = delivering_binary_server(data.path(), &receiver.url, "60s").await;
    // The first event is in flight (the receiver holds it): kill now.
    let in_flight = receiver.next(Duration::from_secs(10)).await.expect("sent");
    crate::helpers::send_signal(&server, "-KILL");
    let mut server = server;
    server.wait().unwrap();

    let (server, _channel) = crate::helpers::spawn_binary_server_on(port, data.path(), &env).await;
    let deliveries = receiver.until_delivered(2, Duration::from_secs(20)).await;
    crate::helpers::terminate(server).await;
    let ids = delivered_ids(&deliveries);
    assert_eq!(
        ids[0], in_flight["webhook_id"],
        "the repeat carries the same id"
    );
    assert_eq!(ids.len(), 2, "{deliveries:?}");
    assert_ne!(ids[0], ids[1]);
}

/// SIGTERM while a delivery is in flight: the server waits for the
/// attempt (the receiver answers it) and records it before it exits, so
/// the restarted server goes on with the next event instead of sending the
/// same one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_flight_at_sigterm_completes_before_the_server_stops() {
    let data = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(&["slow", "ok"], 2.0).await;
    let (server, port, env) = delivering_binary_server(data.path(), &receiver.url, "10s").await;
    // The first event is in flight (the receiver answers in two seconds).
    let in_flight = receiver.next(Duration::from_secs(10)).await.expect("sent");
    let stopping = Instant::now();
    crate::helpers::terminate(server).await;
    assert!(
        stopping.elapsed() >= Duration::from_millis(1500),
        "the server waited for the answer: {:?}",
        stopping.elapsed()
    );

    let (server, _channel) = crate::helpers::spawn_binary_server_on(port, data.path(), &env).await;
    let deliveries = receiver.until_delivered(1, Duration::from_secs(20)).await;
    crate::helpers::terminate(server).await;
    let ids = delivered_ids(&deliveries);
    assert!(
        !ids.contains(&in_flight["webhook_id"].as_str().unwrap().to_owned()),
        "the answered attempt was recorded, not repeated: {deliveries:?}"
    );
    assert_eq!(ids.len(), 1, "{deliveries:?}");
}

/// Two PostgreSQL replicas with the worker on each: every event is
/// delivered by one of them, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_replicas_deliver_each_event_once() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let first = spawn_on(database, webhook_settings).await;
    let second = spawn_on(replica, webhook_settings).await;
    let mut receiver = Receiver::start(&["ok"], 0.0).await;
    let kinds = [
        EventKind::DraftCreated,
        EventKind::Activated,
        EventKind::Published,
    ];
    let before = all_events(&first).await.len();
    subscribe(&first, "team", "both", &receiver.url, &kinds).await;
    for max in 0..10 {
        let app = if max % 2 == 0 { &first } else { &second };
        app.release("team", "limits", json!({ "max": max }), true)
            .await;
    }
    let events = events_after(&first, before, &kinds).await;
    assert_eq!(events.len(), 30);
    let deliveries = receiver.until_delivered(30, Duration::from_secs(30)).await;
    assert_eq!(
        delivered_ids(&deliveries),
        ids_of(&events),
        "once each, in order"
    );
}

/// A rollout that needs an approval reaches the approvers' subscription
/// within a second of StartRollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_needing_approval_reaches_the_approvers_within_a_second() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, |settings| {
        webhook_settings(settings);
        settings.notifications.poll_interval = Duration::from_millis(200);
        settings.rollouts.required_approvals = [("team".to_owned(), 1)].into();
    })
    .await;
    let mut receiver = Receiver::start(&["ok"], 0.0).await;
    subscribe(
        &app,
        "team",
        "approvers",
        &receiver.url,
        &[EventKind::RolloutScheduled],
    )
    .await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), false)
        .await;
    let started = Instant::now();
    let rollout = app
        .policy
        .clone()
        .start_rollout(proto::StartRolloutRequest {
            namespace: "team".into(),
            targets: vec![proto::RolloutTargetRequest {
                name: "limits".into(),
                selector: Some(proto::rollout_target_request::Selector::Version(2)),
                expected_active_version: Some(1),
            }],
            steps: vec![proto::RolloutStep {
                percentage: 100,
                label_selector: String::new(),
                bake: None,
                analyses: Vec::new(),
            }],
            reason: "needs a second pair of eyes".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let delivery = receiver
        .next(Duration::from_secs(1))
        .await
        .expect("within a second");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(delivery["type"], "io.policyhub.rollout.scheduled");
    assert_eq!(delivery["data"]["rollout_id"], rollout.id.as_str());
}

/// The command line manages a chat-format subscription: a test message and
/// an event arrive as readable, signed `{"text": …}` messages, and the
/// deliveries are listed with their status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_tests_and_lists_a_chat_subscription() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, webhook_settings).await;
    let mut receiver = Receiver::start_with(&["--chat"], &["ok"], 0.0).await;
    let cli = |args: &[&str]| crate::cli::policyhub(&app, args);
    let created = cli(&[
        "subscription",
        "create",
        "team/chatops",
        "--url",
        &receiver.url,
        "--event-kind",
        "activated",
        "--format",
        "chat",
        "--secret",
        SECRET,
    ]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(
        created.stdout.contains("secret (shown this once)"),
        "{}",
        created.stdout
    );

    let tested = cli(&["subscription", "test", "team/chatops"]);
    assert_eq!(tested.code, 0, "{}", tested.stderr);
    assert!(tested.stdout.contains("delivered"), "{}", tested.stdout);
    let test_message = receiver.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(test_message["text"], "policyhub: a test message");

    app.release("team", "limits", json!({"max": 1}), true).await;
    let announced = receiver.next(Duration::from_secs(5)).await.unwrap();
    let text = announced["text"].as_str().unwrap();
    assert!(
        text.starts_with("policyhub: activated team/limits v1 by anonymous"),
        "{text}"
    );

    // The attempt is recorded once the endpoint has answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    let deliveries = loop {
        let listed = cli(&[
            "subscription",
            "deliveries",
            "team/chatops",
            "--output",
            "json",
        ]);
        assert_eq!(listed.code, 0, "{}", listed.stderr);
        let deliveries: Value = serde_json::from_str(&listed.stdout).unwrap();
        if deliveries["deliveries"].as_array().unwrap().len() == 2 {
            break deliveries;
        }
        assert!(Instant::now() < deadline, "{deliveries}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(deliveries["deliveries"][0]["statusCode"], 204);

    let disabled = cli(&[
        "subscription",
        "update",
        "team/chatops",
        "--enabled",
        "false",
    ]);
    assert_eq!(disabled.code, 0, "{}", disabled.stderr);
    assert!(
        disabled.stdout.contains("disabled by an operator"),
        "{}",
        disabled.stdout
    );
    let listing = cli(&["subscription", "list", "team"]);
    assert!(listing.stdout.contains("chatops"), "{}", listing.stdout);
    let deleted = cli(&["subscription", "delete", "team/chatops"]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let refused = cli(&[
        "subscription",
        "create",
        "team/x",
        "--url",
        "ftp://x",
        "--event-kind",
        "activated",
    ]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("url"), "{}", refused.stderr);
}
