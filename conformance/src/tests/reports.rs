//! Reports: what a runtime applied and what it refused, with why, reach
//! the server's fleet view under its runtime id, where rollouts read them.

use std::time::Duration;

use anyhow::{bail, ensure};
use serde_json::Value;

use super::{release, test};
use crate::{
    harness::{Context, NAMESPACE, Test},
    proxy::Tamper,
};

pub fn tests() -> Vec<Test> {
    vec![test!(
        "reports.applied-and-rejected-reach-the-fleet-view",
        ["P1"],
        [Reports],
        applied_and_rejected
    )]
}

/// The runtime's newest outcome for `policy` in the fleet view, once it
/// is about `version`: its state and error.
async fn outcome(
    context: &Context,
    policy: &str,
    version: u32,
) -> anyhow::Result<(String, String)> {
    let id = context.settings(1).runtime_id.expect("named");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let runtimes = context.server.runtimes(NAMESPACE).await?;
        let reported = runtimes
            .iter()
            .filter(|runtime| runtime["id"] == id.as_str())
            .flat_map(|runtime| runtime["policies"].as_array().cloned().unwrap_or_default())
            .find(|status: &Value| status["name"] == policy && status["version"] == version);
        if let Some(status) = reported {
            let state = status["state"].as_str().unwrap_or_default().to_owned();
            let error = status["error"].as_str().unwrap_or_default().to_owned();
            return Ok((state, error));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the fleet view has no outcome of runtime {id} for {policy}@{version}: {runtimes:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn applied_and_rejected(context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(1).await?;
    let (state, _) = outcome(&context, "p", 1).await?;
    ensure!(
        state == "APPLY_STATE_APPLIED",
        "p@1 is {state} in the fleet view, not applied"
    );

    context.proxy.tamper(Tamper::Signature);
    release(&context, "p", 2).await?;
    let (state, error) = outcome(&context, "p", 2).await?;
    ensure!(
        state == "APPLY_STATE_REJECTED" && !error.is_empty(),
        "p@2, altered on the way, is {state} ({error:?}) in the fleet view, not rejected with a reason"
    );
    Ok(())
}
