//! SQLite: `Activate` calls per second on the default SQLite backend,
//! against raw durable SQLite commits measured in the same run, in the same
//! directory, on the same SQLite library: `journal_mode=WAL`,
//! `synchronous=FULL`, one small INSERT per transaction, through rusqlite
//! on the `libsqlite3-sys` that sea-orm's sqlx already links. The ratio is
//! what an activation costs beyond the one durable commit it needs.
//!
//! Sequential: one caller, each call moving the benchmark policy between
//! two published versions (so every call commits a change). Concurrent:
//! 16 callers, each moving its own policy, all on one connection.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{Options, POLICY, Policyhub, activate},
};

/// The floor on sequential Activate against raw commits.
const RATE_FLOOR: f64 = 0.5;

const CONCURRENT_CALLERS: usize = 16;

/// Durable single-INSERT transactions per second for `duration`, in a new
/// database in `dir`.
fn raw_commits(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join(format!("raw-{}.db", std::process::id()));
    let connection = rusqlite::Connection::open(&path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.execute(
        "CREATE TABLE IF NOT EXISTS commits (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, note TEXT NOT NULL)",
        [],
    )?;
    let mut insert =
        connection.prepare("INSERT INTO commits (at, note) VALUES (?1, 'benchmark activation')")?;
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        insert.execute([done as i64])?;
        connection.execute_batch("COMMIT")?;
        done += 1;
    }
    let elapsed = start.elapsed();
    drop(insert);
    drop(connection);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(done as f64 / elapsed.as_secs_f64())
}

/// Activate calls per second with `callers` callers, caller `k` moving
/// policy `names[k]` between versions 1 and 2.
async fn activations(
    policyhub: &Policyhub,
    names: &[String],
    duration: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for name in names {
        let mut client = policyhub.policies.clone();
        let token = policyhub.token();
        let name = name.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            // Version 1 is active: start with 2.
            let mut version = 2;
            while start.elapsed() < duration {
                activate(&mut client, token.as_ref(), &name, version, "benchmark").await?;
                version = 3 - version;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let mut policyhub = Policyhub::start(Options::default()).await?;
    let concurrent: Vec<String> = (0..CONCURRENT_CALLERS)
        .map(|n| format!("{POLICY}-{n}"))
        .collect();
    policyhub.publish_policy(POLICY, 2, 0).await?;
    for name in &concurrent {
        policyhub.publish_policy(name, 2, 0).await?;
    }
    let dir = policyhub.data_dir.clone();
    // Warm both up: the first commits of a fresh WAL file cost more.
    activations(&policyhub, &[POLICY.into()], Duration::from_millis(300)).await?;

    let (mut sequential, mut parallel, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        let ours = activations(&policyhub, &[POLICY.into()], duration).await?;
        let dir_for_raw = dir.clone();
        let theirs = tokio::task::spawn_blocking(move || raw_commits(&dir_for_raw, duration))
            .await?
            .context("raw SQLite commits")?;
        let together = activations(&policyhub, &concurrent, duration).await?;
        println!(
            "  repeat {repeat}: Activate {ours:.0}/s sequential, {together:.0}/s with \
             {CONCURRENT_CALLERS} callers; raw SQLite {theirs:.0} commits/s"
        );
        sequential.push(ours);
        parallel.push(together);
        raw.push(theirs);
    }
    let baseline = "raw SQLite commits/s (WAL, synchronous=FULL, 1 INSERT each), same directory";
    let outcome = Outcome {
        rows: vec![
            Row::new(
                "Activate calls/s on SQLite, one sequential caller",
                Unit::PerSecond,
                sequential,
                baseline,
                raw.clone(),
            )
            .target(Target::RatioAtLeast(RATE_FLOOR)),
            Row::new(
                format!("Activate calls/s on SQLite, {CONCURRENT_CALLERS} concurrent callers"),
                Unit::PerSecond,
                parallel,
                baseline,
                raw,
            ),
        ],
        notes: vec![format!(
            "{} s per run; the sequential caller moves one policy between two versions, \
             each concurrent caller its own policy",
            duration.as_secs()
        )],
    };
    Ok(outcome)
}
