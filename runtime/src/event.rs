//! What a subscription says and what the application answers: the
//! [`Event`]s, the application's check of each new state ([`Validate`]),
//! and why a subscription stops for good ([`WatchError`]).

use std::{future::Future, time::Duration};

use crate::state::State;

/// The application's verdict on each new whole state, before it is put in
/// force: `Ok` applies it, `Err(reason)` refuses it (reported REJECTED with
/// the reason; the previous state stays in force). The check may take its
/// time, such as writing files and reloading a process; the subscription
/// waits for it. Every `FnMut(&State) -> Result<(), String>` is one.
pub trait Validate {
    /// Accepts or refuses `state`.
    fn validate(&mut self, state: &State) -> impl Future<Output = Result<(), String>> + Send;
}

impl<F> Validate for F
where
    F: FnMut(&State) -> Result<(), String>,
{
    fn validate(&mut self, state: &State) -> impl Future<Output = Result<(), String>> + Send {
        std::future::ready(self(state))
    }
}

/// Why a subscription stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The server refused the subscription itself (credentials, role, a
    /// malformed request): retrying cannot help.
    #[error("the server refused the watch ({refusal:?}): {message}")]
    Refused {
        /// What kind of refusal.
        refusal: Refusal,
        /// The server's words.
        message: String,
    },
    /// The subscription is misconfigured.
    #[error("{0}")]
    Config(String),
}

/// Why the server refused a subscription for good, by the gRPC status
/// code it answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No valid credentials (`UNAUTHENTICATED`).
    Unauthenticated,
    /// The credentials may not watch this namespace (`PERMISSION_DENIED`).
    PermissionDenied,
    /// The request is malformed (`INVALID_ARGUMENT`).
    InvalidArgument,
    /// The server cannot serve it as it stands (`FAILED_PRECONDITION`).
    FailedPrecondition,
    /// The server does not offer the call (`UNIMPLEMENTED`).
    Unimplemented,
}

/// What happened to a subscription.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// At start, the last-known-good state read back from the cache and
    /// verified again: in force until the server answers.
    FromCache(State),
    /// A stream to the server is open (the server answered the watch with
    /// its response headers); what changed after `revision` follows. A
    /// watch that fails before the server answers is only a
    /// [`Disconnected`](Event::Disconnected).
    Connected {
        /// The revision the stream resumes from (0: a snapshot comes).
        revision: u64,
        /// The address it is open to, one of the subscription's
        /// [endpoints](crate::Subscription::with_endpoints).
        endpoint: String,
    },
    /// A new whole state, every bundle verified and the application's
    /// validation passed: it is in force, cached, and reported APPLIED.
    Applied(State),
    /// A state refused, because a bundle did not verify or the application's
    /// validation refused it: the previous state stays in force, and the
    /// refusal is reported REJECTED (it is not sent again).
    Rejected {
        /// The refused revision.
        revision: u64,
        /// Why, as reported.
        reason: String,
    },
    /// The application took back the state in force at `revision` (through
    /// a [`Revoker`](crate::Revoker)): it is reported REJECTED, and `restored`, the state
    /// before it, is in force and cached again.
    Revoked {
        /// The revision taken back.
        revision: u64,
        /// Why, as reported.
        reason: String,
        /// The state in force again.
        restored: State,
    },
    /// The newest signed checkpoint of the server is older than
    /// [`Subscription::max_checkpoint_age`](crate::Subscription::max_checkpoint_age): the replica is cut off from
    /// its database or frozen, so what it serves may be old. The state in
    /// force stays; the subscription reconnects once (perhaps to another
    /// replica), and says [`Event::CheckpointFresh`] when a current
    /// checkpoint arrives.
    CheckpointStale {
        /// The revision that checkpoint states.
        revision: u64,
        /// When it was signed.
        signed_at: chrono::DateTime<chrono::Utc>,
        /// How old it was when found stale.
        age: Duration,
    },
    /// After [`Event::CheckpointStale`], a checkpoint younger than
    /// [`Subscription::max_checkpoint_age`](crate::Subscription::max_checkpoint_age) arrived.
    CheckpointFresh {
        /// The revision it states.
        revision: u64,
        /// When it was signed.
        signed_at: chrono::DateTime<chrono::Utc>,
    },
    /// The server showed a history that does not extend the one this
    /// runtime verified last: its log's tree is smaller (wound back, such
    /// as a database restored from an older backup), another tree of the
    /// same size, or a larger tree no consistency proof ties to it (a
    /// forked history), or a checkpoint of another log. Nothing the server
    /// sends is applied until it shows a tree that extends the remembered
    /// one: the state in force stays, the subscription reconnects after
    /// `retry_in` (perhaps to another replica), and says this again as long
    /// as the server does.
    HistoryRefused {
        /// Why.
        reason: String,
        /// The size of the tree verified last, which stays remembered.
        verified_size: u64,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// The server's log does not extend the tree verified last, and it
    /// proved that it records a restore its operator declared (a RESTORED
    /// event, newer than any restore taken before): its tree is taken from
    /// now on and the subscription goes on. Raise it to the people who run
    /// the fleet: a restore loses history, and only an operator (or whoever
    /// holds the server's signing key) can declare one.
    HistoryRestored {
        /// The operator's reason, as recorded.
        reason: String,
        /// The size of the tree verified before.
        from_size: u64,
        /// The size of the restored tree taken.
        to_size: u64,
    },
    /// The server refused the credentials (`UNAUTHENTICATED`, or
    /// `PERMISSION_DENIED` for the namespace) of a subscription that
    /// [retries refusals](crate::Subscription::retry_when_refused): the
    /// state in force stays, and the subscription tries again after
    /// `retry_in`, or as soon as the token source gives another token.
    Refused {
        /// The server's refusal.
        reason: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// The stream was lost (the server went away, a reset or half-open
    /// connection, three missed heartbeats); the subscription reconnects
    /// after `retry_in` and resumes from `revision`.
    Disconnected {
        /// What happened.
        reason: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
        /// The revision it resumes from.
        revision: u64,
    },
}
