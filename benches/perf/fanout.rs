//! Fan-out: the time from issuing a write to its receipt on every watch
//! stream, policyhub's `WatchActive` against etcd's native gRPC watch
//! ([`crate::etcd`]), one connection per watcher; and the server's CPU time
//! per delivered update, against etcd's and against the floor
//! ([`crate::floor`]): a bare HTTP/2 server writing pre-encoded frames of
//! the same length to the same streams.
//!
//! Each repeat starts every server fresh. policyhub: one policy with a
//! body of the case's size, N streams each until its SNAPSHOT, then one
//! `Activate` per round timed from its issue to the UPDATE on every stream.
//! etcd: N watchers of one key, then one `Put` per round of a value as long
//! as policyhub's encoded bundle, timed from its issue. The floor: N
//! streams, then one write per round. Each server's first round is a
//! warm-up whose figures are dropped ([`warm_up`]). The server's CPU time is
//! read just before each write and after its last receipt, so the clients'
//! own work on the same cores does not count, over at least 20,000
//! deliveries per repeat. The `tls` section runs the
//! same with TLS on policyhub's and etcd's ports ([`crate::tls`]), without
//! the floor.

use anyhow::Context;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    etcd::Etcd,
    floor::Floor,
    support::{
        Options, Policyhub, SETTLE, Streams, Tally, Tls, Watcher, ms, open_streams, percentile,
        rss_kib, wait_for_fds_to_close, warm_up,
    },
};

/// The floor, named in the table.
const FLOOR: &str = "floor: bare h2 server, pre-encoded frames";

/// The absolute p99 bound, set for 10,000 streams.
const P99_BOUND_MS: f64 = 100.0;
const P99_BOUND_STREAMS: usize = 10_000;

/// What one server did with N streams.
pub struct Run {
    /// What the rounds saw: latencies, missing receipts, server CPU.
    pub rounds: Tally,
    /// The size of the watched value: policyhub's encoded bundle, or
    /// etcd's value.
    pub payload_bytes: usize,
    /// Server VmRSS before and after opening the streams, KiB.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub streams: usize,
    /// The encoded length of policyhub's first message.
    pub message_bytes: usize,
}

impl Run {
    /// What `count` benchmark streams (policyhub's or the floor's) saw,
    /// closing them; `rss_kib` is the server's before and after opening
    /// them.
    fn of_streams(rounds: Tally, streams: Streams, count: usize, rss_kib: [u64; 2]) -> Self {
        Run {
            rounds,
            payload_bytes: streams.payload_bytes,
            rss_before_kib: rss_kib[0],
            rss_after_kib: rss_kib[1],
            streams: count,
            message_bytes: streams.message_bytes,
        }
    }

    pub fn kib_per_stream(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.streams as f64
    }

    fn quantile_ms(&self, quantile: f64) -> f64 {
        ms(percentile(&self.rounds.latencies, quantile))
    }

    /// Server CPU time per update delivered, microseconds.
    fn cpu_per_update_us(&self) -> f64 {
        let delivered = self.rounds.latencies.len().max(1);
        self.rounds.server_cpu.as_secs_f64() * 1e6 / delivered as f64
    }
}

/// policyhub with `count` streams on a body of about `body_bytes`, and
/// `rounds` activations (none: only the memory figures).
pub async fn policyhub(
    count: usize,
    rounds: usize,
    body_bytes: usize,
    tls: Option<&Tls>,
) -> anyhow::Result<Run> {
    let mut policyhub = Policyhub::start(Options {
        streams: count,
        tls: tls.cloned(),
        // Room for the memory section's megabyte bodies.
        env: vec![(
            "POLICYHUB_LIMITS__MAX_BODY_BYTES".into(),
            (4 * body_bytes.max(1 << 20)).to_string(),
        )],
        ..Options::default()
    })
    .await?;
    // Version 1 active; version 2 published for the warm-up, versions
    // 3..=rounds+2 for the rounds.
    policyhub.publish_bodies(rounds + 2, body_bytes).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(policyhub.server.pid())?;
    let mut streams = policyhub
        .open_streams((0..count).map(|_| Watcher::default()))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss_kib(policyhub.server.pid())?;
    policyhub
        .activation_rounds(&mut streams, count, 2..=2)
        .await?;
    let versions = 3..=rounds as u32 + 2;
    let tally = policyhub
        .activation_rounds(&mut streams, count, versions)
        .await?;
    let run = Run::of_streams(tally, streams, count, [rss_before_kib, rss_after_kib]);
    drop(policyhub);
    wait_for_fds_to_close().await;
    Ok(run)
}

/// etcd with `count` watchers of a `value_bytes` value, and `rounds` puts.
pub async fn etcd(
    etcd: &Etcd,
    count: usize,
    rounds: usize,
    value_bytes: usize,
    tls: Option<&Tls>,
) -> anyhow::Result<Run> {
    let mut running = etcd.start(tls, value_bytes).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(running.server.pid())?;
    let mut watchers = running.open_watchers(count).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss_kib(running.server.pid())?;

    let mut tally = Tally::default();
    let pid = running.server.pid();
    let put = async {
        running.put(1).await?;
        Ok(1)
    };
    warm_up(&pid, &mut watchers.received, count, put).await?;
    for round in 2..=rounds + 1 {
        let put = async {
            running.put(round).await?;
            Ok(round as u64)
        };
        tally
            .round(&pid, &mut watchers.received, count, put)
            .await?;
    }
    drop(watchers);
    drop(running);
    wait_for_fds_to_close().await;
    Ok(Run {
        rounds: tally,
        payload_bytes: value_bytes,
        rss_before_kib,
        rss_after_kib,
        streams: count,
        message_bytes: 0,
    })
}

