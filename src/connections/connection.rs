//! One accepted connection: its idle and header deadlines, kept in its I/O,
//! and the requests in flight that hold them off (see the module above).

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};

use super::Limits;

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
    pub(super) stream: TcpStream,
    activity: Arc<Activity>,
    /// Fires at the deadline or before it (see `poll_deadline`).
    timer: Pin<Box<Sleep>>,
    /// Released when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    pub(super) fn new(stream: TcpStream, permit: OwnedSemaphorePermit, limits: &Limits) -> Self {
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
