//! OPAs as runtimes of the fleet (docs/src/guides/opa.md#opas-in-the-fleet):
//! real OPAs that name themselves in their bundle resource and report
//! their status to policyhub appear among the namespace's runtimes, labelled
//! engine=opa beside the labels they name, as APPLIED; a rollout to part of
//! them reaches exactly its cohort, and an abort brings every one back; a candidate an OPA fails to
//! activate is REJECTED with OPA's own error text and rolls the cohort
//! back. Bad status reports get clear 4xx answers, the same on both
//! backends, and change nothing.

use std::time::{Duration, Instant};

use policyhub::grpc::proto::{self, RolloutState};
use serde_json::{Value, json};

use crate::auth::with_token;
use crate::helpers::{Backend, TestApp};
use crate::opa::{ALLOW, Opa, Served, activate_limit, opa_keys, release, served};

crate::on_both_backends_given_the_backend!(
    bad_status_reports_are_refused_with_a_clear_4xx_and_change_nothing,
);

/// OPAs named `opa-0`, `opa-1`, … following `payments` with `reader`,
/// the first `canaries` labelled `canary=true`.
async fn named_opas(app: &TestApp, reader: &str, count: usize, canaries: usize) -> Vec<Opa> {
    let keys = opa_keys(app, reader).await;
    let service = format!("http://{}/v1/opa", app.http_address.unwrap());
    let mut opas = Vec::new();
    for index in 0..count {
        let name = format!("opa-{index}");
        let labels: &[(&str, &str)] = if index < canaries {
            &[("canary", "true")]
        } else {
            &[]
        };
        opas.push(Opa::start(&service, reader, &keys, Some((&name, labels))).await);
    }
    opas
}

/// A server and `count` OPAs following `payments`, the first `canaries`
/// labelled `canary=true`, each deciding with version 1 and in the fleet
/// as APPLIED.
async fn fleet_of(count: usize, canaries: usize) -> (Served, Vec<Opa>) {
    let served = served(Backend::Sqlite).await;
    let opas = named_opas(&served.app, &served.reader, count, canaries).await;
    for opa in &opas {
        opa.decides(400, true, Duration::from_secs(30)).await;
    }
    applied_everywhere(&served.app, &served.admin, opas.len(), 1).await;
    (served, opas)
}

/// Publishes `allow` with a limit of `max` as a new version of
/// `payments/authz`, not active.
async fn publish(app: &TestApp, token: &str, allow: &str, max: u64) -> u32 {
    let body = json!({
        "modules": {"authz/allow.rego": allow},
        "data": {"payments": {"limits": {"max": max}}},
    });
    release(&mut app.policy.clone(), token, &body, false).await
}

