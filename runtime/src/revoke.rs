//! The application's way to take back a state after it applied it: a
//! [`Revoker`] sends a [`Revocation`] to the running subscription, which
//! answers with the state it restored or a [`RevokeError`].

use tokio::sync::{mpsc, oneshot};

use crate::state::State;

/// A request to take back the state in force.
#[derive(Debug)]
pub(crate) struct Revocation {
    pub revision: u64,
    pub reason: String,
    pub reply: oneshot::Sender<Result<State, RevokeError>>,
}

/// Why a revocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// Only the state in force can be taken back.
    #[error("revision {asked} is not the state in force (revision {held} is)")]
    NotInForce {
        /// The revision named.
        asked: u64,
        /// The revision in force.
        held: u64,
    },
    /// No earlier state of this run to return to (the state in force came
    /// from the cache, or is the first one, or was restored by a
    /// revocation).
    #[error("revision {0} has no earlier state to return to")]
    NothingToRestore(u64),
    /// The subscription has ended, or its stream is not polled.
    #[error("the subscription has ended")]
    Ended,
}

/// Takes back the state in force of a [`Subscription::revocable`](crate::Subscription::revocable)
/// subscription.
#[derive(Debug, Clone)]
pub struct Revoker {
    sender: mpsc::Sender<Revocation>,
}

impl Revoker {
    /// A revoker, and where its requests arrive.
    pub(crate) fn channel() -> (Self, mpsc::Receiver<Revocation>) {
        let (sender, receiver) = mpsc::channel(8);
        (Revoker { sender }, receiver)
    }

    /// Takes back the state in force at `revision`: it is reported REJECTED
    /// with `reason`, the state before it is put back in force (and
    /// cached), and the events say [`Event::Revoked`](crate::Event::Revoked). The restored state.
    pub async fn revoke(
        &self,
        revision: u64,
        reason: impl Into<String>,
    ) -> Result<State, RevokeError> {
        let (reply, answer) = oneshot::channel();
        let request = Revocation {
            revision,
            reason: reason.into(),
            reply,
        };
        self.sender
            .send(request)
            .await
            .map_err(|_| RevokeError::Ended)?;
        answer.await.map_err(|_| RevokeError::Ended)?
    }
}
