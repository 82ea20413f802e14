//! The machinery behind [`Subscription::events`](crate::Subscription::events):
//! connect, resume, verify, decide whole states, report, and say what
//! happened as [`Event`]s.
//!
//! ```text
//!   start ── cache? ──> FromCache (re-verified, validated)
//!     │
//!     v
//!   connect ──> fetch JWKS ──> WatchActive(since = decided revision) ──> Connected
//!     ^                              │ parts ──> whole revision
//!     │                              │   verify every bundle, validate ──> Applied / Rejected
//!     │                              │   report APPLIED / REJECTED
//!     └── next address; full-jitter <┘ any failure: UNAVAILABLE, reset,
//!         backoff after a whole round  h2 error, 3 missed heartbeats,
//!                                      no answer to a connection or report
//!         Disconnected
//! ```
//!
//! With several addresses (`endpoints`), a failure moves to the next one
//! after a jittered wait within the backoff's first bound, and only a whole
//! round of failures takes the doubling backoff. A session away from the
//! runtime's first choice opens a stream there after a jittered rebalance
//! delay and, once it is open, drops the one in use: the resume is by
//! revision, so nothing is missed or applied twice across the move.
//!
//! Outcomes are reported at a random moment in the second half of the
//! subscription's report spread after they are decided (several decided
//! meanwhile go in one report), so that a fleet's reports do not reach the
//! server while it still writes the update to the rest of the fleet.
//!
//! A [`Revoker`](crate::Revoker)'s request, served between messages and
//! during the backoff, puts the state before the one in force back (the
//! one in force is reported REJECTED).
//!
//! The subscription resumes from the last revision it *decided* on, applied
//! or rejected, so a rejected version is not sent again in a loop; it
//! applies a state only when its revision is newer than the applied one
//! (unless the server says `reset`: a server behind the cursor, such as one
//! restored from a backup, whose revision it then resumes from), so it
//! never goes backwards. A declared restore taken on a stream that resumed
//! from the old history's cursor opens the stream anew from revision 0:
//! the restored server is taken whole, from its snapshot.
//!
//! Here is the loop of sessions and backoff; `connection` makes the channel
//! and says how a session ends, `subscription_state` keeps what outlives a
//! session and decides each revision, `reporter` sends the outcomes.

mod connection;
mod reporter;
mod subscription_state;
#[cfg(all(test, unix))]
mod tests;

use std::{convert::Infallible, time::Instant};

use tonic::codec::Streaming;

use tokio::sync::{OwnedMutexGuard, mpsc};

pub(crate) use self::connection::EventSink;
use self::connection::{
    Client, Failure, announced_heartbeat, connect, refuses_credentials, token_changed,
};
use self::reporter::Reporter;
use self::subscription_state::SubscriptionState;
use crate::backoff::Backoff;
use crate::endpoints::{Endpoints, rebalance_delay};
use crate::event::{Event, Validate, WatchError};
use crate::proto::{WatchActiveRequest, WatchActiveResponse, WatchEventKind};
use crate::revoke::Revocation;
use crate::state::Assembler;
use crate::subscription::{DEFAULT_HEARTBEAT_INTERVAL, Subscription, report_delay};

