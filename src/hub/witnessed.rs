//! Publication of revisions under witnesses. With witnesses configured, a
//! revision reaches watch streams once a checkpoint of it (or a newer one)
//! is cosigned, or once `audit.witness_timeout` passed since that
//! checkpoint was signed, whichever is first; watch messages carry only
//! such a checkpoint, with the cosignatures gathered. So a runtime that
//! requires cosignatures receives them with the revision itself, as Go's
//! checksum database and Sigsum logs publish only cosigned tree heads; and
//! a witness down delays publication by the timeout, never an activation's
//! commit. The revision a replica commits waits here before it is applied
//! (its caller's reply with it); revisions read back from other replicas
//! wait in the catch-up, which applies only those a shown checkpoint covers.
//! Without witnesses none of this runs: the commit's own checkpoint goes
//! out with its revision.

use std::pin::pin;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::PolicyHub;
use crate::domain::Result;
use crate::domain::chain::Checkpoint;
use crate::storage::{Cosignature, ToWitness};

/// How often a revision waiting for cosignatures looks at the database,
/// for those another replica's witnessing stored.
const POLL: Duration = Duration::from_millis(100);

/// What publication under witnesses needs.
#[derive(Debug)]
pub(super) struct WitnessGate {
    /// How long a checkpoint waits for cosignatures.
    timeout: Duration,
    /// Wakes the revisions waiting here when this replica stored
    /// cosignatures.
    cosigned: Notify,
}

impl PolicyHub {
    /// Publishes revisions only with a witnessed checkpoint (see the
    /// module), waiting up to `timeout` for cosignatures.
    pub async fn with_witnesses(mut self, timeout: Duration) -> Result<Self> {
        self.repository.read_cosignatures();
        self.witnesses = Some(std::sync::Arc::new(WitnessGate {
            timeout,
            cosigned: Notify::new(),
        }));
        self.show_witnessed().await?;
        Ok(self)
    }

    /// The newest checkpoint that may go out: cosigned, or older than the
    /// timeout.
    async fn witnessed_checkpoint(&self, gate: &WitnessGate) -> Result<Option<Checkpoint>> {
        let timeout = chrono::Duration::from_std(gate.timeout).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(timeout)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        self.repository.witnessed_checkpoint(cutoff).await
    }

    /// Shows the newest witnessed checkpoint; returns the revision it
    /// covers, up to which revisions may be published (all, without
    /// witnesses).
    pub(super) async fn show_witnessed(&self) -> Result<u64> {
        let Some(gate) = &self.witnesses else {
            self.show_checkpoint().await;
            return Ok(u64::MAX);
        };
        let Some(checkpoint) = self.witnessed_checkpoint(gate).await? else {
            return Ok(0);
        };
        self.carry(&checkpoint).await;
        Ok(checkpoint.revision)
    }

    /// Waits until `revision` may go out (see the module); no wait without
    /// witnesses. A database that fails meanwhile ends the wait: the
    /// commit stands and is published without its cosignatures.
    pub(super) async fn witnessed(&self, revision: u64) {
        let Some(gate) = &self.witnesses else {
            return;
        };
        // A margin over the timeout for the clocks of other replicas.
        let deadline = Instant::now() + gate.timeout + POLL * 10;
        loop {
            let mut cosigned = pin!(gate.cosigned.notified());
            cosigned.as_mut().enable();
            match self.witnessed_checkpoint(gate).await {
                Ok(Some(checkpoint)) if checkpoint.revision >= revision => {
                    self.carry(&checkpoint).await;
                    return;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, revision, "cannot read the witnessed checkpoint; publishing");
                    return;
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    revision,
                    "no witnessed checkpoint of the revision in time; publishing"
                );
                return;
            }
            let _ = tokio::time::timeout(POLL, cosigned).await;
        }
    }

    /// The newest checkpoint, to submit to witnesses.
    pub async fn checkpoint_to_witness(&self) -> Result<Option<ToWitness>> {
        self.repository.checkpoint_to_witness().await
    }

    /// Stores the verified `cosignatures` of checkpoint `id`, shows it
    /// with them, and wakes the revisions it lets out.
    pub async fn store_cosignatures(&self, id: u64, cosignatures: &[Cosignature]) -> Result<()> {
        self.repository.store_cosignatures(id, cosignatures).await?;
        self.show_witnessed().await?;
        if let Some(gate) = &self.witnesses {
            gate.cosigned.notify_waiters();
        }
        Ok(())
    }

    /// Resolves when this replica wrote or read a newer checkpoint.
    pub async fn newer_checkpoint(&self) {
        self.repository.newer_checkpoint().await;
    }
}
