//! Each row of the lifecycle table (docs/src/contributing/design.md#domain),
//! on SQLite and PostgreSQL.

use policyhub::grpc::{convert::json_to_struct, proto};
use serde_json::json;
use tonic::Code;

use crate::helpers::{TestApp, expect_code, publish_request, state_name, target};

crate::on_both_backends!(
    no_policy_then_draft_creates_version_1,
    published_v3_then_next_draft_is_v4,
    published_v2_with_draft_v5_then_new_draft_is_v6_and_v5_superseded,
    discard_draft_keeps_the_number_unused,
    publish_with_activate_deactivates_the_previous_version,
    activate_moves_several_policies_under_one_revision,
    activating_the_active_version_changes_nothing,
    rollback_leaves_every_version_and_records_who_when_why,
    rollback_to_a_named_version_and_toggle_back,
    get_active_as_of_revision_and_time_answers_from_history,
    get_active_draft_fallback_is_opt_in_and_unsigned,
    idempotent_retries_return_the_original_result_and_write_nothing,
    same_label_same_digest_is_success,
    diff_versions_is_an_rfc_6902_patch,
    schema_tightened_blocks_rollback_until_a_new_draft,
    restore_copies_an_older_version_forward_and_activates_it,
    list_policies_and_versions_page_through_everything,
    list_events_filters_by_kind,
    list_events_filters_by_actor_and_time_in_the_query_across_pages,
    get_policy_is_what_the_listing_shows_and_not_found_for_an_unknown_one,
);

async fn no_policy_then_draft_creates_version_1(app: TestApp) {
    let version = app.draft("payments", "limits", json!({"max": 10})).await;
    assert_eq!(version.version, 1);
    assert_eq!(state_name(&version), "DRAFT");
    assert_eq!(version.created_by, "anonymous");
    assert!(version.digest.starts_with("sha256:"));
    let events = app.events("payments", "limits").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, proto::EventKind::DraftCreated as i32);
    assert_eq!(events[0].new_version, 1);
    // A draft never touches the active pointer.
    expect_code(app.get_active("payments", "limits").await, Code::NotFound);
}

async fn published_v3_then_next_draft_is_v4(app: TestApp) {
    for max in 1..=3 {
        app.release("payments", "limits", json!({"max": max}), false)
            .await;
    }
    let next = app.draft("payments", "limits", json!({"max": 4})).await;
    assert_eq!(next.version, 4);
    let states = app.states("payments", "limits").await;
    assert_eq!(
        states,
        [
            (4, "DRAFT"),
            (3, "PUBLISHED"),
            (2, "PUBLISHED"),
            (1, "PUBLISHED")
        ]
    );
}

