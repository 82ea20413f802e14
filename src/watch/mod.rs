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

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use prost::bytes::Bytes;
use tokio::{sync::watch, time::Instant};

use crate::domain::{ActiveBundle, Namespace, PolicyName, PolicyRef};

mod subscriber;

pub use subscriber::{Closed, MessageKind, Subscriber, WatchMessage};

/// An active bundle with its protobuf encoding, made once per version and
/// shared by every stream.
#[derive(Debug, Clone)]
pub struct IndexedBundle {
    /// The bundle.
    pub bundle: ActiveBundle,
    /// `policyhub.v1.Bundle`, encoded.
    pub encoded: Bytes,
}

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

/// The active bundles of one namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceIndex {
    /// The last revision that moved a pointer in this namespace, so that
    /// subscribers of quiet namespaces skip it at once.
    pub revision: u64,
    /// Active bundle per policy name.
    pub policies: BTreeMap<PolicyName, Arc<IndexedBundle>>,
}

/// The active bundles at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every activation up to and including this revision is applied.
    pub revision: u64,
    /// When this revision was applied, for the delivery-time metric.
    pub applied_at: Option<Instant>,
    /// Per namespace; untouched namespaces are shared between snapshots.
    pub namespaces: BTreeMap<Namespace, Arc<NamespaceIndex>>,
}

/// Which policies a subscriber watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The namespace.
    pub namespace: Namespace,
    /// These policies only; empty for the whole namespace.
    pub names: Vec<PolicyName>,
}

impl Snapshot {
    /// The active bundle of one policy.
    pub fn get(&self, policy: &PolicyRef) -> Option<&Arc<IndexedBundle>> {
        self.namespaces
            .get(&policy.namespace)?
            .policies
            .get(&policy.name)
    }

    /// Every bundle matching `selector`, in name order.
    pub fn matching(&self, selector: &Selector) -> Vec<Bytes> {
        self.select(selector, 0, false)
    }

    /// The bundles matching `selector` whose pointer moved after `since`, in
    /// the order they were activated (by revision, then name).
    pub fn changed_since(&self, selector: &Selector, since: u64) -> Vec<Bytes> {
        self.select(selector, since, true)
    }

    fn select(&self, selector: &Selector, since: u64, by_revision: bool) -> Vec<Bytes> {
        let Some(namespace) = self.namespaces.get(&selector.namespace) else {
            return Vec::new();
        };
        if namespace.revision <= since {
            return Vec::new();
        }
        let moved = |entry: &&Arc<IndexedBundle>| entry.bundle.revision > since;
        let mut changed: Vec<&Arc<IndexedBundle>> = if selector.names.is_empty() {
            namespace.policies.values().filter(moved).collect()
        } else {
            selector
                .names
                .iter()
                .filter_map(|name| namespace.policies.get(name))
                .filter(moved)
                .collect()
        };
        if by_revision {
            // Stable: equal revisions keep their name order.
            changed.sort_by_key(|entry| entry.bundle.revision);
        }
        changed
            .into_iter()
            .map(|entry| entry.encoded.clone())
            .collect()
    }

