//! Every bad input gets a clear error with the right code, and changes
//! nothing in the database.

use policyhub::grpc::{convert::json_to_struct, proto};
use sea_orm::ConnectionTrait;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, expect_code, publish_request, target};

crate::on_both_backends!(
    malformed_names_are_invalid_argument_with_field_violations,
    a_missing_body_is_invalid_argument,
    a_body_over_the_size_limit_is_resource_exhausted,
    a_schema_violation_names_the_path,
    publish_with_no_draft_is_failed_precondition,
    activating_a_draft_or_a_discarded_version_is_failed_precondition,
    unknown_policies_and_versions_are_not_found,
    an_idempotency_key_reused_with_another_request_is_already_exists,
    a_released_label_with_another_body_is_already_exists,
    malformed_requests_are_invalid_argument,
    bad_event_filters_name_their_field,
    the_database_refuses_to_rewrite_history,
    a_revision_past_63_bits_is_invalid_argument_where_it_enters,
);

/// Seeds a policy with a published, active v1 and an open draft v2.
async fn seed(app: &TestApp) {
    app.draft("payments", "limits", json!({"max": 1})).await;
    app.publish("payments", "limits", "1.0.0", true).await;
    app.draft("payments", "limits", json!({"max": 2})).await;
}

async fn malformed_names_are_invalid_argument_with_field_violations(app: TestApp) {
    seed(&app).await;
    let before = app.db_state().await;
    for (namespace, name, field) in [
        ("Payments", "limits", "namespace"),
        ("-payments", "limits", "namespace"),
        ("payments", "", "name"),
        ("payments", "limits/v2", "name"),
        ("payments", ".hidden", "name"),
    ] {
        let status = app.try_draft(namespace, name, json!({})).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{namespace}/{name}");
        let violations = status
            .get_details_bad_request()
            .expect("field violations")
            .field_violations;
        assert_eq!(violations[0].field, field);
        assert!(status.message().contains(field), "{}", status.message());
    }
    let status = app
        .try_activate(vec![target("payments", "limits", 1), target("Bad", "x", 1)])
        .await
        .unwrap_err();
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "targets[1].namespace");
    assert_eq!(app.db_state().await, before);
}

async fn a_missing_body_is_invalid_argument(app: TestApp) {
    let before = app.db_state().await;
    let result = app
        .policy
        .clone()
        .draft(proto::DraftRequest {
            requirements: Vec::new(),
            namespace: "payments".into(),
            name: "limits".into(),
            body: None,
            change_notes: String::new(),
            idempotency_key: String::new(),
        })
        .await;
    let message = expect_code(result, Code::InvalidArgument);
    assert_eq!(message, "body: is required: a JSON object");
    assert_eq!(app.db_state().await, before);
}

async fn a_body_over_the_size_limit_is_resource_exhausted(app: TestApp) {
    // The default limit is 1 MiB of canonical JSON.
    let before = app.db_state().await;
    let big = json!({ "blob": "x".repeat(1024 * 1024) });
    let message = expect_code(
        app.try_draft("payments", "limits", big).await,
        Code::ResourceExhausted,
    );
    assert!(
        message.contains("over the limit of 1048576 bytes"),
        "{message}"
    );
    // Far over the limit, the message is refused from its length prefix,
    // before it is read.
    let huge = json!({ "blob": "x".repeat(4 * 1024 * 1024) });
    let message = expect_code(
        app.try_draft("payments", "limits", huge).await,
        Code::ResourceExhausted,
    );
    assert!(
        message.contains("over the limit of 2162688 bytes"),
        "{message}"
    );
    assert_eq!(app.db_state().await, before);
}

