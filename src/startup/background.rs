//! The background tasks of a running server, each under the supervisor
//! ([`super::tasks`]): what keeps the replica's state current beside its
//! ports. The comments say, for each, whether it starts again when it ends.

use tonic_health::server::HealthReporter;

use crate::hub::PolicyHub;
use crate::storage;

use super::Application;
use super::health::watch_database;
use super::identity;
use super::tasks::{OnEnd, Stop, Supervisor};

impl Application {
    /// Starts every background task under `tasks`, the database's health
    /// reported on `health`. (The webhook deliveries start with their
    /// service, the ports' tasks with their ports.)
    pub(super) fn spawn_background(&self, health: &HealthReporter, tasks: &mut Supervisor) {
        let (failed, repository) = (tasks.failed(), self.repository.clone());
        let interval = self.settings.health_check_interval();
        let reporter = health.clone();
        // Not started again: this task is the health report, so it ending
        // leaves the report stale; the supervisor reports NOT_SERVING.
        tasks.spawn("health", OnEnd::NotServing, Stop::Abort, move |_| {
            watch_database(
                reporter.clone(),
                repository.clone(),
                interval,
                failed.clone(),
            )
        });
        // These start again when they end: each round starts afresh from
        // state kept elsewhere (the hub, the store, the fleet view), and
        // the replica serves correctly meanwhile.
        let hub = self.hub.clone();
        tasks.spawn("keys-reload", OnEnd::Restart, Stop::Abort, move |_| {
            reload_keys_on_sighup(hub.clone())
        });
        identity::identity_tasks(&self.authentication, &self.settings, health, tasks);
        let (hub, interval) = (self.hub.clone(), self.settings.audit.checkpoint_interval());
        tasks.spawn("checkpoints", OnEnd::Restart, Stop::Abort, move |_| {
            refresh_checkpoints(hub.clone(), interval)
        });
        if let Some(retention) = self.settings.idempotency_retention {
            let repository = self.repository.clone();
            tasks.spawn(
                "idempotency-retention",
                OnEnd::Restart,
                Stop::Abort,
                move |_| forget_idempotency_records(repository.clone(), retention),
            );
        }
        if self.settings.is_sqlite() {
            let repository = self.repository.clone();
            tasks.spawn("log-checkpoints", OnEnd::Restart, Stop::Abort, move |_| {
                repository.clone().checkpoint_log_forever()
            });
        }
        // Not started again: a replica that stopped following the others
        // serves stale revisions; out of rotation until it is restarted.
        if !self.settings.is_sqlite() {
            let (hub, url) = (self.hub.clone(), self.settings.database_url());
            let watch = self.settings.watch.clone();
            tasks.spawn("replication", OnEnd::NotServing, Stop::Abort, move |_| {
                crate::replication::follow(hub.clone(), url.clone(), watch.clone())
            });
        }
        // A flush waits for a fan-out under way, at most an interval.
        let flush_interval = self.settings.runtimes.flush_interval();
        let (index, flushed) = (self.hub.index().clone(), self.fleet.clone());
        tasks.spawn("fleet-flush", OnEnd::Restart, Stop::Abort, move |_| {
            let index = index.clone();
            flushed.clone().run(flush_interval, move || {
                let index = index.clone();
                async move { index.fan_out_ended(flush_interval).await }
            })
        });
        // The witnessing and the controller start again too: their state
        // is rows, and their lock went with the run that ended.
        if !self.settings.audit.witnesses.is_empty() {
            let (hub, audit) = (self.hub.clone(), self.settings.audit.clone());
            tasks.spawn("witnessing", OnEnd::Restart, Stop::Abort, move |_| {
                let instruments = crate::metrics::global().witness_instruments();
                crate::witnessing::run(hub.clone(), audit.clone(), instruments)
            });
        }
        let (hub, tick) = (self.hub.clone(), self.settings.rollouts.tick_interval());
        tasks.spawn("controller", OnEnd::Restart, Stop::Abort, move |_| {
            crate::controller::run(hub.clone(), tick, controller_instruments())
        });
    }
}

/// The controller's metrics, each firing outcome counted under its name.
fn controller_instruments() -> crate::controller::Instruments {
    use crate::domain::schedule::FiringOutcome;
    let metrics = crate::metrics::global();
    crate::controller::Instruments {
        applied: metrics.schedule_firings(FiringOutcome::Applied.as_str()),
        already_active: metrics.schedule_firings(FiringOutcome::AlreadyActive.as_str()),
        refused: metrics.schedule_firings(FiringOutcome::Refused.as_str()),
        paused_by_refusal: metrics.schedules_paused_by_refusal(),
    }
}

/// Forgets idempotency records older than `retention`, checking as often as
/// a tenth of it (at least every second, at most every minute).
async fn forget_idempotency_records(
    repository: storage::Repository,
    retention: std::time::Duration,
) {
    let period = (retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let Some(cutoff) = chrono::TimeDelta::from_std(retention)
            .ok()
            .and_then(|retention| chrono::Utc::now().checked_sub_signed(retention))
        else {
            // A retention longer than the calendar: nothing is ever old enough.
            return std::future::pending().await;
        };
        match repository.forget_idempotency_records(cutoff).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::debug!(forgotten, "forgot old idempotency records"),
            Err(error) => tracing::warn!(%error, "cannot forget old idempotency records"),
        }
    }
}

/// Re-reads the signing keys on every SIGHUP, the OPA signing keys with
/// them: with `signing.key_files` (`signing.opa_key_files`), put the new key
/// first in the files, then `kill -HUP`; the old key keeps verifying.
async fn reload_keys_on_sighup(hub: PolicyHub) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for sighup: signing keys reload only at start");
            return std::future::pending().await;
        }
    };
    while hangups.recv().await.is_some() {
        let context = crate::domain::RequestContext {
            actor: "system:sighup".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        match hub.reload_keys(&context).await {
            Ok((previous, current)) => tracing::info!(%previous, %current, "signing keys reloaded"),
            Err(error) => {
                tracing::error!(%error, "signing keys not reloaded; the previous ones stay in use")
            }
        }
        match hub.reload_opa_keys() {
            Ok(Some(signer)) => tracing::info!(%signer, "OPA signing keys reloaded"),
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "OPA signing keys not reloaded; the previous ones stay in use")
            }
        }
    }
}

/// The least time a checkpoint refresh is given, however short the
/// interval: a refresh checks every event since the last checkpoint, and
/// one abandoned begins again from the start, so a backlog that takes
/// longer than a short interval would never be signed.
const REFRESH_TIMEOUT_FLOOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Signs a checkpoint whenever the newest is older than half of
/// `interval`, checking twice per interval; a database that does not answer
/// within the interval (at least [`REFRESH_TIMEOUT_FLOOR`]) leaves the
/// served checkpoint to age.
async fn refresh_checkpoints(hub: PolicyHub, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let refresh = hub.refresh_checkpoint(interval / 2);
        match tokio::time::timeout(interval.max(REFRESH_TIMEOUT_FLOOR), refresh).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot sign a checkpoint"),
            Err(_) => tracing::warn!("the database did not answer for a checkpoint in time"),
        }
    }
}
