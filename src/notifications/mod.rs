//! The delivery worker: every event a subscription wants reaches its
//! endpoint at least once, in event order, from the outbox the event's
//! own transaction wrote.
//!
//! One replica delivers at a time: the replica leading the delivery role
//! (a session advisory lock on its leadership connection, see
//! `storage::leadership`, so that no transaction stays open while it
//! delivers) runs a term that lasts until its database fails it, the lock is
//! lost with its connection, or the server stops; when it dies, its
//! connection's lock goes with it and another replica's next poll takes
//! over, from the cursors in the database. A term that ends lets the
//! attempts under way finish and records them first. Within the term each subscription drains in a task of its
//! own, so a slow or dead endpoint delays only its own subscription; the
//! runs of attempts the drains end at the same time are recorded together,
//! in one transaction (the recorder's group commit). A failed attempt is retried after a growing, jittered delay; after
//! `notifications.disable_after_failures` failures in a row the
//! subscription is disabled, with a SUBSCRIPTION_DISABLED event, keeping
//! its place for when it is enabled again.

mod courier;
mod message;
mod recorder;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use courier::HttpCourier;
use recorder::Recorder;

use crate::config::NotificationSettings;
use crate::domain::Result;
use crate::domain::rollout::RolloutState;
use crate::domain::subscription::{
    Announcement, Courier, DeliveryRecord, DeliveryRun, Outcome, Subscription,
};
use crate::hub::{PolicyHub, Term};

/// The advisory lock key of the delivery worker (7_240_531 is the
/// migrations', 7_240_532 the controller's, 7_240_533 the chain head's).
const NOTIFICATIONS_LOCK: i64 = 7_240_534;

/// How often the backlog gauges are read from the database.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The most events a drain delivers before it records its progress.
const RUN: u64 = 64;

/// The longest a drain delivers before it records its progress.
const RUN_FOR: Duration = Duration::from_millis(200);

/// How often the delivering replica prunes the outbox rows every
/// subscription has passed.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The metrics the worker feeds.
pub use crate::metrics::NotificationInstruments as Instruments;
use crate::metrics::SubscriptionLabels as Labels;

fn subscription_labels(subscription: &Subscription) -> Labels {
    vec![("subscription", subscription.display_name())]
}

/// What the worker runs with.
#[derive(Clone)]
pub struct Worker {
    /// Where subscriptions and the outbox are read and attempts recorded.
    pub hub: PolicyHub,
    /// Retries, disabling, polling.
    pub settings: Arc<NotificationSettings>,
    /// What sends each message.
    pub courier: Arc<dyn Courier>,
    /// What it counts.
    pub instruments: Instruments,
}

/// Polls until `stop` is cancelled: each poll, this replica tries to begin
/// a term as the one delivering replica. Every replica reads the backlog
/// gauges, whichever delivers. Once `stop` is cancelled, the attempts under
/// way finish (each within `notifications.timeout`) and are recorded, then
/// the term ends and this returns.
pub async fn run(worker: Worker, stop: CancellationToken) {
    let deliver = async {
        let mut ticker = poll(&worker.settings);
        while !stop.is_cancelled() {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => break,
            }
            let term = worker
                .hub
                .exclusively(NOTIFICATIONS_LOCK, async |term| {
                    deliver_term(&worker, term, &stop).await
                })
                .await;
            if let Err(error) = term {
                tracing::warn!(%error, "the delivery worker stopped delivering; trying again");
            }
        }
    };
    tokio::select! {
        () = deliver => {}
        () = read_gauges(&worker) => {}
    }
}

