//! The last good state: kept through a restart of the runtime while the
//! server is down, served and marked as from the cache, and left for the
//! server's once it answers.

use std::time::Duration;

use anyhow::ensure;

use super::{applied_once_in_order, holds, release, test};
use crate::{
    harness::{Context, Test},
    protocol::{RuntimeSettings, Source},
};

pub fn tests() -> Vec<Test> {
    vec![test!(
        "cache.restart-with-the-server-down",
        ["C1"],
        [Cache],
        restart_with_the_server_down
    )]
}

async fn restart_with_the_server_down(mut context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let cached = release(&context, "q", 1).await?;
    let settings = RuntimeSettings {
        cache_dir: Some(context.cache_dir(1)),
        ..context.settings(1)
    };
    let runtime = context.service.start(&settings).await?;
    runtime.until_revision(cached).await?;
    runtime.stop().await?;
    context.server.kill().await?;

    let runtime = context.service.start(&settings).await?;
    let view = runtime
        .until(
            "the cached state in force with the server down",
            Duration::from_secs(10),
            |view| view.in_force.is_some(),
        )
        .await?;
    let state = view.in_force.as_ref().expect("held");
    ensure!(
        state.source == Source::Cache && state.revision == cached,
        "with the server down the state in force is revision {} from the {:?}, expected revision {cached} from the cache",
        state.revision,
        state.source
    );
    holds(&view, &[("p", 1), ("q", 1)])?;

    context.server.restart().await?;
    let next = release(&context, "p", 2).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 2), ("q", 1)])?;
    ensure!(
        view.in_force
            .as_ref()
            .is_some_and(|state| state.source == Source::Server),
        "the state in force after the server came back is not marked as the server's"
    );
    applied_once_in_order(&view)
}
