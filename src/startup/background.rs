//! The runtime that work able to wait runs on: runtimes' status reports
//! and the fleet's flush.
//!
//! Every runtime answers an update with a report, so the reports of a
//! revision arrive while the server is still writing it to the rest of the
//! fleet. On the server's own runtime they would share its cores with that
//! delivery, and a large fleet's reports would push its tail out. Here they
//! run on one thread whose OS scheduling priority is lower (nice
//! [`NICENESS`]): while deliveries keep the cores busy the kernel runs
//! them first, and a report waits; on idle cores a report runs at once.

use anyhow::Context;
use tokio::runtime::{Builder, Handle, Runtime};

/// How much lower the thread's priority is than the server's (Linux nice
/// values: 19 is the lowest). Ten leaves it about a tenth of a core that
/// deliveries keep busy.
const NICENESS: libc::c_int = 10;

/// The runtime, shut down when dropped (without waiting for its tasks:
/// it may be dropped on the server's runtime, which must not block).
pub(super) struct Background(Option<Runtime>);

impl Background {
    /// Starts the runtime, on one thread of its own.
    pub(super) fn start() -> anyhow::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("policyhub-background")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .context("starting the background runtime")?;
        Ok(Background(Some(runtime)))
    }

    /// Where to spawn work onto it.
    pub(super) fn handle(&self) -> &Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority (on Linux a nice value is the
/// thread's own); where that is refused, the thread runs as the others do.
fn lower_priority() {
    // SAFETY: setpriority reads and writes no memory of this process;
    // `PRIO_PROCESS` with id 0 names the calling thread.
    let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) };
    if lowered != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of the background thread; reports share the delivery's"
        );
    }
}
