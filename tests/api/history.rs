//! History you can prove: the hash chain over the event log. Untouched
//! history verifies; a DBA-style rewrite with the triggers dropped (an
//! event changed, two swapped, one deleted, on a separate connection) makes
//! `policyhub verify-log` fail naming the first broken event, and so does an
//! independent verifier in Python built from the README's definition.
//! Events written before the chain are sealed when the server starts.

use std::net::SocketAddr;

use policyhub::grpc::convert::json_to_struct;
use policyhub::grpc::proto::{
    self, get_version_request::Selector, policy_service_client::PolicyServiceClient,
};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

use crate::cli::{Run, policyhub};
use crate::helpers::{
    Backend, TestApp, TestDatabase, expect_code, free_port, spawn_binary_server_on, spawn_on,
    target, test_settings,
};

crate::on_both_backends!(
    untouched_history_verifies_and_each_rewrite_names_the_first_broken_event,
    a_rewritten_version_body_is_refused_as_data_loss_and_fails_the_live_verify_log,
    a_server_refuses_to_start_on_a_database_whose_immutability_triggers_are_off,
    a_server_refuses_to_start_on_a_log_rewritten_since_its_last_checkpoint,
    no_checkpoint_is_signed_over_events_rewritten_behind_the_servers_back,
);

/// Runs each scenario, given a backend, on SQLite and on PostgreSQL: the
/// scenarios over a log of more than 256 events spawn their own server
/// (`spawn_for_a_long_log`).
macro_rules! on_both_backends_spawning {
    ($($scenario:ident),* $(,)?) => {
        mod long_log {
            mod sqlite {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $scenario() {
                        super::super::$scenario($crate::helpers::Backend::Sqlite).await;
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $scenario() {
                        super::super::$scenario($crate::helpers::Backend::Postgres).await;
                    }
                )*
            }
        }
    };
}

on_both_backends_spawning!(
    a_server_refuses_to_start_on_a_log_tree_rewritten_inside_its_last_checkpoint,
    no_checkpoint_is_signed_over_a_log_tree_rewritten_behind_the_servers_back,
);

/// Runs SQL on a connection of its own, as a DBA would.
async fn sql(db: &DatabaseConnection, statements: &[&str]) {
    for statement in statements {
        db.execute_unprepared(statement)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
}

/// The whole log as an auditor keeps it: the `-o json` output of
/// `list-events`, `list-checkpoints` and `get-signing-keys`.
fn archive(app: &TestApp) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (file, command) in [
        ("events.json", "list-events"),
        ("checkpoints.json", "list-checkpoints"),
    ] {
        let listed = policyhub(app, &[command, "-o", "json", "--limit", "100000"]);
        std::fs::write(dir.path().join(file), listed.success()).unwrap();
    }
    let keys = policyhub(app, &["get-signing-keys", "-o", "json"]);
    std::fs::write(dir.path().join("jwks.json"), keys.success()).unwrap();
    dir
}

/// The independent verifier (Python, PyJWT) run over an archive.
fn python_verifier(app: &TestApp) -> std::process::Output {
    let archive = archive(app);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audit/verify_log.py");
    std::process::Command::new("python3")
        .arg(script)
        .arg("--checkpoints")
        .arg(archive.path().join("checkpoints.json"))
        .arg("--jwks")
        .arg(archive.path().join("jwks.json"))
        .stdin(std::fs::File::open(archive.path().join("events.json")).unwrap())
        .output()
        .expect("run python3")
}

/// `policyhub verify-log -f` of an archive.
fn verify_archive(app: &TestApp) -> Run {
    let archive = archive(app);
    let file = |name: &str| archive.path().join(name).display().to_string();
    policyhub(
        app,
        &[
            "verify-log",
            "-f",
            &file("events.json"),
            "--checkpoints",
            &file("checkpoints.json"),
            "--jwks",
            &file("jwks.json"),
        ],
    )
}

/// The verifiers accept the log: the server's, an archive's, Python's.
#[track_caller]
fn verifies(app: &TestApp) -> Run {
    let run = policyhub(app, &["verify-log"]);
    assert!(
        run.success().contains("signed checkpoints hold"),
        "{}",
        run.stdout
    );
    assert_eq!(verify_archive(app).success(), run.stdout);
    let python = python_verifier(app);
    assert!(python.status.success(), "{python:?}");
    run
}