async fn published_v2_with_draft_v5_then_new_draft_is_v6_and_v5_superseded(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), false)
        .await;
    app.release("payments", "limits", json!({"max": 2}), false)
        .await;
    for max in 3..=5 {
        app.draft("payments", "limits", json!({"max": max})).await;
    }
    let response = app
        .policy
        .clone()
        .draft(proto::DraftRequest {
            requirements: Vec::new(),
            namespace: "payments".into(),
            name: "limits".into(),
            body: Some(json_to_struct(&json!({"max": 6}))),
            change_notes: String::new(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.version.unwrap().version, 6);
    assert_eq!(response.superseded_version, 5);
    let states = app.states("payments", "limits").await;
    assert_eq!(
        states,
        [
            (6, "DRAFT"),
            (5, "SUPERSEDED"),
            (4, "SUPERSEDED"),
            (3, "SUPERSEDED"),
            (2, "PUBLISHED"),
            (1, "PUBLISHED")
        ]
    );
    let superseded = app
        .events("payments", "limits")
        .await
        .into_iter()
        .find(|event| event.kind == proto::EventKind::DraftSuperseded as i32)
        .expect("a supersede event");
    assert_eq!(
        (superseded.previous_version, superseded.new_version),
        (5, 6)
    );
}

async fn discard_draft_keeps_the_number_unused(app: TestApp) {
    app.draft("payments", "limits", json!({"max": 1})).await;
    let discarded = app
        .policy
        .clone()
        .discard_draft(proto::DiscardDraftRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            version: None,
            reason: "wrong idea".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(
        (discarded.version, state_name(&discarded)),
        (1, "DISCARDED")
    );
    let next = app.draft("payments", "limits", json!({"max": 1})).await;
    assert_eq!(next.version, 2, "version numbers are never reused");
    let event = &app.events("payments", "limits").await[1];
    assert_eq!(event.kind, proto::EventKind::DraftDiscarded as i32);
    assert_eq!(event.reason, "wrong idea");
}

async fn publish_with_activate_deactivates_the_previous_version(app: TestApp) {
    let first = app
        .release("payments", "limits", json!({"max": 1}), true)
        .await;
    assert!(first.active);
    app.draft("payments", "limits", json!({"max": 2})).await;
    let response = app.publish("payments", "limits", "", true).await;
    let second = response.version.unwrap();
    assert!(second.active);
    assert!(response.revision > 0);
    let bundle = app.get_active("payments", "limits").await.unwrap();
    assert_eq!((bundle.version, bundle.revision), (2, response.revision));
    let versions = app.versions("payments", "limits").await;
    let active: Vec<_> = versions
        .iter()
        .filter(|v| v.active)
        .map(|v| v.version)
        .collect();
    assert_eq!(active, [2], "exactly one version is active");
    let activation = app
        .events("payments", "limits")
        .await
        .into_iter()
        .find(|event| event.kind == proto::EventKind::Activated as i32)
        .unwrap();
    assert_eq!(
        (activation.previous_version, activation.new_version),
        (1, 2)
    );
}

async fn activate_moves_several_policies_under_one_revision(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), false)
        .await;
    app.release("payments", "fraud", json!({"score": 5}), false)
        .await;
    let response = app
        .try_activate(vec![
            target("payments", "limits", 1),
            target("payments", "fraud", 1),
        ])
        .await
        .unwrap();
    assert_eq!(response.activations.len(), 2);
    let limits = app.get_active("payments", "limits").await.unwrap();
    let fraud = app.get_active("payments", "fraud").await.unwrap();
    assert_eq!(limits.revision, response.revision);
    assert_eq!(fraud.revision, response.revision);
    let revisions: Vec<u64> = [
        app.events("payments", "limits").await,
        app.events("payments", "fraud").await,
    ]
    .into_iter()
    .flatten()
    .filter(|event| event.kind == proto::EventKind::Activated as i32)
    .map(|event| event.revision)
    .collect();
    assert_eq!(revisions, [response.revision, response.revision]);
}

async fn activating_the_active_version_changes_nothing(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    let before = app.db_state().await;
    let response = app
        .try_activate(vec![target("payments", "limits", 1)])
        .await
        .unwrap();
    assert_eq!(
        response.revision, 1,
        "the revision at which it became active"
    );
    assert_eq!(response.activations[0].previous_version, 1);
    assert_eq!(app.db_state().await, before);
}

async fn rollback_leaves_every_version_and_records_who_when_why(app: TestApp) {
    for max in 1..=3 {
        app.release("payments", "limits", json!({"max": max}), true)
            .await;
    }
    let versions_before = app.versions("payments", "limits").await;
    let started = chrono::Utc::now().timestamp();
    let response = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            to_version: None,
            reason: "v3 rejects card payments".into(),
            expected_active_version: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.version, response.previous_version), (2, 3));
    assert_eq!(response.revision, 4);
    assert_eq!(
        app.get_active("payments", "limits").await.unwrap().version,
        2
    );
    let versions_after = app.versions("payments", "limits").await;
    assert_eq!(
        versions_after.len(),
        versions_before.len(),
        "nothing deleted or copied"
    );
    for (before, after) in versions_before.iter().zip(&versions_after) {
        assert_eq!(
            (before.version, &before.digest, &before.jws),
            (after.version, &after.digest, &after.jws)
        );
    }
    let event = &app.events("payments", "limits").await[0];
    assert_eq!(event.kind, proto::EventKind::RolledBack as i32);
    assert_eq!(event.actor, "anonymous");
    assert_eq!(event.reason, "v3 rejects card payments");
    assert_eq!(
        (event.previous_version, event.new_version, event.revision),
        (3, 2, 4)
    );
    assert!(event.at.unwrap().seconds >= started - 1);
    assert!(!event.request_id.is_empty());
}

