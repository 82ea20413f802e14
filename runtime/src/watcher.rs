//! The subscription and what it yields: a [`Stream`] of [`Event`]s
//! ([`Subscription::events`]), a [`Reader`] of the state in force
//! ([`Subscription::reader`]), or a callback ([`Subscription::run`]), each
//! built on the one before, in the manner of kube-runtime's `watcher()`.
//!
//! The server says its heartbeat interval in the stream's response header
//! [`HEARTBEAT_INTERVAL_HEADER`], so a stream that misses three of them is
//! known dead whatever the server was configured with; an interval set on
//! the [`Subscription`] overrides it.

use std::{future::Future, path::PathBuf, pin::pin, sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tonic::{
    Status,
    transport::{ClientTlsConfig, Endpoint},
};

use crate::proto::RuntimeIdentity;
use crate::session::{Outlet, drive};
use crate::state::State;

/// Gives the bearer token for each connection (so a rotated token file is
/// read again); `None` sends no token.
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The response header of `WatchActive` in which the server says its
/// heartbeat interval, in milliseconds (`policyhub serve`'s
/// `watch.heartbeat_interval`).
pub const HEARTBEAT_INTERVAL_HEADER: &str = "policyhub-heartbeat-interval-ms";

/// The heartbeat interval assumed of a server that does not say it.
pub(crate) const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How old a checkpoint may grow unless the subscription says otherwise.
pub(crate) const DEFAULT_MAX_CHECKPOINT_AGE: Duration = Duration::from_secs(600);

/// The application's verdict on each new whole state, before it is put in
/// force: `Ok` applies it, `Err(reason)` refuses it (reported REJECTED with
/// the reason; the previous state stays in force). The check may take its
/// time, such as writing files and reloading a process; the subscription
/// waits for it. Every `FnMut(&State) -> Result<(), String>` is one.
pub trait Validate {
    /// Accepts or refuses `state`.
    fn validate(&mut self, state: &State) -> impl Future<Output = Result<(), String>> + Send;
}

impl<F> Validate for F
where
    F: FnMut(&State) -> Result<(), String>,
{
    fn validate(&mut self, state: &State) -> impl Future<Output = Result<(), String>> + Send {
        std::future::ready(self(state))
    }
}

/// Why a subscription stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The server refused the subscription itself (credentials, role, a
    /// malformed request): retrying cannot help.
    #[error("the server refused the watch: {}", .0.message())]
    Refused(Status),
    /// The subscription is misconfigured.
    #[error("{0}")]
    Config(String),
}

/// What happened to a subscription.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// At start, the last-known-good state read back from the cache and
    /// verified again: in force until the server answers.
    FromCache(State),
    /// A stream to the server is open; what changed after `revision`
    /// follows.
    Connected {
        /// The revision the stream resumes from (0: a snapshot comes).
        revision: u64,
    },
    /// A new whole state, every bundle verified and the application's
    /// validation passed: it is in force, cached, and reported APPLIED.
    Applied(State),
    /// A state refused, because a bundle did not verify or the application's
    /// validation refused it: the previous state stays in force, and the
    /// refusal is reported REJECTED (it is not sent again).
    Rejected {
        /// The refused revision.
        revision: u64,
        /// Why, as reported.
        reason: String,
    },
    /// The application took back the state in force at `revision` (through
    /// a [`Revoker`]): it is reported REJECTED, and `restored`, the state
    /// before it, is in force and cached again.
    Revoked {
        /// The revision taken back.
        revision: u64,
        /// Why, as reported.
        reason: String,
        /// The state in force again.
        restored: State,
    },
    /// The newest signed checkpoint of the server is older than
    /// [`Subscription::max_checkpoint_age`]: the replica is cut off from
    /// its database or frozen, so what it serves may be old. The state in
    /// force stays; the subscription reconnects once (perhaps to another
    /// replica), and says [`Event::CheckpointFresh`] when a current
    /// checkpoint arrives.
    CheckpointStale {
        /// The revision that checkpoint states.
        revision: u64,
        /// When it was signed.
        signed_at: chrono::DateTime<chrono::Utc>,
        /// How old it was when found stale.
        age: Duration,
    },
    /// After [`Event::CheckpointStale`], a checkpoint younger than
    /// [`Subscription::max_checkpoint_age`] arrived.
    CheckpointFresh {
        /// The revision it states.
        revision: u64,
        /// When it was signed.
        signed_at: chrono::DateTime<chrono::Utc>,
    },
    /// The stream was lost (the server went away, a reset or half-open
    /// connection, three missed heartbeats); the subscription reconnects
    /// after `retry_in` and resumes from `revision`.
    Disconnected {
        /// What happened.
        reason: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
        /// The revision it resumes from.
        revision: u64,
    },
}

