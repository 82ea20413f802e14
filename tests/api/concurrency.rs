//! Concurrent writers on one policy, on SQLite and PostgreSQL.

use std::collections::BTreeSet;

use futures::future::join_all;
use serde_json::json;
use tonic::Code;

use crate::helpers::{TestApp, expect_code, state_name, target};

crate::on_both_backends!(
    twenty_concurrent_drafts_yield_twenty_versions_and_one_open_draft,
    racing_compare_and_swap_activations_have_exactly_one_winner,
    atomic_two_policy_activation_with_one_bad_target_changes_nothing,
    concurrent_multi_policy_activations_in_opposite_orders_do_not_deadlock,
);

async fn twenty_concurrent_drafts_yield_twenty_versions_and_one_open_draft(app: TestApp) {
    let drafts = (0..20).map(|n| app.try_draft("payments", "limits", json!({ "n": n })));
    let results = join_all(drafts).await;
    let numbers: BTreeSet<u32> = results
        .into_iter()
        .map(|r| r.expect("every draft succeeds").version)
        .collect();
    assert_eq!(numbers, (1..=20).collect::<BTreeSet<u32>>());
    let versions = app.versions("payments", "limits").await;
    assert_eq!(versions.len(), 20);
    let open: Vec<_> = versions
        .iter()
        .filter(|v| state_name(v) == "DRAFT")
        .collect();
    assert_eq!(open.len(), 1, "exactly one open draft");
    assert_eq!(
        open[0].version, 20,
        "the last draft created is the open one"
    );
    assert!(
        versions
            .iter()
            .filter(|v| v.version != 20)
            .all(|v| state_name(v) == "SUPERSEDED")
    );
}

async fn racing_compare_and_swap_activations_have_exactly_one_winner(app: TestApp) {
    app.release("payments", "limits", json!({"v": 1}), true)
        .await;
    for n in 2..=9 {
        app.release("payments", "limits", json!({ "v": n }), false)
            .await;
    }
    let racers = (2..=9).map(|version| {
        let mut target = target("payments", "limits", version);
        target.expected_active_version = Some(1);
        app.try_activate(vec![target])
    });
    let results = join_all(racers).await;
    let winners: Vec<u32> = results
        .iter()
        .filter_map(|result| result.as_ref().ok())
        .map(|response| response.activations[0].version)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one compare-and-swap wins: {results:?}"
    );
    for result in results.into_iter().filter(Result::is_err) {
        expect_code(result, Code::Aborted);
    }
    let active = app.get_active("payments", "limits").await.unwrap();
    assert_eq!(active.version, winners[0]);
    assert_eq!(active.revision, 2, "one revision for the one winner");
}

async fn atomic_two_policy_activation_with_one_bad_target_changes_nothing(app: TestApp) {
    app.release("payments", "limits", json!({"v": 1}), true)
        .await;
    app.release("payments", "limits", json!({"v": 2}), false)
        .await;
    app.release("payments", "fraud", json!({"v": 1}), true)
        .await;
    app.draft("payments", "fraud", json!({"v": 2})).await;
    let before = app.db_state().await;
    // The second target names a draft: the whole request fails.
    let result = app
        .try_activate(vec![
            target("payments", "limits", 2),
            target("payments", "fraud", 2),
        ])
        .await;
    expect_code(result, Code::FailedPrecondition);
    // A compare-and-swap mismatch on one target fails the whole request too.
    let mut stale = target("payments", "fraud", 1);
    stale.expected_active_version = Some(7);
    expect_code(
        app.try_activate(vec![target("payments", "limits", 2), stale])
            .await,
        Code::Aborted,
    );
    // So does an unknown policy.
    expect_code(
        app.try_activate(vec![
            target("payments", "limits", 2),
            target("payments", "nope", 1),
        ])
        .await,
        Code::NotFound,
    );
    assert_eq!(app.db_state().await, before);
    assert_eq!(
        app.get_active("payments", "limits").await.unwrap().version,
        1
    );
}

async fn concurrent_multi_policy_activations_in_opposite_orders_do_not_deadlock(app: TestApp) {
    for name in ["a", "b"] {
        app.release("team", name, json!({"v": 1}), true).await;
        app.release("team", name, json!({"v": 2}), false).await;
    }
    let requests = (0..10).map(|n| {
        let version = 1 + n % 2;
        let targets = if n % 2 == 0 {
            vec![target("team", "a", version), target("team", "b", version)]
        } else {
            vec![target("team", "b", version), target("team", "a", version)]
        };
        app.try_activate(targets)
    });
    let results = join_all(requests).await;
    let revisions: BTreeSet<u64> = results
        .into_iter()
        .map(|result| result.expect("no deadlock, no failure").revision)
        .collect();
    assert!(!revisions.is_empty());
    let a = app.get_active("team", "a").await.unwrap();
    let b = app.get_active("team", "b").await.unwrap();
    assert_eq!(
        a.revision, b.revision,
        "both moved together in the last transaction"
    );
    assert_eq!(a.version, b.version);
}
