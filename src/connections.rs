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
//! tracked, so whoever stops the port waits for them, within a grace
//! period, and cuts what is left by dropping the future.
//!
//! The deadline lives in the connection's I/O ([`Connection`]): a read or
//! write past it fails with `TimedOut`, which ends the connection whatever
//! protocol runs over it. Requests mark the connection busy through a
//! [`Tracker`]: the hyper ports call [`serve_http1`]; the gRPC port finds the
//! tracker in each request's extensions (tonic puts the connection's
//! `connect_info` there) and [`TrackLayer`] does it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;

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

/// Whether a connection has requests in flight, and until when it may wait
/// for one when it has none.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    /// When the connection is closed unless a request comes; none while
    /// one is in flight.
    deadline: Option<Instant>,
    /// When the connection's timer fires: at the deadline or before it
    /// (see `Connection::poll_deadline`).
    armed_for: Instant,
    /// The connection's task, woken to arm the deadline when its last
    /// request ends and its timer would not wake it in time.
    waker: Option<Waker>,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Marks requests in flight on one connection.
#[derive(Clone, Debug)]
pub struct Tracker(Arc<Activity>);

impl Tracker {
    /// A request arrived: the connection is busy until the returned value is
    /// dropped (with the response's body).
    pub fn begin(&self) -> InFlight {
        let mut state = self.0.lock();
        state.in_flight += 1;
        state.deadline = None;
        InFlight(self.0.clone())
    }
}

/// One request in flight.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            let now = Instant::now();
            let deadline = now + self.0.idle_timeout;
            state.deadline = Some(deadline);
            // A timer still to fire before the deadline wakes the task,
            // which arms it again then; one that fired while requests
            // were in flight (unseen) or fires too late does not.
            let timer_wakes = now < state.armed_for && state.armed_for <= deadline;
            if !timer_wakes && let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

/// An accepted connection: its stream, its place among the port's
/// connections, and the deadline past which its reads and writes fail.
pub struct Connection {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// Fires at the deadline or before it (see `poll_deadline`).
    timer: Pin<Box<Sleep>>,
    /// Released when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, limits: &Limits) -> Self {
        let deadline = Instant::now() + limits.header_read_timeout;
        Connection {
            stream,
            activity: Arc::new(Activity {
                state: Mutex::new(ActivityState {
                    in_flight: 0,
                    deadline: Some(deadline),
                    armed_for: deadline,
                    waker: None,
                }),
                idle_timeout: limits.idle_timeout,
            }),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            _permit: permit,
        }
    }

    /// Marks this connection's requests in flight.
    pub fn tracker(&self) -> Tracker {
        Tracker(self.activity.clone())
    }

    /// Fails once the connection waited past its deadline for a request;
    /// otherwise wakes the task at the deadline (or when a request ends and
    /// arms it).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let mut state = self.activity.lock();
        if !state
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        let Some(deadline) = state.deadline else {
            // Polled all the same, so that it wakes the task when it
            // fires: a request that ends before then leaves the arming of
            // the deadline to it.
            let _ = self.timer.as_mut().poll(cx);
            return Ok(());
        };
        // The timer fires at the deadline or before it: it is moved
        // earlier at once, but later only once it fires, since every
        // request moves the deadline of a busy connection.
        if deadline < state.armed_for {
            self.timer.as_mut().reset(deadline);
            state.armed_for = deadline;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent no complete request in time",
                ));
            }
            self.timer.as_mut().reset(deadline);
            state.armed_for = deadline;
        }
        Ok(())
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Checked before reading: a client trickling a byte at a time has
        // something to read at every poll.
        this.poll_deadline(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.poll_deadline(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.poll_deadline(cx)?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// tonic puts the tracker in each request's extensions, where
/// [`TrackLayer`] finds it.
impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = Tracker;

    fn connect_info(&self) -> Tracker {
        self.tracker()
    }
}

/// A response body that keeps its request in flight until it ends or is
/// dropped.
pub struct Tracked<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B> Tracked<B> {
    /// `body`, keeping `in_flight` (none: nothing to keep) until it is
    /// dropped.
    pub fn new(body: B, in_flight: Option<InFlight>) -> Self {
        Tracked {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Marks each gRPC request in flight on its connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackLayer;

impl<S> tower_layer::Layer<S> for TrackLayer {
    type Service = TrackService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackService { inner }
    }
}

/// See [`TrackLayer`].
#[derive(Clone, Debug)]
pub struct TrackService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for TrackService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = hyper::body::Bytes> + Send + Unpin + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let in_flight = request.extensions().get::<Tracker>().map(Tracker::begin);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(Tracked::new(body, in_flight))))
        })
    }
}

/// Serves HTTP/1.1 on `io`, each request marked in flight on `tracker`
/// until its response's body ends. Once `stop` is cancelled the request
/// under way, if any, is answered and the connection closes (at once when
/// it has none): hyper's graceful shutdown.
pub async fn serve_http1<IO, F, Fut, B>(
    io: IO,
    tracker: Tracker,
    stop: CancellationToken,
    handle: F,
) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handle = Arc::new(handle);
    let service = hyper::service::service_fn(move |request| {
        let in_flight = tracker.begin();
        let handle = handle.clone();
        async move {
            let response = handle(request).await;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| Tracked::new(body, Some(in_flight))),
            )
        }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => return served,
        () = stop.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
