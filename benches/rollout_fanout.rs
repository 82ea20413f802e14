//! Rollout fan-out: what a rollout step costs the watch, against a plain
//! activation measured in the same run on the same streams.
//!
//! The real `policyhub serve` binary on SQLite in a temporary directory;
//! `ROLLOUT_FANOUT_STREAMS` (default 10,000) `WatchActive` streams, each a
//! named runtime (`rt-<n>`) on its own TCP connection; versions 1 and 2 of
//! one policy published, version 1 active. Each of `ROLLOUT_FANOUT_ROUNDS`
//! (default 5) rounds measures three changes, in an order that rotates from
//! round to round, each timed from the moment its call is issued to the
//! UPDATE's receipt on every stream that should get it:
//!
//! - plain: `Activate` of the inactive version; every stream receives it;
//! - 10 % step: `StartRollout` of the inactive version whose first step is
//!   10 %; the hashed cohort's streams receive it, the others nothing;
//! - 100 % step: `StartRollout` whose first step is 100 %; every stream
//!   receives it.
//!
//! Each rollout is aborted after its measurement (the cohort gets the stable
//! version back; that fan-out is waited for, not measured). The report gives
//! each change's p99 per round, their median over the rounds with the
//! spread, and each step's p99 as a ratio to the same round's plain
//! activation (target: at most 1.2). Run with
//! `cargo bench --bench rollout_fanout`.

use std::{
    env,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use policyhub::domain::{rollout::bucket, runtime::RuntimeId};
use policyhub::grpc::proto;

mod support;

use support::{
    NAMESPACE, POLICY, Policyhub, ROUND_PAUSE, SETTLE, SPARE_FDS, Streams, Watcher, collect_round,
    cpu_time, load_average, median_and_spread, ms, open_files_limit, percentile, rss_kib,
    wait_for_fds_to_close,
};

/// The ratio to the plain activation's p99 each step must stay within.
const TARGET_RATIO: f64 = 1.2;

/// The changes a round measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Plain,
    Step10,
    Step100,
}

impl Change {
    const ALL: [Change; 3] = [Change::Plain, Change::Step10, Change::Step100];

    fn name(self) -> &'static str {
        match self {
            Change::Plain => "plain activation",
            Change::Step10 => "10 % rollout step",
            Change::Step100 => "100 % rollout step",
        }
    }
}

/// One change measured once.
struct Sample {
    change: Change,
    receivers: usize,
    missing: usize,
    p99: Duration,
    reply: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = env::var("ROLLOUT_FANOUT_STREAMS")
        .unwrap_or("10000".into())
        .parse()
        .context("ROLLOUT_FANOUT_STREAMS is not a number")?;
    let rounds: usize = env::var("ROLLOUT_FANOUT_ROUNDS")
        .unwrap_or("5".into())
        .parse()
        .context("ROLLOUT_FANOUT_ROUNDS is not a number")?;
    ensure!(
        count > 0 && rounds > 0,
        "ROLLOUT_FANOUT_STREAMS and ROLLOUT_FANOUT_ROUNDS must be at least 1"
    );
    let fd_limit = open_files_limit()?;
    ensure!(
        count + SPARE_FDS <= fd_limit,
        "{count} streams need {} file descriptors, the limit is {fd_limit}",
        count + SPARE_FDS
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "rollout fan-out: {count} named streams, {rounds} rounds, {cpus} CPUs, load average {}",
        load_average()
    );

    let mut policyhub = Policyhub::spawn(count, &[]).await?;
    policyhub.publish(2).await?;
    let ids: Vec<String> = (0..count).map(|n| format!("rt-{n}")).collect();
    let mut streams = policyhub
        .open_streams(ids.iter().map(|id| Watcher {
            runtime: Some(id.clone()),
            reports: false,
            ..Watcher::default()
        }))
        .await?;
    tokio::time::sleep(SETTLE).await;
    println!(
        "  opened in {:.1} s, server RSS {} KiB, payload {} B",
        streams.opened_in.as_secs_f64(),
        rss_kib(policyhub.server.pid())?,
        streams.payload_bytes
    );

    let cpu_before = cpu_time(policyhub.server.pid())?;
    let mut active = 1;
    let mut samples: Vec<Vec<Sample>> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut this_round = Vec::with_capacity(Change::ALL.len());
        for offset in 0..Change::ALL.len() {
            let change = Change::ALL[(round + offset) % Change::ALL.len()];
            tokio::time::sleep(ROUND_PAUSE).await;
            let target = 3 - active;
            let sample = measure(&mut policyhub, &mut streams, &ids, change, target).await?;
            if change == Change::Plain {
                active = target;
            }
            println!(
                "  round {}: {}: {} receivers ({} missing), p99 {:.1} ms, reply {:.1} ms",
                round + 1,
                change.name(),
                sample.receivers,
                sample.missing,
                ms(sample.p99),
                ms(sample.reply),
            );
            this_round.push(sample);
        }
        samples.push(this_round);
    }
    let server_cpu = cpu_time(policyhub.server.pid())?.saturating_sub(cpu_before);
    drop(streams);
    drop(policyhub);
    wait_for_fds_to_close().await;
    report(&samples, server_cpu);
    println!("load average at the end: {}", load_average());
    Ok(())
}