async fn rollback_to_a_named_version_and_toggle_back(app: TestApp) {
    for max in 1..=3 {
        app.release("payments", "limits", json!({"max": max}), true)
            .await;
    }
    let rollback = |to_version: Option<u32>| {
        let mut client = app.policy.clone();
        async move {
            client
                .rollback(proto::RollbackRequest {
                    namespace: "payments".into(),
                    name: "limits".into(),
                    to_version,
                    reason: "test".into(),
                    expected_active_version: None,
                    ..Default::default()
                })
                .await
                .map(|response| response.into_inner().version)
        }
    };
    assert_eq!(rollback(Some(1)).await.unwrap(), 1);
    // Like `kubectl rollout undo`: the default target is the version active
    // before the current one, so a second rollback undoes the first.
    assert_eq!(rollback(None).await.unwrap(), 3);
    expect_code(rollback(Some(3)).await, Code::FailedPrecondition);
    expect_code(rollback(Some(9)).await, Code::NotFound);
}

async fn get_active_as_of_revision_and_time_answers_from_history(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.release("payments", "limits", json!({"max": 2}), true)
        .await;
    let as_of = |as_of| {
        let mut client = app.bundle.clone();
        async move {
            client
                .get_active(proto::GetActiveRequest {
                    namespace: "payments".into(),
                    name: "limits".into(),
                    as_of: Some(as_of),
                    allow_draft_fallback: false,
                    runtime: None,
                    ..Default::default()
                })
                .await
                .map(|response| response.into_inner())
        }
    };
    use proto::get_active_request::AsOf;
    assert_eq!(as_of(AsOf::AsOfRevision(1)).await.unwrap().version, 1);
    assert_eq!(as_of(AsOf::AsOfRevision(2)).await.unwrap().version, 2);
    expect_code(as_of(AsOf::AsOfRevision(0)).await, Code::NotFound);
    expect_code(as_of(AsOf::AsOfRevision(3)).await, Code::InvalidArgument);
    let at = prost_types::Timestamp {
        seconds: between.timestamp(),
        nanos: between.timestamp_subsec_nanos() as i32,
    };
    let then = as_of(AsOf::AsOfTime(at)).await.unwrap();
    assert_eq!((then.version, then.revision), (1, 1));
    assert!(!then.jws.is_empty());
}

async fn get_active_draft_fallback_is_opt_in_and_unsigned(app: TestApp) {
    app.draft("payments", "limits", json!({"max": 1})).await;
    let message = expect_code(app.get_active("payments", "limits").await, Code::NotFound);
    assert!(message.contains("allow_draft_fallback"), "{message}");
    let fallback = app
        .bundle
        .clone()
        .get_active(proto::GetActiveRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            as_of: None,
            allow_draft_fallback: true,
            runtime: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fallback.draft);
    assert!(fallback.jws.is_empty(), "a draft is never signed");
    assert_eq!(fallback.version, 1);
    assert!(fallback.body.is_some());
}

