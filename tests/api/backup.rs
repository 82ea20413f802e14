//! Online backups: a copy of the SQLite database taken while activations
//! go on holds every activation acknowledged before it began, and a server
//! started on it serves them; PostgreSQL deployments are told to use
//! pg_dump.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use policyhub::grpc::proto::{self, EventKind};
use tonic::Code;

use crate::cli::policyhub_at;
use crate::helpers::{
    Backend, TestDatabase, expect_code, free_port, spawn_app, spawn_binary_server_on, target,
};
use crate::rollout_binary::seed;
use crate::runtime_library::kill_9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_holds_every_acknowledged_activation() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let port = free_port();
    // As fast as activations go, not the default 20 per second.
    let env = [
        ("POLICYHUB_DATABASE_URL", database.url.clone()),
        (
            "POLICYHUB_QUOTAS__MUTATIONS_PER_SECOND",
            "100000".to_owned(),
        ),
    ];
    let (server, channel) = spawn_binary_server_on(port, database.data_dir.path(), &env).await;
    let mut policy = proto::policy_service_client::PolicyServiceClient::new(channel);
    seed(&mut policy).await;

    // Activations, back and forth, each acknowledged revision noted with
    // when its reply arrived.
    let acknowledged: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (mut policy, acknowledged, stop) = (policy.clone(), acknowledged.clone(), stop.clone());
        async move {
            let mut version = 2;
            while !stop.load(Ordering::Relaxed) {
                let activated = policy
                    .activate(proto::ActivateRequest {
                        targets: vec![target("team", "limits", version)],
                        reason: "load".into(),
                        idempotency_key: String::new(),
                    })
                    .await
                    .expect("activate")
                    .into_inner();
                acknowledged
                    .lock()
                    .unwrap()
                    .push((activated.revision, Instant::now()));
                version = 3 - version;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let server_url = format!("http://127.0.0.1:{port}");
    let saved = tokio::task::spawn_blocking({
        let copy = copy.display().to_string();
        move || policyhub_at(&server_url, &["backup", &copy, "-o", "json"])
    })
    .await
    .unwrap()
    .json();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    kill_9(server);

    let acknowledged = acknowledged.lock().unwrap().clone();
    let before: Vec<u64> = acknowledged
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(revision, _)| *revision)
        .collect();
    let during = acknowledged.len() - before.len();
    assert!(
        before.len() >= 5 && during >= 1,
        "under load: {} before, {during} after",
        before.len()
    );
    let revision: u64 = saved["revision"].as_str().unwrap().parse().unwrap();
    assert!(
        revision >= *before.last().unwrap(),
        "{saved} after {before:?}"
    );
    assert!(!dir.path().join("copy.db.part").exists());
    let bytes = std::fs::read(&copy).unwrap();
    use sha2::Digest;
    assert_eq!(
        saved["sha256"],
        format!("{:x}", sha2::Sha256::digest(&bytes))
    );
    assert!(
        !std::fs::read_dir(database.data_dir.path())
            .unwrap()
            .any(|entry| entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".backup-")),
        "the staged copy was removed"
    );

    // Restored: a server started on the copy serves every activation
    // acknowledged before the backup began, and the state at its revision.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored_port = free_port();
    let env = [(
        "POLICYHUB_DATABASE_URL",
        format!("sqlite://{}", copy.display()),
    )];
    let (restored, channel) =
        spawn_binary_server_on(restored_port, restored_dir.path(), &env).await;
    let mut restored_policy =
        proto::policy_service_client::PolicyServiceClient::new(channel.clone());
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = restored_policy
            .list_events(proto::ListEventsRequest {
                namespace: "team".into(),
                name: "limits".into(),
                kinds: vec![EventKind::Activated as i32],
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let revisions: Vec<u64> = events.iter().map(|event| event.revision).collect();
    for acked in &before {
        assert!(
            revisions.contains(acked),
            "revision {acked} is in the backup"
        );
    }
    assert_eq!(
        revisions.iter().max(),
        Some(&revision),
        "the copy is at its revision"
    );
    let active = proto::bundle_service_client::BundleServiceClient::new(channel)
        .get_active(proto::GetActiveRequest {
            namespace: "team".into(),
            name: "limits".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.revision, revision);
    kill_9(restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deployments_are_told_to_use_pg_dump() {
    let app = spawn_app(Backend::Postgres).await;
    let message = expect_code(
        app.policy.clone().backup(proto::BackupRequest {}).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("pg_dump"), "{message}");
}
