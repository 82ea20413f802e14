//! One table of bad inputs, every RPC: each row gets its code and a bounded
//! message, the same on SQLite and PostgreSQL, and the whole table changes
//! nothing in the database.

use std::{future::Future, pin::Pin};

use policyhub::grpc::{convert::json_to_struct, proto};
use serde_json::json;
use tonic::{Code, Status};

use crate::helpers::{TestApp, publish_request, target};

crate::on_both_backends!(every_rpc_refuses_bad_input_alike_and_changes_nothing);

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// `(what, the call, the code it must get)`.
fn rows(app: &TestApp) -> Vec<(&'static str, Call, Code)> {
    let policy = app.policy.clone();
    let bundle = app.bundle.clone();
    let long = "x".repeat(10_000);
    let mut rows: Vec<(&'static str, Call, Code)> = Vec::new();
    macro_rules! row {
        ($what:expr, $code:expr, $client:ident . $method:ident ($request:expr)) => {{
            let mut client = $client.clone();
            let request = $request;
            rows.push((
                $what,
                Box::pin(async move { client.$method(request).await.map(|_| ()) }),
                $code,
            ));
        }};
    }
    row!(
        "Draft: bad namespace",
        Code::InvalidArgument,
        policy.draft(proto::DraftRequest {
            namespace: long.clone(),
            name: "limits".into(),
            body: Some(json_to_struct(&json!({}))),
            ..Default::default()
        })
    );
    row!(
        "Draft: no body",
        Code::InvalidArgument,
        policy.draft(proto::DraftRequest {
            namespace: "team".into(),
            name: "limits".into(),
            ..Default::default()
        })
    );
    row!(
        "DiscardDraft: unknown policy",
        Code::NotFound,
        policy.discard_draft(proto::DiscardDraftRequest {
            namespace: "team".into(),
            name: "nothing".into(),
            ..Default::default()
        })
    );
    row!(
        "DiscardDraft: no open draft",
        Code::FailedPrecondition,
        policy.discard_draft(proto::DiscardDraftRequest {
            namespace: "team".into(),
            name: "limits".into(),
            ..Default::default()
        })
    );
    row!(
        "Publish: bad label",
        Code::InvalidArgument,
        policy.publish(publish_request("team", "limits", "one", false))
    );
    row!(
        "Publish: version 0",
        Code::InvalidArgument,
        policy.publish(proto::PublishRequest {
            version: Some(0),
            ..publish_request("team", "limits", "", false)
        })
    );
    row!(
        "DiscardDraft: version 0",
        Code::InvalidArgument,
        policy.discard_draft(proto::DiscardDraftRequest {
            namespace: "team".into(),
            name: "limits".into(),
            version: Some(0),
            ..Default::default()
        })
    );
    row!(
        "Publish: no draft",
        Code::FailedPrecondition,
        policy.publish(publish_request("team", "limits", "", false))
    );
    row!(
        "Activate: no targets",
        Code::InvalidArgument,
        policy.activate(proto::ActivateRequest {
            targets: Vec::new(),
            reason: String::new(),
            idempotency_key: String::new()
        })
    );
    row!(
        "Activate: unknown version",
        Code::NotFound,
        policy.activate(proto::ActivateRequest {
            targets: vec![target("team", "limits", 99)],
            reason: String::new(),
            idempotency_key: String::new()
        })
    );
    row!(
        "Activate: stale expectation",
        Code::Aborted,
        policy.activate(proto::ActivateRequest {
            targets: vec![proto::ActivationTarget {
                expected_active_version: Some(7),
                ..target("team", "limits", 1)
            }],
            reason: String::new(),
            idempotency_key: String::new()
        })
    );
    row!(
        "Rollback: no reason",
        Code::InvalidArgument,
        policy.rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: "limits".into(),
            ..Default::default()
        })
    );
    row!(
        "Rollback: nothing before",
        Code::FailedPrecondition,
        policy.rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: "limits".into(),
            reason: "undo".into(),
            ..Default::default()
        })
    );
    row!(
        "GetVersion: unknown",
        Code::NotFound,
        policy.get_version(proto::GetVersionRequest {
            namespace: "team".into(),
            name: "limits".into(),
            selector: Some(proto::get_version_request::Selector::Version(42))
        })
    );
    row!(
        "ListVersions: foreign page token",
        Code::InvalidArgument,
        policy.list_versions(proto::ListVersionsRequest {
            namespace: "team".into(),
            name: "limits".into(),
            page_size: 1,
            page_token: long.clone()
        })
    );
    row!(
        "ListPolicies: bad namespace",
        Code::InvalidArgument,
        policy.list_policies(proto::ListPoliciesRequest {
            namespace: "Team".into(),
            ..Default::default()
        })
    );
    row!(
        "ListEvents: name without namespace",
        Code::InvalidArgument,
        policy.list_events(proto::ListEventsRequest {
            name: "limits".into(),
            ..Default::default()
        })
    );
    row!(
        "DiffVersions: unknown version",
        Code::NotFound,
        policy.diff_versions(proto::DiffVersionsRequest {
            namespace: "team".into(),
            name: "limits".into(),
            from_version: 1,
            to_version: 9
        })
    );
    row!(
        "SetSchema: not a schema",
        Code::InvalidArgument,
        policy.set_schema(proto::SetSchemaRequest {
            namespace: "team".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(&json!({"type": 12}))),
            reason: String::new()
        })
    );
    row!(
        "RotateSigningKey: reason too long",
        Code::InvalidArgument,
        policy.rotate_signing_key(proto::RotateSigningKeyRequest {
            reason: "r".repeat(100_000)
        })
    );
    row!(
        "ListRuntimes: bad selector",
        Code::InvalidArgument,
        policy.list_runtimes(proto::ListRuntimesRequest {
            namespace: "team".into(),
            label_selector: long.clone(),
            ..Default::default()
        })
    );
    row!(
        "GetPolicyStatus: bad name",
        Code::InvalidArgument,
        policy.get_policy_status(proto::GetPolicyStatusRequest {
            namespace: "team".into(),
            name: long.clone()
        })
    );
    row!(
        "GetActive: ahead of the server",
        Code::InvalidArgument,
        bundle.get_active(proto::GetActiveRequest {
            namespace: "team".into(),
            name: "limits".into(),
            as_of: Some(proto::get_active_request::AsOf::AsOfRevision(1_000)),
            allow_draft_fallback: false,
            runtime: None,
        })
    );
    row!(
        "GetActive: unknown policy",
        Code::NotFound,
        bundle.get_active(proto::GetActiveRequest {
            namespace: "team".into(),
            name: "nothing".into(),
            ..Default::default()
        })
    );
    row!(
        "WatchActive: bad runtime id",
        Code::InvalidArgument,
        bundle.watch_active(proto::WatchActiveRequest {
            namespace: "team".into(),
            runtime: Some(proto::RuntimeIdentity {
                id: long.clone(),
                labels: Default::default()
            }),
            ..Default::default()
        })
    );
    row!(
        "ReportStatus: no stream",
        Code::FailedPrecondition,
        bundle.report_status(proto::ReportStatusRequest {
            namespace: "team".into(),
            runtime_id: "ghost".into(),
            revision: 1,
            policies: vec![proto::PolicyApplyStatus {
                name: "limits".into(),
                version: 1,
                state: proto::ApplyState::Applied as i32,
                ..Default::default()
            }]
        })
    );
    rows
}

async fn every_rpc_refuses_bad_input_alike_and_changes_nothing(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let before = app.db_state().await;
    for (what, call, code) in rows(&app) {
        let status = call.await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().len() + status.details().len() < 4096,
            "{what}: a bounded status ({} + {} bytes)",
            status.message().len(),
            status.details().len()
        );
        assert!(!status.message().is_empty(), "{what}: says what was wrong");
    }
    assert_eq!(app.db_state().await, before);
}
