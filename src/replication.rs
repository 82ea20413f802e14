//! How a replica learns of activations committed by the others (PostgreSQL).
//!
//! Each activation transaction sends `pg_notify('policyhub_revisions', R)`,
//! delivered at commit. A replica LISTENs and, on each notification, catches
//! its index up from the event log; it also catches up on a timer, because a
//! notification is lost when the listening connection drops. Either way the
//! hub applies revisions whole and in order, so a lost notification only
//! delays an update, never loses it.

use std::{
    future::pending,
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};

use crate::config::WatchSettings;
use crate::hub::PolicyHub;
use crate::storage::{Heard, RevisionListener};

/// Follows the other replicas until the task is aborted.
///
/// A replica that cannot read the database for `watch.vouch_timeout_ms`
/// stops vouching for its revision: its streams end with UNAVAILABLE naming
/// the revision to resume from and new ones are refused, so runtimes move to
/// a replica that sees the others' activations; it serves again at the
/// first successful read.
pub async fn follow(hub: PolicyHub, database_url: SecretString, settings: WatchSettings) {
    let mut ticker = tokio::time::interval(settings.catch_up_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // No database call may hold the loop longer than this, or a black-holed
    // connection would keep the replica vouching forever.
    let attempt = settings.catch_up_interval().max(Duration::from_secs(1));
    let mut last_read = Instant::now();
    let mut listener: Option<RevisionListener> = None;
    loop {
        if settings.listen_notifications && listener.is_none() {
            let connecting = RevisionListener::connect(database_url.expose_secret());
            match tokio::time::timeout(attempt, connecting).await {
                Ok(Ok(connected)) => listener = Some(connected),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot listen for activations; catching up on a timer")
                }
                Err(_) => tracing::warn!("the database did not answer the activation listener"),
            }
        }
        let notified = async {
            match listener.as_mut() {
                Some(listener) => listener.next().await,
                None => pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            received = notified => match received {
                Ok(Heard::Revision) => {}
                Ok(Heard::Lost) => tracing::warn!("the activation listener lost its connection; reconnecting"),
                Err(error) => {
                    tracing::warn!(%error, "the activation listener failed; reconnecting");
                    listener = None;
                }
            },
        }
        match tokio::time::timeout(attempt, hub.catch_up()).await {
            Ok(Ok(())) => {
                last_read = Instant::now();
                hub.index().set_cut_off(false);
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot catch up with other replicas"),
            Err(_) => tracing::warn!("the database did not answer the catch-up read"),
        }
        if last_read.elapsed() > settings.vouch_timeout
            && hub.index().ending() == crate::watch::Ending::Serving
        {
            tracing::error!(
                revision = hub.index().revision(),
                "no database read for too long: ending watch streams so runtimes move to another replica"
            );
            hub.index().set_cut_off(true);
        }
    }
}
