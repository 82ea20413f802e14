//! The witnessing: every new checkpoint is submitted to the witnesses of
//! `audit.witnesses` (C2SP tlog-witness), in parallel, and the
//! cosignatures that verify with their configured keys are stored on it
//! (see `storage::cosignatures`), so that the checkpoints served carry
//! them and runtimes may require them (see `hub::witnessed` for when
//! revisions are published).
//!
//! It runs off the commit path, on one replica at a time: the one leading
//! the witnessing's role (a session advisory lock on its leadership
//! connection, see `storage::leadership`) runs a term until its database
//! fails it or the lock is lost; another replica's next attempt takes
//! over. A witness keeps, per log, the tree it cosigned last and
//! takes a new one only with a proof from it, so two replicas submitting
//! at once would make each other's proofs stale. Checkpoints written while
//! a round runs coalesce: the next round submits only the newest. A witness
//! that fails is left out of the rounds for a growing, jittered delay; the
//! others go on.

mod submit;

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::AuditSettings;
use crate::domain::Result;
use crate::hub::PolicyHub;
use crate::metrics::WitnessInstruments;
use submit::{Failure, Witness};

/// The advisory lock key of the witnessing (7_240_531 is the migrations',
/// 7_240_532 the controller's, 7_240_533 the chain head's, 7_240_534 the
/// delivery worker's).
const WITNESSING_LOCK: i64 = 7_240_535;

/// How often a replica tries to take the witnessing over, and how often the
/// one that holds it looks for a checkpoint written on another replica.
const POLL: Duration = Duration::from_secs(1);

/// The first retry's delay bound after a witness failed; it doubles per
/// failure up to [`MAX_RETRY_DELAY`].
const INITIAL_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// What a submission is made with: the HTTP client, and the time one
/// witness has to answer (its 409 and the submission after it included).
#[derive(Clone)]
struct Submitter {
    client: reqwest::Client,
    time_limit: Duration,
}

/// A witness and when it may be tried again.
struct Witnessed {
    witness: Witness,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Submits checkpoints to `settings.witnesses` until the process ends; on
/// PostgreSQL only while this replica holds the witnessing lock.
pub async fn run(hub: PolicyHub, settings: AuditSettings, instruments: WitnessInstruments) {
    let client = match reqwest::Client::builder().build() {
        Ok(client) => Submitter {
            client,
            time_limit: settings.witness_timeout() / 2,
        },
        Err(error) => {
            tracing::error!(%error, "cannot make the witnesses' HTTP client; not witnessing");
            return;
        }
    };
    let mut witnesses: Vec<Witnessed> = settings
        .witnesses
        .iter()
        .map(|witness| {
            for outcome in ["cosigned", "unreachable", "refused", "invalid"] {
                instruments.submission(witness.display_name(), outcome);
            }
            Witnessed {
                witness: Witness {
                    settings: witness.clone(),
                    size: 0,
                },
                failures: 0,
                retry_at: None,
            }
        })
        .collect();
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let term = hub
            .exclusively(WITNESSING_LOCK, async |term| {
                tokio::select! {
                    ended = witness_term(&hub, &client, &mut witnesses, &instruments) => ended,
                    () = term.lost() => Ok(()),
                }
            })
            .await;
        if let Err(error) = term {
            tracing::warn!(%error, "the witnessing stopped; trying again");
        }
    }
}

/// The term of the witnessing replica: a round at each newer checkpoint,
/// at each retry due, and every [`POLL`], until the database fails it.
async fn witness_term(
    hub: &PolicyHub,
    submitter: &Submitter,
    witnesses: &mut Vec<Witnessed>,
    instruments: &WitnessInstruments,
) -> Result<()> {
    loop {
        round(hub, submitter, witnesses, instruments).await?;
        let next_retry = witnesses
            .iter()
            .filter_map(|witnessed| witnessed.retry_at)
            .min();
        let wake = next_retry.map_or(Instant::now() + POLL, |at| at.min(Instant::now() + POLL));
        tokio::select! {
            _ = hub.newer_checkpoint() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Submits the newest checkpoint to every witness that has not cosigned
/// it and is not waiting out a failure, in parallel; stores the
/// cosignatures gathered, together.
async fn round(
    hub: &PolicyHub,
    submitter: &Submitter,
    witnesses: &mut Vec<Witnessed>,
    instruments: &WitnessInstruments,
) -> Result<()> {
    let Some(checkpoint) = hub.checkpoint_to_witness().await? else {
        return Ok(());
    };
    let now = Instant::now();
    let mut submissions = JoinSet::new();
    let mut waiting = Vec::new();
    for witnessed in witnesses.drain(..) {
        let due = witnessed.retry_at.is_none_or(|at| at <= now);
        let cosigned = checkpoint
            .cosigned_by
            .iter()
            .any(|name| name == witnessed.witness.settings.key_name());
        if !due || cosigned {
            waiting.push(witnessed);
            continue;
        }
        let (hub, submitter, checkpoint) = (hub.clone(), submitter.clone(), checkpoint.clone());
        submissions.spawn(async move {
            let mut witnessed = witnessed;
            let submission = witnessed
                .witness
                .submit(&submitter.client, &hub, &checkpoint);
            let outcome = tokio::time::timeout(submitter.time_limit, submission)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Unreachable(format!(
                        "no answer within {:?}",
                        submitter.time_limit
                    )))
                });
            (witnessed, outcome)
        });
    }
    let mut cosignatures = Vec::new();
    while let Some(joined) = submissions.join_next().await {
        let Ok((mut witnessed, outcome)) = joined else {
            continue;
        };
        let name = witnessed.witness.settings.display_name().to_owned();
        match outcome {
            Ok(cosignature) => {
                instruments.submission(&name, "cosigned").inc();
                tracing::debug!(witness = %name, size = checkpoint.size, "checkpoint cosigned");
                witnessed.failures = 0;
                witnessed.retry_at = None;
                cosignatures.push(cosignature);
            }
            Err(failure) => {
                instruments.submission(&name, failure.outcome()).inc();
                witnessed.failures += 1;
                let delay = retry_delay(witnessed.failures);
                witnessed.retry_at = Some(Instant::now() + delay);
                let error = failure.to_string();
                match failure {
                    Failure::Unreachable(_) => tracing::warn!(
                        witness = %name, %error, retry_in_ms = delay.as_millis() as u64,
                        "a witness did not answer"
                    ),
                    Failure::Refused(_) | Failure::Invalid(_) => tracing::error!(
                        witness = %name, %error, size = checkpoint.size,
                        retry_in_ms = delay.as_millis() as u64,
                        "a witness did not cosign the checkpoint"
                    ),
                }
            }
        }
        waiting.push(witnessed);
    }
    *witnesses = waiting;
    if cosignatures.is_empty() {
        return Ok(());
    }
    hub.store_cosignatures(checkpoint.id, &cosignatures).await
}

/// The delay before retrying a witness after `failures` failures in a row:
/// the bound doubles from [`INITIAL_RETRY_DELAY`] up to
/// [`MAX_RETRY_DELAY`], and the delay is drawn from its upper half.
fn retry_delay(failures: u32) -> Duration {
    let bound = INITIAL_RETRY_DELAY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX_RETRY_DELAY);
    bound / 2 + (bound / 2).mul_f64(fastrand::f64())
}
