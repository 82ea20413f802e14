//! `policyhub verify-log`: reads the whole event log and checks its hash
//! chain, from the first event to the last, naming the first broken link.

use serde_json::json;

use super::connection::AuthChannel;
use super::failure::{Reply, Unusable, What};
use super::inspect::collect;
use super::output::{Output, print_json};
use crate::domain::chain;
use crate::grpc::convert::event_record;
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// Verifies the chain of every event the caller may read (the whole log
/// needs `*:reader`).
pub async fn verify_log(channel: AuthChannel, output: Output) -> anyhow::Result<()> {
    let client = PolicyServiceClient::new(channel);
    let events = collect(u32::MAX, |page_size, page_token| {
        let mut client = client.clone();
        let request = proto::ListEventsRequest {
            page_size,
            page_token,
            ..Default::default()
        };
        async move {
            let page = client.list_events(request).await.reply("reading the log")?;
            Ok((page.events, page.next_page_token))
        }
    })
    .await?;
    let mut records = events
        .iter()
        .map(event_record)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Unusable::new(What::Reply, format!("an event is unreadable: {error}")))?;
    records.sort_by_key(|record| record.id);
    match chain::verify(&records) {
        Ok((head, count)) => {
            match output {
                Output::Json => print_json(&json!({"events": count.to_string(), "head": head})),
                Output::Table => println!("{count} events verified; the chain's head is {head}"),
            }
            Ok(())
        }
        Err(broken) => Err(Unusable::new(What::Log, broken.to_string()).into()),
    }
}
