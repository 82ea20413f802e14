//! Follows one namespace through the runtime library and keeps what it
//! decides in [`FollowedNamespaces`](super::followed::FollowedNamespaces):
//! the files (when rendered) are the check each new state must pass, so
//! a failed reload is reported REJECTED and leaves the previous state in
//! force everywhere.

use std::{pin::pin, sync::Arc, sync::atomic::Ordering};

use futures::StreamExt;
use policyhub_runtime::{Event, State, Subscription, Validate};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::files::Files;
use super::followed::Followed;

/// The agent's check of a new state: its files, written and reloaded.
struct Check(Option<Arc<Mutex<Files>>>);

impl Validate for Check {
    async fn validate(&mut self, state: &State) -> Result<(), String> {
        match &self.0 {
            Some(files) => files.lock().await.put_in_force(state).await,
            None => Ok(()),
        }
    }
}

/// Follows `subscription` until it is refused for good, or `stop` is
/// cancelled and no new state is being put in force.
pub async fn follow(
    subscription: Subscription,
    followed: Arc<Followed>,
    files: Option<Files>,
    stop: CancellationToken,
) {
    let files = files.map(|files| Arc::new(Mutex::new(files)));
    if let Some(files) = &files {
        tokio::spawn(super::files::sweep(Arc::downgrade(files)));
    }
    let mut events = pin!(subscription.events_with(Check(files.clone())));
    // A stream opened after one was lost is a reconnection; the first is not.
    let mut connected_before = false;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            // Only between states: a check under way (files written, the
            // link swapped, the command running) holds the files, and is
            // driven to its end by the branch above while this one waits
            // for them. Cut, it would leave a reload half done.
            () = stopped(&stop, files.as_deref()) => return,
        };
        let Some(event) = event else {
            return;
        };
        match event {
            Ok(Event::Applied(state)) => {
                tracing::info!(
                    namespace = followed.namespace,
                    revision = state.revision,
                    policies = ?state
                        .bundles
                        .values()
                        .map(|bundle| format!("{}@{}", bundle.name, bundle.version))
                        .collect::<Vec<_>>(),
                    "applied a revision"
                );
                followed.hold(state);
            }
            Ok(Event::FromCache(state)) => followed.hold(state),
            Ok(Event::Revoked {
                revision,
                reason,
                restored,
            }) => {
                followed.reject(revision, reason);
                if let Some(files) = &files
                    && let Err(reason) = files.lock().await.put_in_force(&restored).await
                {
                    tracing::error!(%reason, namespace = followed.namespace, "cannot put the restored state's files back");
                }
                followed.hold(restored);
            }
            Ok(Event::Rejected { revision, reason }) => followed.reject(revision, reason),
            Ok(Event::Connected { endpoint, .. }) => {
                if connected_before {
                    followed.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                followed.set_server(Some(endpoint));
                followed.set_refused(None);
            }
            Ok(Event::Refused { reason, .. }) => {
                followed.set_server(None);
                followed.refusals.fetch_add(1, Ordering::Relaxed);
                followed.set_refused(Some(reason));
            }
            Ok(Event::CheckpointStale { revision, age, .. }) => {
                tracing::warn!(
                    namespace = followed.namespace,
                    revision,
                    age_ms = age.as_millis() as u64,
                    "the server's newest checkpoint is stale"
                );
                followed.set_stale(true);
            }
            Ok(Event::CheckpointFresh { .. }) => followed.set_stale(false),
            Ok(Event::Disconnected { .. }) => followed.set_server(None),
            Ok(Event::HistoryRefused { reason, .. }) => {
                tracing::error!(
                    namespace = followed.namespace,
                    %reason,
                    "refusing the server's history; the state in force stays"
                );
                followed.set_server(None);
                followed.refuse_history(reason);
            }
            Ok(Event::HistoryRestored {
                reason,
                from_size,
                to_size,
            }) => {
                tracing::warn!(
                    namespace = followed.namespace,
                    %reason,
                    from_size,
                    to_size,
                    "took the server's restored history, as its operator declared"
                );
                followed.restore_history(reason);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, namespace = followed.namespace, "the subscription was refused for good");
                return;
            }
        }
    }
}

/// Completes once `stop` is cancelled and `files`, if any, are not being
/// put in force.
async fn stopped(stop: &CancellationToken, files: Option<&Mutex<Files>>) {
    stop.cancelled().await;
    if let Some(files) = files {
        drop(files.lock().await);
    }
}
