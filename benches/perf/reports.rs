//! Reports at fleet scale: N identified runtimes (`rt-<n>`, one stream and
//! connection each) on one server, measured against the same server in the
//! same repeat:
//!
//! - the server's CPU time per report (every runtime reporting APPLIED of
//!   the active version, 64 in flight over 16 connections), as
//!   `ReportStatus` calls and on 64 `ReportStatusStream`s (what the runtime
//!   library holds), against per `grpc.health.v1.Health/Check` issued like
//!   the calls on the same connections: a unary call's own cost. The
//!   runtimes reported that outcome already, so the server need not write
//!   it again; the same reports on streams changing every runtime's outcome
//!   (REJECTED where it was APPLIED, and back) show what writing costs.
//!   Each window opens after the server flushed what came before and
//!   closes after it flushed what the burst changed;
//! - `Activate`'s latency, the delivery p99 and the server's CPU time from
//!   the `Activate` to the last receipt while the N runtimes answer every
//!   update with a report on their report stream, as the runtime library
//!   does (at a random moment in the second half of its report spread,
//!   1 s, after the update), against N anonymous streams that do not
//!   report (the first
//!   round of each kind left out: no report precedes it; each round starts
//!   a spread after the previous one's last receipt). Reports sent at once
//!   reached the server while it still wrote the update to the others: the
//!   CPU figure says how much of that the server does inside the
//!   delivery's window;
//! - the fleet reads that count the runtimes, `GetPolicyStatus`,
//!   `StartRollout` and `GetRollout`, with the N runtimes reported against
//!   the same calls before any runtime connected.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use policyhub::grpc::proto::{self, bundle_service_client::BundleServiceClient};
use policyhub_runtime::DEFAULT_REPORT_SPREAD;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{
        NAMESPACE, Options, POLICY, Policyhub, Reporter, SETTLE, Streams, Watcher, authorized,
        cpu_time, ms, percentile, timed_round, wait_for_fds_to_close,
    },
};

/// Connections and calls in flight of the report burst.
const CONNECTIONS: usize = 16;
const IN_FLIGHT: usize = 64;

/// Calls of each burst: enough for its CPU time to be the calls' own.
const BURST_CALLS: usize = 10_000;

/// Past the server's flush interval (a second by default): a burst's
/// window opens after the flush of what came before and closes after the
/// flush of what it changed.
const FLUSHED: Duration = Duration::from_millis(1_500);

/// Activations per kind of stream and repeat; the first is not counted.
/// The reports of each round are flushed at the next tick of the flush's
/// one-second interval, which falls anywhere against the next round's
/// `Activate`: three counted rounds left their p50 to where it fell.
const ROUNDS: usize = 11;

/// Calls of each timed fleet read.
const READS: usize = 200;

/// Rollouts started (and aborted) per repeat: one call is too few to
/// judge on a noisy machine.
const START_ROLLOUTS: usize = 5;

/// What the report burst sends.
#[derive(Clone, Copy)]
enum Burst {
    /// `ReportStatus` calls.
    Report,
    /// Reports on one `ReportStatusStream` per slot in flight.
    ReportOnStream,
    /// The same, each changing its runtime's outcome.
    ChangeOnStream,
    /// `Health/Check` calls.
    HealthCheck,
}

/// What one kind of stream saw over the rounds.
#[derive(Default)]
struct Rounds {
    activate: Vec<Duration>,
    delivery: Vec<Duration>,
    /// The server's CPU time from each Activate to its last receipt.
    delivery_cpu: Vec<Duration>,
    missing: usize,
}

/// The fleet reads, each timed.
#[derive(Default)]
struct Reads {
    policy_status: Vec<Duration>,
    start_rollout: Vec<Duration>,
    get_rollout: Vec<Duration>,
}

/// One repeat's figures.
struct Repeat {
    report_cpu_us: f64,
    stream_report_cpu_us: f64,
    stream_change_cpu_us: f64,
    health_cpu_us: f64,
    anonymous: Rounds,
    reporting: Rounds,
    reads_empty: Reads,
    reads_fleet: Reads,
}

