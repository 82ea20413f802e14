//! The server submits its checkpoints to the witnesses of
//! `audit.witnesses` (two `policyhub witness` processes here) and serves
//! the cosignatures they answer: a runtime that requires both applies an
//! activation from the very message that brings it, and the note verifies
//! with the independent verifier. With one witness stopped, activations
//! still commit, a runtime that requires both refuses the history (its
//! state stays) while one that requires either applies, and the metrics
//! count the failures. A witness entry with a bad key or URL stops the
//! server at start, naming it.

use std::process::Command;
use std::time::{Duration, Instant};

use policyhub::grpc::proto::{
    self, bundle_service_client::BundleServiceClient, policy_service_client::PolicyServiceClient,
};
use policyhub_runtime::State;
use policyhub_runtime::cosignature::cosigned_by;
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::helpers::{
    Backend, Reaped, TestDatabase, free_port, policyhub_binary, serve_args, spawn_binary_server_on,
};
use crate::runtime_library::{follow_events, history_refused, kill_9, quick, release, server_env};
use crate::witness::{log_key, spawn_named_witness};

/// How long a revision waits for cosignatures.
const WITNESS_TIMEOUT: &str = "2s";

/// A server on `database` with two witnesses of its log; every process
/// stops with the test, failed or not.
struct Deployment {
    _server: Reaped,
    channel: Channel,
    port: u16,
    metrics_port: u16,
    /// Each witness's process, verifier key and directory.
    witnesses: Vec<(Option<Reaped>, String, TempDir)>,
    _database: TestDatabase,
}

impl Deployment {
    /// Starts the server once to make its key and log (whose verifier key
    /// the witnesses trust), then the witnesses, then the server again,
    /// configured with both.
    async fn start(backend: Backend) -> Self {
        let database = TestDatabase::new(backend).await;
        let mut env = server_env();
        env.extend([
            ("POLICYHUB_DATABASE_URL", database.url.clone()),
            (
                "POLICYHUB_AUDIT__LOG_ORIGIN",
                "witnessing.test/log".to_owned(),
            ),
        ]);
        let (server, channel) =
            spawn_binary_server_on(free_port(), database.data_dir.path(), &env).await;
        release(&channel, "seed", json!({"v": 0})).await;
        let log = log_key(&channel).await;
        kill_9(server);
        let mut witnesses = Vec::new();
        let mut entries = Vec::new();
        for name in ["w1", "w2"] {
            let dir = tempfile::tempdir().unwrap();
            let witness_port = free_port();
            let key_name = format!("witness.test/{name}");
            let (witness, vkey) = spawn_named_witness(&key_name, dir.path(), witness_port, &log);
            entries.push(format!(
                "{{name = \"{name}\", url = \"http://127.0.0.1:{witness_port}/\", key = \"{vkey}\"}}"
            ));
            witnesses.push((Some(witness), vkey, dir));
        }
        // Ports taken just before the server binds them: a free port
        // picked while the first server ran could be another test's by now.
        let (port, metrics_port) = (free_port(), free_port());
        env.extend([
            (
                "POLICYHUB_AUDIT__WITNESSES",
                format!("[{}]", entries.join(", ")),
            ),
            (
                "POLICYHUB_AUDIT__WITNESS_TIMEOUT",
                WITNESS_TIMEOUT.to_owned(),
            ),
            (
                "POLICYHUB_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            ),
        ]);
        let (server, channel) = spawn_binary_server_on(port, database.data_dir.path(), &env).await;
        Deployment {
            _server: server,
            channel,
            port,
            metrics_port,
            witnesses,
            _database: database,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn witness_keys(&self) -> Vec<String> {
        self.witnesses
            .iter()
            .map(|(_, vkey, _)| vkey.clone())
            .collect()
    }

    fn stop_witness(&mut self, index: usize) {
        kill_9(self.witnesses[index].0.take().expect("running"));
    }

    /// The server's metrics page.
    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Waits for the state in which team/`name` is at `version`.
async fn until_version(states: &mut mpsc::UnboundedReceiver<State>, name: &str, version: u32) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let state = states.recv().await.expect("the subscription runs");
            if state.bundles.get(name).map(|bundle| bundle.version) == Some(version) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("team/{name} at version {version} applied in time"));
}

/// The newest checkpoint's note as ListCheckpoints serves it.
pub(crate) async fn listed_note(channel: &Channel) -> String {
    PolicyServiceClient::new(channel.clone())
        .list_checkpoints(proto::ListCheckpointsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints
        .remove(0)
        .note
}

/// Runs examples/audit/verify_tree.py on `note`, requiring `required`
/// cosignatures of `witnesses`.
async fn verify_with_python(
    channel: &Channel,
    note: &str,
    witnesses: &[String],
    required: usize,
) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let keys = BundleServiceClient::new(channel.clone())
        .get_signing_keys(proto::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let jwks = json!({"keys": keys.keys.iter().map(|key| json!({"x": key.x})).collect::<Vec<_>>()});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    std::fs::write(
        dir.path().join("note.json"),
        json!({"note": note}).to_string(),
    )
    .unwrap();
    let mut command = Command::new("python3");
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/audit/verify_tree.py"
        ))
        .arg("--jwks")
        .arg(dir.path().join("jwks.json"))
        .args(["--origin", "witnessing.test/log"]);
    for vkey in witnesses {
        command.args(["--witness", vkey]);
    }
    command
        .args(["--cosignatures", &required.to_string(), "note"])
        .arg(dir.path().join("note.json"))
        .output()
        .unwrap()
}

/// The value of the metric line that starts with `series`.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in\n{page}"))
}

