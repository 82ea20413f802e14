//! The health service's reports: the database's state, a log whose
//! checkpoint was refused, and the background tasks' failures.

use tonic_health::server::HealthReporter;

use crate::grpc::proto::{
    bundle_service_server::BundleServiceServer, policy_service_server::PolicyServiceServer,
};
use crate::grpc::{BundleApi, PolicyApi};
use crate::storage;

use super::tasks::{Failed, Supervisor};

/// The health service name that answers SERVING while the process serves
/// gRPC, whatever the database does: for liveness probes, so that a database
/// outage takes replicas out of rotation (readiness) without restarting them.
pub const LIVENESS_SERVICE: &str = "policyhub.liveness";

/// The supervisor of a server's background tasks, counting their failures
/// in the metrics and reporting NOT_SERVING on `health` for one it cannot
/// serve without.
pub(super) fn supervisor(health: &HealthReporter) -> Supervisor {
    let health = health.clone();
    Supervisor::new(
        |task| crate::metrics::global().background_task_failures(task),
        move || {
            let health = health.clone();
            tokio::spawn(
                async move { report(&health, tonic_health::ServingStatus::NotServing).await },
            );
        },
    )
}

/// Reports `status` for the server and each service the database serves.
async fn report(health: &HealthReporter, status: tonic_health::ServingStatus) {
    for service in [
        "",
        <PolicyServiceServer<PolicyApi> as tonic::server::NamedService>::NAME,
        <BundleServiceServer<BundleApi> as tonic::server::NamedService>::NAME,
    ] {
        health.set_service_status(service, status).await;
    }
}

/// Reports NOT_SERVING while the database does not answer a ping within the
/// interval (a ping waiting out the pool's acquire timeout would hide a short
/// outage), and SERVING again at the first ping that succeeds; NOT_SERVING
/// for good once a checkpoint was refused over a rewritten log, or a
/// background task the replica cannot serve without has `failed`.
pub(super) async fn watch_database(
    health: HealthReporter,
    repository: storage::Repository,
    interval: std::time::Duration,
    failed: Failed,
) {
    health
        .set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let mut serving = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let ping = repository.ping();
        let reachable = matches!(tokio::time::timeout(interval, ping).await, Ok(Ok(())));
        // A replica that refused to sign over a rewritten log serves a
        // history it cannot vouch for: out of rotation until an operator acts.
        let refused = repository.refused_checkpoints();
        let healthy = reachable && refused == 0 && !failed.is_set();
        if serving == Some(healthy) {
            continue;
        }
        let status = if healthy {
            tonic_health::ServingStatus::Serving
        } else if failed.is_set() {
            tonic_health::ServingStatus::NotServing
        } else if !reachable {
            tracing::error!("the database does not answer: reporting not serving");
            tonic_health::ServingStatus::NotServing
        } else {
            tracing::error!(
                refused,
                "the event log does not extend the last signed checkpoint: reporting not serving"
            );
            tonic_health::ServingStatus::NotServing
        };
        report(&health, status).await;
        if healthy && serving == Some(false) {
            tracing::info!("the database answers again: reporting serving");
        }
        serving = Some(healthy);
    }
}
