//! The writing commands: `draft`, `discard-draft`, `publish`, `activate`,
//! `rollback`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::ClientCommand;
use super::args::{
    Expectation, Target, activation_selector, parse_expectation, parse_label, parse_policy,
    parse_target,
};
use super::connection::AuthChannel;
use super::document;
use super::failure::{Reply, Unusable, Usage, What};
use super::output::{Output, Table, print_message, version_or_dash};
use crate::domain::{Label, PolicyBody, PolicyRef};
use crate::grpc::{
    convert::json_to_struct,
    proto::{self, policy_service_client::PolicyServiceClient},
};

/// Arguments of `policyhub draft`.
#[derive(Debug, clap::Args)]
pub struct DraftArgs {
    /// The policy, namespace/name; its first draft creates it.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The body: a file holding one JSON object (.json) or YAML mapping
    /// (any other name); `-` reads standard input. Or, for a namespace
    /// served to OPA, a directory of `.rego` modules and `data.json` (or
    /// `data.yaml`) files, read as `opa build` reads one: the modules by
    /// their path in it, each data file at its directory's path.
    file: PathBuf,
    /// What changed and why; kept with the version.
    #[arg(long, default_value = "")]
    change_notes: String,
    /// Another policy of the namespace this version needs active beside
    /// it, at a release in a semver range: `NAME@RANGE`, such as
    /// `discovery@'>=1.5.0, <2'`; repeat for several.
    #[arg(long = "require", value_name = "NAME@RANGE", value_parser = parse_requirement)]
    requirements: Vec<(String, String)>,
    /// Makes retries safe: the same key with the same request writes nothing new.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

fn parse_requirement(text: &str) -> Result<(String, String), String> {
    let (name, range) = text
        .split_once('@')
        .ok_or_else(|| format!("{text:?} is not NAME@RANGE, such as discovery@'>=1.5.0, <2'"))?;
    Ok((name.to_owned(), range.to_owned()))
}

/// Arguments of `policyhub discard-draft`.
#[derive(Debug, clap::Args)]
pub struct DiscardDraftArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The draft version to discard; by default the open draft. Naming it
    /// guards against discarding a draft someone else just wrote.
    #[arg(long)]
    version: Option<u32>,
    /// Why; recorded in the event log.
    #[arg(long, default_value = "")]
    reason: String,
}

/// Arguments of `policyhub publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The draft version to publish; by default the open draft.
    #[arg(long)]
    version: Option<u32>,
    /// The release label, a semantic version such as 1.5.0.
    #[arg(long, value_parser = parse_label)]
    label: Option<Label>,
    /// Also make it the active version, in the same transaction.
    #[arg(long)]
    activate: bool,
    /// With --activate: only if this version is active now (0: nothing is).
    #[arg(long, requires = "activate")]
    expected_active_version: Option<u32>,
    /// With --activate: only if the active version was activated at this
    /// revision (0: nothing is active), which tells apart two activations of
    /// one version.
    #[arg(long, requires = "activate")]
    expected_active_revision: Option<u64>,
    /// Why; recorded in the event log.
    #[arg(long, default_value = "")]
    reason: String,
    /// Makes retries safe: the same key with the same request writes nothing new.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

/// Arguments of `policyhub activate`.
#[derive(Debug, clap::Args)]
pub struct ActivateArgs {
    /// What to activate: namespace/name@VERSION or namespace/name@LABEL.
    /// Several move together under one revision, or none does.
    #[arg(required = true, value_parser = parse_target)]
    targets: Vec<Target>,
    /// Compare-and-swap, namespace/name@N: activate nothing unless version N
    /// of that policy is active now (0: nothing is). Repeat for several.
    #[arg(long = "expected-active-version", value_parser = parse_expectation)]
    expectations: Vec<Expectation>,
    /// Why; recorded in the event log.
    #[arg(long, default_value = "")]
    reason: String,
    /// Makes retries safe: the same key with the same request writes nothing new.
    #[arg(long, default_value = "")]
    idempotency_key: String,
}

/// Arguments of `policyhub rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The published version to return to; by default the one active before
    /// the current one.
    #[arg(long)]
    to_version: Option<u32>,
    /// Why; required, recorded in the event log.
    #[arg(long)]
    reason: String,
    /// Only if this version is active now.
    #[arg(long)]
    expected_active_version: Option<u32>,
    /// Only if the active version was activated at this revision.
    #[arg(long)]
    expected_active_revision: Option<u64>,
    /// Copy the target forward as a new version (re-validated against the
    /// current schema, signed, activated) instead of moving the pointer back.
    #[arg(long)]
    restore: bool,
}

/// The failure of a reply that holds no version.
pub fn no_version() -> Unusable {
    Unusable::new(What::Reply, "the server sent no version")
}

/// Reads a policy body from `path` (see `document::read`), or a Rego
/// policy's from a directory (see `document::read_rego_dir`).
pub fn read_body(path: &Path) -> anyhow::Result<PolicyBody> {
    match path.is_dir() {
        true => body_of(path, document::read_rego_dir(path)?),
        false => body_of(path, document::read(path)?),
    }
}

/// Parses a body read from `path`, naming the file in every error.
pub fn parse_body(path: &Path, text: &str) -> anyhow::Result<PolicyBody> {
    body_of(path, document::parse(path, text)?)
}

fn body_of(path: &Path, value: Value) -> anyhow::Result<PolicyBody> {
    // The server enforces its configured size limit; the client has no
    // business guessing it.
    PolicyBody::parse("body", value, usize::MAX)
        .with_context(|| Unusable::new(What::Body, path.display().to_string()))
}

