//! `policyhub verify-log`: reads the whole event log and the signed
//! checkpoints, from the server or from files the `-o json` output of
//! `list-events`, `list-checkpoints` and `get-signing-keys` wrote, checks
//! the hash chain from the first event to the last and every checkpoint's
//! signature and statement, and recomputes the log's Merkle tree from the
//! events: every checkpoint's note must be signed under the log's origin
//! (one for all of them) and sign the root the events make at its size.
//! It names the first thing that does not hold.
//! Against the server it also reads every version and checks that each
//! published one's body is the one its signature covers, as an export's
//! check does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use prost::Message;
use prost_reflect::DynamicMessage;
use serde_json::json;

use super::connection::AuthChannel;
use super::document;
use super::failure::{Reply, Unusable, What};
use super::history::list_checkpoints;
use super::inspect::collect;
use super::output::{Output, descriptors, print_json};
use super::{Client, ClientCommand};
use crate::domain::log::{Hash, check_notes};
use crate::domain::{PolicyBody, chain};
use crate::grpc::archive;
use crate::grpc::convert::{event_record, jwks, struct_to_json};
use crate::grpc::proto::{
    self, bundle_service_client::BundleServiceClient, policy_service_client::PolicyServiceClient,
};
use crate::signing::{Jwks, verify_checkpoint};
use policyhub_runtime::bundle::{Envelope, verify_envelope};
use policyhub_runtime::tree::verify_note;

/// Arguments of `policyhub verify-log`.
#[derive(Debug, clap::Args)]
pub struct VerifyLogArgs {
    /// Verify this file instead: an archive `policyhub export` wrote, or
    /// the output of `policyhub list-events -o json --limit N` over the
    /// whole log; `-` reads standard input.
    #[arg(long, short = 'f')]
    filename: Option<PathBuf>,
    /// With -f: the checkpoints too, the output of `policyhub
    /// list-checkpoints -o json --limit N`.
    #[arg(long, requires_all = ["filename", "jwks"])]
    checkpoints: Option<PathBuf>,
    /// With --checkpoints: the keys that signed them, the output of
    /// `policyhub get-signing-keys -o json`.
    #[arg(long, requires = "checkpoints")]
    jwks: Option<PathBuf>,
}

