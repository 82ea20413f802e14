//! History you can prove: the hash chain over the event log. Untouched
//! history verifies; a DBA-style rewrite with the triggers dropped (an
//! event changed, two swapped, one deleted, on a separate connection) makes
//! `policyhub verify-log` fail naming the first broken event, and so does an
//! independent verifier in Python built from the README's definition.
//! Events written before the chain are sealed when the server starts.

use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;

use crate::cli::{Run, policyhub};
use crate::helpers::{Backend, TestApp, spawn_on, target};

crate::on_both_backends!(untouched_history_verifies_and_each_rewrite_names_the_first_broken_event);

/// Runs SQL on a connection of its own, as a DBA would.
async fn sql(db: &DatabaseConnection, statements: &[&str]) {
    for statement in statements {
        db.execute_unprepared(statement)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
}

/// The independent verifier run over `policyhub list-events -o json`.
fn python_verifier(app: &TestApp) -> std::process::Output {
    let listed = policyhub(app, &["list-events", "-o", "json", "--limit", "100000"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audit/verify_log.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(listed.success().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `policyhub verify-log -f` of an archive: the log as `list-events -o
/// json` writes it.
fn verify_archive(app: &TestApp) -> Run {
    let listed = policyhub(app, &["list-events", "-o", "json", "--limit", "100000"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("events.json");
    std::fs::write(&archive, listed.success()).unwrap();
    policyhub(app, &["verify-log", "-f", &archive.display().to_string()])
}

/// The verifiers accept the log: the server's, an archive's, Python's.
#[track_caller]
fn verifies(app: &TestApp) -> Run {
    let run = policyhub(app, &["verify-log"]);
    assert!(run.success().contains("events verified"), "{}", run.stdout);
    assert_eq!(verify_archive(app).success(), run.stdout);
    let python = python_verifier(app);
    assert!(python.status.success(), "{python:?}");
    run
}

/// The verifiers refuse the log, naming `broken` after `after`.
#[track_caller]
fn refused(app: &TestApp, broken: u64, after: u64) {
    let says = format!("event {broken} does not follow event {after}");
    for run in [policyhub(app, &["verify-log"]), verify_archive(app)] {
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(&says), "{says}: {}", run.stderr);
    }
    let python = python_verifier(app);
    assert_eq!(python.status.code(), Some(1), "{python:?}");
    assert!(
        String::from_utf8_lossy(&python.stderr).contains(&says),
        "{python:?}"
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
        ],
        Backend::Postgres => &["ALTER TABLE events DISABLE TRIGGER USER"],
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
    let head = verifies(&app).stdout;
    let db = app.sql().await;
    sql(
        &db,
        &[
            "DROP TRIGGER events_refuse_update",
            "UPDATE events SET hash = NULL",
        ],
    )
    .await;
    db.close().await.ok();
    let database = app.stop().await;
    let app = spawn_on(database, |_| {}).await;
    assert_eq!(verifies(&app).stdout, head, "sealed to the same chain");
}
