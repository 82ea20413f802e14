//! The state in force of every namespace the agent follows, for the API and
//! the metrics to read, and to wait on.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use hyper::body::Bytes;
use policyhub_runtime::{Revoker, Source, State};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The state in force of one namespace, and its JSON (whole and per
/// policy), encoded once for every reader.
#[derive(Debug)]
pub struct InForce {
    pub state: State,
    pub json: Bytes,
    /// Each policy's body as JSON, by name.
    pub bodies: BTreeMap<String, Bytes>,
}

impl InForce {
    /// Since the state was verified, by this run or (read back from the
    /// cache) an earlier one.
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.state.verified_at)
            .unwrap_or_default()
    }
}

/// The whole state in force as JSON.
pub fn state_json(state: &State) -> Value {
    let policies: serde_json::Map<String, Value> = state
        .bundles
        .values()
        .map(|bundle| {
            let policy = json!({
                "version": bundle.version, "label": bundle.label, "digest": bundle.digest,
                "revision": bundle.revision.to_string(), "keyId": bundle.key_id,
                "body": bundle.body,
            });
            (bundle.name.clone(), policy)
        })
        .collect();
    json!({
        "namespace": state.namespace,
        "revision": state.revision.to_string(),
        "source": source(state),
        "policies": policies,
    })
}

/// Where a state came from, as the API says it.
pub fn source(state: &State) -> &'static str {
    match state.source {
        Source::Server => "server",
        Source::Cache => "cache",
    }
}

/// One namespace followed.
#[derive(Debug)]
pub struct Followed {
    pub namespace: String,
    state: watch::Sender<Option<Arc<InForce>>>,
    /// The server address of the stream open now, if one is.
    server: Mutex<Option<String>>,
    /// Whether the server's newest checkpoint grew too old.
    stale: AtomicBool,
    /// Why the server refuses the agent's credentials, while it does.
    refused: Mutex<Option<String>>,
    /// The last state refused or taken back: its revision and why, for a
    /// local operator asking why the agent did not take it.
    last_rejection: Mutex<Option<(u64, String)>>,
    /// Why the server's history was refused last.
    last_history_refusal: Mutex<Option<String>>,
    /// The operator's reason of the last restored history taken.
    last_history_restore: Mutex<Option<String>>,
    /// Streams opened again after one was lost.
    pub reconnects: AtomicU64,
    pub rejections: AtomicU64,
    /// Refusals of the agent's credentials.
    pub refusals: AtomicU64,
    /// Histories of the server refused: wound back or forked.
    pub history_refusals: AtomicU64,
    /// Restored histories taken, as their operators declared.
    pub history_restores: AtomicU64,
    pub revoker: Revoker,
}

impl Followed {
    /// The state in force; `None` until the first (from the server or the
    /// cache).
    pub fn current(&self) -> Option<Arc<InForce>> {
        self.state.borrow().clone()
    }

    /// A receiver that wakes at each new state in force.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<InForce>>> {
        self.state.subscribe()
    }

    /// Puts `state` in force.
    pub fn hold(&self, state: State) {
        let json = Bytes::from(state_json(&state).to_string());
        let bodies = state
            .bundles
            .values()
            .map(|bundle| (bundle.name.clone(), Bytes::from(bundle.body.to_string())))
            .collect();
        self.state.send_replace(Some(Arc::new(InForce {
            state,
            json,
            bodies,
        })));
    }

    /// A stream opened to `server`, or (`None`) none is open.
    pub fn set_server(&self, server: Option<String>) {
        *lock(&self.server) = server;
    }

    pub fn server(&self) -> Option<String> {
        lock(&self.server).clone()
    }

    pub fn connected(&self) -> bool {
        lock(&self.server).is_some()
    }

    pub fn set_refused(&self, reason: Option<String>) {
        *lock(&self.refused) = reason;
    }

    pub fn refused(&self) -> Option<String> {
        lock(&self.refused).clone()
    }

    /// Notes a state refused or taken back: counted, and kept as the last.
    pub fn reject(&self, revision: u64, reason: String) {
        *lock(&self.last_rejection) = Some((revision, reason));
        self.rejections.fetch_add(1, Ordering::Relaxed);
    }

    /// The revision of the last state refused or taken back, and why.
    pub fn last_rejection(&self) -> Option<(u64, String)> {
        lock(&self.last_rejection).clone()
    }

    /// Notes a history of the server refused: counted, and kept as the
    /// last.
    pub fn refuse_history(&self, reason: String) {
        *lock(&self.last_history_refusal) = Some(reason);
        self.history_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Why the server's history was refused last.
    pub fn last_history_refusal(&self) -> Option<String> {
        lock(&self.last_history_refusal).clone()
    }

    /// Notes a restored history taken: counted, and its reason kept.
    pub fn restore_history(&self, reason: String) {
        *lock(&self.last_history_restore) = Some(reason);
        self.history_restores.fetch_add(1, Ordering::Relaxed);
    }

    /// The operator's reason of the last restored history taken.
    pub fn last_history_restore(&self) -> Option<String> {
        lock(&self.last_history_restore).clone()
    }

    /// Whether the agent follows the server live for this namespace: a
    /// stream open, and the server's newest checkpoint current. A lost
    /// stream is seen within three heartbeats, and an activation reaches
    /// a live agent within its delivery time; otherwise, what the agent
    /// serves is the last state it verified, possibly out of date (see
    /// `ofrep::flags::Freshness`).
    pub fn live(&self) -> bool {
        self.connected() && !self.stale()
    }

    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
    }

    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }
}

/// A note's lock; a writer that panicked left a whole value behind.
fn lock<T>(note: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    note.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every namespace followed, by name.
#[derive(Debug, Default)]
pub struct FollowedNamespaces {
    namespaces: BTreeMap<String, Arc<Followed>>,
}

impl FollowedNamespaces {
    /// Starts holding `namespace`.
    pub fn add(&mut self, namespace: &str, revoker: Revoker) -> Arc<Followed> {
        let followed = Arc::new(Followed {
            namespace: namespace.to_owned(),
            state: watch::Sender::new(None),
            server: Mutex::new(None),
            stale: AtomicBool::new(false),
            refused: Mutex::new(None),
            last_rejection: Mutex::new(None),
            last_history_refusal: Mutex::new(None),
            last_history_restore: Mutex::new(None),
            reconnects: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            history_refusals: AtomicU64::new(0),
            history_restores: AtomicU64::new(0),
            revoker,
        });
        self.namespaces
            .insert(namespace.to_owned(), followed.clone());
        followed
    }

    pub fn get(&self, namespace: &str) -> Option<&Arc<Followed>> {
        self.namespaces.get(namespace)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Followed>> {
        self.namespaces.values()
    }
}