/// Makes `change` towards version `target` and times its receipt on every
/// stream that should get it; a rollout is aborted afterwards.
async fn measure(
    policyhub: &mut Policyhub,
    streams: &mut Streams,
    ids: &[String],
    change: Change,
    target: u32,
) -> anyhow::Result<Sample> {
    let percentage = match change {
        Change::Plain => 100,
        Change::Step10 => 10,
        Change::Step100 => 100,
    };
    let issued = Instant::now();
    let (revision, rollout) = if change == Change::Plain {
        let reply = policyhub
            .policies
            .activate(proto::ActivateRequest {
                targets: vec![proto::ActivationTarget {
                    namespace: NAMESPACE.into(),
                    name: POLICY.into(),
                    selector: Some(proto::activation_target::Selector::Version(target)),
                    expected_active_version: None,
                    expected_active_revision: None,
                }],
                reason: "benchmark".into(),
                idempotency_key: String::new(),
            })
            .await?
            .into_inner();
        (reply.revision, None)
    } else {
        let reply = policyhub
            .policies
            .start_rollout(start_request(target, percentage))
            .await?
            .into_inner();
        let revision = *reply
            .step_revisions
            .first()
            .context("a started rollout has its first step's revision")?;
        (revision, Some(reply.id))
    };
    let reply = issued.elapsed();
    let receivers = match &rollout {
        Some(id) => ids
            .iter()
            .filter(|runtime| {
                let runtime = RuntimeId::parse("id", runtime).expect("a valid runtime id");
                bucket(id, &runtime) < percentage * 100
            })
            .count(),
        None => ids.len(),
    };
    let mut latencies = Vec::with_capacity(receivers);
    let missing = collect_round(
        &mut streams.received,
        revision,
        issued,
        receivers,
        &mut latencies,
    )
    .await;
    if let Some(id) = rollout {
        policyhub
            .policies
            .abort_rollout(proto::RolloutControlRequest {
                namespace: NAMESPACE.into(),
                id,
                reason: "benchmark".into(),
            })
            .await?;
        // The cohort's way back to the stable version is not measured.
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    Ok(Sample {
        change,
        receivers,
        missing,
        p99: percentile(&latencies, 0.99),
        reply,
    })
}

/// A rollout of version `target` whose first step is `percentage` %,
/// baking for an hour.
fn start_request(target: u32, percentage: u32) -> proto::StartRolloutRequest {
    let hour = Duration::from_secs(3600).try_into().expect("an hour");
    let mut steps = vec![proto::RolloutStep {
        percentage,
        label_selector: String::new(),
        bake: Some(hour),
        analyses: Vec::new(),
    }];
    if percentage < 100 {
        steps.push(proto::RolloutStep {
            percentage: 100,
            label_selector: String::new(),
            bake: Some(hour),
            analyses: Vec::new(),
        });
    }
    proto::StartRolloutRequest {
        namespace: NAMESPACE.into(),
        targets: vec![proto::RolloutTargetRequest {
            name: POLICY.into(),
            selector: Some(proto::rollout_target_request::Selector::Version(target)),
            expected_active_version: None,
        }],
        steps,
        reason: "benchmark".into(),
        ..Default::default()
    }
}

fn report(samples: &[Vec<Sample>], server_cpu: Duration) {
    let of = |change: Change| -> Vec<&Sample> {
        samples
            .iter()
            .flatten()
            .filter(|sample| sample.change == change)
            .collect()
    };
    let plain: Vec<&Sample> = of(Change::Plain);
    println!();
    println!(
        "| change | receivers | missing | p99 ms, median | p99 ms, min–max | reply ms, median \
         | p99 / plain p99, median | min–max | within {TARGET_RATIO}× |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for change in Change::ALL {
        let measured = of(change);
        let p99s: Vec<f64> = measured.iter().map(|sample| ms(sample.p99)).collect();
        let replies: Vec<f64> = measured.iter().map(|sample| ms(sample.reply)).collect();
        let ratios: Vec<f64> = measured
            .iter()
            .zip(&plain)
            .map(|(sample, plain)| sample.p99.as_secs_f64() / plain.p99.as_secs_f64())
            .collect();
        let (p99, p99_min, p99_max) = median_and_spread(p99s);
        let (reply, _, _) = median_and_spread(replies);
        let (ratio, ratio_min, ratio_max) = median_and_spread(ratios);
        let verdict = if change == Change::Plain {
            "—"
        } else if ratio <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "| {} | {} | {} | {p99:.1} | {p99_min:.1}–{p99_max:.1} | {reply:.1} | {ratio:.2} \
             | {ratio_min:.2}–{ratio_max:.2} | {verdict} |",
            change.name(),
            measured[0].receivers,
            measured.iter().map(|sample| sample.missing).sum::<usize>(),
        );
    }
    let changes = samples.iter().map(Vec::len).sum::<usize>();
    println!(
        "server CPU over the rounds: {:.0} ms per change (aborts included)",
        ms(server_cpu) / changes as f64
    );
}
