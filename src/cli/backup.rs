//! `policyhub backup FILE`: the Backup RPC's stream written to a file, as
//! `etcdctl snapshot save` does: to FILE.part, checked against the size and
//! SHA-256 the server sends, then renamed into place. And `policyhub
//! record-restore`, which declares a deployment restored from one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::ClientCommand;
use super::connection::AuthChannel;
use super::failure::{Refused, Reply, Unusable, What};
use super::output::{Output, print_json, print_message};
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// Arguments of `policyhub backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write it; FILE.part until it is whole and checked.
    file: PathBuf,
}

impl ClientCommand for BackupArgs {
    /// Streams a backup into the file.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let out = self.file;
        let mut stream = PolicyServiceClient::new(channel)
            .backup(proto::BackupRequest {})
            .await
            .reply("taking a backup")?;
        let partial = part_of(&out);
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        let (mut revision, mut size, mut written, mut sha256) = (0, 0, 0u64, String::new());
        let mut hasher = Sha256::new();
        let broken = |status| Refused::new("taking a backup", status);
        while let Some(chunk) = stream.message().await.map_err(broken)? {
            if written == 0 && chunk.size > 0 {
                (revision, size) = (chunk.revision, chunk.size);
            }
            hasher.update(&chunk.data);
            written += chunk.data.len() as u64;
            file.write_all(&chunk.data)
                .await
                .with_context(|| format!("writing {}", partial.display()))?;
            if !chunk.sha256.is_empty() {
                sha256 = chunk.sha256;
            }
        }
        file.sync_all().await?;
        drop(file);
        let computed = format!("{:x}", hasher.finalize());
        if sha256 != computed || written != size {
            tokio::fs::remove_file(&partial).await.ok();
            return Err(Unusable::new(
                What::Reply,
                format!(
                    "the backup stream ended broken: {written} of {size} bytes, SHA-256 {computed} \
                     where the server sent {sha256:?}"
                ),
            )
            .into());
        }
        tokio::fs::rename(&partial, &out)
            .await
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        match output {
            Output::Json => print_json(&json!({
                "file": out.display().to_string(),
                "revision": revision.to_string(),
                "size": size.to_string(),
                "sha256": sha256,
            })),
            Output::Table => outln!(
                "backup of revision {revision} written to {} ({size} bytes, sha256 {sha256})",
                out.display()
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub record-restore`.
#[derive(Debug, clap::Args)]
pub struct RecordRestoreArgs {
    /// What was restored, and why; recorded in the event log and shown
    /// by every runtime that accepts the restored log.
    #[arg(long)]
    reason: String,
}

impl ClientCommand for RecordRestoreArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let recorded = PolicyServiceClient::new(channel)
            .record_restore(proto::RecordRestoreRequest {
                reason: self.reason,
            })
            .await
            .reply("recording the restore")?;
        if output == Output::Json {
            print_message(&recorded);
        } else {
            let (event, checkpoint) = (
                recorded.event.unwrap_or_default(),
                recorded.checkpoint.unwrap_or_default(),
            );
            outln!(
                "restore recorded as event {}; a checkpoint at revision {} signs the log's \
                 tree over it",
                event.id,
                checkpoint.revision
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `FILE.part`, where the stream is written until it is whole.
fn part_of(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}
