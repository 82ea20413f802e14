//! The server's background tasks, supervised: none of them is meant to
//! end while the server serves, so one that ends, by returning or by a
//! panic, is logged as an error with its name and counted in
//! `policyhub_background_task_failures_total{task}`; then, as its
//! [`OnEnd`] says, either it starts again after a growing delay, or the
//! replica reports NOT_SERVING until it is restarted.
//!
//! At shutdown every task is told to stop (a [`CancellationToken`]): the
//! ones that finish work under way (webhook deliveries, the calls the HTTP
//! and metrics ports are answering) are given a grace period to do it, the
//! others end at once, and what is left at the end of the grace is
//! aborted.
//!
//! The tasks run in a `JoinSet` rather than tokio-util's `TaskTracker`:
//! the supervisor must learn which task ended and how, which a join set
//! reports and a tracker does not.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What becomes of a task that ends while the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEnd {
    /// It starts again after a delay that doubles from
    /// [`FIRST_RESTART_DELAY`] up to [`MAX_RESTART_DELAY`]: for a task whose
    /// state lives elsewhere (rows, the hub), so a new run takes over.
    Restart,
    /// The replica reports NOT_SERVING, for good: for a task the replica
    /// cannot serve correctly without, and cannot start again.
    NotServing,
}

/// How a task stops at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// At once: it holds nothing that would be cut.
    Abort,
    /// It watches the token it is given and returns once work under way
    /// is done, within the grace period.
    Drain,
}

/// The first delay before a task that ended starts again.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);

/// The longest delay before a task that keeps ending starts again.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// Whether a supervised task ended while the server served, for the health
/// service; shared by every clone.
#[derive(Debug, Clone, Default)]
pub struct Failed(Arc<AtomicBool>);

impl Failed {
    /// Whether a task the replica cannot serve without has ended.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The background tasks of one server.
pub struct Supervisor {
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    failed: Failed,
    /// Called once a task of [`OnEnd::NotServing`] ended: reports the
    /// replica NOT_SERVING.
    on_failure: Arc<dyn Fn() + Send + Sync>,
    /// The failure count of a task, by its name.
    failures: Arc<dyn Fn(&'static str) -> Counter + Send + Sync>,
}

impl Supervisor {
    /// A supervisor counting failures in `failures(task)` and calling
    /// `on_failure` when a task of [`OnEnd::NotServing`] ends.
    pub fn new(
        failures: impl Fn(&'static str) -> Counter + Send + Sync + 'static,
        on_failure: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            shutdown: CancellationToken::new(),
            failed: Failed::default(),
            on_failure: Arc::new(on_failure),
            failures: Arc::new(failures),
        }
    }

    /// Set once a task the replica cannot serve without has ended.
    pub fn failed(&self) -> Failed {
        self.failed.clone()
    }

    /// Runs the task `name` that `start` makes (again, for
    /// [`OnEnd::Restart`]) until shutdown; `start` is given the token
    /// cancelled at shutdown, which a task of [`Stop::Drain`] watches.
    pub fn spawn<F>(
        &mut self,
        name: &'static str,
        on_end: OnEnd,
        stop: Stop,
        mut start: impl FnMut(CancellationToken) -> F + Send + 'static,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let failures = (self.failures)(name);
        let shutdown = self.shutdown.clone();
        let failed = self.failed.clone();
        let on_failure = self.on_failure.clone();
        self.tasks.spawn(async move {
            let mut delay = FIRST_RESTART_DELAY;
            loop {
                let run = AssertUnwindSafe(start(shutdown.clone())).catch_unwind();
                let ended = match stop {
                    Stop::Drain => run.await,
                    Stop::Abort => tokio::select! {
                        ended = run => ended,
                        () = shutdown.cancelled() => return,
                    },
                };
                if shutdown.is_cancelled() {
                    return;
                }
                failures.inc();
                let how = match &ended {
                    Ok(()) => "returned".to_owned(),
                    Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
                };
                match on_end {
                    OnEnd::Restart => {
                        tracing::error!(task = name, ended = %how, restart_in = ?delay,
                            "a background task ended; starting it again");
                    }
                    OnEnd::NotServing => {
                        tracing::error!(task = name, ended = %how,
                            "a background task ended: reporting not serving");
                        failed.set();
                        on_failure();
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(MAX_RESTART_DELAY);
            }
        });
    }

    /// Tells every task to stop, waits up to `grace` for those that drain,
    /// then aborts what is left.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        let drained = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                tasks = self.tasks.len(),
                ?grace,
                "background tasks still at work after the grace period: aborting them"
            );
        }
        self.tasks.shutdown().await;
    }
}

/// A panic's message, when it carries one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A supervisor whose failures are counted in one counter, and the
    /// number of times it reported NOT_SERVING.
    fn supervisor() -> (Supervisor, Counter, Arc<AtomicUsize>) {
        let counter = Counter::default();
        let reported = Arc::new(AtomicUsize::new(0));
        let failures = counter.clone();
        let reports = reported.clone();
        let supervisor = Supervisor::new(
            move |_task| failures.clone(),
            move || {
                reports.fetch_add(1, Ordering::Relaxed);
            },
        );
        (supervisor, counter, reported)
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_counted_and_turns_the_replica_not_serving() {
        let (mut supervisor, failures, reported) = supervisor();
        let failed = supervisor.failed();
        supervisor.spawn("doomed", OnEnd::NotServing, Stop::Abort, |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a bug");
        });
        supervisor.spawn("steady", OnEnd::NotServing, Stop::Abort, |_| {
            std::future::pending()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(failures.get(), 1);
        assert_eq!(reported.load(Ordering::Relaxed), 1);
        assert!(failed.is_set());
        supervisor.shutdown(Duration::from_secs(1)).await;
        assert_eq!(failures.get(), 1, "a stop is no failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_starts_again_with_growing_delays() {
        let (mut supervisor, failures, reported) = supervisor();
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        supervisor.spawn("flaky", OnEnd::Restart, Stop::Abort, move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            async {}
        });
        // Starts at 0, 0.5, 1.5, 3.5 and 7.5 s.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(starts.load(Ordering::Relaxed), 5);
        assert_eq!(failures.get(), 5);
        assert_eq!(reported.load(Ordering::Relaxed), 0);
        assert!(!supervisor.failed().is_set());
        supervisor.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_a_draining_task_finish_and_aborts_the_rest() {
        let (mut supervisor, failures, _) = supervisor();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        supervisor.spawn("drains", OnEnd::NotServing, Stop::Drain, move |stop| {
            let done = done.clone();
            async move {
                stop.cancelled().await;
                // Work under way at the stop.
                tokio::time::sleep(Duration::from_secs(2)).await;
                done.store(true, Ordering::Relaxed);
            }
        });
        supervisor.spawn("forever", OnEnd::NotServing, Stop::Drain, |_| {
            std::future::pending()
        });
        let started = tokio::time::Instant::now();
        supervisor.shutdown(Duration::from_secs(5)).await;
        assert!(finished.load(Ordering::Relaxed));
        assert_eq!(started.elapsed(), Duration::from_secs(5), "bounded");
        assert_eq!(failures.get(), 0);
    }
}