/// The verifiers refuse the log, saying `says`.
#[track_caller]
fn refused_saying(app: &TestApp, says: &str) {
    for run in [policyhub(app, &["verify-log"]), verify_archive(app)] {
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(says), "{says}: {}", run.stderr);
    }
    let python = python_verifier(app);
    assert_eq!(python.status.code(), Some(1), "{python:?}");
    assert!(
        String::from_utf8_lossy(&python.stderr).contains(says),
        "{says}: {python:?}"
    );
}

/// The verifiers refuse the log, naming `broken` after `after`.
#[track_caller]
fn refused(app: &TestApp, broken: u64, after: u64) {
    refused_saying(
        app,
        &format!("event {broken} does not follow event {after}"),
    );
}

async fn untouched_history_verifies_and_each_rewrite_names_the_first_broken_event(app: TestApp) {
    for version in 1..=3 {
        app.release("team", "limits", json!({"max": version}), version == 1)
            .await;
    }
    app.try_activate(vec![target("team", "limits", 3)])
        .await
        .unwrap();
    verifies(&app);

    let db = app.sql().await;
    let disable: &[&str] = match app.database.backend {
        Backend::Sqlite => &[
            "DROP TRIGGER events_refuse_update",
            "DROP TRIGGER events_refuse_delete",
            "DROP TRIGGER checkpoints_refuse_delete",
        ],
        Backend::Postgres => &[
            "ALTER TABLE events DISABLE TRIGGER USER",
            "ALTER TABLE checkpoints DISABLE TRIGGER USER",
        ],
    };
    sql(&db, disable).await;

    // A changed reason; put back, the log verifies again.
    let edit = "UPDATE events SET reason = reason || ' (edited)' WHERE id = 4";
    sql(&db, &[edit]).await;
    refused(&app, 4, 3);
    let put_back = "UPDATE events SET reason = substr(reason, 1, length(reason) - 9) WHERE id = 4";
    sql(&db, &[put_back]).await;
    verifies(&app);

    // Two events swapped.
    let swap = [
        "UPDATE events SET id = -5 WHERE id = 5",
        "UPDATE events SET id = 5 WHERE id = 6",
        "UPDATE events SET id = 6 WHERE id = -5",
    ];
    sql(&db, &swap).await;
    refused(&app, 5, 4);
    sql(&db, &swap).await;
    verifies(&app);

    // The newest event removed: what is left is a chain, but the
    // checkpoint signed over it names an event that is gone.
    let last = policyhub(&app, &["list-events", "-o", "json", "--limit", "1"]);
    let last: serde_json::Value = serde_json::from_str(last.success()).unwrap();
    let last = last["events"][0]["id"].as_str().unwrap().to_owned();
    sql(
        &db,
        &[
            &format!("CREATE TABLE kept AS SELECT * FROM events WHERE id = {last}"),
            &format!("DELETE FROM events WHERE id = {last}"),
        ],
    )
    .await;
    refused_saying(&app, &format!("its last event {last} is not in the log"));
    sql(
        &db,
        &["INSERT INTO events SELECT * FROM kept", "DROP TABLE kept"],
    )
    .await;
    verifies(&app);

    // A checkpoint forged into the table: its signature does not hold.
    // Removed by its id: the server's refresh may sign one after it.
    let forged = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "INSERT INTO checkpoints (revision, last_event_id, chain_head, at, key_id, jws) \
             SELECT revision + 1, last_event_id, chain_head, at, key_id, jws || 'A' \
             FROM checkpoints WHERE id = (SELECT MAX(id) FROM checkpoints) RETURNING id",
        ))
        .await
        .unwrap()
        .expect("the forged checkpoint's id")
        .try_get::<i64>("", "id")
        .unwrap();
    refused_saying(&app, "does not hold: signature check failed");
    sql(
        &db,
        &[&format!("DELETE FROM checkpoints WHERE id = {forged}")],
    )
    .await;
    verifies(&app);

    // One deleted.
    sql(&db, &["DELETE FROM events WHERE id = 2"]).await;
    refused(&app, 3, 1);
    db.close().await.ok();
}