fn poll(settings: &NotificationSettings) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(settings.poll_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// The term of the delivering replica: each poll, a drain task for every
/// enabled, due subscription that has none running. When the database
/// fails it, the term is lost or `shutdown` is cancelled, the term ends
/// after its drains' current attempts, so that another replica makes no
/// attempt of its own at the same time, nor one cut short.
async fn deliver_term(worker: &Worker, term: &Term, shutdown: &CancellationToken) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut drains = JoinSet::new();
    let mut running: HashMap<i64, AbortHandle> = HashMap::new();
    let recorder = Recorder::start(worker.hub.clone());
    let mut ticker = poll(&worker.settings);
    let mut pruned = tokio::time::Instant::now();
    let lost = term.lost();
    tokio::pin!(lost);
    loop {
        let ending = tokio::select! {
            _ = ticker.tick() => false,
            () = &mut lost => true,
            () = shutdown.cancelled() => true,
        };
        if ending {
            stop.store(true, Ordering::Relaxed);
            while drains.join_next().await.is_some() {}
            return Ok(());
        }
        while drains.try_join_next().is_some() {}
        if pruned.elapsed() >= PRUNE_INTERVAL {
            pruned = tokio::time::Instant::now();
            match worker.hub.prune_outbox().await {
                Ok(0) => {}
                Ok(rows) => tracing::debug!(rows, "pruned the outbox"),
                Err(error) => tracing::warn!(%error, "the outbox could not be pruned"),
            }
        }
        let subscriptions = match worker.hub.all_subscriptions().await {
            Ok(subscriptions) => subscriptions,
            Err(error) => {
                stop.store(true, Ordering::Relaxed);
                while drains.join_next().await.is_some() {}
                return Err(error);
            }
        };
        running.retain(|_, drain| !drain.is_finished());
        let now = Utc::now();
        for subscription in subscriptions {
            let due =
                subscription.enabled && subscription.next_attempt_at.is_none_or(|at| at <= now);
            if !due || running.contains_key(&subscription.id) {
                continue;
            }
            let id = subscription.id;
            let worker = worker.clone();
            let recorder = recorder.clone();
            let stop = stop.clone();
            let handle = drains.spawn(async move {
                if let Err(error) = drain(&worker, &recorder, id, &stop).await {
                    tracing::warn!(%error, subscription = id,
                        "a delivery could not be recorded; trying again");
                }
            });
            running.insert(id, handle);
        }
    }
}

/// Delivers a subscription's waiting events in order, one at a time, in
/// runs of at most [`RUN`] events and [`RUN_FOR`], each recorded by the
/// `recorder` (with the other subscriptions' runs that wait then), until it
/// caught up (a run shorter than [`RUN`]), an attempt fails (its retry is
/// scheduled), or `stop`. A subscription that falls behind so records its
/// progress in fewer, larger transactions, sharing the writer with
/// activations; a crash within a run delivers its events again, with the
/// same ids.
async fn drain(worker: &Worker, recorder: &Recorder, id: i64, stop: &AtomicBool) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        // Read again each run: an operator may have changed or disabled
        // it, and its cursor moved.
        let Some(subscription) = worker.hub.subscription_by_id(id).await? else {
            return Ok(());
        };
        if !subscription.enabled {
            return Ok(());
        }
        let events = worker.hub.next_announcements(&subscription, RUN).await?;
        let started = tokio::time::Instant::now();
        let mut attempts = Vec::new();
        let mut failures = subscription.consecutive_failures;
        let mut retry = (None, None);
        for event in &events {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let attempt = failures + 1;
            let record = worker
                .courier
                .deliver(&subscription, Announcement::Event(event), attempt)
                .await;
            let mut labels = subscription_labels(&subscription);
            labels.push(("outcome", record.outcome.as_str().to_owned()));
            worker.instruments.deliveries.get_or_create(&labels).inc();
            let failed = record.outcome == Outcome::Failed;
            if failed {
                retry = after_failure(worker, &subscription, event.id, &record, attempt);
            }
            attempts.push(record);
            failures = 0;
            if failed || started.elapsed() >= RUN_FOR {
                break;
            }
        }
        let Some(last) = attempts.last() else {
            return Ok(());
        };
        let failed = last.outcome == Outcome::Failed;
        let (next_attempt_at, disabled) = retry;
        let moved = recorder
            .record(DeliveryRun {
                subscription,
                attempts,
                next_attempt_at,
                disabled,
            })
            .await?;
        // A short run means the subscription caught up: what arrives next
        // waits for the next poll, in a run of its own, rather than a
        // transaction per event.
        if !moved || failed || events.len() < RUN as usize {
            return Ok(());
        }
    }
    Ok(())
}