async fn idempotent_retries_return_the_original_result_and_write_nothing(app: TestApp) {
    let request = proto::DraftRequest {
        requirements: Vec::new(),
        namespace: "payments".into(),
        name: "limits".into(),
        body: Some(json_to_struct(&json!({"max": 1}))),
        change_notes: "from ci".into(),
        idempotency_key: "commit-abc".into(),
    };
    let first = app
        .policy
        .clone()
        .draft(request.clone())
        .await
        .unwrap()
        .into_inner();
    let state = app.db_state().await;
    let retry = app
        .policy
        .clone()
        .draft(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, retry);
    assert_eq!(app.db_state().await, state);

    let mut publish = publish_request("payments", "limits", "1.0.0", true);
    publish.idempotency_key = "commit-abc".into();
    let published = app.try_publish(publish.clone()).await.unwrap();
    let state = app.db_state().await;
    assert_eq!(app.try_publish(publish).await.unwrap(), published);
    assert_eq!(app.db_state().await, state);

    let activate = proto::ActivateRequest {
        targets: vec![target("payments", "limits", 1)],
        reason: String::new(),
        idempotency_key: "release-7".into(),
    };
    app.draft("payments", "limits", json!({"max": 2})).await;
    app.publish("payments", "limits", "", true).await;
    let activated = app
        .policy
        .clone()
        .activate(activate.clone())
        .await
        .unwrap()
        .into_inner();
    let state = app.db_state().await;
    assert_eq!(
        app.policy
            .clone()
            .activate(activate)
            .await
            .unwrap()
            .into_inner(),
        activated
    );
    assert_eq!(app.db_state().await, state);
}

async fn same_label_same_digest_is_success(app: TestApp) {
    app.draft("payments", "limits", json!({"max": 1, "currency": "EUR"}))
        .await;
    let released = app.publish("payments", "limits", "1.2.0", false).await;
    // The same content again, keys in another order: same digest.
    app.draft("payments", "limits", json!({"currency": "EUR", "max": 1.0}))
        .await;
    let again = app.publish("payments", "limits", "1.2.0", false).await;
    assert!(again.already_published);
    assert_eq!(
        again.version.unwrap().version,
        released.version.unwrap().version
    );
}

async fn diff_versions_is_an_rfc_6902_patch(app: TestApp) {
    app.draft(
        "payments",
        "limits",
        json!({"max": 1, "currencies": ["EUR"]}),
    )
    .await;
    app.draft(
        "payments",
        "limits",
        json!({"max": 2, "currencies": ["EUR"], "region": "eu"}),
    )
    .await;
    let diff = app
        .policy
        .clone()
        .diff_versions(proto::DiffVersionsRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            from_version: 1,
            to_version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let mut operations: Vec<_> = diff
        .operations
        .iter()
        .map(|op| (op.op.as_str(), op.path.as_str()))
        .collect();
    operations.sort();
    assert_eq!(operations, [("add", "/region"), ("replace", "/max")]);
    assert_ne!(diff.from_digest, diff.to_digest);
}

async fn schema_tightened_blocks_rollback_until_a_new_draft(app: TestApp) {
    app.release("payments", "limits", json!({"max": 500}), true)
        .await;
    app.release("payments", "limits", json!({"max": 50}), true)
        .await;
    let schema =
        json!({"type": "object", "properties": {"max": {"type": "integer", "maximum": 100}}});
    // A dry run names v1, which the schema would reject, and changes nothing.
    let before = app.db_state().await;
    let dry_run = app
        .policy
        .clone()
        .set_schema(proto::SetSchemaRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(&schema)),
            reason: "look first".into(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    let rejected: Vec<_> = dry_run
        .rejected_versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(rejected, [1]);
    let violations = &dry_run.rejected_versions[0].violations;
    assert!(violations[0].starts_with("/max: 500"), "{violations:?}");
    assert!(dry_run.policy.is_none() && dry_run.active_version_violations.is_empty());
    assert_eq!(app.db_state().await, before);
    let response = app
        .policy
        .clone()
        .set_schema(proto::SetSchemaRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(&schema)),
            reason: "cap the maximum".into(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.active_version_violations.is_empty(), "v2 conforms");
    assert!(response.policy.unwrap().schema.is_some());
    let before = app.db_state().await;
    let refused = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            to_version: None,
            reason: "try v1".into(),
            expected_active_version: None,
            ..Default::default()
        })
        .await;
    let message = expect_code(refused, Code::FailedPrecondition);
    assert!(message.contains("/max"), "{message}");
    assert_eq!(app.db_state().await, before);
    // Restoring v1 forward is validated against today's schema too: refused
    // whole, no draft, no version, no event left behind.
    let refused = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            reason: "restore v1".into(),
            restore: true,
            ..Default::default()
        })
        .await;
    let message = expect_code(refused, Code::FailedPrecondition);
    assert!(message.contains("/max"), "{message}");
    assert_eq!(app.db_state().await, before);
}

