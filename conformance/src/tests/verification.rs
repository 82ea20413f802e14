//! Verification: a bundle altered on the way (its body, its signature,
//! its key id, `alg: none`, its stated digest) or another policy's in its
//! place is refused, the last good state stays, and the runtime goes on
//! with the next good one; bundles
//! signed with a rotated key are taken once the keys are fetched again;
//! what a revoked key signed is refused, replayed old messages included.

use std::time::Duration;

use anyhow::ensure;

use super::{applied_once_in_order, holds, release, stays_at, test};
use crate::{
    harness::Context, harness::NAMESPACE, harness::Test, protocol::RuntimeEvent, proxy::Tamper,
};

pub fn tests() -> Vec<Test> {
    vec![
        test!("verification.altered-body", ["V1", "V3"], [], altered_body),
        test!(
            "verification.bad-signature",
            ["V1", "V3"],
            [],
            bad_signature
        ),
        test!("verification.unknown-key", ["V1", "V3"], [], unknown_key),
        test!("verification.alg-none", ["V1", "V3"], [], alg_none),
        test!(
            "verification.digest-mismatch",
            ["V1", "V3"],
            [],
            digest_mismatch
        ),
        test!(
            "verification.another-policys-bundle",
            ["V1", "V3"],
            [],
            another_policys_bundle
        ),
        test!("verification.rotated-key", ["V2"], [], rotated_key),
        test!(
            "verification.revoked-key",
            ["V4"],
            [Revocation],
            revoked_key
        ),
    ]
}

async fn altered_body(context: Context) -> anyhow::Result<()> {
    refused(context, Tamper::Body).await
}

async fn bad_signature(context: Context) -> anyhow::Result<()> {
    refused(context, Tamper::Signature).await
}

async fn unknown_key(context: Context) -> anyhow::Result<()> {
    refused(context, Tamper::UnknownKey).await
}

async fn alg_none(context: Context) -> anyhow::Result<()> {
    refused(context, Tamper::AlgNone).await
}

async fn digest_mismatch(context: Context) -> anyhow::Result<()> {
    refused(context, Tamper::Digest).await
}

/// Version 2 altered on the way is refused and version 1 stays in force;
/// version 3, unaltered, is then applied.
async fn refused(context: Context, how: Tamper) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let runtime = context.runtime(1).await?;
    let good = runtime.until_revision(1).await?.revision();
    context.proxy.tamper(how);
    let altered = release(&context, "p", 2).await?;
    let view = runtime
        .until(
            &format!("revision {altered} ({how:?}) refused with a reason"),
            Duration::from_secs(10),
            |view| {
                view.saw(|event| {
                    matches!(event, RuntimeEvent::Rejected { revision, reason }
                        if (*revision == altered || *revision == 0) && !reason.is_empty())
                })
            },
        )
        .await;
    ensure!(
        !context.proxy.tamper_pending(),
        "the proxy found no bundle to alter"
    );
    let view = view?;
    ensure!(
        view.revision() == good,
        "the altered revision {altered} was put in force"
    );
    let view = stays_at(&runtime, good, Duration::from_millis(300)).await?;
    holds(&view, &[("p", 1)])?;
    let next = release(&context, "p", 3).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 3)])?;
    applied_once_in_order(&view)?;
    ensure!(
        !view
            .applied()
            .iter()
            .any(|(revision, ..)| *revision == altered),
        "the altered revision {altered} was applied"
    );
    Ok(())
}

/// Policy `q`'s bundle, validly signed, arrives in `p`'s place: the same
/// body, so the same digest, and the same version, so only its subject
/// tells. It is refused, and `q` alone stays in force.
async fn another_policys_bundle(context: Context) -> anyhow::Result<()> {
    let body = serde_json::json!({"shared": true});
    let good = context.server.release(NAMESPACE, "q", body.clone()).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(good).await?;
    context.proxy.tamper(Tamper::Subject);
    let swapped = context.server.release(NAMESPACE, "p", body).await?;
    let view = runtime
        .until(
            &format!("revision {swapped} (q's bundle as p's) refused with a reason"),
            Duration::from_secs(10),
            |view| {
                view.saw(|event| {
                    matches!(event, RuntimeEvent::Rejected { revision, reason }
                        if *revision == swapped && !reason.is_empty())
                })
            },
        )
        .await;
    ensure!(
        !context.proxy.tamper_pending(),
        "the proxy found no other bundle of the same length to put in p's place"
    );
    let view = view?;
    ensure!(
        view.revision() == good,
        "q's bundle in p's place was put in force at revision {}",
        view.revision()
    );
    holds(&view, &[("q", 1)])?;
    let next = release(&context, "p", 2).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 2), ("q", 1)])?;
    applied_once_in_order(&view)
}

/// The server signs with a new key: the runtime, which verified version 1
/// against the old key, verifies version 2 against the new one.
async fn rotated_key(context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(1).await?;
    context.server.rotate_signing_key().await?;
    let next = release(&context, "p", 2).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 2)])?;
    applied_once_in_order(&view)
}

/// The server signs with a new key, which the runtime learns from `q`'s
/// version 1, then revokes the one that signed `p`'s version 1, which it
/// signs again. The new key known, only the version it holds arriving
/// signed by another key tells the runtime to fetch the keys again: it
/// takes version 1 signed anew, then refuses the first message of its
/// link, signed by the revoked key and replayed, with a reason that names
/// the revocation, and keeps the state signed anew.
async fn revoked_key(context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(1).await?;
    let revoked = context.server.signing_key_id().await?;
    context.server.rotate_signing_key().await?;
    let rotated = release(&context, "q", 1).await?;
    runtime.until_revision(rotated).await?;
    let signed_again = context.server.revoke_signing_key(&revoked).await?;
    ensure!(
        signed_again > rotated,
        "the revocation sent version 1 again at no new revision"
    );
    let view = runtime.until_revision(signed_again).await?;
    holds(&view, &[("p", 1), ("q", 1)])?;
    context.proxy.replay();
    let view = runtime
        .until(
            "the replayed message signed by the revoked key refused, naming the revocation",
            Duration::from_secs(10),
            |view| {
                view.saw(|event| {
                    matches!(event, RuntimeEvent::Rejected { reason, .. }
                        if reason.contains("revoked"))
                })
            },
        )
        .await;
    ensure!(
        context.proxy.replayed() > 0,
        "the proxy replayed no message"
    );
    view?;
    let view = stays_at(&runtime, signed_again, Duration::from_millis(500)).await?;
    holds(&view, &[("p", 1), ("q", 1)])?;
    applied_once_in_order(&view)
}
