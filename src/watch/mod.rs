//! The in-memory index of active bundles, and the watch subscribers that
//! fan it out.
//!
//! The index is an immutable [`Snapshot`] behind a `tokio::sync::watch`
//! channel. A commit publishes a new snapshot (sharing every namespace it did
//! not touch), and every subscriber is woken. A subscriber holds only a
//! cursor — the revision it has delivered — and, when its stream is ready to
//! send, computes one message from the newest snapshot: the bundles whose
//! revision is above its cursor. So a slow subscriber holds no queue, costs
//! constant memory, delays no one, and receives one coalesced update when it
//! catches up. Because an active pointer never disappears, "what moved after
//! revision S" is answerable from the snapshot for any S.
//!
//! Revisions are applied whole and in order (see `hub`), so a snapshot never
//! holds half of an atomic multi-policy activation. A message that would
//! exceed gRPC's default 4 MiB receive limit goes out as consecutive parts of
//! the same revision, the last one marked complete; the subscriber holds the
//! remaining parts (references to the shared encoded bundles) only while it
//! sends them.

use std::{collections::BTreeMap, pin::pin, sync::Arc, time::Duration};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use prost::bytes::Bytes;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::domain::ActiveBundle;
use crate::domain::rollout::RevisionChange;

mod snapshot;
mod subscriber;

pub use snapshot::{
    Candidate, Cohorts, IndexedBundle, NamespaceIndex, Selector, Snapshot, Watcher,
};
pub use subscriber::{Closed, MessageKind, Subscriber, WatchMessage};

/// How a bundle goes on the wire (`policyhub.v1.Bundle`, encoded): handed in
/// by the transport, so the index does not depend on it.
pub type Encode = fn(&ActiveBundle) -> Bytes;

/// The metrics the index feeds; whoever exposes them registers them.
#[derive(Debug, Clone)]
pub struct Instruments {
    /// Active-pointer moves applied.
    pub activations: Counter,
    /// From applying a revision to handing its update to a stream.
    pub delivery: Histogram,
}

impl Default for Instruments {
    fn default() -> Self {
        Instruments {
            activations: Counter::default(),
            delivery: Histogram::new(std::iter::empty()),
        }
    }
}

/// Most bytes of bundles in one watch message. gRPC clients refuse messages
/// above 4 MiB by default; the margin covers the message's other fields and
/// the per-bundle field headers.
pub const MAX_PART_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// Whether streams may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Streams are served.
    No,
    /// This replica cannot read its database, so it no longer vouches for
    /// its revision: streams end and new ones are refused until it reads
    /// again.
    CutOff,
    /// The server shuts down.
    Shutdown,
}

/// Shared, cheaply cloned handle on the index.
#[derive(Debug, Clone)]
pub struct ActiveIndex {
    snapshots: Arc<watch::Sender<Arc<Snapshot>>>,
    /// Anything but [`Ending::No`] ends every stream.
    ending: Arc<watch::Sender<Ending>>,
    /// The newest signed checkpoint, encoded, which every message carries.
    checkpoint: Arc<watch::Sender<Option<Bytes>>>,
    /// Wakes those waiting for a revision (not streams, which hold
    /// receivers of `snapshots`, counted as open streams).
    applied: Arc<Notify>,
    encode: Encode,
    instruments: Instruments,
}

