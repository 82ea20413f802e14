use prost::encoding::encoded_len_varint;

use super::*;
use crate::domain::rollout::{Rollout, RolloutState, RolloutView};
use crate::domain::runtime::{RuntimeId, RuntimeLabels};
use crate::domain::{Digest, Namespace, PolicyName, PolicyRef};

/// What a revision that only moved pointers changed.
fn moved(revision: u64, bundles: Vec<ActiveBundle>) -> RevisionChange {
    RevisionChange {
        revision,
        bundles,
        rollouts: Vec::new(),
    }
}

fn bundle(name: &str, version: u32, revision: u64) -> ActiveBundle {
    ActiveBundle {
        policy: PolicyRef::parse("team", name).unwrap(),
        version,
        label: None,
        digest: Digest::of_canonical(b"{}"),
        jws: Arc::from("jws"),
        key_id: "kid".into(),
        revision,
    }
}

/// An empty index whose "encoding" of a bundle names it.
fn index() -> ActiveIndex {
    ActiveIndex::new(
        RevisionChange::default(),
        |bundle: &ActiveBundle| {
            Bytes::from(format!(
                "{}@{}#{}",
                bundle.policy, bundle.version, bundle.revision
            ))
        },
        Instruments::default(),
    )
}

/// Waiting for a revision returns once it is applied, and is not
/// counted as an open stream while it waits.
#[tokio::test]
async fn waiting_for_a_revision_ends_when_it_is_applied() {
    let index = index();
    index.reached(0).await;
    let waiting = tokio::spawn({
        let index = index.clone();
        async move { index.reached(2).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(index.subscribers(), 0);
    index.apply(moved(1, vec![bundle("a", 1, 1)]));
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    index.apply(moved(2, vec![bundle("a", 2, 2)]));
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the apply")
        .unwrap();
}

/// A revision is readable as soon as `apply` returns, and the streams
/// are woken by a task of their own after the caller goes on: the
/// caller's reply does not wait on the wakes.
#[tokio::test]
async fn apply_publishes_at_once_and_wakes_the_streams_after() {
    let index = index();
    let woken = index.snapshots.subscribe();
    let mut stream = index.subscribe(selector(&[]), 0, Duration::from_secs(3600));
    assert_eq!(stream.next().await.unwrap().revision, 0);
    let waiting = tokio::spawn(async move { stream.next().await.unwrap().revision });
    tokio::task::yield_now().await;
    index.apply(moved(1, vec![bundle("a", 1, 1)]));
    assert_eq!(index.revision(), 1);
    assert!(!woken.has_changed().unwrap(), "woken before apply returned");
    let delivered = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken after the apply")
        .unwrap();
    assert_eq!(delivered, 1);
}

fn selector(names: &[&str]) -> Selector {
    Selector {
        namespace: Namespace::parse("namespace", "team").unwrap(),
        names: names
            .iter()
            .map(|name| PolicyName::parse("name", name).unwrap())
            .collect(),
        watcher: None,
    }
}

fn watcher(id: &str) -> Watcher {
    Watcher {
        id: RuntimeId::parse("id", id).unwrap(),
        labels: RuntimeLabels::default(),
    }
}

/// A rollout of team/a to version 2, at `step` with these revisions.
fn rollout(state: RolloutState, step_revisions: Vec<u64>) -> RolloutView {
    use crate::domain::rollout::tests::{rollout, step};
    let mut rollout = Rollout {
        id: "b2b7a0a5-5f4e-4a3e-9d59-1f7c6c1e2a11".into(),
        state,
        step: step_revisions.len() - 1,
        step_revisions,
        ..rollout(vec![step(10, 0), step(60, 0)])
    };
    rollout.targets[0].policy = PolicyRef::parse("team", "a").unwrap();
    RolloutView {
        rollout,
        candidates: vec![bundle("a", 2, 0)],
    }
}

#[test]
fn a_rollout_sends_its_cohort_the_candidate_and_everyone_else_the_stable_version() {
    let index = index();
    index.apply(moved(1, vec![bundle("a", 1, 1)]));
    let started = rollout(RolloutState::Running, vec![2]);
    let in_cohort = |step: usize, id: &str| {
        let watcher = watcher(id);
        started.rollout.in_step(step, &watcher.id, &watcher.labels)
    };
    let ids: Vec<String> = (0..200).map(|n| format!("rt-{n}")).collect();
    let early = ids.iter().find(|id| in_cohort(0, id)).unwrap().clone();
    let late = ids
        .iter()
        .find(|id| !in_cohort(0, id) && in_cohort(1, id))
        .unwrap()
        .clone();
    let outside = ids.iter().find(|id| !in_cohort(1, id)).unwrap().clone();
    index.apply(RevisionChange {
        revision: 2,
        bundles: Vec::new(),
        rollouts: vec![started],
    });
    // As subscribers do: each runtime remembers its cohorts across wakes.
    let cohorts = std::cell::RefCell::new(std::collections::HashMap::<String, Cohorts>::new());
    let sent = |id: &str, since: u64| {
        let selector = Selector {
            watcher: Some(watcher(id)),
            ..selector(&[])
        };
        let mut cohorts = cohorts.borrow_mut();
        let remembered = cohorts.entry(id.to_owned()).or_default();
        index.snapshot().changed_since(&selector, since, remembered)
    };
    assert_eq!(sent(&early, 1), vec![Bytes::from("team/a@2#2")]);
    assert!(sent(&late, 1).is_empty(), "not in the first step");
    assert!(sent(&outside, 1).is_empty());
    assert_eq!(
        index
            .snapshot()
            .matching(&selector(&[]), &mut Cohorts::default()),
        vec![Bytes::from("team/a@1#1")],
        "anonymous streams keep the stable version"
    );
    // The next step adds a runtime and re-sends nothing to the first.
    index.apply(RevisionChange {
        revision: 3,
        bundles: Vec::new(),
        rollouts: vec![rollout(RolloutState::Running, vec![2, 3])],
    });
    assert!(sent(&early, 2).is_empty());
    assert_eq!(sent(&late, 2), vec![Bytes::from("team/a@2#3")]);
    assert_eq!(sent(&early, 0), vec![Bytes::from("team/a@2#2")]);
    // Aborted: the stable version again, for everyone watching it.
    index.apply(RevisionChange {
        revision: 4,
        bundles: vec![bundle("a", 1, 4)],
        rollouts: vec![rollout(RolloutState::Aborted, vec![2, 3])],
    });
    for id in [&early, &late, &outside] {
        assert_eq!(sent(id, 3), vec![Bytes::from("team/a@1#4")], "{id}");
    }
}

/// 300 revisions over 20 names (more revisions than a namespace keeps
/// the names of): for every cursor, what changed is what a look at every
/// name finds, in revision order.
#[test]
fn the_changed_names_answer_as_a_look_at_every_name_would() {
    let index = index();
    let names: Vec<String> = (0..20).map(|n| format!("p{n:02}")).collect();
    let mut model: BTreeMap<String, u64> = BTreeMap::new();
    for revision in 1..=300u64 {
        // One to three names per revision, in a pattern that revisits
        // some names often and others rarely.
        let touched: Vec<&String> = (0..1 + revision % 3)
            .map(|k| &names[((revision * 7 + k * 5) % 20) as usize])
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for name in &touched {
            model.insert((*name).clone(), revision);
        }
        index.apply(moved(
            revision,
            touched
                .iter()
                .map(|name| bundle(name, 1, revision))
                .collect(),
        ));
    }
    let snapshot = index.snapshot();
    for since in 0..=300u64 {
        let mut expected: Vec<(u64, &String)> = model
            .iter()
            .filter(|(_, revision)| **revision > since)
            .map(|(name, revision)| (*revision, name))
            .collect();
        expected.sort();
        let expected: Vec<Bytes> = expected
            .into_iter()
            .map(|(revision, name)| Bytes::from(format!("team/{name}@1#{revision}")))
            .collect();
        assert_eq!(
            snapshot.changed_since(&selector(&[]), since, &mut Cohorts::default()),
            expected,
            "since {since}"
        );
    }
}

#[test]
fn apply_ignores_revisions_already_applied() {
    let index = index();
    index.apply(moved(1, vec![bundle("a", 1, 1)]));
    index.apply(moved(2, vec![bundle("a", 2, 2)]));
    index.apply(moved(2, vec![bundle("a", 9, 2)]));
    let snapshot = index.snapshot();
    assert_eq!(snapshot.revision, 2);
    assert_eq!(
        snapshot
            .get(&PolicyRef::parse("team", "a").unwrap())
            .unwrap()
            .bundle
            .version,
        2
    );
}

/// A preview of the next revision holds what applying it will, in the
/// namespace asked for alone, and publishes nothing; there is none of a
/// revision that is not the next one.
#[test]
fn a_preview_of_the_next_revision_is_what_applying_it_holds() {
    let index = index();
    index.apply(moved(1, vec![bundle("a", 1, 1), bundle("b", 1, 1)]));
    let mut other = bundle("c", 1, 2);
    other.policy = PolicyRef::parse("elsewhere", "c").unwrap();
    let change = vec![bundle("a", 2, 2), other];
    let team = PolicyRef::parse("team", "a").unwrap().namespace;
    let preview = index.preview(&team, 2, &change).expect("the next revision");
    assert!(index.preview(&team, 3, &change).is_none());
    assert!(index.preview(&team, 1, &change).is_none());
    assert_eq!(index.revision(), 1, "a preview publishes nothing");
    index.apply(moved(2, change));
    let applied = index.snapshot().namespaces[&team].clone();
    assert_eq!(preview.revision, applied.revision);
    let versions = |index: &NamespaceIndex| {
        index
            .bundles_for(None)
            .into_iter()
            .map(|(name, indexed)| {
                (
                    name.to_string(),
                    indexed.bundle.version,
                    indexed.encoded.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&preview), versions(&applied));
    assert_eq!(versions(&preview).len(), 2);
}

#[test]
fn changed_since_filters_by_revision_and_name() {
    let index = index();
    index.apply(moved(1, vec![bundle("a", 1, 1), bundle("b", 1, 1)]));
    index.apply(moved(2, vec![bundle("b", 2, 2)]));
    let snapshot = index.snapshot();
    assert_eq!(
        snapshot
            .matching(&selector(&[]), &mut Cohorts::default())
            .len(),
        2
    );
    assert_eq!(
        snapshot
            .changed_since(&selector(&[]), 0, &mut Cohorts::default())
            .len(),
        2
    );
    assert_eq!(
        snapshot
            .changed_since(&selector(&[]), 1, &mut Cohorts::default())
            .len(),
        1
    );
    assert_eq!(
        snapshot
            .changed_since(&selector(&["a"]), 1, &mut Cohorts::default())
            .len(),
        0
    );
    assert_eq!(
        snapshot
            .changed_since(&selector(&[]), 2, &mut Cohorts::default())
            .len(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_gets_one_coalesced_update() {
    let index = index();
    let mut subscriber = index.subscribe(selector(&[]), 0, Duration::from_secs(10));
    assert_eq!(subscriber.next().await.unwrap().kind, MessageKind::Snapshot);
    for revision in 1..=50 {
        index.apply(moved(
            revision,
            vec![bundle("a", revision as u32, revision)],
        ));
    }
    let update = subscriber.next().await.unwrap();
    assert_eq!(
        (update.kind, update.revision, update.bundles.len()),
        (MessageKind::Update, 50, 1)
    );
    let progress = subscriber.next().await.unwrap();
    assert_eq!(
        (progress.kind, progress.revision),
        (MessageKind::Progress, 50)
    );
    index.close();
    assert_eq!(
        subscriber.next().await,
        Err(Closed {
            revision: 50,
            reason: Ending::Shutdown
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_large_revision_goes_out_in_parts_the_last_one_complete() {
    let index = index();
    index.apply(moved(
        1,
        (0..7).map(|n| bundle(&format!("p{n}"), 1, 1)).collect(),
    ));
    let mut subscriber = index.subscribe(selector(&[]), 0, Duration::from_secs(10));
    let encoded = index
        .snapshot()
        .matching(&selector(&[]), &mut Cohorts::default())[0]
        .len();
    let bundle_bytes = 1 + encoded_len_varint(encoded as u64) + encoded;
    // Room for three bundles a part: 3 + 3 + 1.
    subscriber.part_bytes = 3 * bundle_bytes;
    let mut parts = Vec::new();
    loop {
        let part = subscriber.next().await.unwrap();
        parts.push((part.kind, part.revision, part.bundles.len(), part.complete));
        if part.complete {
            break;
        }
    }
    assert_eq!(
        parts,
        vec![
            (MessageKind::Snapshot, 1, 3, false),
            (MessageKind::Snapshot, 1, 3, false),
            (MessageKind::Snapshot, 1, 1, true),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn closing_mid_revision_names_the_last_whole_revision() {
    let index = index();
    index.apply(moved(1, vec![bundle("a", 1, 1)]));
    let mut subscriber = index.subscribe(selector(&[]), 0, Duration::from_secs(10));
    subscriber.part_bytes = 1;
    assert!(subscriber.next().await.unwrap().complete);
    index.apply(moved(2, vec![bundle("a", 2, 2), bundle("b", 1, 2)]));
    let first_part = subscriber.next().await.unwrap();
    assert_eq!((first_part.revision, first_part.complete), (2, false));
    index.close();
    assert_eq!(
        subscriber.next().await,
        Err(Closed {
            revision: 1,
            reason: Ending::Shutdown
        })
    );
}

/// A fan-out ends once every stream took the revision, a stream that
/// closed first counting as taken; until then waiting for it waits.
#[tokio::test]
async fn a_fan_out_ends_when_every_stream_took_the_revision() {
    let index = index();
    let heartbeat = Duration::from_secs(3600);
    let mut first = index.subscribe(selector(&[]), 0, heartbeat);
    let mut second = index.subscribe(selector(&[]), 0, heartbeat);
    let closing = index.subscribe(selector(&[]), 0, heartbeat);
    first.next().await.unwrap();
    second.next().await.unwrap();
    index.apply(moved(1, vec![bundle("a", 1, 1)]));
    // The wake runs in a task of its own.
    tokio::task::yield_now().await;
    let ended = tokio::spawn({
        let index = index.clone();
        async move { index.fan_out_ended(Duration::from_secs(3600)).await }
    });
    assert_eq!(first.next().await.unwrap().revision, 1);
    drop(closing);
    tokio::task::yield_now().await;
    assert!(!ended.is_finished(), "a stream is yet to take the revision");
    assert_eq!(second.next().await.unwrap().revision, 1);
    tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .expect("ended once the last stream took it")
        .unwrap();
}