/// Follows the subscription until it fails for good or nobody listens,
/// sending every event to `sink`; a permanent failure is sent last.
pub(crate) async fn drive<F>(subscription: Subscription, mut sink: EventSink<F>)
where
    F: Validate,
{
    // Refused before the cache is read or anything connects: a setting
    // that cannot be followed would otherwise loop (a zero heartbeat
    // interval drops every stream as it opens, a zero backoff reconnects
    // as fast as the host allows).
    if let Err(refused) = subscription.check() {
        let _ = sink.events.send(Err(refused)).await;
        return;
    }
    let mut endpoints = Endpoints::rank(
        &subscription.endpoints,
        subscription
            .runtime
            .as_ref()
            .map(|runtime| runtime.id.as_str()),
    );
    let Ok(mut subscription_state) = SubscriptionState::start(&subscription, &mut sink).await
    else {
        return;
    };
    let mut revocations = Revocations::of(&subscription).await;
    let fresh_backoff = || Backoff::new(subscription.backoff_initial, subscription.backoff_max);
    let mut backoff = fresh_backoff();
    loop {
        let started = Instant::now();
        let failure = match session(
            &subscription,
            &mut endpoints,
            &mut subscription_state,
            &mut sink,
            &mut revocations,
        )
        .await
        {
            Err(failure) => failure,
            Ok(never) => match never {},
        };
        let history = matches!(failure, Failure::History(_));
        let (reason, refused) = match failure {
            Failure::Gone => return,
            Failure::Permanent { refusal, message }
                if subscription.retry_refused && refuses_credentials(refusal) =>
            {
                (format!("{refusal:?}: {message}"), true)
            }
            Failure::Permanent { refusal, message } => {
                let _ = sink
                    .events
                    .send(Err(WatchError::Refused { refusal, message }))
                    .await;
                return;
            }
            Failure::Config(message) => {
                let _ = sink.events.send(Err(WatchError::Config(message))).await;
                return;
            }
            Failure::Transient(reason) => (reason, false),
            Failure::History(reason) => (reason, false),
        };
        // A stream that stayed up a while starts the backoff over; every
        // reconnection is still jittered, so a fleet that lost its server
        // does not return in a wave.
        if started.elapsed() > subscription.backoff_max {
            backoff = fresh_backoff();
            endpoints.settled();
        }
        let failed_from = endpoints.current().to_owned();
        // The next address is tried after a jittered wait within the
        // backoff's first bound; once every one failed in a row, after the
        // doubling backoff.
        let retry_in = if endpoints.failed() {
            backoff.next_delay()
        } else {
            subscription.backoff_initial.mul_f64(fastrand::f64())
        };
        // The token refused: another one (a rotated token file) is tried at
        // once rather than after the backoff.
        let refused_token = match (&subscription.token, refused) {
            (Some(source), true) => source(),
            _ => None,
        };
        let event = if history {
            let verified_size = subscription_state.verified_size();
            tracing::error!(
                %reason,
                verified_size,
                revision = subscription_state.decided,
                delay_ms = retry_in.as_millis() as u64,
                "refusing the server's history; the state in force stays, retrying"
            );
            Event::HistoryRefused {
                reason,
                verified_size,
                retry_in,
            }
        } else if refused {
            tracing::warn!(
                %reason,
                revision = subscription_state.decided,
                delay_ms = retry_in.as_millis() as u64,
                "the server refused the credentials; the state in force stays, retrying"
            );
            Event::Refused { reason, retry_in }
        } else {
            tracing::warn!(
                %reason,
                endpoint = %failed_from,
                next = %endpoints.current(),
                revision = subscription_state.decided,
                delay_ms = retry_in.as_millis() as u64,
                "watch interrupted; resuming from the last decided revision"
            );
            Event::Disconnected {
                reason,
                retry_in,
                revision: subscription_state.decided,
            }
        };
        if sink.emit(event).await.is_err() {
            return;
        }
        // The application may take back its state while the server is away;
        // the report goes with the next connection.
        let sleep = tokio::time::sleep(retry_in);
        let mut sleep = std::pin::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = token_changed(subscription.token.as_ref(), refused_token.as_deref()), if refused => break,
                request = revocations.next() => {
                    if subscription_state.revoke(request, &sink).await.is_err() {
                        return;
                    }
                }
                () = subscription_state.freshness.expiry() => {
                    if sink.emit(subscription_state.freshness.expire()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The revocations of a [`Subscription::revocable`] subscription, taken
/// for the whole life of its stream.
struct Revocations(Option<OwnedMutexGuard<mpsc::Receiver<Revocation>>>);

impl Revocations {
    async fn of(subscription: &Subscription) -> Self {
        match &subscription.revocations {
            Some(receiver) => Revocations(Some(receiver.clone().lock_owned().await)),
            None => Revocations(None),
        }
    }

    /// The next request; never, once every revoker is gone.
    async fn next(&mut self) -> Revocation {
        if let Some(receiver) = self.0.as_mut()
            && let Some(request) = receiver.recv().await
        {
            return request;
        }
        self.0 = None;
        std::future::pending().await
    }
}

/// A stream open on one address, and what goes with it.
struct Opened {
    client: Client,
    reporter: Reporter,
    stream: Streaming<WatchActiveResponse>,
    /// Three heartbeat intervals: a stream silent for longer is dead.
    deadline: std::time::Duration,
}

/// Connects to `address`, fetches the keys if none are held, sends the
/// reports pending and opens the watch from the decided revision: it is
/// open once the server's response headers came (tonic answers the call
/// then; a call refused before them, trailers only, is its status), which
/// is what [`Event::Connected`] says. All of it within three heartbeat
/// intervals (at least 5 s): a connection that opens and never answers is
/// given up as a silent stream is.
async fn open(
    subscription: &Subscription,
    address: &str,
    subscription_state: &mut SubscriptionState,
) -> Result<Opened, Failure> {
    let within = subscription
        .heartbeat_interval
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
        .saturating_mul(3)
        .max(std::time::Duration::from_secs(5));
    tokio::time::timeout(
        within,
        open_unbounded(subscription, address, subscription_state),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Failure::Transient(format!(
            "{address} did not answer within {} ms",
            within.as_millis()
        )))
    })
}

async fn open_unbounded(
    subscription: &Subscription,
    address: &str,
    subscription_state: &mut SubscriptionState,
) -> Result<Opened, Failure> {
    let mut client = connect(subscription, address).await?;
    let mut reporter = Reporter::new(client.clone());
    if subscription_state.jwks.keys.is_empty() {
        subscription_state.refresh_keys(&mut client).await?;
    }
    subscription_state
        .flush_reports(&mut reporter, subscription)
        .await;
    let response = client
        .watch_active(WatchActiveRequest {
            namespace: subscription.namespace.clone(),
            names: subscription.names.clone(),
            since_revision: subscription_state.decided,
            runtime: subscription.runtime.clone(),
        })
        .await
        .map_err(Failure::from_status)?;
    let interval = subscription
        .heartbeat_interval
        .or_else(|| announced_heartbeat(response.metadata()))
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
    Ok(Opened {
        client,
        reporter,
        stream: response.into_inner(),
        deadline: interval.saturating_mul(3),
    })
}

/// Sends the reports pending on the stream's connection, waiting for the
/// answer no longer than `deadline` (three heartbeats): a link that does
/// not answer a report in that time is as dead as a silent stream, and the
/// reports stay pending for the next connection.
async fn flush(
    subscription_state: &mut SubscriptionState,
    reporter: &mut Reporter,
    subscription: &Subscription,
    deadline: std::time::Duration,
) -> Result<(), Failure> {
    tokio::time::timeout(
        deadline,
        subscription_state.flush_reports(reporter, subscription),
    )
    .await
    .map_err(|_| {
        Failure::Transient(format!(
            "no answer to a report for {} ms, three heartbeats",
            deadline.as_millis()
        ))
    })
}

/// When a session away from the runtime's first choice tries it again.
fn next_rebalance(
    subscription: &Subscription,
    endpoints: &Endpoints,
) -> Option<tokio::time::Instant> {
    (!endpoints.on_preferred())
        .then(|| tokio::time::Instant::now() + rebalance_delay(subscription.rebalance_interval))
}

/// One connection's life; it ends only by failing.
async fn session<F>(
    subscription: &Subscription,
    endpoints: &mut Endpoints,
    subscription_state: &mut SubscriptionState,
    sink: &mut EventSink<F>,
    revocations: &mut Revocations,
) -> Result<Infallible, Failure>
where
    F: Validate,
{
    let Opened {
        mut client,
        mut reporter,
        mut stream,
        mut deadline,
    } = open(subscription, endpoints.current(), subscription_state).await?;
    sink.emit(Event::Connected {
        revision: subscription_state.decided,
        endpoint: endpoints.current().to_owned(),
    })
    .await?;
    let mut rebalance_at = next_rebalance(subscription, endpoints);
    let mut assembler = Assembler::default();
    // When the outcomes decided since the last report go out: a random
    // moment in the second half of the spread after the first of them.
    let mut report_at: Option<tokio::time::Instant> = None;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(deadline, stream.message()) => message,
            () = tokio::time::sleep_until(report_at.unwrap_or_else(tokio::time::Instant::now)),
                if report_at.is_some() =>
            {
                report_at = None;
                flush(subscription_state, &mut reporter, subscription, deadline).await?;
                continue;
            }
            request = revocations.next() => {
                subscription_state.revoke(request, sink).await?;
                flush(subscription_state, &mut reporter, subscription, deadline).await?;
                continue;
            }
            () = subscription_state.freshness.expiry() => {
                let stale = subscription_state.freshness.expire();
                let reason = subscription_state.freshness.to_string();
                sink.emit(stale).await?;
                return Err(Failure::Transient(reason));
            }
            () = tokio::time::sleep_until(rebalance_at.unwrap_or_else(tokio::time::Instant::now)),
                if rebalance_at.is_some() =>
            {
                // The stream in use stays until the one on the first choice
                // is open; a first choice that does not answer within three
                // heartbeats is tried again later.
                let preferred = endpoints.preferred().to_owned();
                let opening = open(subscription, &preferred, subscription_state);
                match tokio::time::timeout(deadline, opening).await {
                    Ok(Ok(opened)) => {
                        tracing::info!(
                            from = %endpoints.current(),
                            to = %preferred,
                            revision = subscription_state.decided,
                            "moved back to the preferred server"
                        );
                        endpoints.moved_to_preferred();
                        (client, reporter, stream, deadline) =
                            (opened.client, opened.reporter, opened.stream, opened.deadline);
                        // Parts of a revision not yet whole come again, whole,
                        // on the new stream, which resumes from the decided one.
                        assembler = Assembler::default();
                        rebalance_at = None;
                        sink.emit(Event::Connected {
                            revision: subscription_state.decided,
                            endpoint: preferred,
                        })
                        .await?;
                    }
                    Ok(Err(Failure::Gone)) => return Err(Failure::Gone),
                    Ok(Err(failure)) => {
                        tracing::debug!(endpoint = %preferred, reason = %failure.reason(), "the preferred server does not answer yet");
                        rebalance_at = next_rebalance(subscription, endpoints);
                    }
                    Err(_) => {
                        tracing::debug!(endpoint = %preferred, "the preferred server does not answer yet");
                        rebalance_at = next_rebalance(subscription, endpoints);
                    }
                }
                continue;
            }
        };
        let message = match message {
            Err(_) => {
                return Err(Failure::Transient(format!(
                    "no message for {} ms, three heartbeats",
                    deadline.as_millis()
                )));
            }
            Ok(Err(status)) => return Err(Failure::from_status(status)),
            Ok(Ok(None)) => return Err(Failure::Transient("the stream ended".into())),
            Ok(Ok(Some(message))) => message,
        };
        let revoked_signer = subscription_state
            .signed_by_revoked(&message.bundles)
            .is_some();
        if let Some(checkpoint) = message.checkpoint.as_ref().filter(|_| !revoked_signer) {
            if let Some(restored) = subscription_state
                .follow_tree(checkpoint, &mut client, subscription)
                .await?
            {
                sink.emit(restored).await?;
                if message.kind() != WatchEventKind::Snapshot {
                    // The stream resumed from a cursor of the history left
                    // behind, so what the restored server took up to that
                    // revision would never come: the restored server is
                    // taken whole, from a snapshot on a stream opened anew.
                    subscription_state.decided = 0;
                    let opened =
                        open(subscription, endpoints.current(), subscription_state).await?;
                    (client, reporter, stream, deadline) = (
                        opened.client,
                        opened.reporter,
                        opened.stream,
                        opened.deadline,
                    );
                    assembler = Assembler::default();
                    continue;
                }
            }
            if let Some(fresh) = subscription_state
                .checkpoint(checkpoint, &mut client)
                .await?
            {
                sink.emit(fresh).await?;
            }
        }
        let Some(revision) = assembler.push(message).map_err(Failure::Transient)? else {
            continue;
        };
        if let Some(event) = subscription_state
            .decide(revision, &mut client, subscription, &mut sink.validate)
            .await
        {
            sink.emit(event).await?;
        }
        if subscription.report_spread.is_zero() {
            flush(subscription_state, &mut reporter, subscription, deadline).await?;
        } else if report_at.is_none() && subscription_state.reports_pending() {
            report_at =
                Some(tokio::time::Instant::now() + report_delay(subscription.report_spread));
        }
    }
}