async fn cosigned_activations_reach_runtimes_and_a_witness_down_holds_only_who_requires_it(
    backend: Backend,
) {
    let mut deployment = Deployment::start(backend).await;
    let both = deployment.witness_keys();
    let (requires_both, mut both_states, mut both_events) =
        follow_events(quick(&deployment.endpoint()).witnesses(both.clone(), 2));
    until_version(&mut both_states, "seed", 1).await;

    // An activation reaches the runtime that requires both cosignatures
    // with them: no message in between carries a checkpoint without.
    while both_events.try_recv().is_ok() {}
    release(&deployment.channel, "limits", json!({"v": 1})).await;
    until_version(&mut both_states, "limits", 1).await;
    while let Ok(event) = both_events.try_recv() {
        assert!(
            !matches!(event, policyhub_runtime::Event::HistoryRefused { .. }),
            "{event:?}"
        );
    }

    // Every served note carries both: the list, a proof of the newest
    // tree; and the independent verifier checks them.
    let note = listed_note(&deployment.channel).await;
    assert_eq!(cosigned_by(&note, &both).unwrap().len(), 2, "{note}");
    let proven = BundleServiceClient::new(deployment.channel.clone())
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: 1,
            new_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let proven_note = proven.checkpoint.unwrap().note;
    assert_eq!(
        cosigned_by(&proven_note, &both).unwrap().len(),
        2,
        "{proven_note}"
    );
    let run = verify_with_python(&deployment.channel, &note, &both, 2).await;
    assert!(run.status.success(), "{run:?}");
    let unwitnessed = note
        .split_inclusive('\n')
        .filter(|line| !line.starts_with("— witness.test/"))
        .collect::<String>();
    let run = verify_with_python(&deployment.channel, &unwitnessed, &both, 2).await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");

    // One witness down: the activation commits within the timeout, the
    // runtime that requires either applies it, the one that requires both
    // refuses the history and keeps version 1.
    let (requires_one, mut one_states, _one_events) =
        follow_events(quick(&deployment.endpoint()).witnesses(both.clone(), 1));
    until_version(&mut one_states, "limits", 1).await;
    while both_events.try_recv().is_ok() {}
    deployment.stop_witness(1);
    let started = Instant::now();
    release(&deployment.channel, "limits", json!({"v": 2})).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    until_version(&mut one_states, "limits", 2).await;
    history_refused(
        &mut both_events,
        "carries 1 of the 2 witnesses' cosignatures",
    )
    .await;
    while let Ok(state) = both_states.try_recv() {
        assert_ne!(
            state.bundles["limits"].version, 2,
            "applied without both cosignatures"
        );
    }
    let note = listed_note(&deployment.channel).await;
    assert_eq!(
        cosigned_by(&note, &both).unwrap(),
        ["witness.test/w1"],
        "{note}"
    );

    let page = deployment.metrics().await;
    assert!(
        metric(
            &page,
            "policyhub_witness_submissions_total{witness=\"w1\",outcome=\"cosigned\"}"
        ) >= 2.0,
        "{page}"
    );
    assert!(
        metric(
            &page,
            "policyhub_witness_submissions_total{witness=\"w2\",outcome=\"unreachable\"}"
        ) >= 1.0,
        "{page}"
    );
    requires_both.abort();
    requires_one.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cosigned_activations_reach_runtimes_and_a_witness_down_holds_only_who_requires_it()
{
    cosigned_activations_reach_runtimes_and_a_witness_down_holds_only_who_requires_it(
        Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cosigned_activations_reach_runtimes_and_a_witness_down_holds_only_who_requires_it()
 {
    cosigned_activations_reach_runtimes_and_a_witness_down_holds_only_who_requires_it(
        Backend::Postgres,
    )
    .await;
}

#[test]
fn a_witness_entry_with_a_bad_key_or_url_stops_the_server_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = policyhub_runtime::cosignature::verifier_key(
        "witness.test/w1",
        &ed25519_dalek::SigningKey::from_bytes(&[6; 32]).verifying_key(),
    );
    for (entries, says) in [
        (
            format!(
                "[{{name = \"w1\", url = \"http://127.0.0.1:1\", key = \"{}\"}}]",
                &key[..key.len() - 4]
            ),
            "audit.witnesses[0] (w1): key",
        ),
        (
            format!(
                "[{{url = \"http://127.0.0.1:1\", key = \"{key}\"}}, {{url = \"file:///w\", key = \"{key}\"}}]"
            ),
            "audit.witnesses[1] (file:///w): url",
        ),
    ] {
        let run = Command::new(policyhub_binary())
            .args(serve_args(free_port(), dir.path()))
            .env("POLICYHUB_AUDIT__WITNESSES", entries)
            .output()
            .unwrap();
        assert!(!run.status.success());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}
