//! The log's reading commands: `list-events` (filtered in the server's
//! query) and `list-checkpoints`.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::ClientCommand;
use super::args::{Scope, parse_event_kind, parse_scope};
use super::connection::AuthChannel;
use super::failure::Reply;
use super::inspect::{Limit, collect};
use super::json::event_kind_name;
use super::output::{Output, Table, print_message, time_text, version_or_dash};
use crate::grpc::{
    convert::timestamp,
    proto::{self, policy_service_client::PolicyServiceClient},
};

/// Arguments of `policyhub list-events`.
#[derive(Debug, clap::Args)]
pub struct ListEventsArgs {
    /// Only this namespace, or this namespace/name; by default every
    /// namespace you may read.
    #[arg(value_parser = parse_scope)]
    scope: Option<Scope>,
    /// Only events of this kind, the API's EventKind in lower case with
    /// dashes: draft-created, published, activated, rolled-back, schema-set,
    /// key-rotated, rollout-started … schedule-paused. Repeat for several.
    #[arg(long = "kind", value_parser = parse_event_kind)]
    kinds: Vec<proto::EventKind>,
    /// Only events of this actor (the subject, exactly).
    #[arg(long)]
    actor: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only events at or before this instant (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    #[command(flatten)]
    limit: Limit,
}

impl ClientCommand for ListEventsArgs {
    /// `policyhub events`.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let client = PolicyServiceClient::new(channel);
        let (namespace, name) = match &self.scope {
            None => (String::new(), String::new()),
            Some(Scope::Namespace(namespace)) => (namespace.to_string(), String::new()),
            Some(Scope::Policy(policy)) => (policy.namespace.to_string(), policy.name.to_string()),
        };
        let kinds: Vec<i32> = self.kinds.iter().map(|kind| *kind as i32).collect();
        let events = collect(self.limit.limit, |page_size, page_token| {
            let mut client = client.clone();
            let request = proto::ListEventsRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                kinds: kinds.clone(),
                page_size,
                page_token,
                actor: self.actor.clone().unwrap_or_default(),
                since: self.since.map(timestamp),
                until: self.until.map(timestamp),
            };
            async move {
                let page = client.list_events(request).await.reply("listing events")?;
                Ok((page.events, page.next_page_token))
            }
        })
        .await?;
        if output == Output::Json {
            print_message(&proto::ListEventsResponse {
                events,
                next_page_token: String::new(),
            });
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&[
            "ID", "AT", "KIND", "POLICY", "VERSION", "REVISION", "ACTOR", "REASON",
        ]);
        for event in &events {
            // An event of a namespace but of no policy (a subscription
            // disabled) names the namespace alone.
            let policy = match (event.namespace.as_str(), event.name.as_str()) {
                ("", _) => "-".to_owned(),
                (namespace, "") => namespace.to_owned(),
                (namespace, name) => format!("{namespace}/{name}"),
            };
            let version = match (event.previous_version, event.new_version) {
                (0, 0) => "-".to_owned(),
                (0, new) => new.to_string(),
                (previous, new) => format!("{previous} -> {}", version_or_dash(new)),
            };
            table.row(vec![
                event.id.to_string(),
                time_text(event.at),
                event_kind_name(event.kind()).to_owned(),
                policy,
                version,
                match event.revision {
                    0 => "-".to_owned(),
                    revision => revision.to_string(),
                },
                event.actor.clone(),
                event.reason.lines().next().unwrap_or_default().to_owned(),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}

/// Up to `limit` checkpoints, newest first, page after page.
pub async fn list_checkpoints(
    client: &PolicyServiceClient<AuthChannel>,
    limit: u32,
) -> anyhow::Result<Vec<proto::Checkpoint>> {
    collect(limit, |page_size, page_token| {
        let mut client = client.clone();
        let request = proto::ListCheckpointsRequest {
            page_size,
            page_token,
        };
        async move {
            let page = client
                .list_checkpoints(request)
                .await
                .reply("listing checkpoints")?;
            Ok((page.checkpoints, page.next_page_token))
        }
    })
    .await
}

/// Arguments of `policyhub list-checkpoints`.
#[derive(Debug, clap::Args)]
pub struct ListCheckpointsArgs {
    #[command(flatten)]
    limit: Limit,
}

impl ClientCommand for ListCheckpointsArgs {
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode> {
        let client = PolicyServiceClient::new(channel);
        let checkpoints = list_checkpoints(&client, self.limit.limit).await?;
        if output == Output::Json {
            print_message(&proto::ListCheckpointsResponse {
                checkpoints,
                next_page_token: String::new(),
            });
            return Ok(ExitCode::SUCCESS);
        }
        let mut table = Table::new(&["TIME", "REVISION", "LAST EVENT", "CHAIN HEAD", "KEY ID"]);
        for checkpoint in &checkpoints {
            table.row(vec![
                checkpoint
                    .time
                    .map(|time| time.to_string())
                    .unwrap_or_default(),
                checkpoint.revision.to_string(),
                checkpoint.last_event_id.to_string(),
                checkpoint.chain_head.clone(),
                checkpoint.key_id.clone(),
            ]);
        }
        out!("{table}");
        Ok(ExitCode::SUCCESS)
    }
}
