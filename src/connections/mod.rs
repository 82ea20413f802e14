//! The accept loop every port shares, and the bounds on what a connection
//! may hold without asking for anything.
//!
//! A connection costs a file descriptor and a task from the moment it is
//! accepted, before any authentication. So each port:
//!
//! - holds at most `max_per_port` connections: one beyond is closed at once
//!   (Envoy's `max_downstream_connections`, per port);
//! - closes a connection that has no request in flight and does not complete
//!   a request's headers in time: within `header_read_timeout` of its accept
//!   (nginx's `client_header_timeout`, grpc-go's handshake timeout: it covers
//!   the TLS handshake and the HTTP/2 preface too), and within `idle_timeout`
//!   of its last response (nginx's `keepalive_timeout`, Envoy's
//!   `idle_timeout`). A request in flight (a watch stream, a long poll) is
//!   never cut: only a connection that asks for nothing is;
//! - backs off when `accept` fails (at the open-files limit it fails at once,
//!   again and again), from 10 ms doubling to 1 s as Go's `net/http` does,
//!   logs it at most every few seconds, and counts it, so the connections
//!   already open keep being served.
//!
//! At shutdown a port stops accepting, and each connection finishes the
//! requests under way and closes ([`Listener::serve`]); its tasks are
//! held, so whoever stops the port waits for them, within a grace
//! period, and aborts what is left by dropping the future.
//!
//! The deadline lives in the connection's I/O ([`Connection`]): a read or
//! write past it fails with `TimedOut`, which ends the connection whatever
//! protocol runs over it. Requests mark the connection busy through a
//! [`Tracker`]: the hyper ports call [`serve_http1`]; the gRPC port finds the
//! tracker in each request's extensions (tonic puts the connection's
//! `connect_info` there) and [`TrackLayer`] does it.

mod connection;
mod tracked;

use std::{future::Future, io, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

pub use connection::{Connection, InFlight, Tracker};
pub use tracked::{TrackLayer, TrackService, Tracked, serve_http1};

/// The first pause after a failed accept; each failure in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause after a failed accept.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A warning repeated while the failure lasts is written at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The bounds on each port's connections (`connections.*` of the server's
/// settings, `--api-*` flags of the agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// A new connection must complete its first request's headers (after
    /// the TLS handshake and HTTP/2 preface) within this long, or it is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The most connections one port holds; one more is closed as soon as
    /// it is accepted.
    pub max_per_port: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_per_port: 10_000,
        }
    }
}

/// What a port counts.
#[derive(Clone, Debug, Default)]
pub struct Instruments {
    /// Accepts that failed (such as at the open-files limit).
    pub accept_errors: Counter,
    /// Connections closed at once because the port held its maximum.
    pub refused: Counter,
}

/// A listening port with its bounds.
pub struct Listener {
    tcp: TcpListener,
    /// The port's name in logs and metrics: `grpc`, `http`, `metrics`, `api`.
    port: &'static str,
    limits: Limits,
    /// One permit per connection the port may still hold.
    open: Arc<Semaphore>,
    instruments: Instruments,
    /// The pause before the next accept, after a failed one.
    backoff: Option<Duration>,
    accept_warnings: Throttle,
    refusal_warnings: Throttle,
}

impl Listener {
    /// `tcp`, already listening, as the port named `port` (in logs and
    /// metrics), its connections bounded by `limits`, counted in
    /// `instruments`.
    pub fn new(
        tcp: TcpListener,
        port: &'static str,
        limits: Limits,
        instruments: Instruments,
    ) -> Self {
        Listener {
            tcp,
            port,
            // Zero would refuse every connection, and the semaphore panics
            // above its maximum.
            open: Arc::new(Semaphore::new(
                limits.max_per_port.clamp(1, Semaphore::MAX_PERMITS),
            )),
            limits,
            instruments,
            backoff: None,
            accept_warnings: Throttle::default(),
            refusal_warnings: Throttle::default(),
        }
    }

