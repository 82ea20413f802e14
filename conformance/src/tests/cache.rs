//! The last good state: written whole, kept through a restart of the
//! runtime while the server is down, served and marked as from the cache,
//! and left for the server's once it answers; verified again when read
//! back, so a cache altered on disk, or signed by a key the runtime learned
//! was revoked, is never put in force.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::ensure;

use super::{applied_once_in_order, holds, release, release_large, stays_at, test};
use crate::{
    harness::{Context, Test},
    protocol::{RuntimeEvent, RuntimeSettings, Source},
    proxy::{Tamper, alter},
    service::Runtime,
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
        test!("cache.written-whole", ["C1"], [Cache], written_whole),
        test!(
            "cache.signed-by-a-revoked-key-is-refused",
            ["V4"],
            [Cache, Revocation],
            signed_by_a_revoked_key_is_refused
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

/// How many activations rewrite the cache while it is watched.
const REWRITES: u32 = 10;

/// A runtime with a cache holds 2 MB of policies, and each of 10
/// activations of a small policy rewrites its cache; meanwhile the cache's
/// state files (the libraries' shared format, `<namespace>.state.json`)
/// are read again and again. Every read finds a whole JSON document: the
/// old state or the new one, never a file cut short, as a write in place
/// would leave it for a moment (and for good, were the runtime killed in
/// the middle).
async fn written_whole(context: Context) -> anyhow::Result<()> {
    release_large(&context, 8).await?;
    let first = release(&context, "p", 1).await?;
    let settings = context.settings_with_cache(1);
    let runtime = context.service.start(&settings).await?;
    runtime.until_revision(first).await?;

    let dir = Path::new(&context.cache_dir(1)).to_owned();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || watch_whole(&dir, &done))
    };
    let mut last = first;
    for n in 2..=REWRITES + 1 {
        last = release(&context, "p", n).await?;
    }
    let view = runtime.until_revision(last).await;
    done.store(true, Ordering::SeqCst);
    let (reads, cut_short) = reader.join().expect("the reader ends")?;
    view?;
    ensure!(
        cut_short.is_none(),
        "the cache was read cut short: {}",
        cut_short.unwrap_or_default()
    );
    ensure!(
        reads >= 20,
        "the cache's state files were read {reads} times while rewritten, too few to tell"
    );
    Ok(())
}

/// Reads every `*.state.json` under `dir` again and again until `done`:
/// how many reads, and the first that was not a whole JSON object (its
/// file, its length and its end). A whole one begins with `{` and ends
/// with `}`; the last read is parsed too.
fn watch_whole(dir: &Path, done: &AtomicBool) -> anyhow::Result<(usize, Option<String>)> {
    let mut reads = 0;
    let mut last = Vec::new();
    while !done.load(Ordering::SeqCst) {
        for path in state_files(dir)? {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            reads += 1;
            let trimmed = bytes.trim_ascii();
            if !(trimmed.starts_with(b"{") && trimmed.ends_with(b"}")) {
                let end = &trimmed[trimmed.len().saturating_sub(40)..];
                return Ok((
                    reads,
                    Some(format!(
                        "{} held {} bytes ending {:?}",
                        path.display(),
                        bytes.len(),
                        String::from_utf8_lossy(end)
                    )),
                ));
            }
            last = bytes;
        }
    }
    if !last.is_empty() && serde_json::from_slice::<serde_json::Value>(&last).is_err() {
        return Ok((reads, Some("the last read is not JSON".to_owned())));
    }
    Ok((reads, None))
}

/// The files named `*.state.json` under `dir`, at any depth.
fn state_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(files);
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(state_files(&path)?);
        } else if path.to_string_lossy().ends_with(".state.json") {
            files.push(path);
        }
    }
    Ok(files)
}

/// A runtime with a cache follows the server up to `revision` and is
/// stopped, then the server is killed; the runtime's settings, to start it
/// again from its cache.
async fn cached_then_server_down(
    context: &mut Context,
    revision: u64,
) -> anyhow::Result<RuntimeSettings> {
    let settings = context.settings_with_cache(1);
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
    never_in_force(&runtime, "the cache altered on disk").await?;
    context.server.restart().await?;
    let next = release(&context, "p", 2).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 2)])
}

/// The runtime holds `p`'s version 1, signed by the first key, and `q`'s,
/// signed by the next. The first key is revoked and `p`'s version 1 signed
/// again, altered on the way: the runtime refuses it, but has learned of
/// the revocation, which concerns the state it holds. Started again from
/// its cache with the server down, it does not put that state in force;
/// once the server answers, the state signed anew is.
async fn signed_by_a_revoked_key_is_refused(mut context: Context) -> anyhow::Result<()> {
    let settings = context.settings_with_cache(1);
    release(&context, "p", 1).await?;
    let runtime = context.service.start(&settings).await?;
    runtime.until_revision(1).await?;
    let revoked = context.server.signing_key_id().await?;
    context.server.rotate_signing_key().await?;
    let held = release(&context, "q", 1).await?;
    runtime.until_revision(held).await?;

    context.proxy.tamper(Tamper::Body);
    let signed_again = context.server.revoke_signing_key(&revoked).await?;
    runtime
        .until(
            &format!("revision {signed_again}, altered on the way, refused"),
            Duration::from_secs(10),
            |view| {
                view.saw(|event| {
                    matches!(event, RuntimeEvent::Rejected { revision, .. }
                        if *revision == signed_again)
                })
            },
        )
        .await?;
    let view = stays_at(&runtime, held, Duration::from_millis(300)).await?;
    holds(&view, &[("p", 1), ("q", 1)])?;
    runtime.stop().await?;
    context.proxy.heal();
    context.server.kill().await?;

    let runtime = context.service.start(&settings).await?;
    never_in_force(&runtime, "the cached state signed by a revoked key").await?;
    context.server.restart().await?;
    let view = runtime.until_revision(signed_again).await?;
    holds(&view, &[("p", 1), ("q", 1)])
}

/// Fails if, within 2 s, `runtime` puts any state in force (`what`).
async fn never_in_force(runtime: &Runtime, what: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let view = runtime.view().await?;
        ensure!(
            view.in_force.is_none(),
            "{what} was put in force: {:?}",
            view.in_force
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
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
