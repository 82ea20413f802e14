//! Records the drains' runs of attempts. The runs waiting when a
//! transaction begins are written in it together (a group commit): ten
//! subscriptions that catch up at the same poll take SQLite's one writer,
//! which activations share, about once rather than ten times, and no drain
//! waits for another's endpoint, only for the transaction its run is in.

use tokio::sync::{mpsc, oneshot};

use crate::domain::subscription::DeliveryRun;
use crate::domain::{Error, Result};
use crate::hub::PolicyHub;

/// The most runs one transaction records.
const BATCH: usize = 64;

type Reply = oneshot::Sender<Result<bool>>;

/// Where a term's drains send their runs; the recording task ends once
/// every copy is dropped and the runs sent are recorded.
#[derive(Clone)]
pub struct Recorder {
    runs: mpsc::Sender<(DeliveryRun, Reply)>,
}

impl Recorder {
    /// Starts the task recording runs into `hub`.
    pub fn start(hub: PolicyHub) -> Recorder {
        let (runs, mut waiting) = mpsc::channel::<(DeliveryRun, Reply)>(BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while waiting.recv_many(&mut batch, BATCH).await > 0 {
                let (runs, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                match hub.record_runs(&runs).await {
                    Ok(moved) => {
                        for (reply, moved) in replies.into_iter().zip(moved) {
                            let _ = reply.send(Ok(moved));
                        }
                    }
                    Err(error) => {
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        Recorder { runs }
    }

    /// Records `run` with whatever other runs wait; whether its
    /// subscription moved (not when it changed since the run read it).
    pub async fn record(&self, run: DeliveryRun) -> Result<bool> {
        let stopped = || Error::Unavailable("the delivery recorder stopped".into());
        let (reply, moved) = oneshot::channel();
        self.runs.send((run, reply)).await.map_err(|_| stopped())?;
        moved.await.map_err(|_| stopped())?
    }
}