async fn a_schema_violation_names_the_path(app: TestApp) {
    let schema = json!({
        "type": "object",
        "required": ["limits"],
        "properties": {"limits": {"type": "object", "properties": {"daily": {"type": "integer", "maximum": 100}}}}
    });
    app.policy
        .clone()
        .set_schema(proto::SetSchemaRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(&schema)),
            reason: String::new(),
            dry_run: false,
        })
        .await
        .unwrap();
    app.draft("payments", "limits", json!({"limits": {"daily": 500}}))
        .await;
    let before = app.db_state().await;
    let status = app
        .try_publish(publish_request("payments", "limits", "", true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("/limits/daily"),
        "{}",
        status.message()
    );
    let failure = status
        .get_details_precondition_failure()
        .expect("violations");
    assert_eq!(failure.violations[0].subject, "/limits/daily");
    assert_eq!(failure.violations[0].r#type, "SCHEMA");
    assert_eq!(app.db_state().await, before);

    // An invalid schema is refused outright.
    let result = app
        .policy
        .clone()
        .set_schema(proto::SetSchemaRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(&json!({"type": "no-such-type"}))),
            reason: String::new(),
            dry_run: false,
        })
        .await;
    expect_code(result, Code::InvalidArgument);
    assert_eq!(app.db_state().await, before);
}

async fn publish_with_no_draft_is_failed_precondition(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), false)
        .await;
    let before = app.db_state().await;
    let message = expect_code(
        app.try_publish(publish_request("payments", "limits", "", false))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(message, "payments/limits has no open draft to publish");
    // Naming a version that is already published is refused too.
    let mut again = publish_request("payments", "limits", "", false);
    again.version = Some(1);
    let message = expect_code(app.try_publish(again).await, Code::FailedPrecondition);
    assert!(message.contains("it is published"), "{message}");
    assert_eq!(app.db_state().await, before);
}

async fn activating_a_draft_or_a_discarded_version_is_failed_precondition(app: TestApp) {
    seed(&app).await;
    let before = app.db_state().await;
    let message = expect_code(
        app.try_activate(vec![target("payments", "limits", 2)])
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        message.contains("version 2 of payments/limits: it is draft"),
        "{message}"
    );
    app.policy
        .clone()
        .discard_draft(proto::DiscardDraftRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            version: Some(2),
            reason: String::new(),
        })
        .await
        .unwrap();
    let before_discarded = app.db_state().await;
    assert_ne!(before, before_discarded);
    let message = expect_code(
        app.try_activate(vec![target("payments", "limits", 2)])
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("discarded"), "{message}");
    assert_eq!(app.db_state().await, before_discarded);
}

