//! Stopping a server: at the shutdown signal the watch streams end, every
//! port stops accepting and answers the calls under way while the
//! background tasks finish theirs, all within one grace period; then what
//! this replica holds in memory is recorded.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::storage;
use crate::watch::ActiveIndex;

use super::tasks::Supervisor;

/// How long, beyond `notifications.timeout` (a webhook attempt's
/// longest), a stopping server gives every port to answer the calls under
/// way and the background tasks to finish theirs (a delivery recorded), at
/// once; what is left then is cut.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `grpc` until `shutdown` completes (or the port fails: its error
/// then), then stops: ends the watch streams of `index`, cancels
/// `stopping` (the gRPC port's signal) and stops `tasks` (the other ports
/// among them), giving the calls and work under way `grace` to end.
pub(super) async fn serve_until(
    grpc: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: impl Future<Output = ()>,
    stopping: &CancellationToken,
    index: &ActiveIndex,
    tasks: Supervisor,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    // tonic waits for every call under way, however long: the grace
    // bounds it as it bounds the other ports.
    let grpc = async {
        let cut = async {
            stopping.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = grpc => served,
            () = cut => {
                tracing::warn!(?grace, "grpc calls still under way after the grace period: cutting them");
                Ok(())
            }
        }
    };
    let mut grpc = std::pin::pin!(grpc);
    let ended_first = tokio::select! {
        served = &mut grpc => Some(served),
        () = shutdown => None,
    };
    // Watch streams never end by themselves: end them first, with
    // UNAVAILABLE, so the drain does not wait on them; the HTTP port's
    // long polls and event streams end with them.
    index.close();
    stopping.cancel();
    match ended_first {
        Some(served) => {
            tasks.shutdown(grace).await;
            served
        }
        None => tokio::join!(grpc, tasks.shutdown(grace)).0,
    }
}

/// Records what only this replica's memory holds once it stopped: the
/// runtimes of the closed streams as disconnected in the fleet view, and
/// SQLite's write-ahead log emptied into the database.
pub(super) async fn record_at_stop(fleet: &Fleet, repository: &storage::Repository) {
    if let Err(error) = fleet.flush().await {
        tracing::warn!(%error, "cannot persist the fleet view at shutdown");
    }
    if let Err(error) = repository.empty_log().await {
        tracing::warn!(%error, "cannot empty the write-ahead log at shutdown");
    }
}