    fn insert(&mut self, bundle: ActiveBundle, encode: Encode) {
        let namespace = Arc::make_mut(
            self.namespaces
                .entry(bundle.policy.namespace.clone())
                .or_default(),
        );
        namespace.revision = namespace.revision.max(bundle.revision);
        namespace.policies.insert(
            bundle.policy.name.clone(),
            Arc::new(IndexedBundle {
                encoded: encode(&bundle),
                bundle,
            }),
        );
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
    encode: Encode,
    instruments: Instruments,
}

impl ActiveIndex {
    /// An index holding `bundles` at `revision`, encoding each bundle once
    /// with `encode`.
    pub fn new(
        revision: u64,
        bundles: Vec<ActiveBundle>,
        encode: Encode,
        instruments: Instruments,
    ) -> Self {
        let mut snapshot = Snapshot {
            revision,
            applied_at: None,
            namespaces: BTreeMap::new(),
        };
        for bundle in bundles {
            snapshot.insert(bundle, encode);
        }
        ActiveIndex {
            snapshots: Arc::new(watch::channel(Arc::new(snapshot)).0),
            ending: Arc::new(watch::channel(Ending::No).0),
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

    /// Applies the pointer moves of one revision, which must be the next one
    /// (the caller applies revisions in order, see `hub`). A revision already
    /// applied is ignored.
    pub fn apply(&self, revision: u64, changed: Vec<ActiveBundle>) {
        self.snapshots.send_if_modified(|current| {
            if revision <= current.revision {
                return false;
            }
            debug_assert_eq!(
                revision,
                current.revision + 1,
                "revisions are applied in order"
            );
            debug_assert!(changed.iter().all(|bundle| bundle.revision == revision));
            let next = Arc::make_mut(current);
            next.revision = revision;
            next.applied_at = Some(Instant::now());
            self.instruments.activations.inc_by(changed.len() as u64);
            for bundle in changed {
                next.insert(bundle, self.encode);
            }
            true
        });
    }

    /// Number of open watch streams.
    pub fn subscribers(&self) -> usize {
        self.snapshots.receiver_count()
    }

    /// Ends every stream (server shutdown), for good.
    pub fn close(&self) {
        self.ending.send_replace(Ending::Shutdown);
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
    use crate::domain::Digest;

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
            0,
            Vec::new(),
            |bundle| Bytes::from(format!("{}@{}", bundle.policy, bundle.version)),
            Instruments::default(),
        )
    }

    fn selector(names: &[&str]) -> Selector {
        Selector {
            namespace: Namespace::parse("namespace", "team").unwrap(),
            names: names
                .iter()
                .map(|name| PolicyName::parse("name", name).unwrap())
                .collect(),
        }
    }

    #[test]
    fn apply_ignores_revisions_already_applied() {
        let index = index();
        index.apply(1, vec![bundle("a", 1, 1)]);
        index.apply(2, vec![bundle("a", 2, 2)]);
        index.apply(2, vec![bundle("a", 9, 2)]);
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
        index.apply(1, vec![bundle("a", 1, 1), bundle("b", 1, 1)]);
        index.apply(2, vec![bundle("b", 2, 2)]);
        let snapshot = index.snapshot();
        assert_eq!(snapshot.matching(&selector(&[])).len(), 2);
        assert_eq!(snapshot.changed_since(&selector(&[]), 0).len(), 2);
        assert_eq!(snapshot.changed_since(&selector(&[]), 1).len(), 1);
        assert_eq!(snapshot.changed_since(&selector(&["a"]), 1).len(), 0);
        assert_eq!(snapshot.changed_since(&selector(&[]), 2).len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_subscriber_gets_one_coalesced_update() {
        let index = index();
        let mut subscriber = index.subscribe(selector(&[]), 0, Duration::from_secs(10));
        assert_eq!(subscriber.next().await.unwrap().kind, MessageKind::Snapshot);
        for revision in 1..=50 {
            index.apply(revision, vec![bundle("a", revision as u32, revision)]);
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
        index.apply(1, (0..7).map(|n| bundle(&format!("p{n}"), 1, 1)).collect());
        let mut subscriber = index.subscribe(selector(&[]), 0, Duration::from_secs(10));
        let encoded = index.snapshot().matching(&selector(&[]))[0].len();
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
        index.apply(1, vec![bundle("a", 1, 1)]);
        let mut subscriber = index.subscribe(selector(&[]), 0, Duration::from_secs(10));
        subscriber.part_bytes = 1;
        assert!(subscriber.next().await.unwrap().complete);
        index.apply(2, vec![bundle("a", 2, 2), bundle("b", 1, 2)]);
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
