//! Fan-out: the time from issuing a write to its receipt on every watch
//! stream, policyhub's `WatchActive` against etcd's native gRPC watch
//! ([`crate::etcd`]), one connection per watcher.
//!
//! Each repeat starts both servers fresh. policyhub: one policy with a
//! body of the case's size, N streams each until its SNAPSHOT, then one
//! `Activate` per round timed from its issue to the UPDATE on every stream.
//! etcd: N watchers of one key, then one `Put` per round of a value as long
//! as policyhub's encoded bundle, timed from its issue. The `tls` section
//! runs the same with TLS on both servers' ports ([`crate::tls`]).

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    etcd::Etcd,
    support::{
        Options, Policyhub, ROUND_PAUSE, SETTLE, Tls, Watcher, collect_round, ms, percentile,
        rss_kib, wait_for_fds_to_close,
    },
};

/// The absolute p99 bound, set for 10,000 streams.
const P99_BOUND_MS: f64 = 100.0;
const P99_BOUND_STREAMS: usize = 10_000;

/// What one server did with N streams.
pub struct Run {
    /// From issuing the write to receipt, one per stream and round.
    pub latencies: Vec<Duration>,
    /// Receipts that did not arrive within the round timeout.
    pub missing: usize,
    /// The size of the watched value: policyhub's encoded bundle, or
    /// etcd's value.
    pub payload_bytes: usize,
    /// Server VmRSS before and after opening the streams, KiB.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub streams: usize,
}

impl Run {
    pub fn kib_per_stream(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.streams as f64
    }

    fn quantile_ms(&self, quantile: f64) -> f64 {
        ms(percentile(&self.latencies, quantile))
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
    // Version 1 active; versions 2..=rounds+1 published for the rounds.
    policyhub.publish_bodies(rounds + 1, body_bytes).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(policyhub.server.pid())?;
    let mut streams = policyhub
        .open_streams((0..count).map(|_| Watcher::default()))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss_kib(policyhub.server.pid())?;

    let mut latencies = Vec::with_capacity(count * rounds);
    let mut missing = 0;
    for round in 1..=rounds {
        missing += policyhub
            .timed_round(&mut streams, round as u32 + 1, count, &mut latencies)
            .await?;
    }
    let payload_bytes = streams.payload_bytes;
    drop(streams);
    drop(policyhub);
    wait_for_fds_to_close().await;
    Ok(Run {
        latencies,
        missing,
        payload_bytes,
        rss_before_kib,
        rss_after_kib,
        streams: count,
    })
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

    let mut latencies = Vec::with_capacity(count * rounds);
    let mut missing = 0;
    for round in 1..=rounds {
        tokio::time::sleep(ROUND_PAUSE).await;
        let issued = Instant::now();
        running.put(round).await?;
        missing += collect_round(
            &mut watchers.received,
            round as u64,
            issued,
            count,
            &mut latencies,
        )
        .await;
    }
    drop(watchers);
    drop(running);
    wait_for_fds_to_close().await;
    Ok(Run {
        latencies,
        missing,
        payload_bytes: value_bytes,
        rss_before_kib,
        rss_after_kib,
        streams: count,
    })
}

/// The fan-out cases: streams and body size.
fn cases(settings: &Settings) -> Vec<(usize, usize)> {
    settings.size(
        vec![(1_000, 1 << 10), (200, 64 << 10)],
        vec![(10_000, 1 << 10), (1_000, 64 << 10)],
    )
}

/// The `fanout` section, or with `tls` the `tls` section.
pub async fn run(settings: &Settings, etcd: &Etcd, tls: Option<&Tls>) -> anyhow::Result<Outcome> {
    let rounds = settings.size(2, 3);
    let transport = if tls.is_some() { "TLS, " } else { "" };
    let mut outcome = Outcome::default();
    for (count, body_bytes) in cases(settings) {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for repeat in 1..=settings.repeats {
            let run = policyhub(count, rounds, body_bytes, tls)
                .await
                .with_context(|| format!("policyhub with {count} streams"))?;
            print_run("policyhub", repeat, &run);
            let baseline = self::etcd(etcd, count, rounds, run.payload_bytes, tls)
                .await
                .with_context(|| format!("etcd with {count} watchers"))?;
            print_run(&etcd.version, repeat, &baseline);
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
        }
        let missing: usize = ours.iter().map(|run| run.missing).sum();
        let missing_etcd: usize = theirs.iter().map(|run| run.missing).sum();
        outcome.notes.push(format!(
            "{case}: {rounds} writes per repeat; bundle {} B (etcd value as long); \
             receipts missing: policyhub {missing}, etcd {missing_etcd}",
            ours.first().map_or(0, |run| run.payload_bytes),
        ));
    }
    Ok(outcome)
}

fn print_run(system: &str, repeat: usize, run: &Run) {
    println!(
        "  {system} x{} (repeat {repeat}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
         {} missing, RSS {} -> {} KiB ({:.1} KiB/stream), payload {} B",
        run.streams,
        run.quantile_ms(0.50),
        run.quantile_ms(0.99),
        run.quantile_ms(1.0),
        run.missing,
        run.rss_before_kib,
        run.rss_after_kib,
        run.kib_per_stream(),
        run.payload_bytes,
    );
}
