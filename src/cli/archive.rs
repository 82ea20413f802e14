//! `policyhub export` and `policyhub import`: an archive of namespaces (the
//! Export RPC's stream, written to standard output), and an archive loaded
//! into a server where its namespaces are empty.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::ClientCommand;
use super::connection::AuthChannel;
use super::document;
use super::failure::{Refused, Reply};
use super::output::{Output, print_json, stdout_failed};
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// Bytes per chunk sent, well below the default 4 MiB message limit.
const CHUNK: usize = 256 * 1024;

/// Arguments of `policyhub export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The namespaces; none: all.
    namespaces: Vec<String>,
}

impl ClientCommand for ExportArgs {
    /// Writes the archive of the namespaces (all of them when none is
    /// named) to standard output as it arrives: the archive is the output,
    /// whatever `--output` says.
    async fn run(self, channel: AuthChannel, _: Output) -> anyhow::Result<ExitCode> {
        let mut stream = PolicyServiceClient::new(channel)
            .export(proto::ExportRequest {
                namespaces: self.namespaces,
            })
            .await
            .reply("exporting")?;
        let mut out = std::io::stdout().lock();
        let broken = |status| Refused::new("exporting", status);
        while let Some(chunk) = stream.message().await.map_err(broken)? {
            out.write_all(&chunk.data)
                .unwrap_or_else(|error| stdout_failed(error));
        }
        out.flush().unwrap_or_else(|error| stdout_failed(error));
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The archive `policyhub export` wrote; `-` reads standard input.
    file: PathBuf,
}

impl ClientCommand for ImportArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let bytes = document::read_text(&self.file)?.into_bytes();
        let chunks: Vec<proto::ImportChunk> = bytes
            .chunks(CHUNK)
            .map(|data| proto::ImportChunk {
                data: data.to_vec(),
            })
            .collect();
        let imported = PolicyServiceClient::new(channel)
            .import(futures::stream::iter(chunks))
            .await
            .reply("importing")?;
        match output {
            Output::Json => print_json(&json!({
                "namespaces": imported.namespaces,
                "policies": imported.policies,
                "versions": imported.versions,
                "events": imported.events,
                "revision": imported.revision.to_string(),
            })),
            Output::Table => outln!(
                "imported {} policies, {} versions and {} events into {}; active at revision {}",
                imported.policies,
                imported.versions,
                imported.events,
                imported.namespaces.join(", "),
                imported.revision
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}
