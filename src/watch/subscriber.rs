//! One watch stream's subscriber: a cursor over the index's snapshots that
//! computes each message when the stream is ready to send it.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use prometheus_client::metrics::histogram::Histogram;
use prost::{bytes::Bytes, encoding::encoded_len_varint};
use tokio::{sync::watch, time::Instant};

use super::{ActiveIndex, Cohorts, Ending, FanOut, MAX_PART_BYTES, Selector, Snapshot};

/// What a watch message carries, numbered as `policyhub.v1.WatchEventKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(i32)]
pub enum MessageKind {
    /// Never sent: what a message that names no kind decodes to.
    #[default]
    Unspecified = 0,
    /// Every matching active bundle; replaces what the client held.
    Snapshot = 1,
    /// The bundles that moved since the previous message.
    Update = 2,
    /// Nothing moved; the server is at this revision.
    Progress = 3,
}

impl MessageKind {
    /// The kind numbered `number` on the wire.
    pub fn from_wire(number: i32) -> Option<Self> {
        [
            MessageKind::Unspecified,
            MessageKind::Snapshot,
            MessageKind::Update,
            MessageKind::Progress,
        ]
        .into_iter()
        .find(|kind| *kind as i32 == number)
    }
}

/// One message of a watch stream, as it goes on the wire: it is the
/// `policyhub.v1.WatchActiveResponse` the transport writes (its encoding is
/// `grpc::watch_message`), so nothing is converted or copied per message.
#[derive(Clone, PartialEq, Default)]
pub struct WatchMessage {
    /// What it carries.
    pub kind: MessageKind,
    /// The revision the client is at once it applied the message.
    pub revision: u64,
    /// On a snapshot: the client was ahead of the server.
    pub reset: bool,
    /// Encoded `policyhub.v1.Bundle`s.
    pub bundles: Vec<Bytes>,
    /// False when more parts of the same revision follow.
    pub complete: bool,
    /// The newest signed checkpoint, an encoded `policyhub.v1.Checkpoint`.
    pub checkpoint: Option<Bytes>,
}

impl std::fmt::Debug for WatchMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bundles are counted, not printed: they may be megabytes.
        f.debug_struct("WatchMessage")
            .field("kind", &self.kind)
            .field("revision", &self.revision)
            .field("reset", &self.reset)
            .field("bundles", &self.bundles.len())
            .field("complete", &self.complete)
            .field("checkpoint", &self.checkpoint.is_some())
            .finish()
    }
}

impl WatchMessage {
    fn whole(kind: MessageKind, revision: u64, reset: bool, bundles: Vec<Bytes>) -> Self {
        WatchMessage {
            kind,
            revision,
            reset,
            bundles,
            complete: true,
            checkpoint: None,
        }
    }

    /// Appends to `parts` consecutive parts whose bundles take at most
    /// `part_bytes` each, field headers included (a bundle larger than that
    /// travels alone); only the last is complete. `parts` is the
    /// subscriber's own queue, reused from message to message.
    fn split_into(self, part_bytes: usize, parts: &mut VecDeque<WatchMessage>) {
        let mut bundles = Vec::new();
        let mut size = 0;
        for bundle in self.bundles {
            let bundle_size = 1 + encoded_len_varint(bundle.len() as u64) + bundle.len();
            if !bundles.is_empty() && size + bundle_size > part_bytes {
                parts.push_back(WatchMessage {
                    bundles: std::mem::take(&mut bundles),
                    complete: false,
                    checkpoint: None,
                    ..self
                });
                size = 0;
            }
            size += bundle_size;
            bundles.push(bundle);
        }
        parts.push_back(WatchMessage {
            bundles,
            complete: true,
            ..self
        });
    }
}

/// The stream ends: the server shuts down or no longer vouches for its
/// revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The last revision the subscriber was sent whole, to resume from
    /// elsewhere.
    pub revision: u64,
    /// Why.
    pub reason: Ending,
}

/// One watch stream's state: a cursor and two receivers, and the remaining
/// parts of a revision too large for one message.
#[derive(Debug)]
pub struct Subscriber {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ending: watch::Receiver<Ending>,
    /// The newest checkpoint, read as each part goes out (never awaited).
    checkpoint: watch::Receiver<Option<Bytes>>,
    /// Told as it takes each new revision.
    fan_out: Arc<FanOut>,
    /// Where delivery times go.
    delivery: Histogram,
    selector: Selector,
    /// The revision computed so far (or asked to resume from).
    cursor: u64,
    /// The last revision sent whole: `cursor` once `pending` is empty.
    delivered: u64,
    /// Whether the first message went out.
    started: bool,
    heartbeat: Duration,
    /// Parts of the current revision not sent yet.
    pending: VecDeque<WatchMessage>,
    /// The rollout steps it joined, decided once per step.
    cohorts: Cohorts,
    /// Most bundle bytes per part (smaller in tests).
    pub(super) part_bytes: usize,
}

