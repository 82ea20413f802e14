//! The runtime library spreads a fleet's reports over the second half of
//! its report spread instead of sending them with the update, so they do
//! not reach the server while it still writes that update to the rest of
//! the fleet.

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
    let delivered = released.elapsed();
    // Held for the first half of the spread: none comes with the update nor
    // after it within that half (less a margin: a runtime may receive the
    // update before its release returned).
    while released.elapsed() < SPREAD / 2 - Duration::from_millis(300) {
        let early = reports(metrics_port).await - before;
        assert_eq!(
            early,
            0.0,
            "{early} of {RUNTIMES} reports arrived within {:?} of the update, delivered within \
             {delivered:?}",
            released.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = released + SPREAD + Duration::from_secs(5);
    while reports(metrics_port).await - before < RUNTIMES as f64 {
        assert!(
            Instant::now() < deadline,
            "every runtime reports the update within its spread"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = released.elapsed();
    println!("delivered within {delivered:?}, the last report after {last:?}");
    for task in tasks {
        task.abort();
    }
    kill_9(server);
}
