//! A complete runtime: follows the `payments` namespace, keeps the active
//! card limits in memory, refuses a state whose limits make no sense, and
//! survives restarts and outages with its cache.
//!
//! ```sh
//! POLICYHUB_TOKEN=$(cat runtime.token) cargo run -p policyhub-runtime --example enforcer
//! ```

use std::sync::Arc;

use policyhub_runtime::{Source, Subscription};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("POLICYHUB_SERVER").unwrap_or("http://127.0.0.1:50051".into());
    let hostname = std::env::var("HOSTNAME").unwrap_or("enforcer-1".into());
    let subscription = Subscription::new(server, "payments")
        .names(["card-limits"])
        .runtime(hostname, [("region".to_string(), "eu".to_string())])
        .token(Arc::new(|| std::env::var("POLICYHUB_TOKEN").ok()))
        .cache_dir("cache");

    let mut max_amount: Option<u64> = None;
    subscription
        .run(|state| {
            let Some(limits) = state.bundles.get("card-limits") else {
                max_amount = None;
                return Ok(());
            };
            // The application's own validation: refusing reports REJECTED and
            // keeps the previous limits in force.
            let amount = limits.body["maxAmount"]
                .as_u64()
                .ok_or("maxAmount must be a whole number")?;
            max_amount = Some(amount);
            let from = if state.source == Source::Cache {
                " (cached)"
            } else {
                ""
            };
            println!(
                "revision {}: card limits version {} allow up to {amount}{from}",
                state.revision, limits.version
            );
            Ok(())
        })
        .await?;
    Ok(())
}
