//! `policyhub subscription create|get|list|update|delete|test|deliveries`:
//! the webhook subscription RPCs (SubscriptionService). A subscription is
//! named `namespace/name`, or `*/name` for a deployment-wide one.

use super::Client;
use super::args::parse_event_kind;
use super::failure::Reply;
use super::json::event_kind_name;
use super::output::{Output, Table, print_message, time_text};
use crate::domain::Namespace;
use crate::domain::subscription::SubscriptionName;
use crate::grpc::proto::{
    self, SubscriptionFormat, subscription_service_client::SubscriptionServiceClient,
};

/// A subscription as the command line names it.
#[derive(Debug, Clone)]
pub struct Named {
    /// `None` for a deployment-wide subscription (`*/name`).
    namespace: Option<Namespace>,
    name: SubscriptionName,
}

impl Named {
    fn namespace(&self) -> String {
        self.namespace
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => write!(f, "*/{}", self.name),
        }
    }
}

fn parse_named(text: &str) -> Result<Named, String> {
    let (namespace, name) = text.split_once('/').ok_or_else(|| {
        format!("{text:?} is not namespace/name (or */name for the deployment), such as payments/approvers")
    })?;
    let namespace = match namespace {
        "*" => None,
        namespace => {
            Some(Namespace::parse("namespace", namespace).map_err(|error| error.to_string())?)
        }
    };
    let name = SubscriptionName::parse("name", name).map_err(|error| error.to_string())?;
    Ok(Named { namespace, name })
}

/// How deliveries are written, as the command line spells it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// CloudEvents 1.0 JSON, structured mode.
    Cloudevents,
    /// A readable `{"text": …}` for chat incoming webhooks (Slack-compatible).
    Chat,
}

impl FormatArg {
    fn proto(self) -> SubscriptionFormat {
        match self {
            FormatArg::Cloudevents => SubscriptionFormat::Cloudevents,
            FormatArg::Chat => SubscriptionFormat::Chat,
        }
    }
}

/// The subscription commands.
#[derive(Debug, clap::Subcommand)]
pub enum SubscriptionCommand {
    /// Create a subscription; prints its signing secret, this once
    /// (CreateSubscription).
    Create {
        /// The subscription, namespace/name or */name for the deployment.
        #[arg(value_parser = parse_named)]
        subscription: Named,
        /// The endpoint deliveries are POSTed to.
        #[arg(long)]
        url: String,
        /// An event kind to deliver, as list-events spells it
        /// (rollout-scheduled, activated, schedule-paused …). Repeat.
        #[arg(long = "event-kind", required = true, value_parser = parse_event_kind)]
        event_kinds: Vec<proto::EventKind>,
        /// How deliveries are written.
        #[arg(long, value_enum, default_value = "cloudevents")]
        format: FormatArg,
        /// The signing secret, whsec_ and base64; generated when not given.
        #[arg(long, env = "POLICYHUB_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[command(flatten)]
        client: Client,
    },
    /// Show a subscription (GetSubscription).
    Get {
        /// The subscription.
        #[arg(value_parser = parse_named)]
        subscription: Named,
        #[command(flatten)]
        client: Client,
    },
    /// List the subscriptions of a namespace, or `*` for the
    /// deployment-wide ones (ListSubscriptions).
    List {
        /// The namespace, or `*`.
        namespace: String,
        #[command(flatten)]
        client: Client,
    },
    /// Change a subscription's endpoint, kinds or format; disable it, or
    /// enable it again to deliver from where it stopped
    /// (UpdateSubscription).
    Update {
        /// The subscription.
        #[arg(value_parser = parse_named)]
        subscription: Named,
        /// A new endpoint.
        #[arg(long)]
        url: Option<String>,
        /// New event kinds (replacing them all). Repeat.
        #[arg(long = "event-kind", value_parser = parse_event_kind)]
        event_kinds: Vec<proto::EventKind>,
        /// A new format.
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// Enable (true) or disable (false).
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: Option<bool>,
        #[command(flatten)]
        client: Client,
    },
    /// Delete a subscription (DeleteSubscription).
    Delete {
        /// The subscription.
        #[arg(value_parser = parse_named)]
        subscription: Named,
        #[command(flatten)]
        client: Client,
    },
    /// Send a signed test message now and show how the endpoint answered
    /// (TestSubscription).
    Test {
        /// The subscription.
        #[arg(value_parser = parse_named)]
        subscription: Named,
        #[command(flatten)]
        client: Client,
    },
    /// List a subscription's recent delivery attempts, newest first
    /// (ListDeliveries).
    Deliveries {
        /// The subscription.
        #[arg(value_parser = parse_named)]
        subscription: Named,
        #[command(flatten)]
        client: Client,
    },
}