/// Restore ("every change is reversible by going forward"): version 1's
/// body becomes a new version, signed and active; the open draft is
/// superseded as by any newer version; the change notes and the events name
/// the source.
async fn restore_copies_an_older_version_forward_and_activates_it(app: TestApp) {
    let first = app
        .release("payments", "limits", json!({"max": 1}), true)
        .await;
    app.release("payments", "limits", json!({"max": 2}), true)
        .await;
    app.draft("payments", "limits", json!({"max": 3})).await;
    let restored = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            to_version: Some(1),
            reason: "v2 broke checkout".into(),
            restore: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            restored.restored_from,
            restored.version,
            restored.previous_version
        ),
        (1, 4, 2)
    );
    let active = app.get_active("payments", "limits").await.unwrap();
    assert_eq!((active.version, active.revision), (4, restored.revision));
    assert_eq!(active.digest, first.digest, "the same body");
    assert!(
        !active.jws.is_empty() && !active.key_id.is_empty(),
        "signed"
    );
    assert_eq!(
        app.states("payments", "limits").await,
        [
            (4, "PUBLISHED"),
            (3, "SUPERSEDED"),
            (2, "PUBLISHED"),
            (1, "PUBLISHED")
        ]
    );
    let versions = app.versions("payments", "limits").await;
    assert_eq!(
        versions[0].change_notes,
        "Restored from version 1: v2 broke checkout"
    );
    let events = app.events("payments", "limits").await;
    let rolled_back = events
        .iter()
        .find(|event| event.kind == proto::EventKind::RolledBack as i32)
        .expect("a ROLLED_BACK event");
    assert_eq!(
        (rolled_back.previous_version, rolled_back.new_version),
        (2, 4)
    );
    assert!(
        rolled_back
            .reason
            .starts_with("restored version 1 as version 4: v2 broke checkout"),
        "{}",
        rolled_back.reason
    );
}