/// When to try a failed event again, or why the subscription is disabled
/// after `attempt` failures in a row.
fn after_failure(
    worker: &Worker,
    subscription: &Subscription,
    event: u64,
    record: &DeliveryRecord,
    attempt: u32,
) -> (Option<chrono::DateTime<Utc>>, Option<String>) {
    let settings = &worker.settings;
    if attempt >= settings.disable_after_failures.max(1) {
        tracing::warn!(subscription = %subscription.display_name(), attempt,
            error = %record.error, "disabling a subscription that keeps failing");
        worker.instruments.disabled.inc();
        let reason = format!("{attempt} failed attempts, the last: {}", record.error);
        return (None, Some(reason));
    }
    let delay = retry_delay(settings, attempt);
    tracing::info!(subscription = %subscription.display_name(), attempt,
        event, error = %record.error, ?delay, "delivery failed; retrying");
    (Some(Utc::now() + delay), None)
}

/// The delay before attempt `failures + 1`: the bound doubles from
/// `initial_retry_delay` per failure up to `max_retry_delay`, and the delay
/// is drawn from its upper half ("equal jitter"), so that retries spread
/// out and still grow.
fn retry_delay(settings: &NotificationSettings, failures: u32) -> Duration {
    let bound = settings
        .initial_retry_delay
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(settings.max_retry_delay);
    bound / 2 + (bound / 2).mul_f64(fastrand::f64())
}

/// A count as a gauge's value.
fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Reads every subscription's backlog, and the rollouts that wait for a
/// person (an approval, or a resume after they paused themselves), into the gauges every [`GAUGE_INTERVAL`], until the
/// process ends.
async fn read_gauges(worker: &Worker) {
    let mut ticker = tokio::time::interval(GAUGE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let subscriptions = match worker.hub.all_subscriptions().await {
            Ok(subscriptions) => subscriptions,
            Err(error) => {
                tracing::warn!(%error, "cannot read the subscriptions' backlog");
                continue;
            }
        };
        let instruments = &worker.instruments;
        match worker.hub.live_rollouts().await {
            Ok(live) => {
                let waiting = live
                    .iter()
                    .filter(|rollout| rollout.state == RolloutState::PendingApproval)
                    .count();
                let self_paused = live
                    .iter()
                    .filter(|rollout| rollout.state == RolloutState::Paused && rollout.self_paused)
                    .count();
                instruments
                    .rollouts_awaiting_approval
                    .set(gauge_value(waiting));
                instruments
                    .rollouts_self_paused
                    .set(gauge_value(self_paused));
            }
            Err(error) => tracing::warn!(%error, "cannot count the rollouts awaiting a person"),
        }
        instruments.queue_depth.clear();
        instruments.oldest_undelivered_age.clear();
        for subscription in subscriptions {
            let Ok(backlog) = worker.hub.backlog(&subscription).await else {
                continue;
            };
            let labels = subscription_labels(&subscription);
            let depth = i64::try_from(backlog.depth).unwrap_or(i64::MAX);
            instruments.queue_depth.get_or_create(&labels).set(depth);
            let age = backlog
                .oldest_at
                .map_or(0, |at| (Utc::now() - at).num_seconds().max(0));
            instruments
                .oldest_undelivered_age
                .get_or_create(&labels)
                .set(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_with_jitter_up_to_the_bound() {
        let settings = NotificationSettings {
            initial_retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_millis(800),
            ..NotificationSettings::default()
        };
        for failures in 1..10u32 {
            let bound = Duration::from_millis(100 * 2u64.pow(failures - 1).min(8));
            let delay = retry_delay(&settings, failures);
            assert!(
                delay >= bound / 2 && delay <= bound,
                "{failures}: {delay:?}"
            );
        }
    }
}
