//! Witnesses: two `policyhub witness` processes cosign the server's
//! checkpoints. With one stopped, a runtime that requires one of the two
//! cosignatures goes on, one that requires both refuses the history and
//! keeps its state until the witness is back.

use std::time::Duration;

use super::{applied_once_in_order, history::refusals, holds, release, stays_at, test};
use crate::{
    harness::{Context, Test},
    protocol::{RuntimeSettings, Witnesses},
    witness::Witness,
};

pub fn tests() -> Vec<Test> {
    vec![test!(
        "witnesses.k-of-n-cosignatures",
        ["W1"],
        [Witnesses],
        k_of_n_cosignatures
    )]
}

/// How long the server waits for cosignatures before it publishes a
/// revision without them.
const WITNESS_TIMEOUT: &str = "1s";

/// A quiet server signs a checkpoint every half of this, so that one
/// cosigned by a witness back from an outage comes soon.
const CHECKPOINT_INTERVAL: &str = "2s";

async fn k_of_n_cosignatures(mut context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let log = context.server.log_verifier_key().await?;
    let mut witnesses = Vec::new();
    for name in ["w1", "w2"] {
        let dir = context.scratch.join(name);
        let name = format!("conformance.test/{name}");
        witnesses.push(Witness::start(&context.binary, &name, &dir, &log).await?);
    }
    let entries: Vec<String> = witnesses.iter().map(Witness::entry).collect();
    context
        .server
        .reconfigure(&[
            (
                "POLICYHUB_AUDIT__WITNESSES",
                &format!("[{}]", entries.join(", ")),
            ),
            ("POLICYHUB_AUDIT__WITNESS_TIMEOUT", WITNESS_TIMEOUT),
            ("POLICYHUB_AUDIT__CHECKPOINT_INTERVAL", CHECKPOINT_INTERVAL),
        ])
        .await?;
    let keys: Vec<String> = witnesses
        .iter()
        .map(|witness| witness.verifier_key().to_owned())
        .collect();
    let requiring = |n, required| RuntimeSettings {
        witnesses: Some(Witnesses {
            keys: keys.clone(),
            required,
        }),
        ..context.settings(n)
    };
    let both = context.service.start(&requiring(1, 2)).await?;
    let either = context.service.start(&requiring(2, 1)).await?;
    let cosigned = release(&context, "p", 2).await?;
    both.until_revision(cosigned).await?;
    either.until_revision(cosigned).await?;

    witnesses[1].stop().await;
    let refused_before = refusals(&both.view().await?);
    let short = release(&context, "p", 3).await?;
    let view = either.until_revision(short).await?;
    holds(&view, &[("p", 3)])?;
    both.until(
        "a checkpoint with one of the two cosignatures refused",
        Duration::from_secs(10),
        |view| refusals(view) > refused_before || view.revision() != cosigned,
    )
    .await?;
    let view = stays_at(&both, cosigned, Duration::from_millis(500)).await?;
    holds(&view, &[("p", 2)])?;

    witnesses[1].restart().await?;
    let view = both.until_revision(short).await?;
    holds(&view, &[("p", 3)])?;
    applied_once_in_order(&view)
}