/// Starts a rollout of `payments/authz` version `version` to the runtimes
/// labelled `canary=true`, baking for an hour.
async fn start_rollout(app: &TestApp, token: &str, version: u32) -> proto::Rollout {
    app.policy
        .clone()
        .start_rollout(with_token(
            proto::StartRolloutRequest {
                namespace: "payments".into(),
                targets: vec![proto::RolloutTargetRequest {
                    name: "authz".into(),
                    selector: Some(proto::rollout_target_request::Selector::Version(version)),
                    expected_active_version: Some(version - 1),
                }],
                steps: vec![proto::RolloutStep {
                    percentage: 100,
                    label_selector: "canary=true".into(),
                    bake: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                }],
                reason: "canary the new limit on OPAs".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn rollout(app: &TestApp, token: &str, id: &str) -> proto::Rollout {
    app.policy
        .clone()
        .get_rollout(with_token(
            proto::GetRolloutRequest {
                namespace: "payments".into(),
                id: id.into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `done` holds of the rollout, for at most `within`.
async fn rollout_until(
    app: &TestApp,
    token: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&proto::Rollout) -> bool,
) -> proto::Rollout {
    let started = Instant::now();
    loop {
        let rollout = rollout(app, token, id).await;
        if done(&rollout) {
            return rollout;
        }
        assert!(
            started.elapsed() < within,
            "the rollout did not get there within {within:?}: {rollout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn runtimes(app: &TestApp, token: &str) -> Vec<proto::Runtime> {
    app.policy
        .clone()
        .list_runtimes(with_token(
            proto::ListRuntimesRequest {
                namespace: "payments".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .runtimes
}

/// Waits until every one of `count` OPAs is in the fleet, labelled as an
/// OPA, connected (holding its long poll; between two polls it is not for
/// an instant) and applied `version` of `payments/authz`, as their status
/// reports say.
async fn applied_everywhere(app: &TestApp, token: &str, count: usize, version: u32) {
    let started = Instant::now();
    loop {
        let runtimes = runtimes(app, token).await;
        for runtime in &runtimes {
            assert_eq!(
                runtime.labels.get("engine").map(String::as_str),
                Some("opa")
            );
        }
        let applied = runtimes
            .iter()
            .filter(|runtime| {
                runtime.state() == proto::RuntimeState::Connected
                    && runtime.policies.iter().any(|policy| {
                        policy.name == "authz"
                            && policy.version == version
                            && policy.state() == proto::ApplyState::Applied
                    })
            })
            .count();
        if applied == count {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{applied} of {count} OPAs connected and applied version {version}: {runtimes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_to_part_of_the_opas_reaches_exactly_its_cohort_and_an_abort_brings_all_back() {
    let (
        Served {
            issuer: _issuer,
            app,
            admin,
            ..
        },
        opas,
    ) = fleet_of(5, 2).await;

    let candidate = publish(&app, &admin, ALLOW, 1000).await;
    let started = start_rollout(&app, &admin, candidate).await;
    // The cohort's OPAs report the candidate applied: the rollout sees them
    // as it sees every runtime.
    let running = rollout_until(
        &app,
        &admin,
        &started.id,
        Duration::from_secs(30),
        |rollout| {
            let progress = rollout.progress.unwrap_or_default();
            progress.cohort > 0 && progress.applied == progress.cohort
        },
    )
    .await;
    assert_eq!(running.progress.unwrap().cohort, 2, "{running:?}");
    for (index, opa) in opas.iter().enumerate() {
        let canary = index < 2;
        assert_eq!(
            opa.allows(600).await,
            Some(canary),
            "opa-{index}: exactly the cohort decides with the candidate"
        );
    }

    app.policy
        .clone()
        .abort_rollout(with_token(
            proto::RolloutControlRequest {
                namespace: "payments".into(),
                id: started.id.clone(),
                reason: "not today".into(),
            },
            &admin,
        ))
        .await
        .unwrap();
    for opa in &opas {
        opa.decides(600, false, Duration::from_secs(10)).await;
    }
    applied_everywhere(&app, &admin, opas.len(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_opa_fails_to_activate_is_rejected_with_its_error_and_rolls_the_cohort_back() {
    let (
        Served {
            issuer: _issuer,
            app,
            admin,
            ..
        },
        opas,
    ) = fleet_of(3, 1).await;

    // The embedded engine compiles it; OPA's type checker refuses it.
    let ill_typed = "package payments.authz\n\n\
        default allow := false\n\n\
        allow if count(1) == 1\n";
    let candidate = publish(&app, &admin, ill_typed, 1000).await;
    let started = start_rollout(&app, &admin, candidate).await;
    let ended = rollout_until(
        &app,
        &admin,
        &started.id,
        Duration::from_secs(30),
        |rollout| rollout.state() == RolloutState::RolledBack,
    )
    .await;
    assert!(
        ended
            .halted_because
            .contains("opa-0 rejected payments/authz version 2")
            && ended.halted_because.contains("rego_type_error"),
        "{ended:?}"
    );
    // The rejection reaches the log (at the fleet's next flush), with
    // OPA's own error text.
    let started = Instant::now();
    let rejections = loop {
        let events = app
            .policy
            .clone()
            .list_events(with_token(
                proto::ListEventsRequest {
                    namespace: "payments".into(),
                    name: "authz".into(),
                    page_size: 500,
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        let rejections: Vec<proto::Event> = events
            .into_iter()
            .filter(|event| event.kind() == proto::EventKind::RuntimeRejected)
            .collect();
        if !rejections.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break rejections;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    let reason = &rejections[0].reason;
    assert!(
        reason.contains("runtime opa-0 rejected version 2")
            && reason.contains("rego_type_error: count: invalid argument(s)"),
        "OPA's own error text: {reason}"
    );
    for opa in &opas {
        opa.decides(400, true, Duration::from_secs(10)).await;
        assert_eq!(opa.allows(600).await, Some(false));
    }
}

/// A status report as OPA's status plugin posts it.
fn report(active_revision: &str) -> Value {
    json!({
        "labels": {"id": "2b1c6f4e-7d1a-4f7e-9c55-0d6f3c1b8a90", "version": "1.22.3"},
        "bundles": {"payments": {
            "name": "payments",
            "active_revision": active_revision,
            "last_successful_activation": "2026-11-29T10:00:00Z",
            "last_request": "2026-11-29T10:00:00Z",
            "last_successful_download": "2026-11-29T10:00:00Z",
            "metrics": {"timer_rego_load_bundles_ns": 1200},
        }},
        "metrics": {"prometheus": {}},
        "plugins": {"bundle": {"state": "OK"}},
    })
}

async fn bad_status_reports_are_refused_with_a_clear_4xx_and_change_nothing(backend: Backend) {
    let Served {
        issuer,
        app,
        admin: _,
        reader,
    } = served(backend).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1/opa", app.http_address.unwrap());
    // opa-1 asks for its bundle as `reader`: it is a runtime of payments.
    let asked = http
        .get(format!("{base}/bundles/payments?runtime.id=opa-1"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 200);
    let good = http
        .post(format!("{base}/status/payments/opa-1"))
        .bearer_auth(&reader)
        .json(&report("1"))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200, "{}", good.text().await.unwrap());
    // What the fleet holds of its runtimes, but when they were seen.
    let fleet = || async {
        let mut runtimes = runtimes(&app, &reader).await;
        for runtime in &mut runtimes {
            runtime.last_seen = None;
        }
        runtimes
    };
    let held = fleet().await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        held[0].applied_revision, 1,
        "the good report landed: {held:?}"
    );
    let before = app.db_state().await;

    let stranger = issuer.token("other", &["billing:reader"]);
    let thief = issuer.token("thief", &["payments:reader"]);
    let post = |path: &str, token: &str, body: Vec<u8>| {
        let mut request = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let good_body = report("1").to_string().into_bytes();
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/status/payments/opa-1",
            "",
            good_body.clone(),
            401,
            "credentials",
        ),
        (
            "/status/payments/opa-1",
            "not-a-token",
            good_body.clone(),
            401,
            "token",
        ),
        (
            "/status/payments/opa-1",
            &stranger,
            good_body.clone(),
            403,
            "reader",
        ),
        (
            "/status/payments/opa-1",
            &thief,
            good_body.clone(),
            403,
            "held by subject",
        ),
        (
            "/status/payments/opa-9",
            &reader,
            good_body.clone(),
            400,
            "has not asked for the bundle",
        ),
        (
            "/status/payments/OPA_1",
            &reader,
            good_body.clone(),
            400,
            "runtime id",
        ),
        (
            "/status/payments/opa-1",
            &reader,
            b"{\"bundles\": [".to_vec(),
            400,
            "not a valid ReportOpaStatusRequest",
        ),
        (
            "/status/payments/opa-1",
            &reader,
            json!({"bundles": {"payments": {"active_revision": 7}}})
                .to_string()
                .into_bytes(),
            400,
            "not a valid ReportOpaStatusRequest",
        ),
    ];
    for (path, token, body, expected, said) in cases {
        let answer = post(path, token, body).await.unwrap();
        let code = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        assert_eq!(code, expected, "{path}: {text}");
        assert!(text.contains(said), "{path}: {text}");
    }
    // Over the body limit: curl offers it (Expect: 100-continue), and the
    // server refuses it before reading it.
    let oversized = tempfile::NamedTempFile::new().unwrap();
    let padding = "x".repeat(4 << 20);
    std::fs::write(
        oversized.path(),
        json!({"labels": {"id": padding}}).to_string(),
    )
    .unwrap();
    let curl = std::process::Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {reader}")])
        .arg("--data-binary")
        .arg(format!("@{}", oversized.path().display()))
        .arg(format!("{base}/status/payments/opa-1"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&curl.stdout);
    assert!(answer.ends_with("\n413"), "{answer}");
    assert!(answer.contains("bytes"), "{answer}");
    let nowhere = post(
        "/status/billing/opa-1",
        &issuer.token("opa", &["billing:reader"]),
        good_body,
    )
    .await
    .unwrap();
    assert_eq!(nowhere.status(), 404);
    assert!(nowhere.text().await.unwrap().contains("not served to OPA"));
    assert_eq!(app.db_state().await, before, "nothing changed");
    assert_eq!(fleet().await, held, "no runtime changed");
}

/// The guide's OPA configurations, as pasted: the service's address and the
/// token's path are this server's, the key the one it publishes, and each
/// OPA's host name its runtime id. Each OPA decides with the bundle, joins
/// the fleet under its host name, and takes the next activation through
/// long polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_opa_configurations_run_as_pasted() {
    let Served {
        issuer: _issuer,
        app,
        admin,
        reader,
    } = served(Backend::Sqlite).await;
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/src/guides/opa.md"
    ))
    .unwrap();
    let blocks: Vec<&str> = guide
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .filter(|block| block.contains("services:"))
        .collect();
    assert_eq!(blocks.len(), 2, "the bundle service's and discovery's");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &reader).unwrap();
    let key = &opa_keys(&app, &reader).await[0];
    let service = format!("http://{}/v1/opa", app.http_address.unwrap());
    let pem = key
        .public_key_pem
        .lines()
        .map(|line| format!("      {line}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut opas = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let config = block
            .replace("http://policyhub.example.com:8080/v1/opa", &service)
            .replace("https://policyhub.example.com:8443/v1/opa", &service)
            .replace(
                "/var/run/secrets/policyhub/token",
                token_file.to_str().unwrap(),
            )
            .replace("JTdzg-8ZkU7Lz3y2Ux1XG2a9oQqK2Zcm4v0Wlq9z7xA", &key.key_id)
            .replace(
                "      -----BEGIN PUBLIC KEY-----\n      ...\n      -----END PUBLIC KEY-----",
                &pem,
            );
        assert!(!config.contains("example.com"), "{config}");
        let host = format!("opa-guide-{index}");
        opas.push((host.clone(), Opa::run_yaml(&config, &[("HOSTNAME", &host)])));
    }
    for (_, opa) in &opas {
        opa.decides(400, true, Duration::from_secs(30)).await;
    }
    applied_everywhere(&app, &admin, opas.len(), 1).await;
    let ids: Vec<String> = runtimes(&app, &admin)
        .await
        .into_iter()
        .map(|runtime| runtime.id)
        .collect();
    assert_eq!(ids, ["opa-guide-0", "opa-guide-1"]);
    activate_limit(&app, &admin, 1000).await;
    for (_, opa) in &opas {
        let took = opa.decides(600, true, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "long polling: {took:?}");
    }
}
