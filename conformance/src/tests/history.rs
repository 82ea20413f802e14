//! History: a server wound back to a backup, or forked (two servers from
//! one backup, diverging), is refused and the state in force stays, also
//! by a runtime started again from its cache; a restore its operator
//! declared is taken once, also by a runtime started again from its cache;
//! a checkpoint grown older than allowed is said stale, and a current one
//! fresh.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::ensure;
use serde_json::json;

use super::{applied_once_in_order, holds, release, stays_at, test};
use crate::{
    harness::{Context, NAMESPACE, Test},
    protocol::{RuntimeEvent, RuntimeSettings, RuntimeView, Source},
    server::Server,
    service::Runtime,
};

pub fn tests() -> Vec<Test> {
    vec![
        test!("history.wound-back", ["H1"], [History], wound_back),
        test!(
            "history.wound-back-while-stopped",
            ["H1"],
            [History, Cache],
            wound_back_while_stopped
        ),
        test!("history.forked", ["H2"], [History], forked),
        test!(
            "history.declared-restore-taken-once",
            ["H3"],
            [History, Cache],
            declared_restore_taken_once
        ),
        test!(
            "history.declared-restore-past-the-cursor",
            ["H3"],
            [History],
            declared_restore_past_the_cursor
        ),
        test!(
            "history.stale-checkpoint",
            ["H4"],
            [History],
            stale_checkpoint
        ),
    ]
}

/// How old the newest checkpoint may grow in the stale checkpoint's test.
const MAX_CHECKPOINT_AGE: Duration = Duration::from_millis(1500);

/// How late past [`MAX_CHECKPOINT_AGE`] a stale checkpoint may be said.
const STALE_MARGIN: Duration = Duration::from_secs(2);

/// The runtime verified revision 2 of the server; the server is put back
/// to its backup of revision 1 and takes changes of its own, past
/// revision 2. None of them is applied: the runtime refuses the history,
/// again on each attempt, and revision 2 stays in force.
async fn wound_back(mut context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let backup = context.scratch.join("backup");
    context.server.copy_data(&backup).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(1).await?;
    let verified = release(&context, "p", 2).await?;
    runtime.until_revision(verified).await?;
    let before = runtime.view().await?.events.len();

    context.server.wind_back(&backup).await?;
    // The smaller tree first, before the server grows past the verified
    // one (a larger tree that does not extend it is a fork, H2).
    runtime
        .until(
            "the smaller tree of the wound-back server refused",
            Duration::from_secs(10),
            |view| refusals_since(view, before) > 0 || view.revision() != verified,
        )
        .await?;
    stays_at(&runtime, verified, Duration::from_millis(300)).await?;
    release(&context, "p", 3).await?;
    let past = release(&context, "q", 1).await?;
    ensure!(
        past > verified,
        "the wound-back server reached revision {past}, not past {verified}"
    );
    let view = keeps_refusing(&runtime, verified, before).await?;
    holds(&view, &[("p", 2)])
}

/// The runtime verified revision 2 of the server and was stopped; the
/// server is put back to its backup of revision 1 meanwhile. Started again
/// from its cache, the runtime holds the cached revision 2 and refuses the
/// server's history, as it would have had it never stopped: the tree it
/// verified is remembered in the cache.
async fn wound_back_while_stopped(mut context: Context) -> anyhow::Result<()> {
    let settings = context.settings_with_cache(1);
    let (runtime, backup, verified) = verified_after_a_backup(&mut context, &settings).await?;
    runtime.stop().await?;

    context.server.wind_back(&backup).await?;
    let runtime = context.service.start(&settings).await?;
    let first_applied = |view: &RuntimeView| {
        view.events
            .iter()
            .position(|event| matches!(event, RuntimeEvent::Applied { .. }))
    };
    // A runtime may report what it applies before it is in force (the
    // agent's `--exec` runs first): both are waited for.
    let view = runtime
        .until(
            "the cached state in force",
            Duration::from_secs(10),
            |view| first_applied(view).is_some() && view.in_force.is_some(),
        )
        .await?;
    let from_cache = first_applied(&view).expect("seen");
    ensure!(
        matches!(&view.events[from_cache],
            RuntimeEvent::Applied { revision, source: Source::Cache, .. } if *revision == verified),
        "started again from its cache, the runtime first put in force {}, not revision \
         {verified} from the cache",
        serde_json::to_string(&view.events[from_cache])?
    );
    let view = keeps_refusing(&runtime, verified, from_cache + 1).await?;
    holds(&view, &[("p", 2)])
}

