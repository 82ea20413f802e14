//! Delivery: the first snapshot, every activation once and in order, a
//! multi-policy activation whole, a namespace above the message size.

use std::time::Duration;

use anyhow::ensure;
use serde_json::json;

use super::{applied_once_in_order, holds, release, release_large, revisions, test};
use crate::{
    harness::{Context, NAMESPACE, Test},
    protocol::Source,
};

pub fn tests() -> Vec<Test> {
    vec![
        test!("delivery.first-snapshot", ["D1"], [], first_snapshot),
        test!(
            "delivery.every-change-once-in-order",
            ["D2", "D3"],
            [],
            every_change_once_in_order
        ),
        test!(
            "delivery.large-namespace",
            ["D2", "D7"],
            [],
            large_namespace
        ),
    ]
}

/// Policies active before the runtime starts arrive as one whole state.
async fn first_snapshot(context: Context) -> anyhow::Result<()> {
    release(&context, "limits", 1).await?;
    release(&context, "routes", 1).await?;
    let revision = release(&context, "routes", 2).await?;
    let runtime = context.runtime(1).await?;
    let view = runtime.until_revision(revision).await?;
    holds(&view, &[("limits", 1), ("routes", 2)])?;
    let applied = view.applied();
    ensure!(
        applied.len() == 1 && applied[0].0 == revision && applied[0].1 == Source::Server,
        "the first state in force is the snapshot at revision {revision}, from the server; applied {applied:?}"
    );
    let state = view.in_force.as_ref().expect("held");
    ensure!(
        state.policies["routes"].body == json!({"name": "routes", "n": 2}),
        "the body in force is the one published: {}",
        state.policies["routes"].body
    );
    Ok(())
}

/// Ten changes, one of them moving two policies under one revision: each
/// applied once, in order, and the pair never apart.
async fn every_change_once_in_order(context: Context) -> anyhow::Result<()> {
    release(&context, "a", 1).await?;
    release(&context, "b", 1).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(2).await?;
    let mut expected = Vec::new();
    for n in 2..=5 {
        expected.push(release(&context, "a", n).await?);
    }
    // b@2 and a@6 published without activation, then activated together.
    let (b2, _) = context
        .server
        .publish(NAMESPACE, "b", json!({"name": "b", "n": 2}), false)
        .await?;
    let (a6, _) = context
        .server
        .publish(NAMESPACE, "a", json!({"name": "a", "n": 6}), false)
        .await?;
    let together = context
        .server
        .activate(NAMESPACE, &[("a", a6), ("b", b2)])
        .await?;
    expected.push(together);
    for n in 7..=10 {
        expected.push(release(&context, "a", n).await?);
    }
    let last = *expected.last().expect("released");
    let view = runtime.until_revision(last).await?;
    holds(&view, &[("a", 10), ("b", 2)])?;
    applied_once_in_order(&view)?;
    let applied = revisions(&view);
    for revision in &expected {
        ensure!(
            applied.contains(revision),
            "revision {revision} was never applied: applied {applied:?}"
        );
    }
    for (revision, _, policies) in view.applied() {
        let apart = (policies.get("a") == Some(&6)) != (policies.get("b") == Some(&2))
            && revision <= together;
        ensure!(
            !apart,
            "revision {revision} holds half of the activation of a@6 and b@2: {policies:?}"
        );
    }
    Ok(())
}

/// Twenty policies of 250 KB each (5 MB, above gRPC's 4 MiB message
/// limit) arrive as one whole state. The minute it may take bounds a
/// namespace that never arrives; it is no speed target, and leaves room
/// for a machine busy with other tests.
async fn large_namespace(context: Context) -> anyhow::Result<()> {
    let last = release_large(&context, 20).await?;
    let runtime = context.runtime(1).await?;
    let view = runtime
        .until(
            "the 5 MB namespace in force",
            Duration::from_secs(60),
            |view| view.revision() >= last,
        )
        .await?;
    let held = view
        .in_force
        .as_ref()
        .map_or(0, |state| state.policies.len());
    ensure!(
        held == 20,
        "the state in force holds {held} of the 20 policies"
    );
    ensure!(
        view.applied().len() == 1,
        "the namespace arrived in one state, not in parts: applied {:?}",
        revisions(&view)
    );
    Ok(())
}
