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

/// One bad input: what it is, the gRPC call, the code it must get, and the
/// same request as the RPC's name and its message in the JSON mapping, to
/// send over HTTP.
struct Row {
    what: &'static str,
    call: Call,
    code: Code,
    rpc: String,
    request: serde_json::Value,
}

/// A request in the protobuf JSON mapping.
fn request_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let pool = prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let descriptor = pool.get_message_by_name(&M::full_name()).unwrap();
    let dynamic =
        prost_reflect::DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .unwrap();
    serde_json::to_value(&dynamic).unwrap()
}

fn rows(app: &TestApp) -> Vec<Row> {
    let policy = app.policy.clone();
    let bundle = app.bundle.clone();
    let long = "x".repeat(10_000);
    let mut rows: Vec<Row> = Vec::new();
    macro_rules! row {
        ($what:expr, $code:expr, $client:ident . $method:ident ($request:expr)) => {{
            let mut client = $client.clone();
            let request = $request;
            let json = request_json(&request);
            rows.push(Row {
                what: $what,
                call: Box::pin(async move { client.$method(request).await.map(|_| ()) }),
                code: $code,
                rpc: rpc_of(stringify!($method)),
                request: json,
            });
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
        "GetPolicy: unknown policy",
        Code::NotFound,
        policy.get_policy(proto::GetPolicyRequest {
            namespace: "team".into(),
            name: "nothing".into(),
        })
    );
    row!(
        "GetPolicy: bad name",
        Code::InvalidArgument,
        policy.get_policy(proto::GetPolicyRequest {
            namespace: "team".into(),
            name: long.clone(),
        })
    );
    row!(
        "GetInclusionProof: unknown event",
        Code::NotFound,
        policy.get_inclusion_proof(proto::GetInclusionProofRequest {
            event_id: 1 << 40,
            tree_size: 0,
        })
    );
    row!(
        "GetInclusionProof: an event id past 63 bits",
        Code::NotFound,
        policy.get_inclusion_proof(proto::GetInclusionProofRequest {
            event_id: u64::MAX,
            tree_size: 0,
        })
    );
    row!(
        "GetInclusionProof: a tree larger than the log",
        Code::InvalidArgument,
        policy.get_inclusion_proof(proto::GetInclusionProofRequest {
            event_id: 1,
            tree_size: u64::MAX,
        })
    );
    row!(
        "GetConsistencyProof: from no tree",
        Code::InvalidArgument,
        bundle.get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: 0,
            new_size: 0,
        })
    );
    row!(
        "GetConsistencyProof: an old tree larger than the new",
        Code::InvalidArgument,
        bundle.get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: 2,
            new_size: 1,
        })
    );
    row!(
        "GetConsistencyProof: a tree larger than the log",
        Code::InvalidArgument,
        bundle.get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: 1,
            new_size: u64::MAX,
        })
    );
    for (what, version, revision) in [
        ("GetBundleProof: version 0", 0, 1),
        ("GetBundleProof: a revision ahead", 1, u64::MAX),
    ] {
        row!(
            what,
            Code::InvalidArgument,
            bundle.get_bundle_proof(proto::GetBundleProofRequest {
                namespace: "team".into(),
                name: "limits".into(),
                version,
                revision,
                tree_size: 0,
            })
        );
    }
    row!(
        "GetRestoreProof: no restore recorded",
        Code::NotFound,
        bundle.get_restore_proof(proto::GetRestoreProofRequest { tree_size: 0 })
    );
    row!(
        "GetRestoreProof: a tree larger than the log",
        Code::InvalidArgument,
        bundle.get_restore_proof(proto::GetRestoreProofRequest {
            tree_size: u64::MAX
        })
    );
    row!(
        "RecordRestore: no reason",
        Code::InvalidArgument,
        policy.record_restore(proto::RecordRestoreRequest {
            reason: "  ".into()
        })
    );
    row!(
        "RecordRestore: reason too long",
        Code::InvalidArgument,
        policy.record_restore(proto::RecordRestoreRequest {
            reason: "r".repeat(100_000)
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
        "ListEvents: unknown kind",
        Code::InvalidArgument,
        policy.list_events(proto::ListEventsRequest {
            kinds: vec![proto::EventKind::Activated as i32, 999],
            ..Default::default()
        })
    );
    row!(
        "ListEvents: until before since",
        Code::InvalidArgument,
        policy.list_events(proto::ListEventsRequest {
            since: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0
            }),
            until: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0
            }),
            ..Default::default()
        })
    );
    row!(
        "ListEvents: oversized actor",
        Code::InvalidArgument,
        policy.list_events(proto::ListEventsRequest {
            actor: long.clone(),
            ..Default::default()
        })
    );
    row!(
        "ListCheckpoints: a page token of another listing",
        Code::InvalidArgument,
        policy.list_checkpoints(proto::ListCheckpointsRequest {
            page_token: "events:00000000:7".into(),
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
            reason: String::new(),
            dry_run: false,
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
        "RevokeSigningKey: reason too long",
        Code::InvalidArgument,
        policy.revoke_signing_key(proto::RevokeSigningKeyRequest {
            key_id: "some-key".into(),
            reason: "r".repeat(100_000),
        })
    );
    let alert = |status: &str, labels: &[(&str, &str)]| proto::Alert {
        status: status.into(),
        labels: labels
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        ..Default::default()
    };
    let notification = |alerts: Vec<proto::Alert>| proto::ReceiveAlertsRequest {
        version: "4".into(),
        status: "firing".into(),
        alerts,
        ..Default::default()
    };
    row!(
        "ReceiveAlerts: no alerts",
        Code::InvalidArgument,
        policy.receive_alerts(notification(Vec::new()))
    );
    row!(
        "ReceiveAlerts: an alert without a namespace",
        Code::InvalidArgument,
        policy.receive_alerts(notification(vec![alert(
            "firing",
            &[("alertname", "ErrorRate")]
        )]))
    );
    row!(
        "ReceiveAlerts: an alert neither firing nor resolved",
        Code::InvalidArgument,
        policy.receive_alerts(notification(vec![alert(
            "pending",
            &[("namespace", "team")]
        )]))
    );
    row!(
        "ReceiveAlerts: an unknown action",
        Code::InvalidArgument,
        policy.receive_alerts(notification(vec![alert(
            "firing",
            &[("namespace", "team"), ("policyhub_action", "rollback")]
        )]))
    );
    row!(
        "ReceiveAlerts: too many alerts",
        Code::InvalidArgument,
        policy.receive_alerts(notification(
            (0..101)
                .map(|_| alert("firing", &[("namespace", "team")]))
                .collect()
        ))
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
        "WhoAmI: bad namespace",
        Code::InvalidArgument,
        policy.who_am_i(proto::WhoAmIRequest {
            namespace: "Not A Namespace".into()
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
            ..Default::default()
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
    for Row {
        what, call, code, ..
    } in rows(&app)
    {
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

/// The RPC of a client method: `discard_draft` → `DiscardDraft`.
fn rpc_of(method: &str) -> String {
    method
        .split('_')
        .map(|word| {
            let mut letters = word.chars();
            letters
                .next()
                .map(|first| first.to_uppercase().chain(letters).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// The HTTP request of a row: the RPC's first binding in the OpenAPI
/// document, its path variables from the request, the rest as the JSON
/// body or, for a read, the query.
fn http_request(row: &Row) -> (String, String, Option<String>) {
    let document: serde_json::Value = serde_json::from_str(policyhub::http::OPENAPI).unwrap();
    let suffix = format!("_{}", row.rpc);
    let (path, verb) = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find_map(|(path, operations)| {
            operations
                .as_object()
                .unwrap()
                .iter()
                .find_map(|(verb, operation)| {
                    operation["operationId"]
                        .as_str()
                        .is_some_and(|id| id.ends_with(&suffix))
                        .then(|| (path.clone(), verb.to_uppercase()))
                })
        })
        .unwrap_or_else(|| panic!("{} has a route", row.rpc));
    let camel = |field: &str| {
        let mut parts = field.split('_');
        let first = parts.next().unwrap_or_default().to_owned();
        parts.fold(first, |mut name, part| {
            let mut letters = part.chars();
            if let Some(initial) = letters.next() {
                name.extend(initial.to_uppercase());
                name.push_str(letters.as_str());
            }
            name
        })
    };
    let encode = |text: &str| {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (byte as char).to_string()
                }
                _ => format!("%{byte:02X}"),
            })
            .collect::<String>()
    };
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut url = path.clone();
    let mut rest = row.request.as_object().cloned().unwrap_or_default();
    for field in path
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
    {
        let value = rest.remove(&camel(field.0)).unwrap_or_default();
        url = url.replace(&format!("{{{}}}", field.0), &encode(&text(&value)));
    }
    if verb == "GET" {
        let mut query = Vec::new();
        for (field, value) in rest {
            match value {
                serde_json::Value::Array(items) => {
                    for item in items {
                        query.push(format!("{field}={}", encode(&text(&item))));
                    }
                }
                // A message field's scalars, as `runtime.id=…`.
                serde_json::Value::Object(members) => {
                    for (member, value) in members {
                        if !value.is_object() && !value.is_array() {
                            query.push(format!("{field}.{member}={}", encode(&text(&value))));
                        }
                    }
                }
                value => query.push(format!("{field}={}", encode(&text(&value)))),
            }
        }
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        return (verb, url, None);
    }
    (verb, url, Some(row.request.to_string()))
}

/// Every bad input of the table gets the same answer over HTTP: the gRPC
/// code, in a JSON google.rpc.Status, under the code's HTTP status; and
/// the whole table changes nothing.
async fn every_bad_input_gets_the_same_answer_over_http(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let before = app.db_state().await;
    let address = app.http_address.expect("the HTTP port is served");
    for row in rows(&app) {
        let (verb, url, body) = http_request(&row);
        let mut command = std::process::Command::new("curl");
        command.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]);
        command.args(["-X", &verb]);
        command.arg(format!("http://{address}{url}"));
        if let Some(body) = &body {
            command.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let output = command.output().expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (json, status) = text.rsplit_once('\n').expect("a status line");
        let reply: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|_| panic!("{}: a JSON error: {text}", row.what));
        assert_eq!(
            reply["code"].as_i64(),
            Some(row.code as i64),
            "{}: {verb} {url}: {reply}",
            row.what
        );
        let expected = policyhub::http::http_status(row.code).as_u16().to_string();
        assert_eq!(status, expected, "{}: {verb} {url}", row.what);
    }
    assert_eq!(app.db_state().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_bad_input_gets_the_same_answer_over_http() {
    let app = crate::http::app(crate::helpers::Backend::Sqlite, true).await;
    every_bad_input_gets_the_same_answer_over_http(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_bad_input_gets_the_same_answer_over_http() {
    let app = crate::http::app(crate::helpers::Backend::Postgres, true).await;
    every_bad_input_gets_the_same_answer_over_http(app).await;
}
