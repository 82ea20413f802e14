//! A complete runtime: follows the `payments` namespace, keeps the active
//! card limits in memory, refuses a state whose limits make no sense, and
//! survives restarts and outages with its cache. Its token is the file
//! `POLICYHUB_TOKEN_FILE` names (`runtime.token` unless set), read again
//! whenever it changes, so a rotated token is picked up.
//!
//! ```sh
//! policyhub token --subject enforcer-1 --role payments:reader > runtime.token
//! cargo run -p policyhub-runtime --example enforcer
//! ```

use std::pin::pin;

use futures_util::StreamExt;
use policyhub_runtime::{Event, Source, Subscription, token_file};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("POLICYHUB_SERVER").unwrap_or("http://127.0.0.1:50051".into());
    let token = std::env::var("POLICYHUB_TOKEN_FILE").unwrap_or("runtime.token".into());
    let hostname = std::env::var("HOSTNAME").unwrap_or("enforcer-1".into());
    let subscription = Subscription::new(server, "payments")
        .names(["card-limits"])
        .runtime(hostname, [("region".to_string(), "eu".to_string())])
        .token(token_file(token))
        .cache_dir("cache");

    // The application's own validation: refusing reports REJECTED and keeps
    // the previous limits in force.
    let events = subscription.events_validated(|state| match state.bundles.get("card-limits") {
        Some(limits) if limits.body["maxAmount"].as_u64().is_none() => {
            Err("maxAmount must be a whole number".into())
        }
        _ => Ok(()),
    });
    let mut events = pin!(events);
    while let Some(event) = events.next().await {
        match event? {
            Event::Applied(state) | Event::FromCache(state) => {
                let limits = state.bundles.get("card-limits");
                let max_amount = limits.and_then(|limits| limits.body["maxAmount"].as_u64());
                let from = if state.source == Source::Cache {
                    " (cached)"
                } else {
                    ""
                };
                println!("revision {}: up to {max_amount:?}{from}", state.revision);
            }
            Event::Rejected { revision, reason } => {
                eprintln!("kept the last limits: {revision}: {reason}")
            }
            Event::Disconnected {
                reason, retry_in, ..
            } => {
                eprintln!("lost the server ({reason}); retrying in {retry_in:?}")
            }
            _ => {}
        }
    }
    Ok(())
}