impl Subscriber {
    /// A subscriber of `index`'s streams.
    pub(super) fn new(
        index: &ActiveIndex,
        selector: Selector,
        since_revision: u64,
        heartbeat: Duration,
    ) -> Self {
        Subscriber {
            snapshots: index.snapshots.subscribe(),
            ending: index.ending.subscribe(),
            checkpoint: index.checkpoint.subscribe(),
            fan_out: index.fan_out.clone(),
            delivery: index.instruments.delivery.clone(),
            selector,
            cursor: since_revision,
            delivered: since_revision,
            started: false,
            heartbeat,
            pending: VecDeque::new(),
            cohorts: Cohorts::default(),
            part_bytes: MAX_PART_BYTES,
        }
    }

    /// The first message: a snapshot, a reset snapshot when the client is
    /// ahead of the server, or one update with everything after its cursor.
    fn first(&mut self) -> WatchMessage {
        let snapshot = self.snapshots.borrow_and_update().clone();
        // A stream opened during a fan-out may not be counted in it: taking
        // it then ends that fan-out at most one stream early.
        self.fan_out.taken();
        self.started = true;
        let since = self.cursor;
        self.cursor = snapshot.revision;
        if since == 0 || since > snapshot.revision {
            return WatchMessage::whole(
                MessageKind::Snapshot,
                snapshot.revision,
                since > snapshot.revision,
                snapshot.matching(&self.selector, &mut self.cohorts),
            );
        }
        WatchMessage::whole(
            MessageKind::Update,
            snapshot.revision,
            false,
            snapshot.changed_since(&self.selector, since, &mut self.cohorts),
        )
    }

    /// The next message, computed when the stream is ready to send it:
    /// the next part of a large revision, one update coalescing every
    /// revision since the last message, or a progress message after a quiet
    /// heartbeat interval. `Err` once the server shuts down.
    pub async fn next(&mut self) -> Result<WatchMessage, Closed> {
        let ending = *self.ending.borrow();
        if ending != Ending::Serving {
            return Err(Closed {
                revision: self.delivered,
                reason: ending,
            });
        }
        if self.pending.is_empty() {
            let message = if self.started {
                self.wait().await?
            } else {
                self.first()
            };
            message.split_into(self.part_bytes, &mut self.pending);
        }
        let mut part = self.pending.pop_front().expect("a message has parts");
        part.checkpoint.clone_from(&self.checkpoint.borrow());
        if part.complete {
            debug_assert!(self.pending.is_empty());
            self.delivered = part.revision;
        }
        Ok(part)
    }

    /// Waits for the next update or heartbeat.
    async fn wait(&mut self) -> Result<WatchMessage, Closed> {
        let quiet_until = Instant::now() + self.heartbeat;
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return Err(Closed { revision: self.delivered, reason: Ending::Shutdown });
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    self.fan_out.taken();
                    let bundles = snapshot.changed_since(&self.selector, self.cursor, &mut self.cohorts);
                    // Revisions that moved nothing selected still advance the
                    // cursor; the next progress message reports them.
                    self.cursor = snapshot.revision;
                    if !bundles.is_empty() {
                        if let Some(applied_at) = snapshot.applied_at {
                            self.delivery.observe(applied_at.elapsed().as_secs_f64());
                        }
                        return Ok(WatchMessage::whole(MessageKind::Update, snapshot.revision, false, bundles));
                    }
                }
                () = tokio::time::sleep_until(quiet_until) => {
                    return Ok(WatchMessage::whole(MessageKind::Progress, self.cursor, false, Vec::new()));
                }
                ending = self.ending.wait_for(|ending| *ending != Ending::Serving) => {
                    let reason = ending.map_or(Ending::Shutdown, |ending| *ending);
                    return Err(Closed { revision: self.delivered, reason });
                }
            }
        }
    }
}

impl Drop for Subscriber {
    /// A stream closed before it took the newest revision no longer holds
    /// its fan-out.
    fn drop(&mut self) {
        if self.snapshots.has_changed().unwrap_or(false) {
            self.fan_out.taken();
        }
    }
}
