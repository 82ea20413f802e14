//! A wide namespace: N streams on a namespace of 1,000 policies, one policy
//! activated per round. Streams of the whole namespace (resumed at the
//! current revision, so no snapshot of every policy is sent) against
//! streams of that one policy, on the same server in the same repeat: both
//! receive the same one-bundle update, so the ratio is what a stream pays
//! for the size of its namespace. The work per stream should follow what
//! changed, not how many policies the namespace holds: target ≤ 1.5×.

use std::time::Duration;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{
        NAMESPACE, Options, POLICY, Policyhub, SETTLE, Watcher, ms, percentile,
        wait_for_fds_to_close,
    },
};
use policyhub::grpc::proto;

/// Policies of the namespace besides the one activated.
const OTHER_POLICIES: usize = 999;

/// What one kind of stream cost over the rounds.
struct Run {
    latencies: Vec<Duration>,
    /// Server CPU time per activation, milliseconds.
    cpu_ms: f64,
    missing: usize,
}

/// `count` streams of one kind on `policyhub`, `rounds` activations from
/// version `first_version` on.
async fn streams(
    policyhub: &mut Policyhub,
    count: usize,
    rounds: usize,
    first_version: u32,
    whole_namespace_since: Option<u64>,
) -> anyhow::Result<Run> {
    let mut streams = policyhub
        .open_streams((0..count).map(|_| Watcher {
            whole_namespace_since,
            ..Watcher::default()
        }))
        .await?;
    tokio::time::sleep(SETTLE).await;
    let versions = first_version..=first_version + rounds as u32 - 1;
    let tally = policyhub
        .activation_rounds(&mut streams, count, versions)
        .await?;
    drop(streams);
    wait_for_fds_to_close().await;
    Ok(Run {
        latencies: tally.latencies,
        cpu_ms: tally.server_cpu.as_secs_f64() * 1000.0 / rounds as f64,
        missing: tally.missing,
    })
}

/// The `wide` section.
pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let count = settings.size(1_000, 10_000);
    let rounds = settings.size(3, 5);
    let mut whole = Vec::new();
    let mut named = Vec::new();
    for repeat in 1..=settings.repeats {
        let mut policyhub = Policyhub::start(Options {
            streams: count,
            ..Options::default()
        })
        .await?;
        for other in 0..OTHER_POLICIES {
            policyhub
                .publish_policy(&format!("other-{other:04}"), 1, 256)
                .await?;
        }
        // The activated policy last: its revision is the namespace's.
        policyhub.publish_bodies(2 * rounds + 1, 256).await?;
        let current = activated_revision(&mut policyhub).await?;
        let run = streams(&mut policyhub, count, rounds, 2, Some(current)).await?;
        let baseline = streams(&mut policyhub, count, rounds, 2 + rounds as u32, None).await?;
        println!(
            "  repeat {repeat}: whole namespace p99 {:.1} ms, {:.1} ms CPU; one policy p99 {:.1} ms, \
             {:.1} ms CPU; missing {} / {}",
            ms(percentile(&run.latencies, 0.99)),
            run.cpu_ms,
            ms(percentile(&baseline.latencies, 0.99)),
            baseline.cpu_ms,
            run.missing,
            baseline.missing,
        );
        whole.push(run);
        named.push(baseline);
    }
    let case = format!(
        "{count} streams, namespace of {} policies",
        OTHER_POLICIES + 1
    );
    let baseline = "the same streams watching only that policy";
    let p99 = |runs: &[Run]| -> Vec<f64> {
        runs.iter()
            .map(|run| ms(percentile(&run.latencies, 0.99)))
            .collect()
    };
    let cpu = |runs: &[Run]| -> Vec<f64> { runs.iter().map(|run| run.cpu_ms).collect() };
    Ok(Outcome {
        rows: vec![
            Row::new(
                format!("one activation to every stream p99, {case}"),
                Unit::Milliseconds,
                p99(&whole),
                baseline,
                p99(&named),
            )
            .target(Target::RatioAtMost(1.5)),
            Row::new(
                format!("server CPU per activation, {case}"),
                Unit::Milliseconds,
                cpu(&whole),
                baseline,
                cpu(&named),
            )
            .target(Target::RatioAtMost(1.5)),
        ],
        notes: vec![format!(
            "{case}: {rounds} activations per kind of stream and repeat; receipts missing: \
             whole namespace {}, one policy {}",
            whole.iter().map(|run| run.missing).sum::<usize>(),
            named.iter().map(|run| run.missing).sum::<usize>(),
        )],
    })
}

/// The revision of the benchmark policy's activation, the namespace's
/// newest since it was published last.
async fn activated_revision(policyhub: &mut Policyhub) -> anyhow::Result<u64> {
    let status = policyhub
        .policies
        .get_policy_status(policyhub.request(proto::GetPolicyStatusRequest {
            namespace: NAMESPACE.into(),
            name: POLICY.into(),
        }))
        .await?
        .into_inner();
    Ok(status.active_revision)
}