/// What one subscription follows and how.
#[derive(Clone)]
pub struct Subscription {
    endpoint: String,
    tls: Option<ClientTlsConfig>,
    pub(crate) token: Option<TokenSource>,
    pub(crate) namespace: String,
    pub(crate) names: Vec<String>,
    pub(crate) runtime: Option<RuntimeIdentity>,
    pub(crate) cache_dir: Option<PathBuf>,
    /// Overrides the interval the server announces.
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    /// Older checkpoints are stale; `None`: not checked.
    pub(crate) max_checkpoint_age: Option<Duration>,
    /// Where a [`Revoker`]'s requests arrive, once one was made.
    pub(crate) revocations: Option<Arc<Mutex<mpsc::Receiver<Revocation>>>>,
}

impl Subscription {
    /// Follows every policy of `namespace` at `endpoint` (`http://` or
    /// `https://`).
    pub fn new(endpoint: impl Into<String>, namespace: impl Into<String>) -> Self {
        Subscription {
            endpoint: endpoint.into(),
            tls: None,
            token: None,
            namespace: namespace.into(),
            names: Vec::new(),
            runtime: None,
            cache_dir: None,
            heartbeat_interval: None,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            max_checkpoint_age: Some(DEFAULT_MAX_CHECKPOINT_AGE),
            revocations: None,
        }
    }

    /// Lets the application take back the state in force after it applied
    /// it (a reload that failed later, a health check after the change): a
    /// [`Revoker`] for this subscription.
    pub fn revocable(mut self) -> (Self, Revoker) {
        let (sender, receiver) = mpsc::channel(8);
        self.revocations = Some(Arc::new(Mutex::new(receiver)));
        (self, Revoker { sender })
    }

    /// Only these policies.
    pub fn names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.names = names.into_iter().map(Into::into).collect();
        self.names.sort();
        self.names.dedup();
        self
    }

    /// Names the runtime, so that it appears in the fleet view and reports
    /// what it applied.
    pub fn runtime(
        mut self,
        id: impl Into<String>,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        self.runtime = Some(RuntimeIdentity {
            id: id.into(),
            labels: labels.into_iter().collect(),
        });
        self
    }

    /// The bearer token of every call.
    pub fn token(mut self, source: TokenSource) -> Self {
        self.token = Some(source);
        self
    }

    /// TLS settings for an `https://` endpoint.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Keeps the last-known-good state in this directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Overrides the heartbeat interval the server announces (10 s when it
    /// announces none): three intervals without a message mean a dead
    /// stream.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// How old the server's newest signed checkpoint may grow before the
    /// subscription reports [`Event::CheckpointStale`] (10 minutes unless
    /// set; `None` turns the check off). Compared with this host's clock:
    /// keep clocks synchronized well within it. A server signs one at
    /// least every `audit.checkpoint_interval` (1 minute by default).
    pub fn max_checkpoint_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_checkpoint_age = max_age;
        self
    }

    /// Reconnection delays: a random duration up to `initial`, doubling the
    /// bound per failed attempt up to `max` (full jitter).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// The connection settings.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, WatchError> {
        // Before the server has said its interval, the override or the
        // default paces the connection's own checks.
        let interval = self
            .heartbeat_interval
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|_| WatchError::Config(format!("{:?} is not a URL", self.endpoint)))?
            .connect_timeout(interval.max(Duration::from_secs(1)))
            // HTTP/2 pings find a half-open connection even when the
            // server's heartbeats are far apart.
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(interval)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| WatchError::Config(format!("tls: {error}")))?;
        }
        Ok(endpoint)
    }

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
        let driver = Box::pin(drive(self, Outlet::new(sender, validate)));
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

/// A request to take back the state in force.
#[derive(Debug)]
pub(crate) struct Revocation {
    pub revision: u64,
    pub reason: String,
    pub reply: oneshot::Sender<Result<State, RevokeError>>,
}

/// Why a revocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// Only the state in force can be taken back.
    #[error("revision {asked} is not the state in force (revision {held} is)")]
    NotInForce {
        /// The revision named.
        asked: u64,
        /// The revision in force.
        held: u64,
    },
    /// No earlier state of this run to return to (the state in force came
    /// from the cache, or is the first one, or was restored by a
    /// revocation).
    #[error("revision {0} has no earlier state to return to")]
    NothingToRestore(u64),
    /// The subscription has ended, or its stream is not polled.
    #[error("the subscription has ended")]
    Ended,
}

/// Takes back the state in force of a [`Subscription::revocable`]
/// subscription.
#[derive(Debug, Clone)]
pub struct Revoker {
    sender: mpsc::Sender<Revocation>,
}

impl Revoker {
    /// Takes back the state in force at `revision`: it is reported REJECTED
    /// with `reason`, the state before it is put back in force (and
    /// cached), and the events say [`Event::Revoked`]. The restored state.
    pub async fn revoke(
        &self,
        revision: u64,
        reason: impl Into<String>,
    ) -> Result<State, RevokeError> {
        let (reply, answer) = oneshot::channel();
        let request = Revocation {
            revision,
            reason: reason.into(),
            reply,
        };
        self.sender
            .send(request)
            .await
            .map_err(|_| RevokeError::Ended)?;
        answer.await.map_err(|_| RevokeError::Ended)?
    }
}