/// The runtime verified revision 2 of the server; a second server, started
/// from the backup of revision 1, takes other changes. Led to it, the
/// runtime refuses its history and keeps revision 2; led back, it goes on.
/// The second server's changes make a tree of the size the runtime verified
/// and then a larger one, so its messages carry a consistency proof from
/// that size, of its own tree: a runtime must check it as it would one it
/// asked for.
async fn forked(mut context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let backup = context.scratch.join("fork");
    context.server.copy_data(&backup).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(1).await?;
    let verified = release(&context, "p", 2).await?;
    runtime.until_revision(verified).await?;

    let fork = Server::start(&context.binary, &backup, &[]).await?;
    for (name, n) in [("p", 30), ("q", 30)] {
        fork.release(NAMESPACE, name, json!({ "name": name, "n": n }))
            .await?;
    }
    let before = runtime.view().await?.events.len();
    context.proxy.redirect(fork.grpc_address());
    let view = keeps_refusing(&runtime, verified, before).await?;
    holds(&view, &[("p", 2)])?;

    context.proxy.redirect(context.server.grpc_address());
    let next = release(&context, "p", 3).await?;
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 3)])?;
    applied_once_in_order(&view)
}

/// Wound back to its backup of revision 1, the server is refused until
/// its operator declares the restore; then the runtime takes the restored
/// history once, saying so with the operator's reason, puts the restored
/// state in force and follows the changes after it, also those it resumes
/// to. Started again from its
/// cache, it neither refuses the history nor takes the restore again, and
/// a server wound back to that same restore is refused.
async fn declared_restore_taken_once(mut context: Context) -> anyhow::Result<()> {
    let settings = context.settings_with_cache(1);
    let (runtime, backup, _) = verified_after_a_backup(&mut context, &settings).await?;

    context.server.wind_back(&backup).await?;
    runtime
        .until(
            "the wound-back history refused",
            Duration::from_secs(10),
            |view| refusals(view) > 0,
        )
        .await?;
    let reason = "restored the backup of revision 1";
    context.server.record_restore(reason).await?;
    let view = runtime
        .until(
            "the declared restore taken and the restored state in force",
            Duration::from_secs(10),
            |view| restores(view).len() == 1 && holds(view, &[("p", 1)]).is_ok(),
        )
        .await?;
    ensure!(
        restores(&view) == [reason],
        "the restore was said with another reason: {:?}",
        restores(&view)
    );
    let restored = context.scratch.join("restored");
    context.server.copy_data(&restored).await?;
    // A change the runtime resumes to, from the restored state's revision.
    context.proxy.cut();
    let next = release(&context, "p", 3).await?;
    context.proxy.heal();
    let view = runtime.until_revision(next).await?;
    holds(&view, &[("p", 2)])?;
    ensure!(
        restores(&view).len() == 1,
        "the restore was taken {} times",
        restores(&view).len()
    );

    runtime.stop().await?;
    let runtime = context.service.start(&settings).await?;
    let newest = release(&context, "p", 4).await?;
    let view = runtime.until_revision(newest).await?;
    holds(&view, &[("p", 3)])?;
    ensure!(
        refusals(&view) == 0 && restores(&view).is_empty(),
        "started again from its cache, the runtime refused the history or took the restore again: {}",
        serde_json::to_string(&view.events)?
    );

    let before = view.events.len();
    context.server.wind_back(&restored).await?;
    let view = keeps_refusing(&runtime, newest, before).await?;
    ensure!(
        restores(&view).is_empty(),
        "a server wound back to the restore taken already was taken again"
    );
    holds(&view, &[("p", 3)])
}

/// The runtime verified revision 3 when its link was cut. Meanwhile the
/// server is put back to its backup of revision 1, its operator declares
/// the restore, and it takes changes of its own past revision 3. When the
/// link heals, the runtime takes the restore and holds the restored
/// server's state, whole: not its old state with the changes after its old
/// cursor laid over it.
async fn declared_restore_past_the_cursor(mut context: Context) -> anyhow::Result<()> {
    release(&context, "p", 1).await?;
    let backup = context.scratch.join("backup");
    context.server.copy_data(&backup).await?;
    let runtime = context.runtime(1).await?;
    runtime.until_revision(1).await?;
    release(&context, "p", 2).await?;
    let verified = release(&context, "q", 1).await?;
    runtime.until_revision(verified).await?;

    context.proxy.cut();
    context.server.wind_back(&backup).await?;
    let reason = "restored the backup of revision 1";
    context.server.record_restore(reason).await?;
    let mut newest = 0;
    for n in 1..=3 {
        newest = release(&context, "r", n).await?;
    }
    ensure!(
        newest > verified,
        "the restored server reached revision {newest}, not past {verified}"
    );
    context.proxy.heal();
    let view = runtime
        .until(
            &format!("the declared restore taken and revision {newest} in force"),
            Duration::from_secs(10),
            |view| restores(view).len() == 1 && view.revision() == newest,
        )
        .await?;
    ensure!(
        restores(&view) == [reason],
        "the restore was said with another reason: {:?}",
        restores(&view)
    );
    holds(&view, &[("p", 1), ("r", 3)])
}