/// The `reports` section.
pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let count = settings.size(1_000, 10_000);
    let mut repeats = Vec::new();
    for repeat in 1..=settings.repeats {
        let figures = one_repeat(count).await?;
        println!(
            "  repeat {repeat}: {:.1} µs CPU per report on a stream ({:.1} changing the \
             outcome), {:.1} per ReportStatus ({:.1} per Health/Check); Activate p50 \
             {:.1} ms reporting, {:.1} ms not; GetPolicyStatus p50 {:.2} ms with the fleet, \
             {:.2} ms without; StartRollout p50 {:.1} ms, {:.1} ms",
            figures.stream_report_cpu_us,
            figures.stream_change_cpu_us,
            figures.report_cpu_us,
            figures.health_cpu_us,
            median_ms(&figures.reporting.activate),
            median_ms(&figures.anonymous.activate),
            median_ms(&figures.reads_fleet.policy_status),
            median_ms(&figures.reads_empty.policy_status),
            median_ms(&figures.reads_fleet.start_rollout),
            median_ms(&figures.reads_empty.start_rollout),
        );
        repeats.push(figures);
        wait_for_fds_to_close().await;
    }
    let figures = |pick: &dyn Fn(&Repeat) -> f64| repeats.iter().map(pick).collect::<Vec<_>>();
    let fleet = format!("{count} runtimes");
    let quiet = format!("the same {count} streams not reporting");
    let empty = "the same call before any runtime connected";
    let p99 = |samples: &[Duration]| ms(percentile(samples, 0.99));
    let rows = vec![
        Row::new(
            format!("server CPU per report on ReportStatusStream, {fleet}"),
            Unit::Microseconds,
            figures(&|r| r.stream_report_cpu_us),
            "Health/Check on the same connections",
            figures(&|r| r.health_cpu_us),
        )
        .target(Target::AtMost(10.0)),
        Row::new(
            format!("server CPU per report on ReportStatusStream changing its outcome, {fleet}"),
            Unit::Microseconds,
            figures(&|r| r.stream_change_cpu_us),
            "Health/Check on the same connections",
            figures(&|r| r.health_cpu_us),
        ),
        Row::new(
            format!("server CPU per ReportStatus call, {fleet}"),
            Unit::Microseconds,
            figures(&|r| r.report_cpu_us),
            "Health/Check on the same connections",
            figures(&|r| r.health_cpu_us),
        ),
        Row::new(
            format!("Activate p50 while {fleet} report every update"),
            Unit::Milliseconds,
            figures(&|r| median_ms(&r.reporting.activate)),
            &quiet,
            figures(&|r| median_ms(&r.anonymous.activate)),
        )
        .target(Target::RatioAtMost(1.1)),
        Row::new(
            format!("write to every stream p99 while {fleet} report every update"),
            Unit::Milliseconds,
            figures(&|r| p99(&r.reporting.delivery)),
            &quiet,
            figures(&|r| p99(&r.anonymous.delivery)),
        )
        .target(Target::RatioAtMost(1.2)),
        Row::new(
            format!(
                "server CPU from Activate to the last receipt while {fleet} report every update"
            ),
            Unit::Milliseconds,
            figures(&|r| median_ms(&r.reporting.delivery_cpu)),
            &quiet,
            figures(&|r| median_ms(&r.anonymous.delivery_cpu)),
        ),
        Row::new(
            format!("GetPolicyStatus p50, {fleet}"),
            Unit::Milliseconds,
            figures(&|r| median_ms(&r.reads_fleet.policy_status)),
            empty,
            figures(&|r| median_ms(&r.reads_empty.policy_status)),
        )
        .target(Target::RatioAtMost(2.0)),
        Row::new(
            format!("StartRollout p50, {fleet}"),
            Unit::Milliseconds,
            figures(&|r| median_ms(&r.reads_fleet.start_rollout)),
            empty,
            figures(&|r| median_ms(&r.reads_empty.start_rollout)),
        )
        .target(Target::RatioAtMost(2.0)),
        Row::new(
            format!("GetRollout p50, {fleet}"),
            Unit::Milliseconds,
            figures(&|r| median_ms(&r.reads_fleet.get_rollout)),
            empty,
            figures(&|r| median_ms(&r.reads_empty.get_rollout)),
        )
        .target(Target::RatioAtMost(2.0)),
    ];
    let missing: usize = repeats
        .iter()
        .map(|r| r.anonymous.missing + r.reporting.missing)
        .sum();
    Ok(Outcome {
        rows,
        notes: vec![format!(
            "{fleet}: {} activations per kind of stream and repeat ({ROUNDS} run); {BURST_CALLS} \
             calls or reports of each kind per repeat for the CPU figures; {READS} calls of \
             each read, {START_ROLLOUTS} of StartRollout; receipts missing: {missing}",
            ROUNDS - 1,
        )],
    })
}

