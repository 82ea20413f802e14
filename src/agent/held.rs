//! The state in force of every namespace the agent follows, for the API and
//! the metrics to read, and to wait on.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use policyhub_runtime::{Revoker, State};
use tokio::sync::watch;

/// The state in force of one namespace, and when it was put in force.
#[derive(Debug)]
pub struct InForce {
    pub state: State,
    pub since: Instant,
}

/// One namespace followed.
#[derive(Debug)]
pub struct Followed {
    pub namespace: String,
    state: watch::Sender<Option<Arc<InForce>>>,
    /// Whether a stream to the server is open.
    connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub rejections: AtomicU64,
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
        self.state.send_replace(Some(Arc::new(InForce {
            state,
            since: Instant::now(),
        })));
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Every namespace followed, by name.
#[derive(Debug, Default)]
pub struct Held {
    namespaces: BTreeMap<String, Arc<Followed>>,
}

impl Held {
    /// Starts holding `namespace`.
    pub fn add(&mut self, namespace: &str, revoker: Revoker) -> Arc<Followed> {
        let followed = Arc::new(Followed {
            namespace: namespace.to_owned(),
            state: watch::Sender::new(None),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
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