impl VerifyLogArgs {
    /// Verifies the files named, offline, or else the server's log.
    pub async fn run(self, client: &Client) -> anyhow::Result<ExitCode> {
        let Some(file) = self.filename else {
            return client.run(ServersLog).await;
        };
        verify_files(
            &file,
            self.checkpoints.as_deref().zip(self.jwks.as_deref()),
            client.output,
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The log the server holds, read through the API.
struct ServersLog;

impl ClientCommand for ServersLog {
    /// Verifies the chain of every event and every checkpoint (the whole
    /// log needs `*:reader`).
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let client = PolicyServiceClient::new(channel.clone());
        let events = collect(u32::MAX, |page_size, page_token| {
            let mut client = client.clone();
            let request = proto::ListEventsRequest {
                page_size,
                page_token,
                ..Default::default()
            };
            async move {
                let page = client.list_events(request).await.reply("reading the log")?;
                Ok((page.events, page.next_page_token))
            }
        })
        .await?;
        let checkpoints = list_checkpoints(&client, u32::MAX).await?;
        let bundles = BundleServiceClient::new(channel);
        let keys = bundles
            .clone()
            .get_signing_keys(proto::GetSigningKeysRequest {})
            .await
            .reply("fetching the signing keys")?;
        let jwks = jwks(&keys);
        verify_versions(&client, &jwks).await?;
        verify_served_tree(bundles, &checkpoints, &jwks).await?;
        verify(&events, Some((&checkpoints, &jwks)), output)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Checks the tree the server serves proofs from (its stored hashes, which
/// the chain does not cover) against the notes: the proof that the newest
/// note's tree extends each older note's must hold. Notes that do not
/// verify are left to `verify`, which names them.
async fn verify_served_tree(
    mut bundles: BundleServiceClient<AuthChannel>,
    checkpoints: &[proto::Checkpoint],
    jwks: &Jwks,
) -> anyhow::Result<()> {
    let heads: Vec<_> = checkpoints
        .iter()
        .filter_map(|checkpoint| verify_note(&checkpoint.note, None, jwks).ok())
        .collect();
    let Some(newest) = heads.iter().max_by_key(|head| head.size) else {
        return Ok(());
    };
    let mut sizes: Vec<_> = heads.iter().map(|head| (head.size, head.root)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for (size, root) in sizes.into_iter().filter(|(size, _)| *size > 0) {
        let proof = bundles
            .get_consistency_proof(proto::GetConsistencyProofRequest {
                old_size: size,
                new_size: newest.size,
            })
            .await
            .reply("fetching a consistency proof")?;
        let hashes = proof
            .hashes
            .iter()
            .map(|hash| <[u8; 32]>::try_from(hash.as_slice()).map(Hash))
            .collect::<Result<Vec<_>, _>>();
        let holds = hashes.is_ok_and(|hashes| {
            tlog_tiles::check_tree(&hashes, newest.size, Hash(newest.root), size, Hash(root))
                .is_ok()
        });
        if !holds {
            return Err(Unusable::new(
                What::Log,
                format!(
                    "the server's proof that the signed tree of {} extends the signed tree of \
                     {size} does not hold: the tree it serves proofs from is not the one its notes \
                     signed",
                    newest.size
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// A refusal of the server to present stored history as signed (DATA_LOSS)
/// is the log's failure, not the call's.
fn history_reply<T>(
    reply: Result<tonic::Response<T>, tonic::Status>,
    action: &str,
) -> anyhow::Result<T> {
    match reply {
        Err(status) if status.code() == tonic::Code::DataLoss => {
            Err(Unusable::new(What::Log, status.message().to_owned()).into())
        }
        reply => Ok(reply.reply(action)?),
    }
}

/// Checks every published version the server holds: its body's digest,
/// computed here, is the one its JWS signs for its policy and number, under
/// one of the server's keys.
async fn verify_versions(
    client: &PolicyServiceClient<AuthChannel>,
    jwks: &Jwks,
) -> anyhow::Result<()> {
    let policies = collect(u32::MAX, |page_size, page_token| {
        let mut client = client.clone();
        let request = proto::ListPoliciesRequest {
            page_size,
            page_token,
            ..Default::default()
        };
        async move {
            let page = client
                .list_policies(request)
                .await
                .reply("listing policies")?;
            Ok((page.policies, page.next_page_token))
        }
    })
    .await?;
    for policy in policies {
        let versions = collect(u32::MAX, |page_size, page_token| {
            let mut client = client.clone();
            let request = proto::ListVersionsRequest {
                namespace: policy.namespace.clone(),
                name: policy.name.clone(),
                page_size,
                page_token,
            };
            async move {
                let page =
                    history_reply(client.list_versions(request).await, "listing the versions")?;
                Ok((page.versions, page.next_page_token))
            }
        })
        .await?;
        for version in versions
            .into_iter()
            .filter(|version| !version.jws.is_empty())
        {
            let name = format!(
                "{}/{} version {}",
                version.namespace, version.name, version.version
            );
            let unverified = |why: String| Unusable::new(What::Log, format!("{name}: {why}"));
            let body = struct_to_json("body", version.body.unwrap_or_default())
                .and_then(|body| PolicyBody::parse("body", body, usize::MAX))
                .map_err(|error| unverified(error.to_string()))?;
            let envelope = Envelope {
                namespace: &version.namespace,
                name: &version.name,
                version: version.version,
                digest: body.digest().as_str(),
            };
            verify_envelope(&version.jws, &envelope, jwks).map_err(|why| {
                unverified(format!("the served body is not the signed one: {why}"))
            })?;
        }
    }
    Ok(())
}

/// Reads `file` (whose text is `text`) as the protobuf JSON of the message
/// `name`.
fn read<M: Message + Default>(
    file: &Path,
    text: &str,
    name: &str,
    written_by: &str,
) -> anyhow::Result<M> {
    let not_it = || {
        Unusable::new(
            What::Document,
            format!("{} is not the output of `{written_by}`", file.display()),
        )
    };
    let descriptor = descriptors()
        .get_message_by_name(name)
        .expect("the message is in the descriptor set");
    let dynamic = DynamicMessage::deserialize(descriptor, document::parse(file, text)?)
        .with_context(not_it)?;
    Ok(M::decode(dynamic.encode_to_vec().as_slice())?)
}

/// Verifies the events of `events_file` (`list-events -o json` over the
/// whole log) and, given, the checkpoints of `list-checkpoints -o json`
/// with the keys of `get-signing-keys -o json`.
pub fn verify_files(
    events_file: &Path,
    checkpoints: Option<(&Path, &Path)>,
    output: Output,
) -> anyhow::Result<()> {
    let text = document::read_text(events_file)?;
    if text.starts_with("{\"header\"") && checkpoints.is_none() {
        return verify_archive(text.as_bytes(), output);
    }
    let listed: proto::ListEventsResponse = read(
        events_file,
        &text,
        "policyhub.v1.ListEventsResponse",
        "policyhub list-events -o json",
    )?;
    let Some((checkpoints_file, jwks_file)) = checkpoints else {
        return verify(&listed.events, None, output);
    };
    let checkpoints: proto::ListCheckpointsResponse = read(
        checkpoints_file,
        &document::read_text(checkpoints_file)?,
        "policyhub.v1.ListCheckpointsResponse",
        "policyhub list-checkpoints -o json",
    )?;
    let keys: proto::GetSigningKeysResponse = read(
        jwks_file,
        &document::read_text(jwks_file)?,
        "policyhub.v1.GetSigningKeysResponse",
        "policyhub get-signing-keys -o json",
    )?;
    verify(
        &listed.events,
        Some((&checkpoints.checkpoints, &jwks(&keys))),
        output,
    )
}

/// Verifies an archive `policyhub export` wrote: whole and unaltered, every
/// signature, and for an archive of every namespace the chain and every
/// checkpoint.
fn verify_archive(bytes: &[u8], output: Output) -> anyhow::Result<()> {
    let unusable = |error: crate::domain::Error| Unusable::new(What::Log, error.to_string());
    let (archive, _) = archive::decode(bytes).map_err(unusable)?;
    archive.check().map_err(unusable)?;
    let whole = archive.scope.is_empty();
    let (events, checkpoints) = (archive.events.len(), archive.checkpoints.len());
    match output {
        Output::Json => print_json(&json!({
            "events": events.to_string(),
            "checkpoints": checkpoints.to_string(),
            "head": if whole { archive.chain_head.as_str() } else { "" },
        })),
        Output::Table if whole => outln!(
            "{events} events verified, {checkpoints} signed checkpoints hold; the chain's head is \
             {}",
            archive.chain_head
        ),
        Output::Table => outln!(
            "{} versions verified; an archive of some namespaces holds part of the log, whose \
             chain only an archive of every namespace proves",
            archive.versions.len()
        ),
    }
    Ok(())
}

fn verify(
    events: &[proto::Event],
    checkpoints: Option<(&[proto::Checkpoint], &Jwks)>,
    output: Output,
) -> anyhow::Result<()> {
    let mut records = events
        .iter()
        .map(event_record)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Unusable::new(What::Reply, format!("an event is unreadable: {error}")))?;
    records.sort_by_key(|record| record.id);
    let (head, count) =
        chain::verify(&records).map_err(|broken| Unusable::new(What::Log, broken.to_string()))?;
    let confirmed = match checkpoints {
        None => None,
        Some((checkpoints, jwks)) => {
            for checkpoint in checkpoints {
                let unproven = |why: String| {
                    let time = checkpoint
                        .time
                        .map(|time| time.to_string())
                        .unwrap_or_default();
                    Unusable::new(
                        What::Log,
                        format!(
                            "the checkpoint of revision {} signed {time} does not hold: {why}",
                            checkpoint.revision
                        ),
                    )
                };
                let claims = verify_checkpoint(&checkpoint.jws, jwks)
                    .map_err(|error| unproven(error.to_string()))?;
                chain::confirms(&records, &claims).map_err(unproven)?;
            }
            // Checkpoints signed before the tree have no note.
            let notes = checkpoints
                .iter()
                .filter(|checkpoint| !checkpoint.note.is_empty())
                .map(|checkpoint| (checkpoint.revision, checkpoint.note.as_str()));
            check_notes(&records, notes, None, jwks)
                .map_err(|why| Unusable::new(What::Log, why))?;
            Some(checkpoints.len())
        }
    };
    match (output, confirmed) {
        (Output::Json, _) => print_json(&json!({
            "events": count.to_string(),
            "checkpoints": confirmed.unwrap_or(0).to_string(),
            "head": head,
        })),
        (Output::Table, Some(checkpoints)) => outln!(
            "{count} events verified, {checkpoints} signed checkpoints hold; the chain's head is \
             {head}"
        ),
        (Output::Table, None) => outln!("{count} events verified; the chain's head is {head}"),
    }
    Ok(())
}
