//! Alertmanager's alerts against running rollouts
//! (docs/src/guides/rollout-analysis.md#alertmanager): a real Alertmanager
//! (Debian's `prometheus-alertmanager`, which `./scripts/test` installs),
//! configured with the guide's own snippet, posts its webhook to the
//! server's HTTP port with a bearer token; the alerts are posted to
//! Alertmanager's API, as Prometheus posts them.

use std::time::Duration;

use policyhub::grpc::proto;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::auth::{Issuer, secured_app_on, with_token};
use crate::helpers::{Backend, TestApp, bundles_of, next_message};
use crate::http::{Reply, curl};

crate::on_both_backends_given_the_backend!(
    a_firing_alert_stops_the_rollouts_it_matches_and_no_other,
    bad_notifications_are_refused_and_change_nothing,
);

const JSON: &str = "Content-Type: application/json";

/// The guide's Alertmanager configuration, its server address and token
/// file made this test's.
fn guide_config(server: &str, token_file: &std::path::Path) -> String {
    let guide = include_str!("../../docs/src/guides/rollout-analysis.md");
    let section = guide
        .split("## Alertmanager")
        .nth(1)
        .expect("the guide has an Alertmanager section");
    let config = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the Alertmanager section shows its configuration");
    assert!(config.contains("http://policyhub.policyhub:8080"));
    assert!(config.contains("/etc/alertmanager/secrets/policyhub-token"));
    config
        .replace("http://policyhub.policyhub:8080", server)
        .replace(
            "/etc/alertmanager/secrets/policyhub-token",
            &token_file.display().to_string(),
        )
}

/// An Alertmanager whose webhook posts to `app` with `token`.
struct Alertmanager {
    url: String,
    _process: Child,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    async fn start(app: &TestApp, token: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("policyhub-token");
        std::fs::write(&token_file, token).unwrap();
        let server = format!("http://{}", app.http_address.expect("the HTTP port"));
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, guide_config(&server, &token_file)).unwrap();
        let port = crate::helpers::free_port();
        let process = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // One Alertmanager, no cluster to gossip with.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .kill_on_drop(true)
            .spawn()
            .expect(
                "prometheus-alertmanager runs: ./scripts/test installs it \
                 (Debian: apt-get install prometheus-alertmanager)",
            );
        let alertmanager = Alertmanager {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            let ready = client
                .get(format!("{}/-/ready", alertmanager.url))
                .send()
                .await;
            if ready.is_ok_and(|ready| ready.status().is_success()) {
                return alertmanager;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("alertmanager was not ready within 20 s");
    }

    /// Posts one firing alert, as Prometheus does.
    async fn fire(&self, labels: Value, generator_url: &str) {
        let posted = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&json!([{"labels": labels, "generatorURL": generator_url}]))
            .send()
            .await
            .expect("alertmanager answers");
        assert!(posted.status().is_success(), "{posted:?}");
    }
}

fn post(app: &TestApp, token: &str, path: &str, body: &str) -> Reply {
    let auth = format!("Authorization: Bearer {token}");
    curl(app, "POST", path, Some(body), &[JSON, &auth])
}

fn get(app: &TestApp, token: &str, path: &str) -> Reply {
    let auth = format!("Authorization: Bearer {token}");
    curl(app, "GET", path, None, &[&auth])
}