/// The server signs a checkpoint with each revision and otherwise once an
/// hour; the runtime allows 1.5 s. Once the checkpoint of the last
/// revision grows that old, not before, the runtime says it is stale, and
/// keeps its state; the checkpoint of the next revision is fresh again.
async fn stale_checkpoint(mut context: Context) -> anyhow::Result<()> {
    context
        .server
        .reconfigure(&[("POLICYHUB_AUDIT__CHECKPOINT_INTERVAL", "1h")])
        .await?;
    let settings = RuntimeSettings {
        max_checkpoint_age_ms: Some(MAX_CHECKPOINT_AGE.as_millis() as u64),
        ..context.settings(1)
    };
    let runtime = context.service.start(&settings).await?;
    let signing = Instant::now();
    let revision = release(&context, "p", 1).await?;
    let signed = Instant::now();
    runtime.until_revision(revision).await?;
    let view = runtime
        .until(
            &format!("the checkpoint of revision {revision} said stale"),
            (MAX_CHECKPOINT_AGE + STALE_MARGIN).saturating_sub(signed.elapsed()),
            |view| since_applied(view, revision).contains(&RuntimeEvent::CheckpointStale),
        )
        .await?;
    ensure!(
        signing.elapsed() >= MAX_CHECKPOINT_AGE,
        "the checkpoint was said stale within {:?} of its signing, before it was {MAX_CHECKPOINT_AGE:?} old",
        signing.elapsed()
    );
    ensure!(
        !since_applied(&view, revision).contains(&RuntimeEvent::CheckpointFresh),
        "fresh again with no newer checkpoint"
    );
    let view = stays_at(&runtime, revision, Duration::from_millis(300)).await?;
    holds(&view, &[("p", 1)])?;

    let next = release(&context, "p", 2).await?;
    let view = runtime
        .until(
            "a current checkpoint said fresh",
            Duration::from_secs(10),
            |view| {
                since_applied(view, revision)
                    .iter()
                    .skip_while(|event| **event != RuntimeEvent::CheckpointStale)
                    .any(|event| *event == RuntimeEvent::CheckpointFresh)
            },
        )
        .await?;
    let view = if view.revision() < next {
        runtime.until_revision(next).await?
    } else {
        view
    };
    holds(&view, &[("p", 2)])?;
    applied_once_in_order(&view)
}

/// The server's data is backed up at revision 1, and a runtime started
/// with `settings` verifies revision 2 after it: the runtime, the backup,
/// and revision 2.
async fn verified_after_a_backup(
    context: &mut Context,
    settings: &RuntimeSettings,
) -> anyhow::Result<(Runtime, PathBuf, u64)> {
    release(context, "p", 1).await?;
    let backup = context.scratch.join("backup");
    context.server.copy_data(&backup).await?;
    let runtime = context.service.start(settings).await?;
    runtime.until_revision(1).await?;
    let verified = release(context, "p", 2).await?;
    runtime.until_revision(verified).await?;
    Ok((runtime, backup, verified))
}

/// Waits until the runtime refused the server's history twice since event
/// `before` (it refuses again on each attempt), with nothing applied since
/// and `revision` in force throughout.
async fn keeps_refusing(
    runtime: &Runtime,
    revision: u64,
    before: usize,
) -> anyhow::Result<RuntimeView> {
    runtime
        .until(
            "the history refused, and again on the next attempt",
            Duration::from_secs(15),
            |view| refusals_since(view, before) >= 2 || view.revision() != revision,
        )
        .await?;
    let view = stays_at(runtime, revision, Duration::from_millis(500)).await?;
    let applied: Vec<&RuntimeEvent> = view.events[before..]
        .iter()
        .filter(|event| matches!(event, RuntimeEvent::Applied { .. }))
        .collect();
    ensure!(
        applied.is_empty(),
        "applied while the history was refused: {}",
        serde_json::to_string(&applied)?
    );
    Ok(view)
}

/// How many times the runtime refused the server's history.
pub(super) fn refusals(view: &RuntimeView) -> usize {
    refusals_since(view, 0)
}

/// How many times since event `before`.
fn refusals_since(view: &RuntimeView, before: usize) -> usize {
    view.events[before.min(view.events.len())..]
        .iter()
        .filter(|event| matches!(event, RuntimeEvent::HistoryRefused { .. }))
        .count()
}

/// The reasons of the restores taken, in order.
fn restores(view: &RuntimeView) -> Vec<&str> {
    view.events
        .iter()
        .filter_map(|event| match event {
            RuntimeEvent::HistoryRestored { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect()
}

/// The events after `revision` was applied; none before.
fn since_applied(view: &RuntimeView, revision: u64) -> &[RuntimeEvent] {
    let applied = view.events.iter().position(
        |event| matches!(event, RuntimeEvent::Applied { revision: applied, .. } if *applied == revision),
    );
    applied.map_or(&[], |index| &view.events[index + 1..])
}
