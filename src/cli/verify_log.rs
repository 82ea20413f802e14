//! `policyhub verify-log`: reads the whole event log, from the server or
//! from a file `policyhub list-events -o json` wrote, and checks its hash
//! chain from the first event to the last, naming the first broken link.

use std::path::Path;

use anyhow::Context;
use prost::Message;
use prost_reflect::DynamicMessage;
use serde_json::json;

use super::connection::AuthChannel;
use super::document;
use super::failure::{Reply, Unusable, What};
use super::inspect::collect;
use super::output::{Output, descriptors, print_json};
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
    verify(&events, output)
}

/// Verifies the chain of the events in `file`, the output of
/// `policyhub list-events -o json` over the whole log.
pub fn verify_file(file: &Path, output: Output) -> anyhow::Result<()> {
    let not_events = || {
        Unusable::new(
            What::Document,
            format!(
                "{} is not the output of `policyhub list-events -o json`",
                file.display()
            ),
        )
    };
    let descriptor = descriptors()
        .get_message_by_name("policyhub.v1.ListEventsResponse")
        .expect("ListEventsResponse is in the descriptor set");
    let dynamic =
        DynamicMessage::deserialize(descriptor, document::read(file)?).with_context(not_events)?;
    let listed = proto::ListEventsResponse::decode(dynamic.encode_to_vec().as_slice())?;
    verify(&listed.events, output)
}

fn verify(events: &[proto::Event], output: Output) -> anyhow::Result<()> {
    let mut records = events
        .iter()
        .map(event_record)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Unusable::new(What::Reply, format!("an event is unreadable: {error}")))?;
    records.sort_by_key(|record| record.id);
    let (head, count) =
        chain::verify(&records).map_err(|broken| Unusable::new(What::Log, broken.to_string()))?;
    match output {
        Output::Json => print_json(&json!({"events": count.to_string(), "head": head})),
        Output::Table => println!("{count} events verified; the chain's head is {head}"),
    }
    Ok(())
}
