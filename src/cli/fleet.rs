//! The fleet commands: `runtimes` (ListRuntimes) and `status`
//! (GetPolicyStatus), which answer "did my change land?".

use std::process::ExitCode;

use super::ClientCommand;
use super::args::{parse_namespace, parse_policy};
use super::connection::AuthChannel;
use super::failure::Reply;
use super::inspect::{Limit, collect};
use super::output::{Output, Table, print_message, time_text};
use crate::domain::{Namespace, PolicyRef};
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// A runtime state as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Its stream is open.
    Connected,
    /// Its stream closed recently.
    Disconnected,
    /// Silent for longer than runtimes.stale_after_seconds.
    Stale,
}

impl From<StateArg> for proto::RuntimeState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::Connected => proto::RuntimeState::Connected,
            StateArg::Disconnected => proto::RuntimeState::Disconnected,
            StateArg::Stale => proto::RuntimeState::Stale,
        }
    }
}

/// Arguments of `policyhub list-runtimes`.
#[derive(Debug, clap::Args)]
pub struct ListRuntimesArgs {
    /// The namespace the runtimes watch.
    #[arg(value_parser = parse_namespace)]
    namespace: Namespace,
    /// Only runtimes whose stream selects this policy.
    #[arg(long)]
    name: Option<String>,
    /// Only runtimes whose labels match, as with kubectl:
    /// "region=eu,tier!=canary,build,!legacy".
    #[arg(long, short = 'l')]
    label_selector: Option<String>,
    /// Only runtimes in this state; repeat for several.
    #[arg(long = "state", value_enum)]
    states: Vec<StateArg>,
    #[command(flatten)]
    limit: Limit,
}

/// Arguments of `policyhub get-policy-status`.
#[derive(Debug, clap::Args)]
pub struct GetPolicyStatusArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
}

/// `CONNECTED` for `RUNTIME_STATE_CONNECTED`.
fn state_name(state: proto::RuntimeState) -> &'static str {
    state.as_str_name().trim_start_matches("RUNTIME_STATE_")
}

impl ClientCommand for ListRuntimesArgs {
    /// `policyhub runtimes`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let client = PolicyServiceClient::new(channel);
        let base = proto::ListRuntimesRequest {
            namespace: self.namespace.to_string(),
            name: self.name.unwrap_or_default(),
            label_selector: self.label_selector.unwrap_or_default(),
            states: self
                .states
                .iter()
                .map(|state| proto::RuntimeState::from(*state) as i32)
                .collect(),
            page_size: 0,
            page_token: String::new(),
        };
        let runtimes = collect(self.limit.limit, |page_size, page_token| {
            let mut client = client.clone();
            let request = proto::ListRuntimesRequest {
                page_size,
                page_token,
                ..base.clone()
            };
            async move {
                let page = client
                    .list_runtimes(request)
                    .await
                    .reply("listing runtimes")?;
                Ok((page.runtimes, page.next_page_token))
            }
        })
        .await?;
        if output == Output::Json {
            print_message(&proto::ListRuntimesResponse {
                runtimes,
                next_page_token: String::new(),
            });
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&[
            "RUNTIME",
            "STATE",
            "REVISION",
            "LAST SEEN",
            "LABELS",
            "POLICIES",
        ]);
        for runtime in &runtimes {
            let labels: Vec<String> = runtime
                .labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            let policies: Vec<String> = runtime
                .policies
                .iter()
                .map(|policy| {
                    let state = match policy.state() {
                        proto::ApplyState::Rejected => " rejected",
                        _ => "",
                    };
                    format!("{} v{}{state}", policy.name, policy.version)
                })
                .collect();
            table.row(vec![
                runtime.id.clone(),
                state_name(runtime.state()).to_lowercase(),
                runtime.applied_revision.to_string(),
                time_text(runtime.last_seen),
                labels.join(","),
                policies.join(", "),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}

impl ClientCommand for GetPolicyStatusArgs {
    /// `policyhub status`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let mut client = PolicyServiceClient::new(channel);
        let status = client
            .get_policy_status(proto::GetPolicyStatusRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
            })
            .await
            .reply(format!("reading the status of {}", self.policy))?;
        if output == Output::Json {
            print_message(&status);
            return Ok(ExitCode::SUCCESS);
        }
        match status.active_version {
            0 => outln!("{}: nothing active", self.policy),
            version => outln!(
                "{}: version {version} active since revision {}",
                self.policy,
                status.active_revision
            ),
        }
        outln!(
            "{} runtime(s): {} applied, {} rejected, {} pending, {} stale",
            status.runtimes,
            status.applied,
            status.rejected,
            status.pending,
            status.stale
        );
        if status.versions.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        outln!();
        let mut table = Table::new(&["VERSION", "APPLIED", "REJECTED", "ERRORS"]);
        for version in &status.versions {
            let errors: Vec<String> = version
                .rejections
                .iter()
                .map(|group| format!("{} × {:?}", group.runtimes, group.error))
                .collect();
            table.row(vec![
                version.version.to_string(),
                version.applied.to_string(),
                version.rejected.to_string(),
                errors.join("; "),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}
