//! Requirements between policies: a version names the policies of its
//! namespace it needs active beside it, with a semver range; activation
//! never leaves an active version's requirement unmet.

use std::time::Duration;

use policyhub::grpc::proto;
use serde_json::json;
use tonic::Code;

use crate::helpers::{TestApp, expect_code, publish_request, target};

crate::on_both_backends!(
    a_dependant_waits_for_its_requirement_or_goes_with_it,
    rolling_a_requirement_back_below_the_range_is_refused,
    cycles_unsatisfiable_ranges_and_other_namespaces_are_refused,
    a_rollout_is_judged_at_start_and_again_at_completion,
    a_restore_that_would_close_a_cycle_is_refused_and_changes_nothing,
);

fn requirement(name: &str, range: &str) -> proto::Requirement {
    proto::Requirement {
        name: name.into(),
        range: range.into(),
    }
}

/// Drafts `body` for team/`name` with `requirements`.
async fn draft(
    app: &TestApp,
    name: &str,
    requirements: Vec<proto::Requirement>,
) -> Result<proto::DraftResponse, tonic::Status> {
    Ok(app
        .policy
        .clone()
        .draft(proto::DraftRequest {
            namespace: "team".into(),
            name: name.into(),
            body: Some(policyhub::grpc::convert::json_to_struct(
                &json!({"from": name}),
            )),
            requirements,
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Publishes team/`name`'s draft as `label`.
async fn publish(
    app: &TestApp,
    name: &str,
    label: &str,
    activate: bool,
) -> Result<proto::PublishResponse, tonic::Status> {
    Ok(app
        .policy
        .clone()
        .publish(publish_request("team", name, label, activate))
        .await?
        .into_inner())
}

/// Rolls team/`name` back to the version active before.
async fn rollback(
    app: &TestApp,
    name: &str,
) -> Result<tonic::Response<proto::RollbackResponse>, tonic::Status> {
    app.policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: name.into(),
            reason: format!("{name} misbehaves"),
            ..Default::default()
        })
        .await
}

/// team/discovery 1.0.0 active and 2.0.0 published; team/gateway 1.0.0
/// (no requirements) active and 2.0.0 requiring discovery ^2 published.
async fn seed(app: &TestApp) {
    for label in ["1.0.0", "2.0.0"] {
        draft(app, "discovery", Vec::new()).await.unwrap();
        publish(app, "discovery", label, label == "1.0.0")
            .await
            .unwrap();
    }
    draft(app, "gateway", Vec::new()).await.unwrap();
    publish(app, "gateway", "1.0.0", true).await.unwrap();
    let drafted = draft(app, "gateway", vec![requirement("discovery", "^2")])
        .await
        .unwrap();
    let version = drafted.version.unwrap();
    assert_eq!(version.requirements, vec![requirement("discovery", "^2")]);
    publish(app, "gateway", "2.0.0", false).await.unwrap();
}

async fn a_dependant_waits_for_its_requirement_or_goes_with_it(app: TestApp) {
    seed(&app).await;
    let before = app.events("team", "gateway").await.len();
    let message = expect_code(
        app.try_activate(vec![target("team", "gateway", 2)]).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains(
            "team/gateway version 2 (2.0.0) requires team/discovery ^2, \
             but team/discovery would be at version 1 (1.0.0)"
        ),
        "{message}"
    );
    assert_eq!(app.get_active("team", "gateway").await.unwrap().version, 1);
    assert_eq!(app.events("team", "gateway").await.len(), before);
    // Publishing with activate is judged the same way.
    draft(
        &app,
        "gateway",
        vec![requirement("discovery", ">=2.0.0, <3")],
    )
    .await
    .unwrap();
    expect_code(
        publish(&app, "gateway", "2.1.0", true).await,
        Code::FailedPrecondition,
    );

    // Both in one Activate: one revision, the state after it is whole.
    let activated = app
        .try_activate(vec![
            target("team", "gateway", 2),
            target("team", "discovery", 2),
        ])
        .await
        .expect("together they are consistent");
    let gateway = app.get_active("team", "gateway").await.unwrap();
    let discovery = app.get_active("team", "discovery").await.unwrap();
    assert_eq!((gateway.version, discovery.version), (2, 2));
    assert_eq!(gateway.revision, activated.revision);
    assert_eq!(discovery.revision, activated.revision);

    // The requirement is part of the signed bundle.
    let jws = gateway.jws;
    let payload = jws.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["requirements"],
        json!([{"name": "discovery", "range": "^2"}])
    );
}

async fn rolling_a_requirement_back_below_the_range_is_refused(app: TestApp) {
    seed(&app).await;
    app.try_activate(vec![
        target("team", "gateway", 2),
        target("team", "discovery", 2),
    ])
    .await
    .unwrap();
    let message = expect_code(rollback(&app, "discovery").await, Code::FailedPrecondition);
    assert!(
        message.contains("team/gateway version 2 (2.0.0) requires team/discovery ^2"),
        "the refusal names the dependant: {message}"
    );
    assert_eq!(
        app.get_active("team", "discovery").await.unwrap().version,
        2
    );
    // Rolling the dependant back first, then the requirement, works.
    for name in ["gateway", "discovery"] {
        rollback(&app, name).await.unwrap();
        assert_eq!(app.get_active("team", name).await.unwrap().version, 1);
    }
}

async fn cycles_unsatisfiable_ranges_and_other_namespaces_are_refused(app: TestApp) {
    seed(&app).await;
    // discovery -> gateway closes gateway -> discovery.
    let message = expect_code(
        draft(&app, "discovery", vec![requirement("gateway", "*")]).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("discovery -> gateway -> discovery"),
        "{message}"
    );
    let message = expect_code(
        draft(&app, "discovery", vec![requirement("discovery", "*")]).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("discovery -> discovery"), "{message}");

    // A range nothing published satisfies, and a policy that does not exist.
    draft(
        &app,
        "billing",
        vec![requirement("discovery", ">=3"), requirement("ledger", "*")],
    )
    .await
    .unwrap();
    let message = expect_code(
        publish(&app, "billing", "1.0.0", false).await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("discovery has no published release in >=3")
            && message.contains("ledger does not exist"),
        "{message}"
    );

    // Out of scope: another namespace; and ranges that do not parse.
    for (requirements, field) in [
        (
            vec![requirement("other/discovery", "*")],
            "requirements[0].name",
        ),
        (
            vec![requirement("discovery", "two")],
            "requirements[0].range",
        ),
        (
            vec![
                requirement("discovery", "*"),
                requirement("discovery", "^1"),
            ],
            "requirements[1].name",
        ),
    ] {
        let message = expect_code(
            draft(&app, "billing", requirements).await,
            Code::InvalidArgument,
        );
        assert!(message.contains(field), "{message}");
    }
    // Nothing of that changed billing: its draft is still version 1.
    let drafted = draft(&app, "billing", Vec::new()).await.unwrap();
    assert_eq!(drafted.superseded_version, 1);
}

fn gateway_rollout(bake: Duration) -> proto::StartRolloutRequest {
    proto::StartRolloutRequest {
        namespace: "team".into(),
        targets: vec![proto::RolloutTargetRequest {
            name: "gateway".into(),
            selector: Some(proto::rollout_target_request::Selector::Version(2)),
            expected_active_version: None,
        }],
        steps: vec![proto::RolloutStep {
            percentage: 100,
            label_selector: String::new(),
            bake: Some(bake.try_into().unwrap()),
            analyses: Vec::new(),
        }],
        reason: "gateway 2".into(),
        ..Default::default()
    }
}

async fn a_rollout_is_judged_at_start_and_again_at_completion(app: TestApp) {
    seed(&app).await;
    let message = expect_code(
        app.policy
            .clone()
            .start_rollout(gateway_rollout(Duration::from_secs(3)))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("requires team/discovery ^2"), "{message}");

    app.try_activate(vec![target("team", "discovery", 2)])
        .await
        .unwrap();
    let started = app
        .policy
        .clone()
        .start_rollout(gateway_rollout(Duration::from_secs(3)))
        .await
        .expect("discovery 2 is active now")
        .into_inner();
    // The required policy is not held by the rollout: it moves back
    // during the bake, and the rollout cannot complete.
    rollback(&app, "discovery").await.unwrap();
    let mut paused = None;
    for _ in 0..100 {
        let rollout = app
            .policy
            .clone()
            .get_rollout(proto::GetRolloutRequest {
                namespace: "team".into(),
                id: started.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if rollout.state() != proto::RolloutState::Running {
            paused = Some(rollout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = paused.expect("the rollout halts after its bake");
    assert_eq!(paused.state(), proto::RolloutState::Paused);
    assert!(
        paused.halted_because.contains("requires team/discovery ^2"),
        "{}",
        paused.halted_because
    );
    assert_eq!(app.get_active("team", "gateway").await.unwrap().version, 1);
}

/// The CLI: `draft --require`, requirements in `get-version` and
/// `diff-versions`, and `verify` showing the signed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drafts_requirements_shows_them_and_verify_reads_them_signed() {
    use crate::cli::policyhub;

    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, r#"{"routes": 1}"#).unwrap();
    let body = body.display().to_string();
    for (policy, label, require) in [
        ("team/discovery", "2.0.0", None),
        ("team/gateway", "1.0.0", None),
        ("team/gateway", "2.0.0", Some("discovery@>=2.0.0, <3")),
    ] {
        let mut args = vec!["draft", policy, &body];
        if let Some(require) = require {
            args.extend(["--require", require]);
        }
        policyhub(&app, &args).success();
        policyhub(&app, &["publish", policy, "--label", label, "--activate"]).success();
    }
    let version = policyhub(
        &app,
        &[
            "get-version",
            "team/gateway",
            "--label",
            "2.0.0",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(
        version["requirements"],
        json!([{"name": "discovery", "range": ">=2.0.0, <3"}])
    );
    let shown = policyhub(&app, &["get-version", "team/gateway", "--label", "2.0.0"]);
    assert!(
        shown
            .success()
            .contains("requires      discovery >=2.0.0, <3"),
        "{}",
        shown.stdout
    );
    let diff = policyhub(&app, &["diff-versions", "team/gateway", "1", "2"]);
    assert!(
        diff.success().contains("+ requires: discovery >=2.0.0, <3"),
        "{}",
        diff.stdout
    );
    let refused = policyhub(
        &app,
        &["draft", "team/gateway", &body, "--require", "discovery"],
    );
    assert_eq!(refused.code, 2, "a malformed --require is a usage error");
    // discovery 3.0.0 would leave gateway 2.0.0's range: refused, with the
    // hint for requirements (the status names its rule).
    policyhub(&app, &["draft", "team/discovery", &body]).success();
    let moved = policyhub(
        &app,
        &[
            "publish",
            "team/discovery",
            "--label",
            "3.0.0",
            "--activate",
        ],
    );
    assert_eq!(moved.code, 1, "{}", moved.stderr);
    assert!(
        moved.stderr.contains("requires team/discovery >=2.0.0, <3")
            && moved.stderr.contains("hint: move the policies together"),
        "{}",
        moved.stderr
    );

    let keys = policyhub(&app, &["get-signing-keys", "--output", "json"]);
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &keys.stdout).unwrap();
    let bundle = policyhub(&app, &["get", "team/gateway", "--output", "json"]);
    let bundle_file = dir.path().join("bundle.json");
    std::fs::write(&bundle_file, &bundle.stdout).unwrap();
    let verified = policyhub(
        &app,
        &[
            "verify",
            "--jwks",
            &jwks.display().to_string(),
            &bundle_file.display().to_string(),
        ],
    );
    assert!(
        verified
            .success()
            .contains("requires: discovery >=2.0.0, <3"),
        "{}",
        verified.stdout
    );
}

/// Restoring a version copies its requirements forward: when the graph
/// changed since and they would now close a cycle, the restore is refused as
/// such a draft would be, and nothing is written.
async fn a_restore_that_would_close_a_cycle_is_refused_and_changes_nothing(app: TestApp) {
    draft(&app, "right", vec![]).await.unwrap();
    publish(&app, "right", "1.0.0", true).await.unwrap();
    draft(&app, "left", vec![requirement("right", "*")])
        .await
        .unwrap();
    publish(&app, "left", "1.0.0", true).await.unwrap();
    draft(&app, "left", vec![]).await.unwrap();
    publish(&app, "left", "2.0.0", true).await.unwrap();
    // left's newest version requires nothing, so right may require left.
    draft(&app, "right", vec![requirement("left", "*")])
        .await
        .unwrap();
    let before = app.db_state().await;
    let restore = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: "left".into(),
            to_version: Some(1),
            reason: "back to 1.0.0".into(),
            restore: true,
            ..Default::default()
        })
        .await;
    let message = expect_code(restore, Code::FailedPrecondition);
    assert!(message.contains("left -> right -> left"), "{message}");
    assert_eq!(app.db_state().await, before);
}