/// Events without a hash, as a server older than the chain wrote them, are
/// sealed when the server starts, to the hashes they would have had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_before_the_chain_are_sealed_at_start() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    for version in 1..=2 {
        app.release("team", "limits", json!({"max": version}), true)
            .await;
    }
    let head = verifies(&app).stdout.rsplit_once(' ').unwrap().1.to_owned();
    let db = app.sql().await;
    // The guard put back, as the migration to the chain left it: a server
    // refuses to start on a database whose guards are off.
    let definition = events_guard_definition(&db, Backend::Sqlite).await;
    sql(
        &db,
        &[
            "DROP TRIGGER events_refuse_update",
            "UPDATE events SET hash = NULL",
            &definition,
        ],
    )
    .await;
    db.close().await.ok();
    let database = app.stop().await;
    let app = spawn_on(database, |_| {}).await;
    assert!(
        verifies(&app).stdout.ends_with(&head),
        "sealed to the same chain"
    );
}

/// A published version's body rewritten in the database, its guard off:
/// GetVersion and ListVersions refuse it as DATA_LOSS rather than show a
/// digest computed from the rewritten body as the signed one, and the live
/// `verify-log` fails naming the version.
async fn a_rewritten_version_body_is_refused_as_data_loss_and_fails_the_live_verify_log(
    app: TestApp,
) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), true).await;
    policyhub(&app, &["verify-log"]).success();

    let db = app.sql().await;
    let disable: &[&str] = match app.database.backend {
        Backend::Sqlite => &["DROP TRIGGER versions_guard_update"],
        Backend::Postgres => &["ALTER TABLE versions DISABLE TRIGGER USER"],
    };
    sql(&db, disable).await;
    sql(
        &db,
        &["UPDATE versions SET body = '{\"max\":100}' WHERE version = 1"],
    )
    .await;
    db.close().await.ok();

    let run = policyhub(&app, &["verify-log"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("team/limits version 1"),
        "{}",
        run.stderr
    );

    let get = |version: u32| {
        let mut client = app.policy.clone();
        async move {
            client
                .get_version(proto::GetVersionRequest {
                    namespace: "team".into(),
                    name: "limits".into(),
                    selector: Some(Selector::Version(version)),
                })
                .await
        }
    };
    let message = expect_code(get(1).await, Code::DataLoss);
    assert!(message.contains("its signature covers"), "{message}");
    let listed = app
        .policy
        .clone()
        .list_versions(proto::ListVersionsRequest {
            namespace: "team".into(),
            name: "limits".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await;
    expect_code(listed, Code::DataLoss);
    let untouched = get(2).await.expect("version 2 is as signed").into_inner();
    assert_eq!(untouched.version, 2);
}

/// The guard of events' rows off: dropped on SQLite, disabled on
/// PostgreSQL. What `guard_events_again` undoes.
async fn events_unguarded(db: &DatabaseConnection, backend: Backend) {
    match backend {
        Backend::Sqlite => sql(db, &["DROP TRIGGER events_refuse_update"]).await,
        Backend::Postgres => {
            sql(
                db,
                &["ALTER TABLE events DISABLE TRIGGER events_guard_update"],
            )
            .await
        }
    }
}

/// Puts the guard of events' rows back as the migrations made it;
/// `definition` is what SQLite held before it was dropped.
async fn guard_events_again(db: &DatabaseConnection, backend: Backend, definition: &str) {
    match backend {
        Backend::Sqlite => sql(db, &[definition]).await,
        Backend::Postgres => {
            sql(
                db,
                &["ALTER TABLE events ENABLE TRIGGER events_guard_update"],
            )
            .await
        }
    }
}

/// The SQL that made the SQLite guard of events' rows ("" on PostgreSQL).
async fn events_guard_definition(db: &DatabaseConnection, backend: Backend) -> String {
    if backend == Backend::Postgres {
        return String::new();
    }
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Sqlite,
            "SELECT sql FROM sqlite_master WHERE name = 'events_refuse_update'",
        ))
        .await
        .unwrap()
        .expect("the guard exists");
    row.try_get::<String>("", "sql").unwrap()
}

/// The newest event's reason changed, as a DBA would.
const REWRITE_NEWEST_EVENT: &str =
    "UPDATE events SET reason = 'rewritten' WHERE id = (SELECT MAX(id) FROM events)";

/// Why a server does not start on `database`.
async fn start_refused(database: &TestDatabase) -> String {
    match policyhub::startup::Application::build(test_settings(database)).await {
        Ok(_) => panic!("the server started"),
        Err(error) => format!("{error:#}"),
    }
}

