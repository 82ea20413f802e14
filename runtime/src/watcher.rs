//! The subscription and what it yields: a [`Stream`] of [`Event`]s
//! ([`Subscription::events`]), a [`Reader`] of the state in force
//! ([`Subscription::reader`]), or a callback ([`Subscription::run`]), each
//! built on the one before, in the manner of kube-runtime's `watcher()`.
//!
//! The server says its heartbeat interval in the stream's response header
//! [`HEARTBEAT_INTERVAL_HEADER`], so a stream that misses three of them is
//! known dead whatever the server was configured with; an interval set on
//! the [`Subscription`] overrides it.
//!
//! The types a runtime names are re-exported here, from the modules that
//! hold them apart from the machinery (`event`, `subscription`, `revoke`),
//! so that the machinery (`session`) and this face import those modules and
//! not each other.

use std::{future::Future, pin::pin, sync::Arc};

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::{mpsc, watch};

pub use crate::event::{Event, Refusal, Validate, WatchError};
pub use crate::revoke::{RevokeError, Revoker};
use crate::session::{EventSink, drive};
use crate::state::State;
pub use crate::subscription::{
    DEFAULT_REBALANCE_INTERVAL, DEFAULT_REPORT_SPREAD, HEARTBEAT_INTERVAL_HEADER, MIN_INTERVAL,
    Subscription, TokenSource, report_delay,
};

impl Subscription {
    /// The subscription as a stream of events, accepting every state whose
    /// bundles verify. It connects, resumes and reconnects only while it is
    /// polled; it ends after an `Err`, a permanent failure.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use policyhub_runtime::{Event, Subscription};
    ///
    /// # async fn follow() -> Result<(), policyhub_runtime::WatchError> {
    /// let events = Subscription::new("http://127.0.0.1:50051", "payments").events();
    /// let mut events = std::pin::pin!(events);
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         Event::Applied(state) | Event::FromCache(state) => {
    ///             println!("revision {}: {} policies", state.revision, state.bundles.len())
    ///         }
    ///         Event::Disconnected { reason, .. } => eprintln!("reconnecting: {reason}"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(self) -> impl Stream<Item = Result<Event, WatchError>> {
        self.events_validated(|_: &State| Ok(()))
    }

    /// [`events`](Self::events), with the application's own validation: a
    /// state `validate` refuses is [`Event::Rejected`] (and reported so),
    /// and the previous one stays in force.
    pub fn events_validated<F>(self, validate: F) -> impl Stream<Item = Result<Event, WatchError>>
    where
        F: FnMut(&State) -> Result<(), String>,
    {
        self.events_with(validate)
    }

    /// [`events`](Self::events), with a [`Validate`] that may take its time
    /// (write files, reload a process) before it accepts or refuses a
    /// state.
    pub fn events_with<V>(self, validate: V) -> impl Stream<Item = Result<Event, WatchError>>
    where
        V: Validate,
    {
        // The machinery runs inside the stream, polled with it; a channel of
        // one event holds it back until the consumer takes the last one.
        let (sender, receiver) = mpsc::channel(1);
        let driver = Box::pin(drive(self, EventSink::new(sender, validate)));
        stream::unfold(
            (Some(driver), receiver),
            |(mut driver, mut receiver)| async move {
                loop {
                    let Some(running) = driver.as_mut() else {
                        let event = receiver.recv().await?;
                        return Some((event, (None, receiver)));
                    };
                    tokio::select! {
                        biased;
                        event = receiver.recv() => {
                            return event.map(|event| (event, (driver, receiver)));
                        }
                        () = running => driver = None,
                    }
                }
            },
        )
    }

    /// A reader of the state in force, and the future that keeps it up to
    /// date (spawn it; it ends only with a permanent failure).
    ///
    /// ```no_run
    /// use policyhub_runtime::Subscription;
    ///
    /// # async fn follow() {
    /// let (mut reader, follow) = Subscription::new("http://127.0.0.1:50051", "payments").reader();
    /// tokio::spawn(follow);
    /// while let Ok(state) = reader.changed().await {
    ///     println!("now at revision {}", state.revision);
    /// }
    /// # }
    /// ```
    pub fn reader(self) -> (Reader, impl Future<Output = Result<(), WatchError>>) {
        let (sender, receiver) = watch::channel(None);
        let follow = async move {
            let mut events = pin!(self.events());
            while let Some(event) = events.next().await {
                if let Event::Applied(state)
                | Event::FromCache(state)
                | Event::Revoked {
                    restored: state, ..
                } = event?
                {
                    sender.send_replace(Some(Arc::new(state)));
                }
            }
            Ok(())
        };
        (Reader { receiver }, follow)
    }

    /// Follows the namespace until a permanent error, calling `apply` with
    /// every new whole state: a thin helper over
    /// [`events_validated`](Self::events_validated). `apply` accepts a state
    /// (`Ok`) or refuses it with a reason (`Err`); either way the outcome is
    /// reported, and a refused state leaves the previous one in force.
    pub async fn run<F>(self, apply: F) -> Result<(), WatchError>
    where
        F: FnMut(&State) -> Result<(), String>,
    {
        let mut events = pin!(self.events_validated(apply));
        while let Some(event) = events.next().await {
            event?;
        }
        Ok(())
    }
}

/// The verified state in force, as a [`Subscription::reader`] keeps it.
#[derive(Debug, Clone)]
pub struct Reader {
    receiver: watch::Receiver<Option<Arc<State>>>,
}

/// The subscription behind a [`Reader`] has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscription has ended")]
pub struct Ended;

impl Reader {
    /// The state in force; `None` until the first one (from the server or
    /// the cache).
    pub fn current(&self) -> Option<Arc<State>> {
        self.receiver.borrow().clone()
    }

    /// Waits for the next state in force (at once when one arrived since
    /// the last call).
    pub async fn changed(&mut self) -> Result<Arc<State>, Ended> {
        loop {
            self.receiver.changed().await.map_err(|_| Ended)?;
            if let Some(state) = self.receiver.borrow_and_update().clone() {
                return Ok(state);
            }
        }
    }
}