impl ClientCommand for DraftArgs {
    /// `policyhub draft`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let body = read_body(&self.file)?;
        let drafted = PolicyServiceClient::new(channel)
            .draft(proto::DraftRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                body: Some(json_to_struct(body.value())),
                change_notes: self.change_notes,
                idempotency_key: self.idempotency_key,
                requirements: self
                    .requirements
                    .into_iter()
                    .map(|(name, range)| proto::Requirement { name, range })
                    .collect(),
            })
            .await
            .reply(format!("drafting {}", self.policy))?;
        let version = drafted.version.as_ref().context(no_version())?;
        match output {
            Output::Json => print_message(&drafted),
            Output::Table => {
                outln!(
                    "drafted {} version {} ({})",
                    self.policy,
                    version.version,
                    version.digest
                );
                if drafted.superseded_version != 0 {
                    outln!("it supersedes draft version {}", drafted.superseded_version);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ClientCommand for DiscardDraftArgs {
    /// `policyhub discard-draft`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let discarded = PolicyServiceClient::new(channel)
            .discard_draft(proto::DiscardDraftRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                version: self.version,
                reason: self.reason,
            })
            .await
            .reply(format!("discarding the draft of {}", self.policy))?;
        let version = discarded.version.as_ref().context(no_version())?;
        match output {
            Output::Json => print_message(&discarded),
            Output::Table => outln!(
                "discarded draft version {} of {}",
                version.version,
                self.policy
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ClientCommand for PublishArgs {
    /// `policyhub publish`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let action = format!("publishing {}", self.policy);
        let activate = self.activate;
        let reply = PolicyServiceClient::new(channel)
            .publish(proto::PublishRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                version: self.version,
                label: self
                    .label
                    .map(|label| label.to_string())
                    .unwrap_or_default(),
                activate: self.activate,
                expected_active_version: self.expected_active_version,
                expected_active_revision: self.expected_active_revision,
                reason: self.reason,
                idempotency_key: self.idempotency_key,
            })
            .await;
        let published = if activate {
            reply.reply(action)?
        } else {
            reply.reply_to_publish_only(action)?
        };
        let version = published.version.as_ref().context(no_version())?;
        match output {
            Output::Json => print_message(&published),
            Output::Table => {
                let label = match version.label.as_str() {
                    "" => String::new(),
                    label => format!(" as {label}"),
                };
                if published.already_published {
                    outln!(
                        "{} version {}{label} was already published with this digest; nothing new was published",
                        self.policy,
                        version.version
                    );
                } else {
                    outln!(
                        "published {} version {}{label}",
                        self.policy,
                        version.version
                    );
                }
                if published.revision != 0 {
                    outln!("active at revision {}", published.revision);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The protobuf targets, each with its expectation; an expectation about a
/// policy that is not activated is a usage error.
fn activation_targets(args: &ActivateArgs) -> anyhow::Result<Vec<proto::ActivationTarget>> {
    if let Some(stray) = args
        .expectations
        .iter()
        .find(|expectation| !args.targets.iter().any(|t| t.policy == expectation.policy))
    {
        return Err(Usage::new(
            format!(
                "--expected-active-version {}@{} names a policy that is not among the targets",
                stray.policy, stray.active_version
            ),
            "name that policy's version among the targets too, or leave its expectation out",
        )
        .into());
    }
    for (index, target) in args.targets.iter().enumerate() {
        if args.targets[..index]
            .iter()
            .any(|earlier| earlier.policy == target.policy)
        {
            return Err(Usage::new(
                format!("{} is named twice among the targets", target.policy),
                "name each policy once: one activation moves it to one version",
            )
            .into());
        }
    }
    Ok(args
        .targets
        .iter()
        .map(|target| proto::ActivationTarget {
            namespace: target.policy.namespace.to_string(),
            name: target.policy.name.to_string(),
            selector: Some(activation_selector(&target.selector)),
            expected_active_version: args
                .expectations
                .iter()
                .find(|expectation| expectation.policy == target.policy)
                .map(|expectation| expectation.active_version),
            expected_active_revision: None,
        })
        .collect())
}

impl ClientCommand for ActivateArgs {
    /// `policyhub activate`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let targets = activation_targets(&self)?;
        let activated = PolicyServiceClient::new(channel)
            .activate(proto::ActivateRequest {
                targets,
                reason: self.reason,
                idempotency_key: self.idempotency_key,
            })
            .await
            .reply("activating")?;
        match output {
            Output::Json => print_message(&activated),
            Output::Table => {
                outln!("revision {}", activated.revision);
                let mut table = Table::new(&["POLICY", "VERSION", "PREVIOUS"]);
                for activation in &activated.activations {
                    table.row(vec![
                        format!("{}/{}", activation.namespace, activation.name),
                        activation.version.to_string(),
                        version_or_dash(activation.previous_version),
                    ]);
                }
                out!("{table}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl ClientCommand for RollbackArgs {
    /// `policyhub rollback`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let rolled_back = PolicyServiceClient::new(channel)
            .rollback(proto::RollbackRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                to_version: self.to_version,
                reason: self.reason,
                expected_active_version: self.expected_active_version,
                expected_active_revision: self.expected_active_revision,
                restore: self.restore,
            })
            .await
            .reply(format!("rolling back {}", self.policy))?;
        match output {
            Output::Json => print_message(&rolled_back),
            Output::Table if rolled_back.restored_from != 0 => outln!(
                "restored {} version {} as version {} (was version {}) at revision {}",
                self.policy,
                rolled_back.restored_from,
                rolled_back.version,
                rolled_back.previous_version,
                rolled_back.revision
            ),
            Output::Table => outln!(
                "rolled back {} to version {} (was version {}) at revision {}",
                self.policy,
                rolled_back.version,
                rolled_back.previous_version,
                rolled_back.revision
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}
