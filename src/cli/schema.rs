//! `policyhub set-schema`: the JSON Schema every version of a policy must
//! satisfy to be published or activated.

use std::{path::PathBuf, process::ExitCode};

use super::ClientCommand;
use super::args::parse_policy;
use super::connection::AuthChannel;
use super::document;
use super::failure::Reply;
use super::output::{Output, print_message};
use crate::domain::PolicyRef;
use crate::grpc::{
    convert::json_to_struct,
    proto::{self, policy_service_client::PolicyServiceClient},
};

/// Arguments of `policyhub set-schema`.
#[derive(Debug, clap::Args)]
pub struct SetSchemaArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The schema: a JSON (.json) or YAML file; `-` reads standard input.
    #[arg(required_unless_present = "remove")]
    file: Option<PathBuf>,
    /// Remove the policy's schema instead.
    #[arg(long, conflicts_with = "file")]
    remove: bool,
    /// Why; recorded in the event log.
    #[arg(long, default_value = "")]
    reason: String,
    /// Change nothing: list the published versions and the open draft the
    /// schema would reject.
    #[arg(long, conflicts_with = "remove")]
    dry_run: bool,
}

impl ClientCommand for SetSchemaArgs {
    /// `policyhub set-schema`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let schema = self.file.as_deref().map(document::read).transpose()?;
        let set = PolicyServiceClient::new(channel)
            .set_schema(proto::SetSchemaRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                schema: schema.as_ref().map(json_to_struct),
                reason: self.reason,
                dry_run: self.dry_run,
            })
            .await
            .reply(format!("setting the schema of {}", self.policy))?;
        let policy = set.policy.clone().unwrap_or_default();
        match output {
            Output::Json => print_message(&set),
            Output::Table if self.dry_run => {
                if set.rejected_versions.is_empty() {
                    outln!("the schema rejects no version of {}", self.policy);
                }
                for rejected in &set.rejected_versions {
                    outln!("version {} would be rejected:", rejected.version);
                    for violation in &rejected.violations {
                        outln!("  {violation}");
                    }
                }
            }
            Output::Table => {
                let what = if schema.is_some() { "set" } else { "removed" };
                outln!("schema of {} {what}", self.policy);
                if !set.active_version_violations.is_empty() {
                    outln!(
                        "the active version {} stays active but breaks it; activating it again would fail:",
                        policy.active_version
                    );
                    for violation in &set.active_version_violations {
                        outln!("  {violation}");
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
