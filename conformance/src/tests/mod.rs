//! The conformance tests, by area. Each names the obligations of the
//! runtime contract it checks (the book's "The runtime contract").

mod cache;
mod delivery;
mod endpoints;
mod faults;
mod history;
mod reconnect;
mod reports;
mod resume;
mod transport;
mod verification;
mod witnesses;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, ensure};
use serde_json::json;

use crate::{
    harness::{Context, NAMESPACE, Test},
    protocol::{RuntimeView, Source},
    service::Runtime,
};

/// Wraps an `async fn(Context) -> anyhow::Result<()>` as a [`Test`].
macro_rules! test {
    ($id:literal, [$($obligation:literal),*], [$($need:ident),*], $run:path) => {
        crate::tests::test!(@ $id, [$($obligation),*], [$($need),*], false, false, $run)
    };
    // A test that draws what it does from the kit's seeds, once per seed.
    ($id:literal, [$($obligation:literal),*], [$($need:ident),*], seeded, $run:path) => {
        crate::tests::test!(@ $id, [$($obligation),*], [$($need),*], false, true, $run)
    };
    // A test that runs two replicas of one server (PostgreSQL).
    ($id:literal, [$($obligation:literal),*], [$($need:ident),*], replicas, $run:path) => {
        crate::tests::test!(@ $id, [$($obligation),*], [$($need),*], true, false, $run)
    };
    (@ $id:literal, [$($obligation:literal),*], [$($need:ident),*], $replicas:literal, $seeded:literal, $run:path) => {
        crate::harness::Test {
            id: $id,
            obligations: &[$($obligation),*],
            needs: &[$(crate::protocol::Capability::$need),*],
            replicas: $replicas,
            seeded: $seeded,
            run: |context| Box::pin($run(context)),
        }
    };
}
pub(crate) use test;

/// Every test, in the order they run.
pub fn all() -> Vec<Test> {
    [
        delivery::tests(),
        resume::tests(),
        verification::tests(),
        cache::tests(),
        reports::tests(),
        reconnect::tests(),
        history::tests(),
        witnesses::tests(),
        endpoints::tests(),
        transport::tests(),
        faults::tests(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Every state a runtime put in force came once, in revision order: no
/// revision applied twice, none older than one before it.
pub fn applied_once_in_order(view: &RuntimeView) -> anyhow::Result<()> {
    let mut last: Option<(u64, Source)> = None;
    for (revision, source, _) in view.applied() {
        if let Some((before, before_source)) = last {
            let repeated_from_cache = before_source == Source::Cache && revision == before;
            ensure!(
                revision > before || repeated_from_cache && source == Source::Server,
                "revision {revision} was applied after revision {before}: applied {:?}",
                revisions(view)
            );
        }
        last = Some((revision, source));
    }
    Ok(())
}

/// The revisions applied, in order.
pub fn revisions(view: &RuntimeView) -> Vec<u64> {
    view.applied()
        .iter()
        .map(|(revision, ..)| *revision)
        .collect()
}

/// The state in force holds exactly these versions.
pub fn holds(view: &RuntimeView, expected: &[(&str, u32)]) -> anyhow::Result<()> {
    let Some(state) = &view.in_force else {
        bail!("no state in force; expected {expected:?}");
    };
    let held: BTreeMap<&str, u32> = state
        .policies
        .iter()
        .map(|(name, policy)| (name.as_str(), policy.version))
        .collect();
    let expected: BTreeMap<&str, u32> = expected.iter().copied().collect();
    ensure!(
        held == expected,
        "the state in force at revision {} holds {held:?}, expected {expected:?}",
        state.revision
    );
    Ok(())
}

/// Publishes version `n` of `name` (body `{"n": n}`), active; its revision.
pub async fn release(context: &Context, name: &str, n: u32) -> anyhow::Result<u64> {
    context
        .server
        .release(NAMESPACE, name, json!({ "name": name, "n": n }))
        .await
}

/// Publishes `count` policies `large-00`, `large-01`, … of 250 KB each,
/// active; the revision of the last.
pub async fn release_large(context: &Context, count: u32) -> anyhow::Result<u64> {
    let filler = "x".repeat(250_000);
    let mut last = 0;
    for n in 0..count {
        last = context
            .server
            .release(
                NAMESPACE,
                &format!("large-{n:02}"),
                json!({ "n": n, "filler": filler }),
            )
            .await?;
    }
    Ok(last)
}

/// Holds a runtime to what it did not do for `quiet`: the revision in
/// force stays `revision`.
pub async fn stays_at(
    runtime: &Runtime,
    revision: u64,
    quiet: Duration,
) -> anyhow::Result<RuntimeView> {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        let view = runtime.view().await?;
        ensure!(
            view.revision() == revision,
            "the state in force moved from revision {revision} to {}",
            view.revision()
        );
        if tokio::time::Instant::now() >= deadline {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod contract_page {
    use std::collections::{BTreeMap, BTreeSet};

    /// The rows of the contract page: obligation id to the test ids its
    /// row names.
    fn rows() -> BTreeMap<String, BTreeSet<String>> {
        let page = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/src/guides/runtime-contract.md"
        ))
        .expect("the contract page");
        page.lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let id = *cells.get(1)?;
                let is_obligation = id.len() == 2
                    && id.as_bytes()[0].is_ascii_uppercase()
                    && id.as_bytes()[1].is_ascii_digit();
                let tests = cells
                    .get(3)?
                    .split(',')
                    .map(|test| test.trim().trim_matches('`').to_owned())
                    .filter(|test| !test.is_empty())
                    .collect();
                is_obligation.then(|| (id.to_owned(), tests))
            })
            .collect()
    }

    #[test]
    fn the_contract_page_names_every_test_under_each_obligation_it_checks() {
        let rows = rows();
        let tests = super::all();
        for test in &tests {
            for obligation in test.obligations {
                let named = rows
                    .get(*obligation)
                    .unwrap_or_else(|| panic!("{}: no row for {obligation}", test.id));
                assert!(
                    named.contains(test.id),
                    "the row of {obligation} does not name {}",
                    test.id
                );
            }
        }
        for (obligation, named) in &rows {
            for id in named {
                let test = tests
                    .iter()
                    .find(|test| test.id == id)
                    .unwrap_or_else(|| panic!("{obligation} names {id}, which is no test"));
                assert!(
                    test.obligations.contains(&obligation.as_str()),
                    "{obligation} names {id}, which does not say it checks it"
                );
            }
        }
    }
}
