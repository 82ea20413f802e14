//! A deliberate restore: a runtime that verified a history the restore
//! lost refuses the restored log as wound back until an operator declares
//! the restore (`policyhub record-restore`); then it takes the restored
//! log, says so, and follows it, and a runtime started again from its
//! cache neither refuses the log nor takes the restore a second time.

use std::time::Duration;

use policyhub::grpc::proto::{self, bundle_service_client::BundleServiceClient};
use policyhub_runtime::Event;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::Code;

use crate::cli::policyhub_at;
use crate::helpers::{free_port, spawn_binary_server_on};
use crate::runtime_library::{
    copy_database, follow_events, history_refused, kill_9, quick, release, server_env,
};

/// Waits for the restore taken, failing on anything applied before it.
async fn restore_taken(events: &mut mpsc::UnboundedReceiver<Event>) -> (String, u64, u64) {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await.expect("the subscription runs") {
                Event::HistoryRestored {
                    reason,
                    from_size,
                    to_size,
                } => return (reason, from_size, to_size),
                Event::Applied(state) => panic!("applied {state:?} before taking the restore"),
                _ => {}
            }
        }
    })
    .await
    .expect("the restore taken")
}

/// Waits for the state whose team/limits holds `body`.
async fn applied(events: &mut mpsc::UnboundedReceiver<Event>, body: serde_json::Value) {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Event::Applied(state) = events.recv().await.expect("the subscription runs")
                && state.bundles.get("limits").map(|bundle| &bundle.body) == Some(&body)
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{body} applied"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_restore_is_taken_and_said_where_an_undeclared_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backup, cache) = (
        dir.path().join("data"),
        dir.path().join("backup"),
        dir.path().join("cache"),
    );
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    kill_9(server);
    copy_database(&data, &backup);

    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    let (task, _states, mut events) = follow_events(quick(&endpoint).cache_dir(&cache));
    applied(&mut events, json!({"v": 1})).await;
    release(&channel, "limits", json!({"v": 2})).await;
    release(&channel, "limits", json!({"v": 3})).await;
    applied(&mut events, json!({"v": 3})).await;
    kill_9(server);

    // The backup put back, undeclared: refused, and nothing to prove.
    copy_database(&backup, &data);
    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    let verified = history_refused(&mut events, "wound back").await;
    let mut bundles = BundleServiceClient::new(channel.clone());
    let none = bundles
        .get_restore_proof(proto::GetRestoreProofRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::NotFound, "{none:?}");

    // Declared: the runtime takes the restored log, says so, and applies
    // its state, then what follows it.
    let reason = "restored the backup of revision 1 after a disk loss";
    let recorded = policyhub_at(
        &endpoint,
        &["record-restore", "--reason", reason, "-o", "json"],
    );
    let recorded = recorded.json();
    assert_eq!(recorded["event"]["kind"], "EVENT_KIND_RESTORED");
    assert_eq!(recorded["event"]["reason"], reason);
    let (said, from_size, to_size) = restore_taken(&mut events).await;
    assert_eq!((said.as_str(), from_size), (reason, verified));
    assert!(
        to_size < verified,
        "the restored tree is smaller: {to_size}"
    );
    applied(&mut events, json!({"v": 1})).await;
    release(&channel, "limits", json!({"v": 10})).await;
    applied(&mut events, json!({"v": 10})).await;
    task.abort();

    // The proof a runtime checked, as the server serves it to anyone.
    let proof = bundles
        .get_restore_proof(proto::GetRestoreProofRequest::default())
        .await
        .unwrap()
        .into_inner()
        .proof
        .expect("a proof");
    assert!(proof.canonical_event.contains(reason));
    assert!(proof.leaf_index < proof.tree_size);

    // Started again from the cache: the restored log extends what it
    // remembers; the restore is not taken again.
    let (task, _states, mut events) = follow_events(quick(&endpoint).cache_dir(&cache));
    release(&channel, "limits", json!({"v": 11})).await;
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await.expect("the subscription runs") {
                Event::Applied(state) if state.bundles["limits"].body == json!({"v": 11}) => {
                    return;
                }
                Event::HistoryRefused { reason, .. } => panic!("refused: {reason}"),
                Event::HistoryRestored { .. } => panic!("a restore taken twice"),
                _ => {}
            }
        }
    })
    .await
    .expect("v11 applied");
    task.abort();
    kill_9(server);
}