/// A stopped server's database with a guard dropped and another disabled:
/// the server refuses to start, naming each and how to recover.
async fn a_server_refuses_to_start_on_a_database_whose_immutability_triggers_are_off(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let database = app.stop().await;
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    let off: &[&str] = match database.backend {
        Backend::Sqlite => &[
            "DROP TRIGGER events_refuse_update",
            "DROP TRIGGER versions_guard_update",
        ],
        Backend::Postgres => &[
            "DROP TRIGGER events_guard_update ON events",
            "ALTER TABLE versions DISABLE TRIGGER versions_guard_update",
        ],
    };
    sql(&db, off).await;
    db.close().await.ok();
    let why = start_refused(&database).await;
    let events_guard = match database.backend {
        Backend::Sqlite => "events_refuse_update on events",
        Backend::Postgres => "events_guard_update on events",
    };
    for named in [
        "2 immutability triggers are missing or disabled",
        events_guard,
        "versions_guard_update on versions",
        "restore the database from a backup",
    ] {
        assert!(why.contains(named), "{named}: {why}");
    }
}

/// The newest event rewritten while the server was stopped, its guard put
/// back afterwards: the server refuses to start on a log that no longer
/// extends its last signed checkpoint.
async fn a_server_refuses_to_start_on_a_log_rewritten_since_its_last_checkpoint(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), true).await;
    let database = app.stop().await;
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    let definition = events_guard_definition(&db, database.backend).await;
    events_unguarded(&db, database.backend).await;
    sql(&db, &[REWRITE_NEWEST_EVENT]).await;
    guard_events_again(&db, database.backend, &definition).await;
    db.close().await.ok();
    let why = start_refused(&database).await;
    assert!(
        why.contains("the event log does not extend the last signed checkpoint"),
        "{why}"
    );
}

/// The newest events rewritten behind a running server's back: the next
/// revision is refused with DATA_LOSS rather than signed over the rewritten
/// log, no checkpoint is added, and health reports the replica not serving.
async fn no_checkpoint_is_signed_over_events_rewritten_behind_the_servers_back(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), true).await;
    let db = app.sql().await;
    let checkpoints = async || {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n, MAX(last_event_id) AS last FROM checkpoints",
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get::<i64>("", "n").unwrap(),
            row.try_get::<i64>("", "last").unwrap(),
        )
    };
    let signed = checkpoints().await;
    events_unguarded(&db, app.database.backend).await;
    sql(&db, &[REWRITE_NEWEST_EVENT]).await;

    let refused = app.try_activate(vec![target("team", "limits", 1)]).await;
    let message = expect_code(refused, Code::DataLoss);
    assert!(
        message.contains("does not extend the last signed checkpoint"),
        "{message}"
    );
    assert_eq!(
        checkpoints().await,
        signed,
        "nothing signed over the rewrite"
    );
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 2);
    assert_not_serving(app.address).await;
    db.close().await.ok();
}

/// Health reports the replica at `address` not serving, within a few
/// seconds.
async fn assert_not_serving(address: SocketAddr) {
    assert_health(
        address,
        tonic_health::pb::health_check_response::ServingStatus::NotServing,
    )
    .await;
}

/// Health reports the replica at `address` serving, within a few seconds.
async fn assert_serving(address: SocketAddr) {
    assert_health(
        address,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    )
    .await;
}

/// Health reports `expected` for the policy service of the replica at
/// `address` within a few seconds.
async fn assert_health(
    address: SocketAddr,
    expected: tonic_health::pb::health_check_response::ServingStatus,
) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut status = None;
    for _ in 0..50 {
        status = health
            .check(HealthCheckRequest {
                service: "policyhub.v1.PolicyService".into(),
            })
            .await
            .ok()
            .map(|response| response.into_inner().status);
        if status == Some(expected as i32) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(expected as i32));
}

