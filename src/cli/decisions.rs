//! `list-decisions` (ListDecisions): the decisions OPAs of a namespace
//! uploaded, newest first; `analyze-impact` (AnalyzeImpact): what a
//! version would decide differently.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::ClientCommand;
use super::args::{parse_namespace, parse_policy};
use super::connection::AuthChannel;
use super::failure::Reply;
use super::inspect::{Limit, collect};
use super::output::{Output, Table, print_message, time_text};
use crate::domain::{Namespace, PolicyRef};
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

/// Arguments of `policyhub analyze-impact`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeImpactArgs {
    /// The policy, namespace/name.
    #[arg(value_parser = parse_policy)]
    policy: PolicyRef,
    /// The version to judge: the open draft's number, or a published one.
    #[arg(long)]
    version: u32,
    /// Only decisions of this rule path.
    #[arg(long)]
    path: Option<String>,
    /// Only decisions made at or after this instant (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only decisions made at or before this instant (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Replay at most this many decisions, the newest (default 1000, at
    /// most 10000).
    #[arg(long)]
    limit: Option<u32>,
}

impl ClientCommand for AnalyzeImpactArgs {
    /// `policyhub analyze-impact`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let mut client = PolicyServiceClient::new(channel);
        let report = client
            .analyze_impact(proto::AnalyzeImpactRequest {
                namespace: self.policy.namespace.to_string(),
                name: self.policy.name.to_string(),
                version: self.version,
                path: self.path.unwrap_or_default(),
                since: self.since.map(timestamp),
                until: self.until.map(timestamp),
                limit: self.limit.unwrap_or_default(),
            })
            .await
            .reply(format!(
                "analyzing version {} of {}",
                self.version, self.policy
            ))?;
        if output == Output::Json {
            print_message(&report);
            return Ok(ExitCode::SUCCESS);
        }
        outln!(
            "{} decisions replayed against revision {}: {} changed, {} unknown",
            report.replayed,
            report.active_revision,
            report.changed,
            report.unknown
        );
        let examples = |examples: &[proto::ImpactExample]| {
            examples
                .iter()
                .map(|example| example.decision_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !report.changes.is_empty() {
            let mut table = Table::new(&["PATH", "BEFORE", "AFTER", "DECISIONS", "EXAMPLES"]);
            for change in &report.changes {
                table.row(vec![
                    change.path.clone(),
                    change.before.clone(),
                    change.after.clone(),
                    change.count.to_string(),
                    examples(&change.examples),
                ]);
            }
            out!("{table}");
        }
        if !report.unknowns.is_empty() {
            let mut table = Table::new(&["PATH", "NOT EVALUATED", "DECISIONS", "EXAMPLES"]);
            for unknown in &report.unknowns {
                table.row(vec![
                    unknown.path.clone(),
                    unknown.reason.clone(),
                    unknown.count.to_string(),
                    examples(&unknown.examples),
                ]);
            }
            out!("{table}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