/// The floor server with `count` streams of messages of `message_bytes`,
/// and `rounds` writes.
pub async fn floor(count: usize, rounds: usize, message_bytes: usize) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let mut floor = Floor::start(&dir.path().join("floor.log"), message_bytes).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(floor.server.pid())?;
    let mut streams = open_streams(
        &floor.endpoint,
        None,
        (0..count).map(|_| Watcher::default()),
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss_kib(floor.server.pid())?;

    let mut tally = Tally::default();
    let pid = floor.server.pid();
    let write = async {
        floor.write(2).await?;
        Ok(2)
    };
    warm_up(&pid, &mut streams.received, count, write).await?;
    for round in 1..=rounds {
        let revision = round as u64 + 2;
        let write = async {
            floor.write(revision).await?;
            Ok(revision)
        };
        tally
            .round(&pid, &mut streams.received, count, write)
            .await?;
    }
    let run = Run::of_streams(tally, streams, count, [rss_before_kib, rss_after_kib]);
    drop(floor);
    wait_for_fds_to_close().await;
    Ok(run)
}

/// The fan-out cases: streams and body size.
fn cases(settings: &Settings) -> Vec<(usize, usize)> {
    settings.size(
        vec![(1_000, 1 << 10), (200, 64 << 10)],
        vec![(1_000, 1 << 10), (10_000, 1 << 10), (1_000, 64 << 10)],
    )
}

/// Writes per repeat with `count` streams: enough deliveries for the CPU
/// time to be theirs, not a round's noise.
fn rounds(settings: &Settings, count: usize) -> usize {
    settings.size(2, 3).max(20_000 / count).min(20)
}

/// The `fanout` section, or with `tls` the `tls` section.
pub async fn run(settings: &Settings, etcd: &Etcd, tls: Option<&Tls>) -> anyhow::Result<Outcome> {
    let transport = if tls.is_some() { "TLS, " } else { "" };
    let mut outcome = Outcome::default();
    for (count, body_bytes) in cases(settings) {
        let rounds = rounds(settings, count);
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut floors = Vec::new();
        for repeat in 1..=settings.repeats {
            let run = policyhub(count, rounds, body_bytes, tls)
                .await
                .with_context(|| format!("policyhub with {count} streams"))?;
            print_run("policyhub", repeat, &run);
            let baseline = self::etcd(etcd, count, rounds, run.payload_bytes, tls)
                .await
                .with_context(|| format!("etcd with {count} watchers"))?;
            print_run(&etcd.version, repeat, &baseline);
            if tls.is_none() {
                let floor = floor(count, rounds, run.message_bytes)
                    .await
                    .with_context(|| format!("the floor with {count} streams"))?;
                print_run("floor", repeat, &floor);
                floors.push(floor);
            }
            ours.push(run);
            theirs.push(baseline);
        }
        let case = format!("{transport}{count} streams, {} KiB body", body_bytes >> 10);
        let baseline = format!("{} gRPC watch", etcd.version);
        for (name, quantile) in [("p50", 0.50), ("p99", 0.99), ("max", 1.0)] {
            let figure = |runs: &[Run]| -> Vec<f64> {
                runs.iter().map(|run| run.quantile_ms(quantile)).collect()
            };
            let mut row = Row::new(
                format!("write to every stream {name}, {case}"),
                Unit::Milliseconds,
                figure(&ours),
                &baseline,
                figure(&theirs),
            );
            if name == "p99" {
                row = row.target(Target::RatioAtMost(0.5));
                if count == P99_BOUND_STREAMS {
                    row = row.target(Target::AtMost(P99_BOUND_MS));
                }
            }
            outcome.rows.push(row);
            if name == "p99" && !floors.is_empty() {
                outcome.rows.push(Row::new(
                    format!("write to every stream {name}, {case}"),
                    Unit::Milliseconds,
                    figure(&ours),
                    FLOOR,
                    figure(&floors),
                ));
            }
        }
        let cpu = |runs: &[Run]| -> Vec<f64> { runs.iter().map(Run::cpu_per_update_us).collect() };
        let measure = format!("server CPU per delivered update, {case}");
        outcome.rows.push(
            Row::new(
                &measure,
                Unit::Microseconds,
                cpu(&ours),
                &baseline,
                cpu(&theirs),
            )
            .target(Target::RatioAtMost(0.5)),
        );
        if !floors.is_empty() {
            outcome.rows.push(
                Row::new(measure, Unit::Microseconds, cpu(&ours), FLOOR, cpu(&floors))
                    .target(Target::RatioAtMost(2.0)),
            );
        }
        let missing = |runs: &[Run]| -> usize { runs.iter().map(|run| run.rounds.missing).sum() };
        outcome.notes.push(format!(
            "{case}: {rounds} timed writes per repeat after one untimed; bundle {} B (etcd \
             value as long, floor message as long as policyhub's {} B); receipts missing: \
             policyhub {}, etcd {}, floor {}",
            ours.first().map_or(0, |run| run.payload_bytes),
            ours.first().map_or(0, |run| run.message_bytes),
            missing(&ours),
            missing(&theirs),
            missing(&floors),
        ));
    }
    Ok(outcome)
}

fn print_run(system: &str, repeat: usize, run: &Run) {
    println!(
        "  {system} x{} (repeat {repeat}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
         {} missing, RSS {} -> {} KiB ({:.1} KiB/stream), payload {} B, \
         {:.1} µs CPU per update",
        run.streams,
        run.quantile_ms(0.50),
        run.quantile_ms(0.99),
        run.quantile_ms(1.0),
        run.rounds.missing,
        run.rss_before_kib,
        run.rss_after_kib,
        run.kib_per_stream(),
        run.payload_bytes,
        run.cpu_per_update_us(),
    );
}