/// A server on `backend` with its metrics port, whose mutation quota lets
/// a test write a few hundred events at once.
async fn spawn_for_a_long_log(backend: Backend) -> TestApp {
    spawn_on(TestDatabase::new(backend).await, |settings| {
        settings.quotas.mutations_per_second = 100_000.0;
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// A log of more than 256 events (a draft of each of 256 policies, then a
/// release activated), signed by a checkpoint: its tree has a stored node
/// over the first 256 leaves, inside the signed tree and read by the
/// proof that any larger tree extends it.
async fn a_signed_log_of_more_than_256_events(app: &TestApp) {
    for index in 0..256 {
        app.draft("team", &format!("p{index}"), json!({"v": index}))
            .await;
    }
    app.release("team", "limits", json!({"max": 1}), true).await;
    let (_, size, _) = crate::log_tree::signed_tree(app).await;
    assert!(size > 256, "a signed tree of {size}");
}

/// Rewrites, as a DBA would, the stored hash of the first 256 events: an
/// interior node of the log's tree, which the hash chain does not cover.
/// Its guard is off for the while and put back, as the migrations made it.
async fn rewrite_the_node_of_the_first_256_events(db: &DatabaseConnection, backend: Backend) {
    let node = tlog_tiles::stored_hash_index(8, 0);
    let (off, rewrite, on) = match backend {
        Backend::Sqlite => (
            "DROP TRIGGER log_hashes_refuse_update".to_owned(),
            format!("UPDATE log_hashes SET hash = zeroblob(32) WHERE id = {node}"),
            "CREATE TRIGGER log_hashes_refuse_update BEFORE UPDATE ON log_hashes \
             BEGIN SELECT RAISE(ABORT, 'policyhub: log_hashes rows are never changed'); END"
                .to_owned(),
        ),
        Backend::Postgres => (
            "ALTER TABLE log_hashes DISABLE TRIGGER USER".to_owned(),
            format!(
                "UPDATE log_hashes SET hash = decode(repeat('00', 32), 'hex') WHERE id = {node}"
            ),
            "ALTER TABLE log_hashes ENABLE TRIGGER USER".to_owned(),
        ),
    };
    sql(db, &[&off, &rewrite, &on]).await;
}

/// An interior node of the tree the last checkpoint signed rewritten while
/// the server was stopped: the chain still verifies, but the server
/// refuses to start on a tree that no longer extends the signed one.
async fn a_server_refuses_to_start_on_a_log_tree_rewritten_inside_its_last_checkpoint(
    backend: Backend,
) {
    let app = spawn_for_a_long_log(backend).await;
    a_signed_log_of_more_than_256_events(&app).await;
    let database = app.stop().await;
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    rewrite_the_node_of_the_first_256_events(&db, database.backend).await;
    db.close().await.ok();
    let why = start_refused(&database).await;
    assert!(
        why.contains("the log's tree does not extend the last signed checkpoint's"),
        "{why}"
    );
}

/// An interior node of the tree the last checkpoint signed rewritten behind
/// a running server's back: the next revision is refused with DATA_LOSS
/// rather than signed over a root the events do not make, no checkpoint is
/// added, the refusal is counted, and health reports the replica not
/// serving.
async fn no_checkpoint_is_signed_over_a_log_tree_rewritten_behind_the_servers_back(
    backend: Backend,
) {
    use crate::observability::{scrape, value_of};

    let app = spawn_for_a_long_log(backend).await;
    a_signed_log_of_more_than_256_events(&app).await;
    app.release("team", "limits", json!({"max": 2}), true).await;
    let metrics = app.metrics_address.expect("a metrics port");
    let refused_total = async || {
        value_of(
            &scrape(metrics).await,
            "policyhub_checkpoints_refused_total",
        )
    };
    let refused_before = refused_total().await;
    let db = app.sql().await;
    let checkpoints = async || {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM checkpoints",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    };
    let signed = checkpoints().await;
    rewrite_the_node_of_the_first_256_events(&db, app.database.backend).await;

    let refused = app.try_activate(vec![target("team", "limits", 1)]).await;
    let message = expect_code(refused, Code::DataLoss);
    assert!(
        message.contains("the log's tree does not extend the last signed checkpoint's"),
        "{message}"
    );
    assert_eq!(
        checkpoints().await,
        signed,
        "nothing signed over the rewrite"
    );
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 2);
    assert!(refused_total().await > refused_before);
    assert_not_serving(app.address).await;
    db.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_signing_fails_that_write_and_leaves_the_replica_serving() {
    a_lost_connection_is_no_rewrite(Backend::Postgres).await;
}

/// How many times a connection is killed while the server signs.
const KILLS_WHILE_SIGNING: usize = 50;

/// Activates version `version` of team/limits, for `reason`.
async fn activate(
    policy: &mut PolicyServiceClient<Channel>,
    version: u32,
    reason: &str,
) -> Result<proto::ActivateResponse, tonic::Status> {
    let request = proto::ActivateRequest {
        targets: vec![target("team", "limits", version)],
        reason: reason.into(),
        idempotency_key: String::new(),
    };
    Ok(policy.activate(request).await?.into_inner())
}

/// Drafts `body` as team/limits and publishes it active.
async fn release_active(policy: &mut PolicyServiceClient<Channel>, body: serde_json::Value) {
    policy
        .draft(proto::DraftRequest {
            namespace: "team".into(),
            name: "limits".into(),
            body: Some(json_to_struct(&body)),
            ..Default::default()
        })
        .await
        .expect("draft");
    policy
        .publish(proto::PublishRequest {
            namespace: "team".into(),
            name: "limits".into(),
            activate: true,
            reason: "test publish".into(),
            ..Default::default()
        })
        .await
        .expect("publish");
}

/// The server's connection killed (`pg_terminate_backend`) while it reads
/// the last checkpoint to sign the next one, again and again: each such
/// write fails as a database error does, none is taken for a rewritten
/// history (the refusal counter stays at 0) and the replica reports
/// SERVING, while a real rewrite afterwards still takes it out of rotation.
///
/// The server runs as a process of its own (`policyhub serve`): the
/// metrics registry is the process's, so a server inside the test process
/// would count, on its metrics page, the refusals of every other test's
/// server running beside it, such as the rewrites of this file's other
/// scenarios.
async fn a_lost_connection_is_no_rewrite(backend: Backend) {
    use crate::observability::{scrape, value_of};
    use sea_orm::TransactionTrait;

    let database = TestDatabase::new(backend).await;
    let (port, metrics_port) = (free_port(), free_port());
    let env = [
        ("POLICYHUB_DATABASE_URL", database.url.clone()),
        (
            "POLICYHUB_METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        ),
        ("POLICYHUB_HEALTH_CHECK_INTERVAL", "1s".to_owned()),
        // Writes as fast as the kills go, not the default 20 per second.
        (
            "POLICYHUB_QUOTAS__MUTATIONS_PER_SECOND",
            "100000".to_owned(),
        ),
    ];
    let (_server, channel) = spawn_binary_server_on(port, database.data_dir.path(), &env).await;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let mut policy = PolicyServiceClient::new(channel);
    release_active(&mut policy, json!({"max": 1})).await;
    release_active(&mut policy, json!({"max": 2})).await;
    let refused_total = async || {
        value_of(
            &scrape(metrics).await,
            "policyhub_checkpoints_refused_total",
        )
    };
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    for kill in 0..KILLS_WHILE_SIGNING {
        // The checkpoints held by a transaction of the test's: the server's
        // write, which has written its events (it holds a transaction id),
        // waits at the read of the last checkpoint until it is killed.
        let lock = db.begin().await.unwrap();
        lock.execute_unprepared("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let mut writer = policy.clone();
        // Each write fails, so version 2 stays active and each activation
        // of version 1 is a revision to sign.
        let write = tokio::spawn(async move {
            activate(&mut writer, 1, "a write whose connection is killed").await
        });
        let mut killed = false;
        for _ in 0..500 {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    db.get_database_backend(),
                    "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND wait_event_type = 'Lock' AND backend_xid IS NOT NULL \
                     AND query ILIKE '%checkpoints%'",
                ))
                .await
                .unwrap()
                .unwrap();
            if row.try_get::<i64>("", "n").unwrap() > 0 {
                killed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        lock.rollback().await.unwrap();
        assert!(killed, "kill {kill}: the write never waited to sign");
        let failed = write
            .await
            .unwrap()
            .expect_err("a write whose connection was killed");
        assert_ne!(failed.code(), Code::DataLoss, "kill {kill}: {failed:?}");
    }
    assert_eq!(
        refused_total().await,
        0.0,
        "a lost connection is no rewrite"
    );
    assert_serving(address).await;
    let written = activate(&mut policy, 1, "test activation").await;
    assert!(written.is_ok(), "{written:?}");

    events_unguarded(&db, backend).await;
    sql(&db, &[REWRITE_NEWEST_EVENT]).await;
    let refused = activate(&mut policy, 2, "test activation").await;
    expect_code(refused, Code::DataLoss);
    assert_eq!(refused_total().await, 1.0);
    assert_not_serving(address).await;
    db.close().await.ok();
}