async fn list_policies_and_versions_page_through_everything(app: TestApp) {
    for name in ["c", "a", "b"] {
        app.draft("team-1", name, json!({})).await;
    }
    app.release("team-0", "z", json!({}), true).await;
    app.draft("team-0", "z", json!({"next": true})).await;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .policy
            .clone()
            .list_policies(proto::ListPoliciesRequest {
                namespace: String::new(),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.policies);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let names: Vec<_> = seen
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(names, ["team-0/z", "team-1/a", "team-1/b", "team-1/c"]);
    let z = &seen[0];
    assert_eq!(
        (z.active_version, z.draft_version, z.latest_version),
        (1, 2, 2)
    );

    for body in 0..4 {
        app.draft("team-1", "a", json!({ "n": body })).await;
    }
    let first = app
        .policy
        .clone()
        .list_versions(proto::ListVersionsRequest {
            namespace: "team-1".into(),
            name: "a".into(),
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let second = app
        .policy
        .clone()
        .list_versions(proto::ListVersionsRequest {
            namespace: "team-1".into(),
            name: "a".into(),
            page_size: 3,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let numbers: Vec<u32> = first
        .versions
        .iter()
        .chain(&second.versions)
        .map(|v| v.version)
        .collect();
    assert_eq!(numbers, [5, 4, 3, 2, 1]);
    assert!(second.next_page_token.is_empty());
}

async fn list_events_filters_by_kind(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    let events = app
        .policy
        .clone()
        .list_events(proto::ListEventsRequest {
            namespace: "payments".into(),
            name: String::new(),
            kinds: vec![proto::EventKind::Published as i32],
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, proto::EventKind::Published as i32);
    assert!(!events[0].key_id.is_empty());
}

/// Actor and time range are filters of the query itself: paging one event
/// at a time through a range reads exactly the events inside it, with both
/// bounds inclusive, and an actor with no events gets an empty last page.
async fn list_events_filters_by_actor_and_time_in_the_query_across_pages(app: TestApp) {
    for max in 1..=3 {
        app.release("payments", "limits", json!({"max": max}), true)
            .await;
    }
    let all = app.events("payments", "limits").await;
    assert!(all.len() >= 6, "{all:?}");
    // The events of one transaction share their instant: a range from the
    // second oldest instant to the second newest leaves some out at both
    // ends.
    let instant = |event: &proto::Event| event.at.map(|at| (at.seconds, at.nanos));
    let mut instants: Vec<_> = all.iter().map(instant).collect();
    instants.dedup();
    assert!(instants.len() >= 4, "{all:?}");
    let newest = all
        .iter()
        .find(|event| instant(event) == instants[1])
        .unwrap();
    let oldest = all
        .iter()
        .find(|event| instant(event) == instants[instants.len() - 2])
        .unwrap();
    let inside: Vec<u64> = all
        .iter()
        .filter(|event| instant(event) >= instant(oldest) && instant(event) <= instant(newest))
        .map(|event| event.id)
        .collect();
    let mut read = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .policy
            .clone()
            .list_events(proto::ListEventsRequest {
                namespace: "payments".into(),
                actor: "anonymous".into(),
                since: oldest.at,
                until: newest.at,
                page_size: 1,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 1);
        read.extend(page.events.iter().map(|event| event.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(read, inside);
    assert!(read.contains(&oldest.id) && read.contains(&newest.id));
    assert!(!read.contains(&all[0].id) && !read.contains(&all[all.len() - 1].id));

    let nobody = app
        .policy
        .clone()
        .list_events(proto::ListEventsRequest {
            namespace: "payments".into(),
            actor: "someone-else".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nobody.events.is_empty() && nobody.next_page_token.is_empty());
}

/// GetPolicy answers with the policy exactly as ListPolicies lists it
/// (pointers, active label, schema, fleet), and NOT_FOUND for a policy the namespace does not have.
async fn get_policy_is_what_the_listing_shows_and_not_found_for_an_unknown_one(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    app.policy
        .clone()
        .set_schema(proto::SetSchemaRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(&json!({"type": "object"}))),
            ..Default::default()
        })
        .await
        .unwrap();
    app.draft("payments", "limits", json!({"max": 2})).await;
    app.release("payments", "other", json!({"max": 3}), true)
        .await;
    let listed = app
        .policy
        .clone()
        .list_policies(proto::ListPoliciesRequest {
            namespace: "payments".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .policies;
    for listed in listed {
        let got = app
            .policy
            .clone()
            .get_policy(proto::GetPolicyRequest {
                namespace: "payments".into(),
                name: listed.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, listed);
    }
    let limits = app
        .policy
        .clone()
        .get_policy(proto::GetPolicyRequest {
            namespace: "payments".into(),
            name: "limits".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            limits.active_version,
            limits.draft_version,
            limits.latest_version
        ),
        (1, 2, 2)
    );
    assert!(limits.schema.is_some() && limits.fleet.is_some());
    let missing = app
        .policy
        .clone()
        .get_policy(proto::GetPolicyRequest {
            namespace: "payments".into(),
            name: "nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(
        missing.message().contains("nothing"),
        "{}",
        missing.message()
    );
}
