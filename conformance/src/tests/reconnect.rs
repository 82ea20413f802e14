//! Reconnecting as a fleet: a thousand runtimes whose links are cut at
//! once come back within their backoff's bound, spread over it, not in one
//! burst.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures_util::future::try_join_all;

use super::{release, test};
use crate::{
    harness::{Context, Test},
    protocol::{Backoff, RuntimeSettings},
    server::Server,
    service::Runtime,
};

pub fn tests() -> Vec<Test> {
    vec![test!(
        "reconnect.a-fleet-cut-at-once-comes-back-spread",
        ["D5"],
        [Fleet],
        a_fleet_cut_at_once_comes_back_spread
    )]
}

/// The fleet's size.
const RUNTIMES: usize = 1000;

/// The backoff's bound, first and largest alike: every reconnection of a
/// runtime whose stream was up longer than it waits a random time below
/// it. Long beside the time a loaded machine takes to notice a thousand
/// cut links, which spreads even a burst: over two seconds and more on two
/// cores at a load of 13.
const WINDOW: Duration = Duration::from_secs(10);

/// Room for noticing the cut link and for a loaded machine: on two cores
/// busy with other work, a thousand runtimes take a second or more to
/// notice the cut, and the last came back up to 2.8 s after the bound.
const MARGIN: Duration = Duration::from_millis(4000);

/// How many requests to the test service are under way at once.
const CONCURRENT: usize = 32;

/// The most runtimes any tenth of the window (1 s, anywhere) may hold:
/// full jitter puts about a tenth of the fleet in each; a fleet
/// reconnecting at once, spread only by a loaded machine's slowness, puts
/// a third or more in one.
const MOST_IN_A_TENTH: usize = RUNTIMES / 4;

/// The fleet's heartbeat: the kit's usual 200 ms, with its HTTP/2 pings
/// as short, would find a loaded machine's links dead before the storm.
const HEARTBEAT: Duration = Duration::from_secs(5);

fn settings(context: &Context, n: usize) -> RuntimeSettings {
    RuntimeSettings {
        heartbeat_interval_ms: Some(HEARTBEAT.as_millis() as u64),
        backoff: Some(Backoff {
            initial_ms: WINDOW.as_millis() as u64,
            max_ms: WINDOW.as_millis() as u64,
        }),
        ..context.settings(n)
    }
}

/// A thousand runtimes, every link cut at once and the proxy open again
/// at once: each runtime is back within the backoff's bound, and no tenth
/// of the window holds a quarter of them.
async fn a_fleet_cut_at_once_comes_back_spread(mut context: Context) -> anyhow::Result<()> {
    // A server that holds a watch stream and a report stream per runtime,
    // and the old ones while the new ones open, with the fleet's heartbeat.
    let streams = (RUNTIMES * 4).to_string();
    let heartbeat = format!("{}ms", HEARTBEAT.as_millis());
    context.server = Server::start(
        &context.binary,
        &context.scratch.join("fleet-server"),
        &[
            ("POLICYHUB_QUOTAS__MAX_STREAMS_PER_SUBJECT", &streams),
            ("POLICYHUB_WATCH__HEARTBEAT_INTERVAL", &heartbeat),
        ],
    )
    .await?;
    context.proxy.redirect(context.server.grpc_address());
    let revision = release(&context, "p", 1).await?;
    let fleet: Vec<RuntimeSettings> = (0..RUNTIMES).map(|n| settings(&context, n)).collect();
    let mut runtimes = Vec::with_capacity(RUNTIMES);
    for some in fleet.chunks(CONCURRENT) {
        let started = try_join_all(some.iter().map(|settings| context.service.start(settings)))
            .await
            .context("starting the fleet")?;
        runtimes.extend(started);
    }
    all_in_force(&runtimes, revision).await?;
    let connected = context.proxy.accepts().len();
    ensure!(
        connected >= RUNTIMES,
        "{RUNTIMES} runtimes hold revision {revision} over {connected} links"
    );

    let cut = Instant::now();
    context.proxy.cut();
    tokio::time::sleep(Duration::from_millis(20)).await;
    context.proxy.heal();
    let deadline = cut + WINDOW + MARGIN;
    let back = loop {
        let back: Vec<Duration> = context
            .proxy
            .accepts()
            .into_iter()
            .filter(|at| *at > cut)
            .map(|at| at - cut)
            .collect();
        if back.len() >= RUNTIMES || Instant::now() >= deadline {
            break back;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(
        back.len() >= RUNTIMES,
        "{} of {RUNTIMES} runtimes came back within the backoff's bound of {WINDOW:?} \
         and {MARGIN:?} of margin",
        back.len()
    );
    let slice = WINDOW / 10;
    let busiest = busiest_slice(&back, slice);
    ensure!(
        busiest <= MOST_IN_A_TENTH,
        "{busiest} of {RUNTIMES} runtimes came back within {slice:?}, a tenth of the \
         backoff's {WINDOW:?}: a burst, where full jitter puts about {} in each",
        RUNTIMES / 10
    );
    Ok(())
}

/// The most of `times` within any `slice`.
fn busiest_slice(times: &[Duration], slice: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut end = 0;
    (0..sorted.len())
        .map(|start| {
            while end < sorted.len() && sorted[end] < sorted[start] + slice {
                end += 1;
            }
            end - start
        })
        .max()
        .unwrap_or(0)
}

/// Until every runtime holds `revision`, for at most 60 s.
async fn all_in_force(runtimes: &[Runtime], revision: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut waiting: Vec<&Runtime> = runtimes.iter().collect();
    while !waiting.is_empty() {
        let mut views = Vec::with_capacity(waiting.len());
        for some in waiting.chunks(CONCURRENT) {
            views.extend(try_join_all(some.iter().map(|runtime| runtime.view())).await?);
        }
        waiting = waiting
            .into_iter()
            .zip(views)
            .filter(|(_, view)| view.revision() < revision)
            .map(|(runtime, _)| runtime)
            .collect();
        if let Some(late) = waiting.first()
            && tokio::time::Instant::now() >= deadline
        {
            bail!(
                "{} of {RUNTIMES} runtimes do not hold revision {revision} after 60 s; \
                 one of them: {}",
                waiting.len(),
                serde_json::to_string(&late.view().await?.events)?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
