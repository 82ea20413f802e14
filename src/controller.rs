//! The controller: every tick, each running rollout is checked against the
//! fleet view — too many cohort runtimes rejected a candidate or missed the
//! apply deadline, or the step baked — and against its analyses, whose due
//! measurements it takes first; and each schedule with a firing due
//! fires its most recent due entry. The hub carries each decision out,
//! re-checking it under the rollout's or schedule's row lock.
//!
//! State and deadlines are rows, so the controller survives restarts. On
//! PostgreSQL every replica runs it, but a tick runs only on the replica
//! that leads the controller's role for the tick (a session advisory lock
//! on its leadership connection, see `storage::leadership`, released when
//! the tick ends), so exactly one drives rollouts and fires schedules at a
//! time; when it dies its connection's lock goes with it and another
//! replica's next tick takes over.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::domain::Result;
use crate::domain::rollout::{self, Rollout, RolloutState, Tick};
use crate::domain::schedule::FiringOutcome;
use crate::hub::PolicyHub;

/// The advisory lock key of the controller.
const CONTROLLER_LOCK: i64 = 7_240_532;

/// The metrics the controller feeds; whoever exposes them registers them.
#[derive(Debug, Clone, Default)]
pub struct Instruments {
    /// Firings that moved a pointer.
    pub applied: Counter,
    /// Firings whose versions were already active.
    pub already_active: Counter,
    /// Firings refused, each of which paused its schedule.
    pub refused: Counter,
    /// Schedules a refused firing paused and no operator resumed yet, as
    /// the database says at the last tick.
    pub paused_by_refusal: Gauge,
}

impl Instruments {
    fn firings(&self, outcome: FiringOutcome) -> &Counter {
        match outcome {
            FiringOutcome::Applied => &self.applied,
            FiringOutcome::AlreadyActive => &self.already_active,
            FiringOutcome::Refused => &self.refused,
        }
    }
}

/// Ticks every `interval` until the process ends. Every replica counts the
/// schedules paused by a refusal, whichever drives the tick, so that the
/// gauge of each says what the database holds.
pub async fn run(hub: PolicyHub, interval: Duration, instruments: Instruments) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ticked = hub
            .exclusively(CONTROLLER_LOCK, async |_term| {
                let rollouts = drive_rollouts(&hub, interval).await;
                fire_schedules(&hub, &instruments).await?;
                rollouts
            })
            .await;
        if let Err(error) = ticked {
            tracing::warn!(%error, "the controller could not tick; trying again");
        }
        match hub.schedules_paused_by_refusal().await {
            Ok(paused) => {
                let paused = i64::try_from(paused).unwrap_or(i64::MAX);
                instruments.paused_by_refusal.set(paused);
            }
            Err(error) => {
                tracing::warn!(%error, "the controller could not count the paused schedules")
            }
        }
    }
}

/// Rollouts driven at once, at most.
const CONCURRENT_ROLLOUTS: usize = 8;

/// One decision for every running rollout, each on its own: one that cannot
/// be driven now (its database write failed) does not hold up the others,
/// nor does a slow Prometheus (see `PolicyHub::take_measurements`, which
/// waits for measurements at most a `tick`).
async fn drive_rollouts(hub: &PolicyHub, tick: Duration) -> Result<()> {
    let live = hub.live_rollouts().await?;
    futures::stream::iter(live.iter().filter(|running| {
        matches!(
            running.state,
            RolloutState::Running | RolloutState::Scheduled
        )
    }))
    .for_each_concurrent(CONCURRENT_ROLLOUTS, async |running| {
        if let Err(error) = drive_rollout(hub, running, tick).await {
            tracing::warn!(rollout = %running.id, %error,
                "the controller could not drive the rollout; trying again");
        }
    })
    .await;
    Ok(())
}

/// One decision for `running`.
async fn drive_rollout(hub: &PolicyHub, running: &Rollout, tick: Duration) -> Result<()> {
    let measurements = match running.state {
        RolloutState::Running => hub.take_measurements(running, tick).await?,
        _ => Vec::new(),
    };
    let fleet = hub.fleet_view(&running.namespace).await?;
    let decision = rollout::tick(running, fleet.not_stale(), &measurements, Utc::now());
    if decision != Tick::Wait {
        tracing::info!(rollout = %running.id, ?decision, "rollout controller decision");
        hub.drive_rollout(running, decision).await?;
    }
    Ok(())
}

/// Fires every schedule with a firing due; one that cannot be fired now
/// does not hold up the others.
async fn fire_schedules(hub: &PolicyHub, instruments: &Instruments) -> Result<()> {
    for due in hub.due_schedules().await? {
        match hub.fire_schedule(&due).await {
            Ok(Some(outcome)) => {
                instruments.firings(outcome).inc();
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, namespace = %due.namespace, schedule = %due.name,
                    "the schedule could not fire; trying again");
            }
        }
    }
    Ok(())
}