async fn unknown_policies_and_versions_are_not_found(app: TestApp) {
    seed(&app).await;
    let before = app.db_state().await;
    let message = expect_code(app.get_active("payments", "nope").await, Code::NotFound);
    assert_eq!(message, "policy payments/nope does not exist");
    expect_code(
        app.try_activate(vec![target("payments", "limits", 42)])
            .await,
        Code::NotFound,
    );
    let get = |selector| {
        let mut client = app.policy.clone();
        async move {
            client
                .get_version(proto::GetVersionRequest {
                    namespace: "payments".into(),
                    name: "limits".into(),
                    selector: Some(selector),
                })
                .await
        }
    };
    use proto::get_version_request::Selector;
    let message = expect_code(get(Selector::Version(42)).await, Code::NotFound);
    assert_eq!(message, "payments/limits has no version 42");
    expect_code(get(Selector::Label("9.9.9".into())).await, Code::NotFound);
    assert_eq!(
        get(Selector::Label("1.0.0".into()))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    expect_code(
        app.try_publish(publish_request("payments", "ghost", "", false))
            .await,
        Code::NotFound,
    );
    assert_eq!(app.db_state().await, before);
}

async fn an_idempotency_key_reused_with_another_request_is_already_exists(app: TestApp) {
    let request = |max: u32| proto::DraftRequest {
        requirements: Vec::new(),
        namespace: "payments".into(),
        name: "limits".into(),
        body: Some(json_to_struct(&json!({ "max": max }))),
        change_notes: String::new(),
        idempotency_key: "key-1".into(),
    };
    app.policy.clone().draft(request(1)).await.unwrap();
    let before = app.db_state().await;
    let message = expect_code(
        app.policy.clone().draft(request(2)).await,
        Code::AlreadyExists,
    );
    assert_eq!(
        message,
        "idempotency key \"key-1\" was already used for a different Draft request"
    );
    assert_eq!(app.db_state().await, before);
}

async fn a_released_label_with_another_body_is_already_exists(app: TestApp) {
    app.draft("payments", "limits", json!({"max": 1})).await;
    app.publish("payments", "limits", "1.2.0", false).await;
    app.draft("payments", "limits", json!({"max": 2})).await;
    let before = app.db_state().await;
    let message = expect_code(
        app.try_publish(publish_request("payments", "limits", "1.2.0", false))
            .await,
        Code::AlreadyExists,
    );
    assert!(
        message.contains("released versions are immutable, bump the version"),
        "{message}"
    );
    assert_eq!(app.db_state().await, before);
}

async fn malformed_requests_are_invalid_argument(app: TestApp) {
    seed(&app).await;
    let before = app.db_state().await;
    let message = expect_code(
        app.try_publish(publish_request("payments", "limits", "v1", false))
            .await,
        Code::InvalidArgument,
    );
    assert!(
        message.starts_with("label: label \"v1\" is not a semantic version"),
        "{message}"
    );
    expect_code(app.try_activate(Vec::new()).await, Code::InvalidArgument);
    let message = expect_code(
        app.try_activate(vec![
            target("payments", "limits", 1),
            target("payments", "limits", 1),
        ])
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        message,
        "targets[1]: payments/limits is already targeted by targets[0]"
    );
    let mut no_selector = target("payments", "limits", 1);
    no_selector.selector = None;
    expect_code(
        app.try_activate(vec![no_selector]).await,
        Code::InvalidArgument,
    );
    let rollback = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            to_version: None,
            reason: "  ".into(),
            expected_active_version: None,
            ..Default::default()
        })
        .await;
    assert_eq!(
        expect_code(rollback, Code::InvalidArgument),
        "reason: is required: say why you roll back"
    );
    let mut cas_without_activate = publish_request("payments", "limits", "", false);
    cas_without_activate.expected_active_version = Some(1);
    expect_code(
        app.try_publish(cas_without_activate).await,
        Code::InvalidArgument,
    );
    let page = app
        .policy
        .clone()
        .list_events(proto::ListEventsRequest {
            namespace: String::new(),
            name: String::new(),
            kinds: Vec::new(),
            page_size: 10,
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await;
    expect_code(page, Code::InvalidArgument);
    assert_eq!(app.db_state().await, before);
}

async fn the_database_refuses_to_rewrite_history(app: TestApp) {
    seed(&app).await;
    let before = app.db_state().await;
    let db = app.sql().await;
    for statement in [
        "UPDATE versions SET body = '{\"max\":1000}' WHERE version = 1",
        "UPDATE versions SET digest = 'sha256:00' WHERE version = 1",
        "UPDATE versions SET jws = 'forged' WHERE version = 1",
        "UPDATE versions SET state = 'DRAFT' WHERE version = 1",
        "UPDATE versions SET body = '{\"max\":1000}' WHERE version = 2",
        "UPDATE versions SET requirements = '[{\"name\":\"x\",\"range\":\"*\"}]' WHERE version = 2",
        "DELETE FROM versions WHERE version = 1",
        "DELETE FROM versions",
        "UPDATE events SET actor = 'someone-else'",
        "DELETE FROM events",
        "DELETE FROM signing_keys",
        "UPDATE policies SET active_version = 2",
    ] {
        let result = db.execute_unprepared(statement).await;
        let error = result.expect_err(statement).to_string();
        assert!(error.contains("policyhub:"), "{statement}: {error}");
    }
    // Inserts that collide with history: SQLite's REPLACE would delete the
    // old row without firing DELETE triggers; PostgreSQL's upsert updates it.
    let collisions: &[&str] = match app.database.backend {
        crate::helpers::Backend::Sqlite => &[
            "INSERT OR REPLACE INTO versions SELECT id, policy_id, version, state,              '{\"max\":1000}', digest, label, change_notes, 'mallory', created_at,              published_by, published_at, jws, key_id, requirements FROM versions WHERE version = 1",
            "REPLACE INTO events SELECT id, kind, policy_id, namespace, name, 'mallory', at,              reason, request_id, previous_version, new_version, revision, key_id, rollout_id, hash FROM events              ORDER BY id LIMIT 1",
            "REPLACE INTO signing_keys SELECT key_id, 'forged', created_at FROM signing_keys",
        ],
        crate::helpers::Backend::Postgres => &[
            "INSERT INTO versions SELECT * FROM versions WHERE version = 1              ON CONFLICT (id) DO UPDATE SET body = '{\"max\":1000}', created_by = 'mallory'",
            "INSERT INTO events SELECT * FROM events ORDER BY id LIMIT 1              ON CONFLICT (id) DO UPDATE SET actor = 'mallory'",
            "INSERT INTO signing_keys SELECT * FROM signing_keys              ON CONFLICT (key_id) DO UPDATE SET public_key = 'forged'",
        ],
    };
    for statement in collisions {
        let result = db.execute_unprepared(statement).await;
        let error = result.expect_err(statement).to_string();
        assert!(error.contains("policyhub:"), "{statement}: {error}");
    }
    if app.database.backend == crate::helpers::Backend::Postgres {
        let error = db
            .execute_unprepared("TRUNCATE events")
            .await
            .expect_err("truncate");
        assert!(error.to_string().contains("policyhub:"), "{error}");
    }
    db.close().await.ok();
    assert_eq!(app.db_state().await, before);
    let keys = app.jwks_json().await;
    assert!(!keys.contains("forged"), "{keys}");
}

/// An event filter that cannot be met is refused, naming the field, before
/// any query runs.
async fn bad_event_filters_name_their_field(app: TestApp) {
    seed(&app).await;
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    for (request, field) in [
        (
            proto::ListEventsRequest {
                kinds: vec![proto::EventKind::Published as i32, 999],
                ..Default::default()
            },
            "kinds[1]",
        ),
        (
            proto::ListEventsRequest {
                kinds: vec![proto::EventKind::Unspecified as i32],
                ..Default::default()
            },
            "kinds[0]",
        ),
        (
            proto::ListEventsRequest {
                since: at(1_800_000_000),
                until: at(1_799_999_999),
                ..Default::default()
            },
            "until",
        ),
        (
            proto::ListEventsRequest {
                since: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            },
            "since",
        ),
        (
            proto::ListEventsRequest {
                actor: "a".repeat(policyhub::domain::MAX_ACTOR_BYTES + 1),
                ..Default::default()
            },
            "actor",
        ),
        (
            proto::ListEventsRequest {
                actor: "nul\0actor".into(),
                ..Default::default()
            },
            "actor",
        ),
    ] {
        let status = app.policy.clone().list_events(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations = status
            .get_details_bad_request()
            .expect("field violations")
            .field_violations;
        assert_eq!(violations[0].field, field, "{status:?}");
    }
    // The longest actor there can be is a filter, not a refusal; one
    // instant as the whole range is too.
    let page = app
        .policy
        .clone()
        .list_events(proto::ListEventsRequest {
            actor: "a".repeat(policyhub::domain::MAX_ACTOR_BYTES),
            since: at(1_800_000_000),
            until: at(1_800_000_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.events.is_empty());
}

/// Revisions are stored in 63 bits: a request naming one past them (as of
/// a revision, a bundle's revision) is refused naming its field, as a
/// revision no log holds, whatever the current revision, and the server
/// answers on.
async fn a_revision_past_63_bits_is_invalid_argument_where_it_enters(app: TestApp) {
    seed(&app).await;
    let before = app.db_state().await;
    for past in [1_u64 << 63, u64::MAX] {
        let as_of = app
            .bundle
            .clone()
            .get_active(proto::GetActiveRequest {
                namespace: "payments".into(),
                name: "limits".into(),
                as_of: Some(proto::get_active_request::AsOf::AsOfRevision(past)),
                ..Default::default()
            })
            .await;
        let proof = app
            .bundle
            .clone()
            .get_bundle_proof(proto::GetBundleProofRequest {
                namespace: "payments".into(),
                name: "limits".into(),
                version: 1,
                revision: past,
                tree_size: 0,
            })
            .await;
        for (status, field) in [
            (as_of.map(drop).unwrap_err(), "as_of_revision"),
            (proof.map(drop).unwrap_err(), "revision"),
        ] {
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            let violations = status.get_details_bad_request().unwrap().field_violations;
            assert_eq!(violations[0].field, field);
            assert!(
                violations[0]
                    .description
                    .contains("is past any the log can hold"),
                "{field}: {}",
                violations[0].description
            );
        }
    }
    assert_eq!(
        app.get_active("payments", "limits").await.unwrap().version,
        1
    );
    assert_eq!(app.db_state().await, before);
}
