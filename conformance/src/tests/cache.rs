//! The last good state: kept through a restart of the runtime while the
//! server is down, served and marked as from the cache, and left for the
//! server's once it answers; verified again when read back, so a cache
//! altered on disk is never put in force.

use std::time::Duration;

use anyhow::ensure;

use super::{applied_once_in_order, holds, release, test};
use crate::{
    harness::{Context, Test},
    protocol::{RuntimeSettings, Source},
    proxy::{Tamper, alter},
};

pub fn tests() -> Vec<Test> {
    vec![
        test!(
            "cache.restart-with-the-server-down",
            ["C1"],
            [Cache],
            restart_with_the_server_down
        ),
        test!(
            "cache.altered-on-disk-is-refused",
            ["C1"],
            [Cache],
            altered_on_disk_is_refused
        ),
    ]
}

async fn restart_with_the_server_down(mut context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let cached = release(&context, "q", 1).await?;
    let settings = cached_then_server_down(&mut context, cached).await?;

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

/// A runtime with a cache follows the server up to `revision` and is
/// stopped, then the server is killed; the runtime's settings, to start it
/// again from its cache.
async fn cached_then_server_down(
    context: &mut Context,
    revision: u64,
) -> anyhow::Result<RuntimeSettings> {
    let settings = RuntimeSettings {
        cache_dir: Some(context.cache_dir(1)),
        ..context.settings(1)
    };
    let runtime = context.service.start(&settings).await?;
    runtime.until_revision(revision).await?;
    runtime.stop().await?;
    context.server.kill().await?;
    Ok(settings)
}

/// The runtime's cache, written while it followed the server, altered on
/// disk while it is stopped (one character of each signed bundle's
/// payload, wherever in the cache's files the runtime keeps it), then the
/// runtime started again with the server down: the altered state is never
/// put in force; once the server answers, its state is.
async fn altered_on_disk_is_refused(mut context: Context) -> anyhow::Result<()> {
    let cached = release(&context, "p", 1).await?;
    let settings = cached_then_server_down(&mut context, cached).await?;
    let altered = alter_every_bundle(std::path::Path::new(&context.cache_dir(1)))?;
    ensure!(
        altered > 0,
        "the cache holds no signed bundle to alter: a runtime verifies its cache again from \
         the signed bundles it keeps"
    );

    let runtime = context.service.start(&settings).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let view = runtime.view().await?;
        ensure!(
            view.in_force.is_none(),
            "the cache altered on disk was put in force: {:?}",
            view.in_force
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    context.server.restart().await?;
    let next = release(&context, "p", 2).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 2)])
}

/// Alters one character of the payload of the first signed bundle in each
/// file under `dir`; how many it altered.
fn alter_every_bundle(dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut altered = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            altered += alter_every_bundle(&path)?;
            continue;
        }
        let mut bytes = std::fs::read(&path)?;
        if alter(&mut bytes, Tamper::Body) {
            std::fs::write(&path, bytes)?;
            altered += 1;
        }
    }
    Ok(altered)
}
