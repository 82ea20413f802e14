//! The rollout controller: every tick, each running rollout is checked
//! against the fleet view — too many cohort runtimes rejected a candidate
//! or missed the apply deadline, or the step baked — and the decision is
//! carried out by the hub, which re-checks it under the rollout's row lock.
//!
//! State and deadlines are rows, so the controller survives restarts. On
//! PostgreSQL every replica runs it, but a tick runs only on the replica
//! holding a transaction-scoped advisory lock, so exactly one drives
//! rollouts at a time; when it dies its connection's lock goes with it and
//! another replica's next tick takes over.

use std::time::Duration;

use chrono::Utc;

use crate::domain::Result;
use crate::domain::rollout::{self, RolloutState, Tick};
use crate::hub::PolicyHub;

/// The advisory lock key of the rollout controller.
const CONTROLLER_LOCK: i64 = 7_240_532;

/// Ticks every `interval` until the process ends.
pub async fn run(hub: PolicyHub, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ticked = hub
            .exclusively(CONTROLLER_LOCK, async || tick(&hub).await)
            .await;
        if let Err(error) = ticked {
            tracing::warn!(%error, "the rollout controller could not tick; trying again");
        }
    }
}

/// One decision for every running rollout.
async fn tick(hub: &PolicyHub) -> Result<()> {
    for running in hub.live_rollouts().await? {
        if !matches!(
            running.state,
            RolloutState::Running | RolloutState::Scheduled
        ) {
            continue;
        }
        let runtimes = hub.cohorts(&running.namespace).await?;
        let decision = rollout::tick(&running, &runtimes, Utc::now());
        if decision != Tick::Wait {
            tracing::info!(rollout = %running.id, ?decision, "rollout controller decision");
            hub.drive_rollout(&running, decision).await?;
        }
    }
    Ok(())
}