    /// The next connection the port may hold, waiting out failed accepts.
    pub async fn accept(&mut self) -> Connection {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    self.failed(&error).await;
                    continue;
                }
            };
            self.backoff = None;
            let Ok(permit) = self.open.clone().try_acquire_owned() else {
                self.instruments.refused.inc();
                if let Some(suppressed) = self.refusal_warnings.ready() {
                    tracing::warn!(
                        port = self.port,
                        %peer,
                        max_per_port = self.limits.max_per_port,
                        suppressed,
                        "too many connections: closing a new one"
                    );
                }
                continue;
            };
            // A reply's last frame must not wait for the client's delayed
            // ACK, which costs ~40 ms per call under Nagle's algorithm.
            stream.set_nodelay(true).ok();
            return Connection::new(stream, permit, &self.limits);
        }
    }

    /// Counts and logs a failed accept, then pauses: at the open-files limit
    /// `accept` fails at once, and retrying at once would spin.
    async fn failed(&mut self, error: &io::Error) {
        self.instruments.accept_errors.inc();
        // The client gave up before its connection was accepted: nothing
        // of the server's is short.
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        let pause = self
            .backoff
            .map_or(FIRST_BACKOFF, |pause| (pause * 2).min(MAX_BACKOFF));
        self.backoff = Some(pause);
        if let Some(suppressed) = self.accept_warnings.ready() {
            tracing::warn!(port = self.port, %error, ?pause, suppressed, "cannot accept a connection");
        }
        tokio::time::sleep(pause).await;
    }

    /// The connections, as a stream (for tonic's `serve_with_incoming`).
    pub fn into_incoming(
        self,
    ) -> impl futures::Stream<Item = Result<Connection, std::convert::Infallible>> {
        futures::stream::unfold(self, |mut listener| async move {
            let connection = listener.accept().await;
            Some((Ok(connection), listener))
        })
    }

    /// Accepts until `stop` is cancelled, each connection handed to
    /// `handle` in a task of its own, with `stop` to finish the requests
    /// under way and close when it is cancelled; then closes the port and
    /// waits for every connection to end. The tasks are held rather than
    /// detached: dropping this future (a grace period over) aborts every
    /// connection still open, so none outlives its port. Aborting is the
    /// runtime's, so a connection checks nothing each time it is polled.
    pub async fn serve<F, Fut>(mut self, stop: CancellationToken, handle: F)
    where
        F: Fn(Connection, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                connection = self.accept() => {
                    connections.spawn(handle(connection, stop.clone()));
                }
                // The ended are let go as they end.
                Some(_) = connections.join_next() => {}
                () = stop.cancelled() => break,
            }
        }
        // Refused from now on, rather than queued where no one accepts.
        drop(self);
        while connections.join_next().await.is_some() {}
    }

    /// Serves HTTP/1.1 on every connection until `stop` is cancelled, each
    /// request answered by `handle`; then as [`Listener::serve`] does.
    pub async fn serve_http<F, Fut, B>(self, stop: CancellationToken, handle: F)
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let port = self.port;
        self.serve(stop, |connection, stop| {
            let handle = handle.clone();
            async move {
                let tracker = connection.tracker();
                if let Err(error) = serve_http1(connection, tracker, stop, handle).await {
                    tracing::debug!(port, %error, "connection ended");
                }
            }
        })
        .await
    }
}

/// Lets a warning through at most every [`LOG_EVERY`].
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    /// Warnings held back since the last one written.
    suppressed: u64,
}

impl Throttle {
    /// How many were held back since the last one, when this one may be
    /// written.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn listener(limits: Limits) -> (Listener, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        (
            Listener::new(tcp, "test", limits, Instruments::default()),
            address,
        )
    }

    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        let (mut listener, address) = listener(Limits::default()).await;
        let _client = TcpStream::connect(address).await.unwrap();
        let accepted = listener.accept().await;
        assert!(accepted.stream.nodelay().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_fails_at_its_deadline_and_not_while_busy() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            max_per_port: 4,
        };
        let (mut listener, address) = listener(limits).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        let mut accepted = listener.accept().await;
        let busy = accepted.tracker().begin();
        tokio::time::sleep(Duration::from_secs(10)).await;
        client.write_all(b"x").await.unwrap();
        let mut byte = [0; 1];
        accepted.read_exact(&mut byte).await.unwrap();
        drop(busy);
        let started = Instant::now();
        let error = accepted.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// A request that ends while its connection waits for the next one
    /// arms the idle deadline: through the timer when it is still to fire
    /// before it, at once when it fired while the request was in flight.
    #[tokio::test(start_paused = true)]
    async fn a_request_ending_while_the_connection_waits_arms_its_deadline() {
        // (busy for, closed after): the timer, at 2 s, fires after the
        // request ends at 1 s, or while it is in flight until 10 s.
        for (busy_for, closed_after) in [(1, 6), (10, 15)] {
            let limits = Limits {
                header_read_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(5),
                max_per_port: 4,
            };
            let (mut listener, address) = listener(limits).await;
            let _client = TcpStream::connect(address).await.unwrap();
            let mut accepted = listener.accept().await;
            let busy = accepted.tracker().begin();
            let started = Instant::now();
            let waiting = tokio::spawn(async move {
                let mut byte = [0; 1];
                accepted.read(&mut byte).await
            });
            tokio::time::sleep(Duration::from_secs(busy_for)).await;
            drop(busy);
            let read = tokio::time::timeout(Duration::from_secs(60), waiting)
                .await
                .unwrap_or_else(|_| panic!("busy for {busy_for} s: never closed"))
                .unwrap();
            assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
            assert_eq!(
                started.elapsed(),
                Duration::from_secs(closed_after),
                "busy for {busy_for} s"
            );
        }
    }
}
