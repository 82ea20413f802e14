//! `list-decisions` (ListDecisions): the decisions OPAs of a namespace
//! uploaded, newest first.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::ClientCommand;
use super::args::parse_namespace;
use super::connection::AuthChannel;
use super::failure::Reply;
use super::inspect::{Limit, collect};
use super::output::{Output, Table, print_message, time_text};
use crate::domain::Namespace;
use crate::grpc::convert::{timestamp, value_to_json};
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// Arguments of `policyhub list-decisions`.
#[derive(Debug, clap::Args)]
pub struct ListDecisionsArgs {
    /// A namespace served to OPA.
    #[arg(value_parser = parse_namespace)]
    namespace: Namespace,
    /// Only decisions of this rule path ("payments/authz/allow").
    #[arg(long)]
    path: Option<String>,
    /// Only decisions whose result is this JSON ("true", '{"allow":
    /// false}'), or "undefined" for those without a result.
    #[arg(long)]
    result: Option<String>,
    /// Only decisions of this OPA.
    #[arg(long)]
    runtime_id: Option<String>,
    /// Only decisions made with the namespace's bundle at this revision.
    #[arg(long)]
    revision: Option<u64>,
    /// Only decisions made at or after this instant (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only decisions made at or before this instant (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    #[command(flatten)]
    limit: Limit,
}

impl ClientCommand for ListDecisionsArgs {
    /// `policyhub decisions`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let client = PolicyServiceClient::new(channel);
        let base = proto::ListDecisionsRequest {
            namespace: self.namespace.to_string(),
            path: self.path.unwrap_or_default(),
            result: self.result.unwrap_or_default(),
            runtime_id: self.runtime_id.unwrap_or_default(),
            revision: self.revision.unwrap_or_default(),
            since: self.since.map(timestamp),
            until: self.until.map(timestamp),
            page_size: 0,
            page_token: String::new(),
        };
        let decisions = collect(self.limit.limit, |page_size, page_token| {
            let mut client = client.clone();
            let request = proto::ListDecisionsRequest {
                page_size,
                page_token,
                ..base.clone()
            };
            async move {
                let page = client
                    .list_decisions(request)
                    .await
                    .reply("listing decisions")?;
                Ok((page.decisions, page.next_page_token))
            }
        })
        .await?;
        if output == Output::Json {
            print_message(&proto::ListDecisionsResponse {
                decisions,
                next_page_token: String::new(),
            });
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&["DECIDED", "RUNTIME", "PATH", "REVISION", "RESULT", "ID"]);
        for decision in &decisions {
            let result = match decision.result.clone() {
                Some(result) => value_to_json("result", result)
                    .map(|json| json.to_string())
                    .unwrap_or_default(),
                None => "undefined".to_owned(),
            };
            table.row(vec![
                time_text(decision.decide_time),
                decision.runtime_id.clone(),
                decision.path.clone(),
                decision.revision.to_string(),
                result,
                decision.decision_id.clone(),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}
