//! `policyhub get-opa-bundle`, `get-opa-discovery` and
//! `get-opa-signing-keys`: a namespace's OPA bundle and discovery bundle as
//! OPA downloads them, and the keys OPA verifies bundles with
//! (docs/src/guides/opa.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::ClientCommand;
use super::args::parse_namespace;
use super::connection::AuthChannel;
use super::failure::Reply;
use super::output::{Output, Table, print_message};
use crate::domain::Namespace;
use crate::grpc::proto::{self, bundle_service_client::BundleServiceClient};

/// Arguments of `policyhub get-opa-bundle`.
#[derive(Debug, clap::Args)]
pub struct GetOpaBundleArgs {
    /// A namespace served to OPA.
    #[arg(value_parser = parse_namespace)]
    namespace: Namespace,
    /// Where to write the gzipped tarball, as `opa build -o` does.
    #[arg(long, short = 'f', default_value = "bundle.tar.gz")]
    file: PathBuf,
}

impl ClientCommand for GetOpaBundleArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let bundle = BundleServiceClient::new(channel)
            .get_opa_bundle(proto::GetOpaBundleRequest {
                namespace: self.namespace.to_string(),
                ..Default::default()
            })
            .await
            .reply("fetching the OPA bundle")?;
        write(&self.file, &bundle, output)
    }
}

/// Arguments of `policyhub get-opa-discovery`.
#[derive(Debug, clap::Args)]
pub struct GetOpaDiscoveryArgs {
    /// A namespace served to OPA.
    #[arg(value_parser = parse_namespace)]
    namespace: Namespace,
    /// The OPA whose configuration to write, as its discovery resource
    /// names it (runtime.id); unset: an anonymous OPA's.
    #[arg(long)]
    runtime_id: Option<String>,
    /// Where to write the gzipped tarball.
    #[arg(long, short = 'f', default_value = "discovery.tar.gz")]
    file: PathBuf,
}

impl ClientCommand for GetOpaDiscoveryArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let discovery = BundleServiceClient::new(channel)
            .get_opa_discovery(proto::GetOpaDiscoveryRequest {
                namespace: self.namespace.to_string(),
                runtime: self.runtime_id.map(|id| proto::RuntimeIdentity {
                    id,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .reply("fetching the OPA discovery bundle")?;
        write(&self.file, &discovery, output)
    }
}

/// Writes `bundle`'s tarball to `file`, and says what it wrote.
fn write(file: &Path, bundle: &proto::OpaBundle, output: Output) -> anyhow::Result<ExitCode> {
    std::fs::write(file, &bundle.tarball).with_context(|| format!("writing {}", file.display()))?;
    if output == Output::Json {
        print_message(bundle);
    } else {
        out!(
            "wrote {}: revision {}, etag \"{}\", {} bytes",
            file.display(),
            bundle.revision,
            bundle.etag,
            bundle.tarball.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `policyhub get-opa-signing-keys`: none.
#[derive(Debug, clap::Args)]
pub struct GetOpaSigningKeysArgs {}

impl ClientCommand for GetOpaSigningKeysArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let keys = BundleServiceClient::new(channel)
            .get_opa_signing_keys(proto::GetOpaSigningKeysRequest {})
            .await
            .reply("fetching the OPA signing keys")?;
        if output == Output::Json {
            print_message(&keys);
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&["KEY ID", "ALGORITHM", "SIGNS BUNDLES"]);
        for (index, key) in keys.keys.iter().enumerate() {
            let signs = if index == 0 { "yes" } else { "" };
            table.row(vec![
                key.key_id.clone(),
                key.algorithm.clone(),
                signs.to_owned(),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}