/// team/NAME: version 1 active, version 2 published.
fn seed(app: &TestApp, admin: &str, name: &str) {
    let base = format!("/v1/namespaces/team/policies/{name}");
    for (max, activate) in [(1, true), (2, false)] {
        let drafted = post(
            app,
            admin,
            &format!("{base}/drafts"),
            &format!(r#"{{"body": {{"max": {max}}}}}"#),
        );
        assert_eq!(drafted.status, 201, "{drafted:?}");
        let body = json!({"activate": activate, "reason": "seed"}).to_string();
        let published = post(app, admin, &format!("{base}:publish"), &body);
        assert_eq!(published.status, 200, "{published:?}");
    }
}

/// Starts a rollout of team/NAME version 2 to everyone, baking an hour.
fn start(app: &TestApp, admin: &str, name: &str) -> String {
    let body = json!({
        "targets": [{"name": name, "version": 2}],
        "steps": [{"percentage": 100, "bake": "3600s"}],
        "reason": format!("canary {name}"),
    });
    let started = post(
        app,
        admin,
        "/v1/namespaces/team/rollouts",
        &body.to_string(),
    );
    assert_eq!(started.status, 200, "{started:?}");
    started.json["id"].as_str().unwrap().to_owned()
}

fn rollout(app: &TestApp, admin: &str, id: &str) -> Value {
    let read = get(app, admin, &format!("/v1/namespaces/team/rollouts/{id}"));
    assert_eq!(read.status, 200, "{read:?}");
    read.json
}

/// Polls rollout `id` until its state is `state`, for at most 15 s.
async fn until_state(app: &TestApp, admin: &str, id: &str, state: &str) -> Value {
    for _ in 0..300 {
        let read = rollout(app, admin, id);
        if read["state"] == state {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rollout {id} is not {state}: {}", rollout(app, admin, id));
}

async fn server(backend: Backend, issuer: &Issuer) -> TestApp {
    secured_app_on(backend, issuer, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

async fn a_firing_alert_stops_the_rollouts_it_matches_and_no_other(backend: Backend) {
    let issuer = Issuer::new();
    let app = server(backend, &issuer).await;
    let admin = issuer.token("admin", &["*:admin"]);
    seed(&app, &admin, "limits");
    seed(&app, &admin, "fees");
    let mut runtime = app
        .bundle
        .clone()
        .watch_active(with_token(
            proto::WatchActiveRequest {
                namespace: "team".into(),
                names: vec!["limits".into()],
                since_revision: 0,
                runtime: Some(proto::RuntimeIdentity {
                    id: "rt-0".into(),
                    labels: Default::default(),
                }),
            },
            &admin,
        ))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(bundles_of(&next_message(&mut runtime).await)[0].1, 1);
    let limits = start(&app, &admin, "limits");
    let fees = start(&app, &admin, "fees");
    assert_eq!(
        bundles_of(&next_message(&mut runtime).await)[0].1,
        2,
        "the cohort runs the candidate"
    );

    // Alertmanager holds an operator's token of the namespace, no more.
    let token = issuer.token("alertmanager", &["team:operator"]);
    let alertmanager = Alertmanager::start(&app, &token).await;
    let generator = "http://prometheus.test/graph?g0.expr=limits_errors";
    alertmanager
        .fire(
            json!({"alertname": "LimitsErrorRate", "namespace": "team", "policy": "limits",
                   "severity": "page"}),
            generator,
        )
        .await;
    let back = tokio::time::timeout(Duration::from_secs(15), next_message(&mut runtime))
        .await
        .expect("the cohort returns to the baseline within 15 s");
    assert_eq!(bundles_of(&back)[0].1, 1, "the cohort is back on version 1");
    let aborted = until_state(&app, &admin, &limits, "ROLLOUT_STATE_ABORTED").await;
    let said = aborted["haltedBecause"].as_str().unwrap();
    assert!(
        said.contains("abort by alertmanager")
            && said.contains(&format!("alert LimitsErrorRate fired ({generator})")),
        "{said}"
    );
    let events = get(&app, &admin, "/v1/namespaces/team/events?name=limits");
    let event = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["kind"] == "EVENT_KIND_ROLLOUT_ABORTED")
        .unwrap_or_else(|| panic!("a ROLLOUT_ABORTED event: {events:?}"))
        .clone();
    assert_eq!(event["actor"], "alertmanager");
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("LimitsErrorRate fired ({generator})")),
        "{event}"
    );
    // The alert named another policy: the fees rollout runs on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rollout(&app, &admin, &fees)["state"],
        "ROLLOUT_STATE_RUNNING"
    );

    // The label chooses the action: this alert pauses.
    alertmanager
        .fire(
            json!({"alertname": "FeesLatency", "namespace": "team", "policy": "fees",
                   "policyhub_action": "pause"}),
            "http://prometheus.test/graph?g0.expr=fees_latency",
        )
        .await;
    let paused = until_state(&app, &admin, &fees, "ROLLOUT_STATE_PAUSED").await;
    assert!(
        paused["haltedBecause"]
            .as_str()
            .unwrap()
            .contains("alert FeesLatency fired"),
        "{paused}"
    );
}

async fn bad_notifications_are_refused_and_change_nothing(backend: Backend) {
    let issuer = Issuer::new();
    let app = server(backend, &issuer).await;
    let admin = issuer.token("admin", &["*:admin"]);
    seed(&app, &admin, "limits");
    let id = start(&app, &admin, "limits");
    let before = app.db_state().await;
    let operator = issuer.token("alertmanager", &["team:operator"]);
    let notification = |alerts: Value| {
        json!({
            "version": "4", "groupKey": "{}:{alertname=\"LimitsErrorRate\"}", "truncatedAlerts": 0,
            "status": "firing", "receiver": "policyhub", "groupLabels": {"alertname": "LimitsErrorRate"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager.test",
            "alerts": alerts,
        })
        .to_string()
    };
    let alert = |status: &str, labels: Value| {
        json!({"status": status, "labels": labels, "annotations": {},
               "startsAt": "2026-11-28T04:00:00.123+01:00", "endsAt": "0001-01-01T00:00:00Z",
               "generatorURL": "http://prometheus.test/graph", "fingerprint": "c0ffee"})
    };
    let firing = notification(json!([alert(
        "firing",
        json!({"alertname": "LimitsErrorRate", "namespace": "team"})
    )]));
    let path = "/v1/alerts:receive";

    let unauthenticated = curl(&app, "POST", path, Some(&firing), &[JSON]);
    assert_eq!(unauthenticated.status, 401, "{unauthenticated:?}");
    let reader = issuer.token("rita", &["team:reader"]);
    let elsewhere = issuer.token("otto", &["other:operator"]);
    for token in [&reader, &elsewhere] {
        let forbidden = post(&app, token, path, &firing);
        assert_eq!(forbidden.status, 403, "{forbidden:?}");
    }
    let cases: Vec<(String, &str)> = vec![
        (
            "{\"alerts\": [".into(),
            "the body is not a valid ReceiveAlertsRequest",
        ),
        (
            notification(json!([alert(
                "firing",
                json!({"alertname": "NoNamespace"})
            )])),
            "alerts[0].labels.namespace",
        ),
        (
            notification(json!([alert(
                "firing",
                json!({"namespace": "team", "policyhub_action": "rollback"})
            )])),
            "alerts[0].labels.policyhub_action",
        ),
        (
            notification(json!([alert("pending", json!({"namespace": "team"}))])),
            "alerts[0].status",
        ),
        (
            notification(Value::Array(vec![
                alert(
                    "firing",
                    json!({"namespace": "team"})
                );
                101
            ])),
            "at most 100 in one notification",
        ),
        (notification(json!([])), "a notification carries alerts"),
    ];
    for (body, said) in cases {
        let refused = post(&app, &operator, path, &body);
        assert_eq!(refused.status, 400, "{said}: {refused:?}");
        let message = refused.json.to_string();
        assert!(message.contains(said), "{said}: {message}");
        assert!(message.len() < 2_000, "a bounded answer: {message}");
    }
    assert_eq!(
        app.db_state().await,
        before,
        "bad notifications changed nothing"
    );

    // A resolved alert is accepted and changes nothing.
    let resolved = notification(json!([alert(
        "resolved",
        json!({"alertname": "LimitsErrorRate", "namespace": "team"})
    )]));
    let accepted = post(&app, &operator, path, &resolved);
    assert_eq!(accepted.status, 200, "{accepted:?}");
    assert_eq!(
        accepted.json["alerts"],
        json!([{"alertname": "LimitsErrorRate", "status": "resolved"}])
    );
    assert_eq!(
        app.db_state().await,
        before,
        "a resolved alert changed nothing"
    );
    assert_eq!(rollout(&app, &admin, &id)["state"], "ROLLOUT_STATE_RUNNING");

    // Alertmanager's own JSON, sent straight: the rollout is aborted.
    let acted = post(&app, &operator, path, &firing);
    assert_eq!(acted.status, 200, "{acted:?}");
    assert_eq!(
        acted.json["alerts"][0]["rollouts"],
        json!([{"namespace": "team", "id": id, "action": "abort",
                "state": "ROLLOUT_STATE_ABORTED"}])
    );
}

/// `policyhub receive-alerts` hands the server a notification as
/// Alertmanager's webhook does: from a file or standard input, in
/// Alertmanager's own JSON, or one firing alert of the labels given; `-o
/// json` prints the reply in the protobuf JSON mapping, the table which
/// rollout each alert stopped and how.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_hands_over_a_notification_from_a_file_standard_input_or_labels() {
    use std::io::Write as _;

    use crate::cli::{client_command, policyhub_with};

    let issuer = Issuer::new();
    let app = server(Backend::Sqlite, &issuer).await;
    let admin = issuer.token("admin", &["*:admin"]);
    seed(&app, &admin, "limits");
    seed(&app, &admin, "fees");
    let limits = start(&app, &admin, "limits");
    let fees = start(&app, &admin, "fees");
    let server = format!("http://{}", app.address);
    let operator = issuer.token("alertmanager", &["team:operator"]);
    let env = [
        ("POLICYHUB_SERVER", server.as_str()),
        ("POLICYHUB_TOKEN", operator.as_str()),
    ];
    let notification = |status: &str, policy: &str| {
        json!({
            "version": "4", "groupKey": "{}:{alertname=\"LimitsErrorRate\"}", "truncatedAlerts": 0,
            "status": status, "receiver": "policyhub", "groupLabels": {"alertname": "LimitsErrorRate"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager.test",
            "alerts": [{"status": status, "annotations": {},
                        "labels": {"alertname": "LimitsErrorRate", "namespace": "team", "policy": policy},
                        "startsAt": "2026-11-28T04:00:00.123+01:00", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus.test/graph", "fingerprint": "c0ffee"}],
        })
        .to_string()
    };

    // A resolved alert from standard input: accepted, nothing stopped.
    let mut child = client_command(&env, &["receive-alerts", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(notification("resolved", "limits").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        table
            .lines()
            .map(str::split_whitespace)
            .map(Iterator::collect::<Vec<_>>)
            .collect::<Vec<_>>(),
        [
            vec!["ALERT", "STATUS", "ROLLOUT", "ACTION", "STATE"],
            vec!["LimitsErrorRate", "resolved", "-", "-", "-"],
        ]
    );
    assert_eq!(
        rollout(&app, &admin, &limits)["state"],
        "ROLLOUT_STATE_RUNNING"
    );

    // Alertmanager's notification from a file, firing: the limits rollout
    // is aborted, as the reply says in the protobuf JSON mapping.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notification.json");
    std::fs::write(&file, notification("firing", "limits")).unwrap();
    let file = file.display().to_string();
    let reply = policyhub_with(&env, &["receive-alerts", "-f", &file, "-o", "json"]).json();
    assert_eq!(
        reply,
        json!({"alerts": [{"alertname": "LimitsErrorRate", "status": "firing",
                           "rollouts": [{"namespace": "team", "id": limits, "action": "abort",
                                         "state": "ROLLOUT_STATE_ABORTED"}]}]})
    );
    assert_eq!(
        rollout(&app, &admin, &limits)["state"],
        "ROLLOUT_STATE_ABORTED"
    );

    // One firing alert of labels, as `amtool alert add` takes them: the
    // fees rollout pauses, naming the alert and where its rule is.
    let labels = [
        "receive-alerts",
        "alertname=FeesLatency",
        "namespace=team",
        "policy=fees",
        "policyhub_action=pause",
        "--generator-url",
        "http://prometheus.test/graph?g0.expr=fees_latency",
    ];
    let table = policyhub_with(&env, &labels);
    let rows: Vec<Vec<&str>> = table
        .success()
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let stopped = format!("team/{fees}");
    assert_eq!(
        rows[1],
        ["FeesLatency", "firing", stopped.as_str(), "pause", "paused"],
        "{}",
        table.stdout
    );
    let paused = rollout(&app, &admin, &fees);
    assert_eq!(paused["state"], "ROLLOUT_STATE_PAUSED");
    let said = paused["haltedBecause"].as_str().unwrap();
    assert!(
        said.contains(
            "alert FeesLatency fired (http://prometheus.test/graph?g0.expr=fees_latency)"
        ),
        "{said}"
    );

    // The server's refusals, as every command reports them: a reader may
    // not stop rollouts; a label without a value is a usage error; and the
    // command takes labels or a file, not both.
    let reader = issuer.token("rita", &["team:reader"]);
    let refused = policyhub_with(
        &[
            ("POLICYHUB_SERVER", server.as_str()),
            ("POLICYHUB_TOKEN", reader.as_str()),
        ],
        &["receive-alerts", "alertname=X", "namespace=team"],
    );
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stderr
            .starts_with("error: handing over the alerts: "),
        "{}",
        refused.stderr
    );
    let usage = policyhub_with(&env, &["receive-alerts", "namespace"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    let both = policyhub_with(&env, &["receive-alerts", "namespace=team", "-f", &file]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    let neither = policyhub_with(&env, &["receive-alerts"]);
    assert_eq!(neither.code, 2, "{}", neither.stderr);
}