impl ActiveIndex {
    /// An index holding `state` (every active bundle and live rollout at
    /// its revision), encoding each bundle once with `encode`.
    pub fn new(state: RevisionChange, encode: Encode, instruments: Instruments) -> Self {
        let mut snapshot = Snapshot {
            revision: state.revision,
            applied_at: None,
            namespaces: BTreeMap::new(),
        };
        snapshot.change(state, encode);
        ActiveIndex {
            snapshots: Arc::new(watch::channel(Arc::new(snapshot)).0),
            ending: Arc::new(watch::channel(Ending::No).0),
            checkpoint: Arc::new(watch::channel(None).0),
            applied: Arc::default(),
            encode,
            instruments,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// The revision of the current snapshot.
    pub fn revision(&self) -> u64 {
        self.snapshots.borrow().revision
    }

    /// Returns once the index is at `revision` or later.
    pub async fn reached(&self, revision: u64) {
        loop {
            let mut applied = pin!(self.applied.notified());
            // Registered before the check, so no apply in between is missed.
            applied.as_mut().enable();
            if self.revision() >= revision {
                return;
            }
            applied.await;
        }
    }

    /// Applies what one revision changed, which must be the next one (the
    /// caller applies revisions in order, see `hub`). A revision already
    /// applied is ignored.
    pub fn apply(&self, change: RevisionChange) {
        let mut applied = false;
        // Published without waking the streams: readers see the revision at
        // once, and the streams are woken after (see `wake_streams`).
        self.snapshots.send_if_modified(|current| {
            if change.revision <= current.revision {
                return false;
            }
            debug_assert_eq!(
                change.revision,
                current.revision + 1,
                "revisions are applied in order"
            );
            debug_assert!(
                change
                    .bundles
                    .iter()
                    .all(|bundle| bundle.revision == change.revision)
            );
            let next = Arc::make_mut(current);
            next.revision = change.revision;
            next.applied_at = Some(Instant::now());
            self.instruments
                .activations
                .inc_by(change.bundles.len() as u64);
            next.change(change, self.encode);
            applied = true;
            false
        });
        if applied {
            self.applied.notify_waiters();
            self.wake_streams();
        }
    }

    /// Wakes every stream to the current snapshot. On a runtime, in a task
    /// of its own: waking 10,000 streams takes milliseconds, which the
    /// reply of the call that committed the revision does not wait for.
    fn wake_streams(&self) {
        let snapshots = self.snapshots.clone();
        let wake = move || snapshots.send_modify(|_| ());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move { wake() })),
            Err(_) => wake(),
        }
    }

    /// Makes every message from now on carry `checkpoint` (an encoded
    /// `policyhub.v1.Checkpoint`); wakes no stream.
    pub fn set_checkpoint(&self, checkpoint: Bytes) {
        self.checkpoint.send_replace(Some(checkpoint));
    }

    /// The newest checkpoint, encoded, as every message carries it.
    pub fn checkpoint(&self) -> Option<Bytes> {
        self.checkpoint.borrow().clone()
    }

    /// Number of open watch streams.
    pub fn subscribers(&self) -> usize {
        self.snapshots.receiver_count()
    }

    /// Ends every stream (server shutdown), for good.
    pub fn close(&self) {
        self.ending.send_replace(Ending::Shutdown);
    }

    /// Resolves once the server shuts down ([`close`](Self::close)).
    pub async fn closed(&self) {
        let mut ending = self.ending.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = ending.wait_for(|ending| *ending == Ending::Shutdown).await;
    }

    /// Whether streams are served, and if not, why.
    pub fn ending(&self) -> Ending {
        *self.ending.borrow()
    }

    /// Stops vouching while the database cannot be read (`true`), or serves
    /// again (`false`); a shutdown stays a shutdown.
    pub fn set_cut_off(&self, cut_off: bool) {
        self.ending.send_if_modified(|ending| {
            let next = match (*ending, cut_off) {
                (Ending::Shutdown, _) => Ending::Shutdown,
                (_, true) => Ending::CutOff,
                (_, false) => Ending::No,
            };
            let changed = next != *ending;
            *ending = next;
            changed
        });
    }

    /// A new subscriber starting after `since_revision` (0: with a snapshot).
    pub fn subscribe(
        &self,
        selector: Selector,
        since_revision: u64,
        heartbeat: Duration,
    ) -> Subscriber {
        Subscriber::new(
            self.snapshots.subscribe(),
            self.ending.subscribe(),
            self.checkpoint.subscribe(),
            self.instruments.delivery.clone(),
            selector,
            since_revision,
            heartbeat,
        )
    }
}

#[cfg(test)]
mod tests {
    use prost::encoding::encoded_len_varint;

    use super::*;
    use crate::domain::rollout::{
        FailureRule, Rollout, RolloutState, RolloutStep, RolloutTarget, RolloutView,
    };
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
        let step = |percentage| RolloutStep {
            percentage,
            label_selector: String::new(),
            bake: std::time::Duration::ZERO,
        };
        RolloutView {
            rollout: Rollout {
                id: "b2b7a0a5-5f4e-4a3e-9d59-1f7c6c1e2a11".into(),
                namespace: Namespace::parse("namespace", "team").unwrap(),
                targets: vec![RolloutTarget {
                    policy: PolicyRef::parse("team", "a").unwrap(),
                    version: 2,
                    digest: Digest::of_canonical(b"{}"),
                    stable_version: Some(1),
                }],
                steps: vec![step(10), step(60)],
                failure_rule: FailureRule {
                    max_rejected: 0,
                    max_rejected_fraction: 0.0,
                    apply_deadline: std::time::Duration::ZERO,
                },
                auto_rollback: true,
                state,
                step: step_revisions.len() - 1,
                step_revisions,
                step_started_at: chrono::Utc::now(),
                created_by: "alice".into(),
                created_at: chrono::Utc::now(),
                reason: String::new(),
                halted_because: String::new(),
                start_at: None,
                required_approvals: 0,
                approvals: Vec::new(),
            },
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
}
