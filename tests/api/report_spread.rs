//! The runtime library spreads a fleet's reports over its report spread
//! instead of sending them with the update, so they do not reach the
//! server while it still writes that update to the rest of the fleet.

use std::time::{Duration, Instant};

use policyhub_runtime::State;
use serde_json::json;
use tokio::sync::mpsc;

use crate::helpers::{free_port, spawn_binary_server_on};
use crate::observability::{scrape, value_of};
use crate::runtime_library::{follow_events, kill_9, quick, release, server_env_with_metrics};

const RUNTIMES: usize = 40;

const SPREAD: Duration = Duration::from_secs(4);

/// Reports the server accepted so far.
async fn reports(metrics_port: u16) -> f64 {
    let metrics = scrape(([127, 0, 0, 1], metrics_port).into()).await;
    value_of(&metrics, "policyhub_runtime_reports_total ")
}

/// Waits until every runtime applied `revision`.
async fn all_applied(states: &mut mpsc::UnboundedReceiver<(usize, State)>, revision: u64) {
    let mut applied = [false; RUNTIMES];
    while applied.contains(&false) {
        let (runtime, state) = tokio::time::timeout(Duration::from_secs(15), states.recv())
            .await
            .expect("every runtime applies the update within 15 s")
            .expect("the runtimes run");
        if state.revision >= revision {
            applied[runtime] = true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleets_reports_arrive_spread_over_the_report_spread_not_with_the_update() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let quota = [("POLICYHUB_QUOTAS__MAX_STREAMS_PER_SUBJECT", "200")];
    let env = server_env_with_metrics(metrics_port, &quota);
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &env).await;
    let first = release(&channel, "limits", json!({"v": 1})).await;
    let (states, mut applied) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for runtime in 0..RUNTIMES {
        let subscription = quick(&format!("http://127.0.0.1:{port}"))
            .runtime(format!("rt-{runtime}"), [])
            .report_spread(SPREAD);
        let (task, mut received, _) = follow_events(subscription);
        let states = states.clone();
        tasks.push(task);
        tasks.push(tokio::spawn(async move {
            while let Some(state) = received.recv().await {
                states.send((runtime, state)).ok();
            }
        }));
    }
    all_applied(&mut applied, first).await;
    // Every report of the first state is in after its spread.
    tokio::time::sleep(SPREAD + Duration::from_millis(500)).await;
    let before = reports(metrics_port).await;
    assert_eq!(before, RUNTIMES as f64, "one report per runtime");

    let update = release(&channel, "limits", json!({"v": 2})).await;
    let released = Instant::now();
    all_applied(&mut applied, update).await;
    let with_the_update = reports(metrics_port).await - before;
    let delivered = released.elapsed();
    // Uniform over 4 s, more than half within the delivery's few hundred
    // milliseconds would be a one-in-a-billion draw.
    assert!(
        with_the_update < (RUNTIMES / 2) as f64,
        "{with_the_update} of {RUNTIMES} reports arrived with the update, within {delivered:?}"
    );
    let deadline = released + SPREAD + Duration::from_secs(5);
    while reports(metrics_port).await - before < RUNTIMES as f64 {
        assert!(
            Instant::now() < deadline,
            "every runtime reports the update within its spread"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sent at once, 40 reports are in well within a second; spread, the
    // last of 40 falls in the first half of the spread once in 10^12.
    let last = released.elapsed();
    println!("{with_the_update} reports with the update ({delivered:?}), the last after {last:?}");
    assert!(
        last > SPREAD / 2,
        "the last report came {last:?} after the update, not spread over {SPREAD:?}"
    );
    for task in tasks {
        task.abort();
    }
    kill_9(server);
}
