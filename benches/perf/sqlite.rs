//! SQLite: `Activate` calls per second on the default SQLite backend,
//! against raw durable SQLite commits measured in the same run, in the same
//! directory, on the same SQLite library: `journal_mode=WAL`,
//! `synchronous=FULL`, one small INSERT per transaction, through rusqlite
//! on the `libsqlite3-sys` that sea-orm's sqlx already links. The ratio is
//! what an activation costs beyond the one durable commit it needs.
//!
//! Sequential: one caller, each call moving the benchmark policy between
//! two published versions (so every call commits a change). Concurrent:
//! 16 callers, each moving its own policy, all on one connection; with the
//! CPU time the server and the bench's callers spend per activation, which
//! bounds the rate the machine's cores can reach whatever the disk.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    Outcome, Row, Settings, Target, Unit, median,
    support::{NAMESPACE, Options, POLICY, Policyhub, activation_rate, cpu_time},
};

/// The floors on Activate against raw commits: one sequential caller, and
/// concurrent callers sharing commits.
const RATE_FLOOR: f64 = 0.25;
const CONCURRENT_RATE_FLOOR: f64 = 0.6;

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
    remove_database(&path);
    Ok(done as f64 / elapsed.as_secs_f64())
}

/// Removes a SQLite database and its WAL files.
pub fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let mut policyhub = Policyhub::start(Options::default()).await?;
    let concurrent: Vec<(String, String)> = (0..CONCURRENT_CALLERS)
        .map(|n| (NAMESPACE.to_owned(), format!("{POLICY}-{n}")))
        .collect();
    let sequential_target = [(NAMESPACE.to_owned(), POLICY.to_owned())];
    policyhub.publish_policy(POLICY, 2, 0).await?;
    for (_, name) in &concurrent {
        policyhub.publish_policy(name, 2, 0).await?;
    }
    let dir = policyhub.data_dir.clone();
    // Warm both up: the first commits of a fresh WAL file cost more.
    activation_rate(&policyhub, &sequential_target, Duration::from_millis(300)).await?;

    let (mut sequential, mut parallel, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut server_cpu, mut bench_cpu) = (Vec::new(), Vec::new());
    let pid = policyhub.server.pid();
    for repeat in 1..=settings.repeats {
        let ours = activation_rate(&policyhub, &sequential_target, duration).await?;
        let dir_for_raw = dir.clone();
        let theirs = tokio::task::spawn_blocking(move || raw_commits(&dir_for_raw, duration))
            .await?
            .context("raw SQLite commits")?;
        let (server_before, bench_before) = (cpu_time(&pid)?, cpu_time("self")?);
        let started = Instant::now();
        let together = activation_rate(&policyhub, &concurrent, duration).await?;
        let calls = together * started.elapsed().as_secs_f64();
        let per_call = |spent: Duration| spent.as_secs_f64() * 1e6 / calls;
        let server = per_call(cpu_time(&pid)?.saturating_sub(server_before));
        let bench = per_call(cpu_time("self")?.saturating_sub(bench_before));
        println!(
            "  repeat {repeat}: Activate {ours:.0}/s sequential, {together:.0}/s with \
             {CONCURRENT_CALLERS} callers (CPU per call: server {server:.0} µs, callers \
             {bench:.0} µs); raw SQLite {theirs:.0} commits/s"
        );
        sequential.push(ours);
        parallel.push(together);
        raw.push(theirs);
        server_cpu.push(server);
        bench_cpu.push(bench);
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (server, bench) = (median(&server_cpu), median(&bench_cpu));
    let cpu_bound = cores as f64 * 1e6 / (server + bench);
    let cpu_bound_ratio = cpu_bound / median(&raw);
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
            )
            .target(Target::RatioAtLeast(CONCURRENT_RATE_FLOOR)),
        ],
        notes: vec![
            format!(
                "{} s per run; the sequential caller moves one policy between two versions, \
                 each concurrent caller its own policy",
                duration.as_secs()
            ),
            format!(
                "{CONCURRENT_CALLERS} callers: CPU time per activation, medians, server {server:.0} \
                 µs and the bench's callers {bench:.0} µs; on {cores} cores that bounds the rate \
                 at {cpu_bound:.0}/s, {cpu_bound_ratio:.2}× raw commits"
            ),
        ],
    };
    Ok(outcome)
}
