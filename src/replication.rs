//! How a replica learns of activations committed by the others (PostgreSQL).
//!
//! Each activation transaction sends `pg_notify('policyhub_revisions', R)`,
//! delivered at commit. A replica LISTENs and, on each notification, catches
//! its index up from the event log; it also catches up on a timer, because a
//! notification is lost when the listening connection drops. Either way the
//! hub applies revisions whole and in order, so a lost notification only
//! delays an update, never loses it.

use std::{future::pending, str::FromStr};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use secrecy::{ExposeSecret, SecretString};

use crate::config::WatchSettings;
use crate::hub::PolicyHub;
use crate::storage::REVISION_CHANNEL;

/// The `application_name` of the listening connection, so operators (and
/// tests) can find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "policyhub-listener";

async fn listen(database_url: &SecretString) -> anyhow::Result<PgListener> {
    let options = PgConnectOptions::from_str(database_url.expose_secret())?
        .application_name(LISTENER_APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(REVISION_CHANNEL).await?;
    Ok(listener)
}

/// Follows the other replicas until the task is aborted.
pub async fn follow(hub: PolicyHub, database_url: SecretString, settings: WatchSettings) {
    let mut ticker = tokio::time::interval(settings.catch_up_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener: Option<PgListener> = None;
    loop {
        if settings.listen_notifications && listener.is_none() {
            match listen(&database_url).await {
                Ok(connected) => listener = Some(connected),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for activations; catching up on a timer")
                }
            }
        }
        let notified = async {
            match listener.as_mut() {
                Some(listener) => listener.try_recv().await,
                None => pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            received = notified => match received {
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!("the activation listener lost its connection; reconnecting"),
                Err(error) => {
                    tracing::warn!(%error, "the activation listener failed; reconnecting");
                    listener = None;
                }
            },
        }
        if let Err(error) = hub.catch_up().await {
            tracing::warn!(%error, "cannot catch up with other replicas");
        }
    }
}
