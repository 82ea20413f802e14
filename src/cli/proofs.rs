//! `policyhub get-inclusion-proof`, `get-bundle-proof`,
//! `get-consistency-proof` and `get-restore-proof`: the proofs of the log's
//! Merkle tree, to hand to a verifier (`-o json`) or read.

use std::process::ExitCode;

use base64::Engine as _;

use super::ClientCommand;
use super::args::parse_policy;
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

/// Arguments of `policyhub get-inclusion-proof`.
#[derive(Debug, clap::Args)]
pub struct GetInclusionProofArgs {
    /// The event.
    #[arg(long)]
    event: u64,
    /// The size of the tree to prove it in; 0: the newest checkpoint's.
    #[arg(long, default_value_t = 0)]
    tree_size: u64,
}

impl ClientCommand for GetInclusionProofArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let proof = PolicyServiceClient::new(channel)
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                event_id: self.event,
                tree_size: self.tree_size,
            })
            .await
            .reply("fetching the inclusion proof")?;
        if output == Output::Json {
            print_message(&proof);
        } else {
            out!("{}\n{}", leaf(&proof), note_of(proof.checkpoint.as_ref()));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub get-restore-proof`.
#[derive(Debug, clap::Args)]
pub struct GetRestoreProofArgs {
    /// The size of the tree to look in; 0: the newest checkpoint's.
    #[arg(long, default_value_t = 0)]
    tree_size: u64,
}

impl ClientCommand for GetRestoreProofArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let restore = BundleServiceClient::new(channel)
            .get_restore_proof(proto::GetRestoreProofRequest {
                tree_size: self.tree_size,
            })
            .await
            .reply("fetching the restore's proof")?;
        if output == Output::Json {
            print_message(&restore);
            return Ok(ExitCode::SUCCESS);
        }
        let Some(proof) = &restore.proof else {
            anyhow::bail!("the server's reply lacks a proof");
        };
        out!("{}\n{}", leaf(proof), note_of(proof.checkpoint.as_ref()));
        Ok(ExitCode::SUCCESS)
    }
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

/// Arguments of `policyhub get-bundle-proof`.
#[derive(Debug, clap::Args)]
pub struct GetBundleProofArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The bundle's version.
    #[arg(long)]
    version: u32,
    /// The revision at which it became active (the bundle's revision).
    #[arg(long)]
    revision: u64,
    /// The size of the tree to prove them in; 0: the newest checkpoint's.
    #[arg(long, default_value_t = 0)]
    tree_size: u64,
}

impl ClientCommand for GetBundleProofArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let Self {
            policy,
            version,
            revision,
            tree_size,
        } = self;
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
            return Ok(ExitCode::SUCCESS);
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
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub get-consistency-proof`.
#[derive(Debug, clap::Args)]
pub struct GetConsistencyProofArgs {
    /// The size of the older tree.
    #[arg(long)]
    old_size: u64,
    /// The size of the newer tree; 0: the newest checkpoint's.
    #[arg(long, default_value_t = 0)]
    new_size: u64,
}

impl ClientCommand for GetConsistencyProofArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let proof = BundleServiceClient::new(channel)
            .get_consistency_proof(proto::GetConsistencyProofRequest {
                old_size: self.old_size,
                new_size: self.new_size,
            })
            .await
            .reply("fetching the consistency proof")?;
        if output == Output::Json {
            print_message(&proof);
        } else {
            out!(
                "a tree of {} extends the one of {}\nproof:\n{}\n{}",
                proof.new_size,
                proof.old_size,
                encoded(&proof.hashes),
                note_of(proof.checkpoint.as_ref())
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