/// Runs a subscription command.
pub async fn run(command: SubscriptionCommand) -> anyhow::Result<()> {
    use SubscriptionCommand::*;
    let (Create { client, .. }
    | Get { client, .. }
    | List { client, .. }
    | Update { client, .. }
    | Delete { client, .. }
    | Test { client, .. }
    | Deliveries { client, .. }) = &command;
    let (channel, output) = client.connect().await?;
    let mut api = SubscriptionServiceClient::new(channel);
    match command {
        Create {
            subscription,
            url,
            event_kinds,
            format,
            secret,
            ..
        } => {
            let created = api
                .create_subscription(proto::CreateSubscriptionRequest {
                    namespace: subscription.namespace(),
                    name: subscription.name.to_string(),
                    url,
                    event_kinds: event_kinds.iter().map(|kind| *kind as i32).collect(),
                    format: format.proto() as i32,
                    secret: secret.unwrap_or_default(),
                })
                .await
                .reply("creating the subscription")?;
            match output {
                Output::Json => print_message(&created),
                Output::Table => {
                    if let Some(found) = &created.subscription {
                        print_subscription(found);
                    }
                    outln!();
                    outln!("secret (shown this once): {}", created.secret);
                }
            }
        }
        Get { subscription, .. } => {
            let found = api
                .get_subscription(proto::GetSubscriptionRequest {
                    namespace: subscription.namespace(),
                    name: subscription.name.to_string(),
                })
                .await
                .reply("reading the subscription")?;
            show(output, &found);
        }
        List { namespace, .. } => {
            let listed = api
                .list_subscriptions(proto::ListSubscriptionsRequest {
                    namespace: if namespace == "*" {
                        String::new()
                    } else {
                        namespace
                    },
                })
                .await
                .reply("listing subscriptions")?;
            if output == Output::Json {
                print_message(&listed);
                return Ok(());
            }
            let mut table = Table::new(&["SUBSCRIPTION", "URL", "STATE", "DELIVERED THROUGH"]);
            for found in &listed.subscriptions {
                table.row(vec![
                    found.name.clone(),
                    found.url.clone(),
                    state(found),
                    found.delivered_through.to_string(),
                ]);
            }
            out!("{table}");
        }
        Update {
            subscription,
            url,
            event_kinds,
            format,
            enabled,
            ..
        } => {
            let updated = api
                .update_subscription(proto::UpdateSubscriptionRequest {
                    namespace: subscription.namespace(),
                    name: subscription.name.to_string(),
                    url: url.unwrap_or_default(),
                    event_kinds: event_kinds.iter().map(|kind| *kind as i32).collect(),
                    format: format.map_or(SubscriptionFormat::Unspecified, FormatArg::proto) as i32,
                    enabled,
                })
                .await
                .reply("updating the subscription")?;
            show(output, &updated);
        }
        Delete { subscription, .. } => {
            let deleted = api
                .delete_subscription(proto::DeleteSubscriptionRequest {
                    namespace: subscription.namespace(),
                    name: subscription.name.to_string(),
                })
                .await
                .reply("deleting the subscription")?;
            match output {
                Output::Json => print_message(&deleted),
                Output::Table => outln!("subscription {subscription} deleted"),
            }
        }
        Test { subscription, .. } => {
            let attempt = api
                .test_subscription(proto::TestSubscriptionRequest {
                    namespace: subscription.namespace(),
                    name: subscription.name.to_string(),
                })
                .await
                .reply("testing the subscription")?;
            match output {
                Output::Json => print_message(&attempt),
                Output::Table => print_deliveries(std::slice::from_ref(&attempt)),
            }
        }
        Deliveries { subscription, .. } => {
            let listed = api
                .list_deliveries(proto::ListDeliveriesRequest {
                    namespace: subscription.namespace(),
                    name: subscription.name.to_string(),
                })
                .await
                .reply("listing the deliveries")?;
            match output {
                Output::Json => print_message(&listed),
                Output::Table => print_deliveries(&listed.deliveries),
            }
        }
    }
    Ok(())
}

fn state(found: &proto::Subscription) -> String {
    if found.enabled {
        "enabled".into()
    } else {
        format!("disabled: {}", found.disabled_reason)
    }
}

fn show(output: Output, found: &proto::Subscription) {
    match output {
        Output::Json => print_message(found),
        Output::Table => print_subscription(found),
    }
}

fn print_subscription(found: &proto::Subscription) {
    let namespace = match found.namespace.as_str() {
        "" => "*",
        namespace => namespace,
    };
    outln!("subscription {namespace}/{}", found.name);
    outln!("url: {}", found.url);
    let kinds: Vec<&str> = found.event_kinds().map(event_kind_name).collect();
    outln!("event kinds: {}", kinds.join(", "));
    outln!(
        "format: {}",
        found
            .format()
            .as_str_name()
            .trim_start_matches("SUBSCRIPTION_FORMAT_")
    );
    outln!("state: {}", state(found));
    outln!(
        "delivered through event {}; {} failures since the last success",
        found.delivered_through,
        found.consecutive_failures
    );
    outln!("updated at {}", time_text(found.updated_at));
}

fn print_deliveries(deliveries: &[proto::Delivery]) {
    let mut table = Table::new(&[
        "AT", "EVENT", "ATTEMPT", "OUTCOME", "STATUS", "LATENCY", "ERROR",
    ]);
    for attempt in deliveries {
        table.row(vec![
            time_text(attempt.at),
            match attempt.event_id {
                0 => "test".into(),
                id => id.to_string(),
            },
            attempt.attempt.to_string(),
            attempt
                .outcome()
                .as_str_name()
                .trim_start_matches("DELIVERY_OUTCOME_")
                .to_ascii_lowercase(),
            attempt.status_code.to_string(),
            format!("{} ms", attempt.latency_ms),
            attempt.error.clone(),
        ]);
    }
    out!("{table}");
}
