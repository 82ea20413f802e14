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

use crate::domain::rollout::RevisionChange;
use crate::domain::{ActiveBundle, Namespace};

mod fan_out;
mod snapshot;
mod subscriber;

use fan_out::FanOut;
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
    /// Not ending: streams are served.
    Serving,
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
    /// Anything but [`Ending::Serving`] ends every stream.
    ending: Arc<watch::Sender<Ending>>,
    /// The newest signed checkpoint, encoded, which every message carries.
    checkpoint: Arc<watch::Sender<Option<Bytes>>>,
    /// Wakes those waiting for a revision (not streams, which hold
    /// receivers of `snapshots`, counted as open streams).
    applied: Arc<Notify>,
    /// The streams yet to take the newest revision.
    fan_out: Arc<FanOut>,
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
            ending: Arc::new(watch::channel(Ending::Serving).0),
            checkpoint: Arc::new(watch::channel(None).0),
            applied: Arc::default(),
            fan_out: Arc::default(),
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
        notified_until(&self.applied, || self.revision() >= revision).await;
    }

    /// Whether `namespace` changed after `revision` (a revision above it
    /// gave a bundle or a candidate there), once it has; `false` once the
    /// server shuts down first. One wake serves both, which a long poll of
    /// every OPA of a fleet waits for.
    pub async fn namespace_changed(&self, namespace: &Namespace, revision: u64) -> bool {
        let changed = || {
            self.snapshots
                .borrow()
                .namespaces
                .get(namespace)
                .is_some_and(|index| index.revision > revision)
        };
        notified_until(&self.applied, || {
            changed() || self.ending() == Ending::Shutdown
        })
        .await;
        changed()
    }

    /// The index of `namespace` as it will be once `bundles`, the next
    /// revision's, are applied: `None` unless the index is at the revision
    /// before `revision`. Publishes nothing.
    pub fn preview(
        &self,
        namespace: &Namespace,
        revision: u64,
        bundles: &[ActiveBundle],
    ) -> Option<Arc<NamespaceIndex>> {
        let current = self.snapshot();
        if current.revision + 1 != revision {
            return None;
        }
        let mut next = Snapshot {
            revision,
            applied_at: None,
            namespaces: current
                .namespaces
                .get_key_value(namespace)
                .map(|(name, index)| (name.clone(), index.clone()))
                .into_iter()
                .collect(),
        };
        let bundles = bundles
            .iter()
            .filter(|bundle| &bundle.policy.namespace == namespace)
            .cloned()
            .collect();
        next.change(
            RevisionChange {
                revision,
                bundles,
                rollouts: Vec::new(),
            },
            self.encode,
        );
        next.namespaces.remove(namespace)
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

    /// Wakes every stream to the current snapshot, beginning its fan-out.
    /// On a runtime, in a task of its own: waking 10,000 streams takes
    /// milliseconds, which the reply of the call that committed the
    /// revision does not wait for.
    fn wake_streams(&self) {
        let snapshots = self.snapshots.clone();
        let fan_out = self.fan_out.clone();
        let wake = move || {
            fan_out.begin(snapshots.receiver_count());
            snapshots.send_modify(|_| ());
        };
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

    /// Returns once every stream took the newest revision (at once when
    /// they all had), or after `bound`.
    pub async fn fan_out_ended(&self, bound: Duration) {
        self.fan_out.ended(bound).await;
    }

    /// Number of open watch streams.
    pub fn subscribers(&self) -> usize {
        self.snapshots.receiver_count()
    }

    /// Ends every stream (server shutdown), for good.
    pub fn close(&self) {
        self.ending.send_replace(Ending::Shutdown);
        self.applied.notify_waiters();
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
                (_, false) => Ending::Serving,
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
        Subscriber::new(self, selector, since_revision, heartbeat)
    }
}

/// Returns once `holds()`, checked at once and again each time `notify`
/// wakes its waiters; registered before each check, so no wake in between
/// is missed. A wake is checked before registering again: most wakes end
/// the wait, and a thousand waiters registering only to leave would
/// contend for the list for nothing.
async fn notified_until(notify: &Notify, holds: impl Fn() -> bool) {
    loop {
        let mut notified = pin!(notify.notified());
        notified.as_mut().enable();
        if holds() {
            return;
        }
        notified.await;
        if holds() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