async fn one_repeat(count: usize) -> anyhow::Result<Repeat> {
    let mut policyhub = Policyhub::start(Options {
        streams: count,
        ..Options::default()
    })
    .await?;
    // Version 1 active, one version per activation, two rollout targets.
    let versions = 2 * ROUNDS + 3;
    policyhub.publish(versions).await?;
    let reads_empty = reads(&mut policyhub, versions as u32 - 1).await?;

    let mut streams = policyhub
        .open_streams((0..count).map(|_| Watcher::default()))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let (anonymous, _) = rounds(&mut policyhub, &mut streams, count, 2).await?;
    drop(streams);
    wait_for_fds_to_close().await;

    let mut streams = policyhub
        .open_streams((0..count).map(|n| Watcher {
            runtime: Some(runtime(n)),
            reports: true,
            ..Watcher::default()
        }))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let first_version = 2 + ROUNDS as u32;
    let (reporting, revision) = rounds(&mut policyhub, &mut streams, count, first_version).await?;
    let applied = Applied {
        version: first_version + ROUNDS as u32 - 1,
        revision,
    };

    let channels = futures::future::try_join_all((0..CONNECTIONS).map(|_| {
        let endpoint = policyhub.endpoint.clone();
        async move { endpoint.connect().await }
    }))
    .await?;
    let pid = policyhub.server.pid();
    let report_cpu_us = burst_cpu_us(&pid, &channels, Burst::Report, count, applied).await?;
    let stream_report_cpu_us =
        burst_cpu_us(&pid, &channels, Burst::ReportOnStream, count, applied).await?;
    let health_cpu_us = burst_cpu_us(&pid, &channels, Burst::HealthCheck, count, applied).await?;
    let stream_change_cpu_us =
        burst_cpu_us(&pid, &channels, Burst::ChangeOnStream, count, applied).await?;
    // Every runtime applied `applied` again, as the reads below expect,
    // and the reads start once that is flushed: on a quiet fleet.
    burst_cpu_us(&pid, &channels, Burst::ReportOnStream, count, applied).await?;
    tokio::time::sleep(FLUSHED).await;
    let reads_fleet = reads(&mut policyhub, versions as u32).await?;
    drop(streams);
    Ok(Repeat {
        report_cpu_us,
        stream_report_cpu_us,
        stream_change_cpu_us,
        health_cpu_us,
        anonymous,
        reporting,
        reads_empty,
        reads_fleet,
    })
}

fn median_ms(samples: &[Duration]) -> f64 {
    ms(percentile(samples, 0.5))
}

fn runtime(n: usize) -> String {
    format!("rt-{n}")
}

/// `ROUNDS` timed activations from `first_version` on, the first round's
/// figures left out; returns the last revision too.
async fn rounds(
    policyhub: &mut Policyhub,
    streams: &mut Streams,
    count: usize,
    first_version: u32,
) -> anyhow::Result<(Rounds, u64)> {
    let mut figures = Rounds::default();
    let mut last = 0;
    let pid = policyhub.server.pid();
    for round in 0..ROUNDS {
        // The runtimes report the previous round within their spread: a
        // round is its delivery and its reports, and rounds do not overlap.
        tokio::time::sleep(DEFAULT_REPORT_SPREAD).await;
        let version = first_version + round as u32;
        let mut activate = Duration::ZERO;
        let mut delivery = Vec::with_capacity(count);
        let write = async {
            let issued = Instant::now();
            let revision = policyhub
                .activate(version, &format!("benchmark round to version {version}"))
                .await?;
            activate = issued.elapsed();
            last = revision;
            Ok(revision)
        };
        let outcome = timed_round(&pid, &mut streams.received, count, &mut delivery, write).await?;
        if round > 0 {
            figures.activate.push(activate);
            figures.delivery.extend(delivery);
            figures.delivery_cpu.push(outcome.server_cpu);
            figures.missing += outcome.missing;
        }
    }
    Ok((figures, last))
}

/// What the runtimes applied last.
#[derive(Clone, Copy)]
struct Applied {
    version: u32,
    revision: u64,
}

