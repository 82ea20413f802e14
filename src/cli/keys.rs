//! `policyhub rotate-signing-key`, which asks the server to sign with a new
//! key, `policyhub revoke-signing-key`, which withdraws one that no longer
//! signs, and `policyhub generate-key`, which writes one offline.

use std::{path::PathBuf, process::ExitCode};

use super::ClientCommand;
use super::connection::AuthChannel;
use super::failure::Reply;
use super::output::{Output, print_message};
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};
use crate::signing;

/// Arguments of `policyhub rotate-signing-key`.
#[derive(Debug, clap::Args)]
pub struct RotateSigningKeyArgs {
    /// Why; recorded in the event log.
    #[arg(long, default_value = "")]
    reason: String,
}

impl ClientCommand for RotateSigningKeyArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let rotated = PolicyServiceClient::new(channel)
            .rotate_signing_key(proto::RotateSigningKeyRequest {
                reason: self.reason,
            })
            .await
            .reply("rotating the signing key")?;
        if output == Output::Json {
            print_message(&rotated);
        } else {
            outln!(
                "signing key {} replaces {}",
                rotated.signing_key_id,
                rotated.previous_key_id
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub revoke-signing-key`.
#[derive(Debug, clap::Args)]
pub struct RevokeSigningKeyArgs {
    /// The key to revoke (its `kid`, as `get-signing-keys` prints it).
    key_id: String,
    /// Why; recorded in the event log.
    #[arg(long, default_value = "")]
    reason: String,
}

impl ClientCommand for RevokeSigningKeyArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let revoked = PolicyServiceClient::new(channel)
            .revoke_signing_key(proto::RevokeSigningKeyRequest {
                key_id: self.key_id,
                reason: self.reason,
            })
            .await
            .reply("revoking the signing key")?;
        if output == Output::Json {
            print_message(&revoked);
        } else if revoked.already_revoked {
            outln!("signing key {} was revoked already", revoked.key_id);
        } else {
            outln!(
                "signing key {} revoked; {} versions signed again by {}",
                revoked.key_id,
                revoked.re_signed_versions,
                revoked.signing_key_id
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Arguments of `policyhub generate-key`.
#[derive(Debug, clap::Args)]
pub struct GenerateKeyArgs {
    /// Where to write it; an existing file is never overwritten.
    #[arg(long)]
    out: PathBuf,
}

impl GenerateKeyArgs {
    /// Writes the key and prints its id.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let key = signing::write_new_key(&self.out)?;
        outln!("{}", key.key_id());
        Ok(ExitCode::SUCCESS)
    }
}
