//! The controller: every tick, each running rollout is checked against the
//! fleet view — too many cohort runtimes rejected a candidate or missed the
//! apply deadline, or the step baked — and each schedule with a firing due
//! fires its most recent due entry. The hub carries each decision out,
//! re-checking it under the rollout's or schedule's row lock.
//!
//! State and deadlines are rows, so the controller survives restarts. On
//! PostgreSQL every replica runs it, but a tick runs only on the replica
//! holding a transaction-scoped advisory lock, so exactly one drives
//! rollouts and fires schedules at a time; when it dies its connection's
//! lock goes with it and another replica's next tick takes over.

use std::time::Duration;

use chrono::Utc;

use crate::domain::Result;
use crate::domain::rollout::{self, RolloutState, Tick};
use crate::hub::PolicyHub;

/// The advisory lock key of the controller.
const CONTROLLER_LOCK: i64 = 7_240_532;

/// Ticks every `interval` until the process ends.
pub async fn run(hub: PolicyHub, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ticked = hub
            .exclusively(CONTROLLER_LOCK, async || {
                let rollouts = drive_rollouts(&hub).await;
                fire_schedules(&hub).await?;
                rollouts
            })
            .await;
        if let Err(error) = ticked {
            tracing::warn!(%error, "the controller could not tick; trying again");
        }
    }
}

/// One decision for every running rollout.
async fn drive_rollouts(hub: &PolicyHub) -> Result<()> {
    for running in hub.live_rollouts().await? {
        if !matches!(
            running.state,
            RolloutState::Running | RolloutState::Scheduled
        ) {
            continue;
        }
        let fleet = hub.fleet_view(&running.namespace).await?;
        let decision = rollout::tick(&running, fleet.not_stale(), Utc::now());
        if decision != Tick::Wait {
            tracing::info!(rollout = %running.id, ?decision, "rollout controller decision");
            hub.drive_rollout(&running, decision).await?;
        }
    }
    Ok(())
}

/// Fires every schedule with a firing due; one that cannot be fired now
/// does not hold up the others.
async fn fire_schedules(hub: &PolicyHub) -> Result<()> {
    for due in hub.due_schedules().await? {
        if let Err(error) = hub.fire_schedule(&due).await {
            tracing::warn!(%error, namespace = %due.namespace, schedule = %due.name,
                "the schedule could not fire; trying again");
        }
    }
    Ok(())
}
