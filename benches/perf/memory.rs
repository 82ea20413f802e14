//! Memory: what an idle watch stream costs the server after its snapshot,
//! by body size (1 KiB, 64 KiB, 1 MiB). N streams each receive their
//! SNAPSHOT and then idle; the server's VmRSS after minus before, divided by
//! N. The baseline is etcd's RSS per idle watcher of a 1 KiB value, from
//! the same repeat.

use anyhow::Context;

use crate::{Outcome, Row, Settings, Target, Unit, etcd::Etcd, fanout};

/// The bound, whatever the body size.
const KIB_PER_STREAM_BOUND: f64 = 16.0;

const BODY_SIZES: [usize; 3] = [1 << 10, 64 << 10, 1 << 20];

pub async fn run(settings: &Settings, etcd: &Etcd) -> anyhow::Result<Outcome> {
    let count = settings.size(500, 2_000);
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); BODY_SIZES.len()];
    let mut theirs = Vec::new();
    let mut bundles = vec![0; BODY_SIZES.len()];
    for repeat in 1..=settings.repeats {
        for (index, &body_bytes) in BODY_SIZES.iter().enumerate() {
            let run = fanout::policyhub(count, 0, body_bytes, None)
                .await
                .with_context(|| format!("policyhub with {count} streams of {body_bytes} B"))?;
            println!(
                "  policyhub x{count} (repeat {repeat}), body {body_bytes} B: RSS {} -> {} KiB, \
                 {:.1} KiB/stream, bundle {} B",
                run.rss_before_kib,
                run.rss_after_kib,
                run.kib_per_stream(),
                run.payload_bytes
            );
            ours[index].push(run.kib_per_stream());
            bundles[index] = run.payload_bytes;
        }
        let baseline = fanout::etcd(etcd, count, 0, bundles[0], None)
            .await
            .with_context(|| format!("etcd with {count} watchers"))?;
        println!(
            "  {} x{count} (repeat {repeat}): RSS {} -> {} KiB, {:.1} KiB/watcher",
            etcd.version,
            baseline.rss_before_kib,
            baseline.rss_after_kib,
            baseline.kib_per_stream()
        );
        theirs.push(baseline.kib_per_stream());
    }
    let mut outcome = Outcome::default();
    for ((body_bytes, ours), bundle) in BODY_SIZES.iter().zip(ours).zip(&bundles) {
        let size = if *body_bytes >= 1 << 20 {
            format!("{} MiB", body_bytes >> 20)
        } else {
            format!("{} KiB", body_bytes >> 10)
        };
        outcome.rows.push(
            Row::new(
                format!("server RSS per idle stream after a {size} snapshot ({bundle} B bundle)"),
                Unit::KiB,
                ours,
                format!("{} RSS per idle watcher, 1 KiB value", etcd.version),
                theirs.clone(),
            )
            .target(Target::AtMost(KIB_PER_STREAM_BOUND)),
        );
    }
    outcome.notes.push(format!(
        "{count} streams per run, each on its own connection; VmRSS 2 s after the last \
         snapshot minus before the first stream"
    ));
    Ok(outcome)
}
