//! `policyhub get-inclusion-proof`, `get-bundle-proof` and
//! `get-consistency-proof`: the proofs of the log's Merkle tree, to hand to
//! a verifier (`-o json`) or read.

use base64::Engine as _;

use super::connection::AuthChannel;
use super::failure::Reply;
use super::output::{Output, print_message};
use crate::domain::PolicyRef;
use crate::grpc::proto::{
    self, bundle_service_client::BundleServiceClient, policy_service_client::PolicyServiceClient,
};

fn encoded(hashes: &[Vec<u8>]) -> String {
    hashes
        .iter()
        .map(|hash| base64::engine::general_purpose::STANDARD.encode(hash))
        .collect::<Vec<_>>()
        .join("\n")
}

fn note_of(checkpoint: Option<&proto::Checkpoint>) -> String {
    checkpoint.map_or_else(String::new, |checkpoint| checkpoint.note.clone())
}

/// `policyhub get-inclusion-proof`.
pub async fn inclusion(
    channel: AuthChannel,
    output: Output,
    event_id: u64,
    tree_size: u64,
) -> anyhow::Result<()> {
    let proof = PolicyServiceClient::new(channel)
        .get_inclusion_proof(proto::GetInclusionProofRequest {
            event_id,
            tree_size,
        })
        .await
        .reply("fetching the inclusion proof")?;
    if output == Output::Json {
        print_message(&proof);
        return Ok(());
    }
    out!("{}\n{}", leaf(&proof), note_of(proof.checkpoint.as_ref()));
    Ok(())
}

/// One event's proof, as the human output shows it.
fn leaf(proof: &proto::GetInclusionProofResponse) -> String {
    let id = proof.event.as_ref().map_or(0, |event| event.id);
    format!(
        "event {id}: leaf {} of a tree of {}\n{}\nproof:\n{}",
        proof.leaf_index,
        proof.tree_size,
        proof.canonical_event,
        encoded(&proof.hashes)
    )
}

/// `policyhub get-bundle-proof`.
pub async fn bundle(
    channel: AuthChannel,
    output: Output,
    policy: &PolicyRef,
    version: u32,
    revision: u64,
    tree_size: u64,
) -> anyhow::Result<()> {
    let proof = BundleServiceClient::new(channel)
        .get_bundle_proof(proto::GetBundleProofRequest {
            namespace: policy.namespace.to_string(),
            name: policy.name.to_string(),
            version,
            revision,
            tree_size,
        })
        .await
        .reply("fetching the bundle's proof")?;
    if output == Output::Json {
        print_message(&proof);
        return Ok(());
    }
    let (Some(published), Some(activated)) = (&proof.published, &proof.activated) else {
        anyhow::bail!("the server's reply lacks a proof");
    };
    out!(
        "{policy} version {version}, active from revision {revision}\npublished: {}\nmade active: {}\n{}",
        leaf(published),
        leaf(activated),
        note_of(activated.checkpoint.as_ref())
    );
    Ok(())
}

/// `policyhub get-consistency-proof`.
pub async fn consistency(
    channel: AuthChannel,
    output: Output,
    old_size: u64,
    new_size: u64,
) -> anyhow::Result<()> {
    let proof = BundleServiceClient::new(channel)
        .get_consistency_proof(proto::GetConsistencyProofRequest { old_size, new_size })
        .await
        .reply("fetching the consistency proof")?;
    if output == Output::Json {
        print_message(&proof);
        return Ok(());
    }
    out!(
        "a tree of {} extends the one of {}\nproof:\n{}\n{}",
        proof.new_size,
        proof.old_size,
        encoded(&proof.hashes),
        note_of(proof.checkpoint.as_ref())
    );
    Ok(())
}