/// The server's CPU time per call of `BURST_CALLS` calls of `burst`,
/// `IN_FLIGHT` at a time over `channels`, flushes included; the
/// reports go round the `count` runtimes, each telling it applied
/// `applied`, or in turn rejected and applied it.
async fn burst_cpu_us(
    pid: &str,
    channels: &[Channel],
    burst: Burst,
    count: usize,
    applied: Applied,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    tokio::time::sleep(FLUSHED).await;
    let before = cpu_time(pid)?;
    let mut tasks = JoinSet::new();
    for slot in 0..IN_FLIGHT {
        let channel = channels[slot % channels.len()].clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut bundles = BundleServiceClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            let mut reporter = match burst {
                Burst::ReportOnStream | Burst::ChangeOnStream => {
                    Some(Reporter::open(&mut bundles, None).await?)
                }
                _ => None,
            };
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= BURST_CALLS {
                    return Ok::<_, tonic::Status>(());
                }
                match burst {
                    Burst::Report => {
                        bundles
                            .report_status(authorized(None, report(n % count, applied)))
                            .await?;
                    }
                    Burst::ReportOnStream | Burst::ChangeOnStream => {
                        let mut report = report(n % count, applied);
                        // Every `count` reports, each runtime's outcome
                        // turns: rejected, applied, rejected...
                        if matches!(burst, Burst::ChangeOnStream) && (n / count).is_multiple_of(2) {
                            let outcome = &mut report.policies[0];
                            outcome.state = proto::ApplyState::Rejected as i32;
                            outcome.error = "benchmark rejection".into();
                        }
                        if let Some(reporter) = &mut reporter {
                            reporter.report(report).await?;
                        }
                    }
                    Burst::HealthCheck => {
                        health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await?;
                    }
                }
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result?.context("a call of the burst failed")?;
    }
    tokio::time::sleep(FLUSHED).await;
    let cpu = cpu_time(pid)?.saturating_sub(before);
    Ok(cpu.as_secs_f64() * 1e6 / BURST_CALLS as f64)
}

fn report(n: usize, applied: Applied) -> proto::ReportStatusRequest {
    proto::ReportStatusRequest {
        namespace: NAMESPACE.into(),
        runtime_id: runtime(n),
        revision: applied.revision,
        policies: vec![proto::PolicyApplyStatus {
            name: POLICY.into(),
            version: applied.version,
            state: proto::ApplyState::Applied as i32,
            ..Default::default()
        }],
    }
}

/// Times the fleet reads: `READS` GetPolicyStatus, `START_ROLLOUTS`
/// StartRollout of `target` (each then aborted), `READS` GetRollout of the
/// first.
async fn reads(policyhub: &mut Policyhub, target: u32) -> anyhow::Result<Reads> {
    let mut figures = Reads::default();
    for _ in 0..READS {
        let request = policyhub.request(proto::GetPolicyStatusRequest {
            namespace: NAMESPACE.into(),
            name: POLICY.into(),
        });
        let issued = Instant::now();
        policyhub.policies.get_policy_status(request).await?;
        figures.policy_status.push(issued.elapsed());
    }
    for started in 0..START_ROLLOUTS {
        let request = policyhub.request(start_request(target));
        let issued = Instant::now();
        let rollout = policyhub
            .policies
            .start_rollout(request)
            .await?
            .into_inner();
        figures.start_rollout.push(issued.elapsed());
        if started == 0 {
            for _ in 0..READS {
                let request = policyhub.request(proto::GetRolloutRequest {
                    namespace: NAMESPACE.into(),
                    id: rollout.id.clone(),
                });
                let issued = Instant::now();
                policyhub.policies.get_rollout(request).await?;
                figures.get_rollout.push(issued.elapsed());
            }
        }
        let abort = policyhub.request(proto::RolloutControlRequest {
            namespace: NAMESPACE.into(),
            id: rollout.id,
            reason: "benchmark".into(),
        });
        let aborted = policyhub.policies.abort_rollout(abort).await?.into_inner();
        ensure!(!aborted.id.is_empty(), "the rollout was not aborted");
        // The cohort reports the stable versions again: the next call
        // starts once that is flushed, on a quiet fleet.
        tokio::time::sleep(FLUSHED).await;
    }
    Ok(figures)
}

/// A rollout of `target` whose first step takes 10 % and bakes an hour.
fn start_request(target: u32) -> proto::StartRolloutRequest {
    let hour = Duration::from_secs(3600).try_into().expect("an hour");
    let step = |percentage| proto::RolloutStep {
        percentage,
        label_selector: String::new(),
        bake: Some(hour),
        analyses: Vec::new(),
    };
    proto::StartRolloutRequest {
        namespace: NAMESPACE.into(),
        targets: vec![proto::RolloutTargetRequest {
            name: POLICY.into(),
            selector: Some(proto::rollout_target_request::Selector::Version(target)),
            expected_active_version: None,
        }],
        steps: vec![step(10), step(100)],
        reason: "benchmark".into(),
        ..Default::default()
    }
}
