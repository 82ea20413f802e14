//! Signed checkpoints: every revision commits with one covering it (a
//! request with an idempotency key included; on SQLite, revisions sharing
//! a commit share its checkpoint), reads carry the one that proves them
//! (GetActive, as of a revision included; every watch message), a quiet
//! server signs one every interval (and finishes one that takes longer),
//! and a runtime whose replica is cut off from PostgreSQL by a black hole
//! reports the checkpoint stale within its maximum age, then fresh again.

use std::time::{Duration, Instant};

use futures::StreamExt;
use policyhub::grpc::proto;
use policyhub::grpc::watch_message::WatchActiveResponse;
use policyhub_runtime::{
    Event, Subscription,
    bundle::Jwks,
    checkpoint::{CheckpointClaims, verify_checkpoint},
};
use prost::Message;
use serde_json::json;

use crate::helpers::{Backend, TestApp, TestDatabase, next_message, spawn_on, target};

crate::on_both_backends!(every_revision_is_signed_and_reads_carry_their_proof);

/// The claims of `checkpoint`, verified against the server's keys, and
/// equal to the fields beside the JWS.
async fn verified(app: &TestApp, checkpoint: &proto::Checkpoint) -> CheckpointClaims {
    let jwks: Jwks = serde_json::from_str(&app.jwks_json().await).unwrap();
    let claims = verify_checkpoint(&checkpoint.jws, &jwks).expect("the checkpoint verifies");
    assert_eq!(
        (
            claims.revision,
            claims.last_event_id,
            claims.chain_head.as_str()
        ),
        (
            checkpoint.revision,
            checkpoint.last_event_id,
            checkpoint.chain_head.as_str()
        )
    );
    claims
}

async fn get_active(
    app: &TestApp,
    as_of: Option<proto::get_active_request::AsOf>,
) -> proto::Bundle {
    app.bundle
        .clone()
        .get_active(proto::GetActiveRequest {
            namespace: "team".into(),
            name: "limits".into(),
            as_of,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// A watch update's revision, and the revision of the checkpoint it
/// carries, verified.
async fn carried_proof(app: &TestApp, update: &WatchActiveResponse) -> (u64, u64) {
    let carried = proto::Checkpoint::decode(update.checkpoint.clone().expect("carried")).unwrap();
    (update.revision, verified(app, &carried).await.revision)
}

async fn every_revision_is_signed_and_reads_carry_their_proof(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), true).await;

    let now = get_active(&app, None).await;
    let proof = verified(&app, now.checkpoint.as_ref().expect("a proof")).await;
    assert_eq!(proof.revision, 2);
    let events = app.events("team", "limits").await;
    assert_eq!(
        proof.last_event_id,
        events.iter().map(|event| event.id).max().unwrap()
    );

    use proto::get_active_request::AsOf;
    let then = get_active(&app, Some(AsOf::AsOfRevision(1))).await;
    assert_eq!(then.version, 1);
    let proof = verified(&app, then.checkpoint.as_ref().expect("a proof")).await;
    assert_eq!(proof.revision, 1, "the checkpoint of revision 1 proves it");

    let mut stream = app.watch("team", &[], 0).await;
    let snapshot = next_message(&mut stream).await;
    let carried = proto::Checkpoint::decode(snapshot.checkpoint.clone().expect("carried")).unwrap();
    assert_eq!(verified(&app, &carried).await.revision, 2);

    app.try_activate(vec![target("team", "limits", 1)])
        .await
        .unwrap();
    assert_eq!(
        carried_proof(&app, &next_message(&mut stream).await).await,
        (3, 3),
        "an update carries its own revision's checkpoint"
    );

    // A retried request's outcome is recorded beside its key: that
    // transaction commits with its checkpoint too.
    app.policy
        .clone()
        .activate(proto::ActivateRequest {
            targets: vec![target("team", "limits", 2)],
            reason: "retry-safe".into(),
            idempotency_key: "retry-safe-activation".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        carried_proof(&app, &next_message(&mut stream).await).await,
        (4, 4),
        "an activation with an idempotency key carries its own revision's checkpoint"
    );
}

/// On SQLite, activations that share a commit share its checkpoint: 8
/// callers moving policies of their own at once leave fewer checkpoints
/// than revisions, yet every revision is proved (GetActive as of it) by
/// the first checkpoint signed at or after it, which verifies, and
/// `verify-log` holds the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_sharing_a_commit_share_its_checkpoint() {
    const CALLERS: usize = 8;
    const ROUNDS: u32 = 30;
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.quotas.mutations_per_second = 100_000.0;
        settings.quotas.mutation_burst = 100_000.0;
    })
    .await;
    // Read as of each revision below: in force throughout.
    app.release("team", "limits", json!({"max": 1}), true).await;
    let names: Vec<String> = (0..CALLERS)
        .map(|caller| format!("load-{caller}"))
        .collect();
    for name in &names {
        app.release("team", name, json!({"v": 1}), true).await;
        app.release("team", name, json!({"v": 2}), false).await;
    }
    let callers = names.iter().map(|name| {
        let (mut policy, name) = (app.policy.clone(), name.clone());
        tokio::spawn(async move {
            let mut revisions = Vec::new();
            for round in 0..ROUNDS {
                let reply = policy
                    .activate(proto::ActivateRequest {
                        targets: vec![target("team", &name, 2 - round % 2)],
                        reason: "load".into(),
                        idempotency_key: String::new(),
                    })
                    .await
                    .unwrap();
                revisions.push(reply.into_inner().revision);
            }
            revisions
        })
    });
    let mut revisions = Vec::new();
    for caller in callers.collect::<Vec<_>>() {
        revisions.extend(caller.await.unwrap());
    }
    revisions.sort_unstable();
    let first = revisions[0];

    let listed = app
        .policy
        .clone()
        .list_checkpoints(proto::ListCheckpointsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    let mut signed: Vec<u64> = listed
        .iter()
        .map(|checkpoint| checkpoint.revision)
        .filter(|revision| *revision >= first)
        .collect();
    signed.sort_unstable();
    assert!(
        signed.len() < revisions.len(),
        "{} checkpoints for {} revisions committed by concurrent callers",
        signed.len(),
        revisions.len()
    );

    use proto::get_active_request::AsOf;
    for revision in revisions {
        let then = get_active(&app, Some(AsOf::AsOfRevision(revision))).await;
        let proof = verified(&app, then.checkpoint.as_ref().expect("a proof")).await;
        let first_at_or_after = signed.iter().find(|signed| **signed >= revision);
        assert_eq!(
            Some(&proof.revision),
            first_at_or_after,
            "revision {revision} is proved by the first checkpoint at or after it"
        );
    }
    crate::cli::policyhub(&app, &["verify-log"]).success();
}

/// A quiet server signs a checkpoint every interval, and PROGRESS messages
/// carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_server_signs_a_checkpoint_every_interval() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, |settings| {
        settings.audit.checkpoint_interval = Duration::from_millis(400);
        settings.watch.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let mut stream = app.watch("team", &[], 0).await;
    let mut times = std::collections::BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let message = next_message(&mut stream).await;
        let carried = proto::Checkpoint::decode(message.checkpoint.expect("carried")).unwrap();
        times.insert(verified(&app, &carried).await.time);
    }
    assert!(
        times.len() >= 3,
        "a new checkpoint at least every 400 ms without activity: {times:?}"
    );
}

/// Copies the first event `count` times, unsealed (as events written
/// before the hash chain are), into the SQLite database at `path`; returns
/// the last id.
fn copy_unsealed_events(path: &std::path::Path, count: u32) -> i64 {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut columns = connection
        .prepare("SELECT name FROM pragma_table_info('events') WHERE name NOT IN ('id', 'hash')")
        .unwrap();
    let columns: Vec<String> = columns
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let columns = columns.join(", ");
    connection
        .execute(
            &format!(
                "WITH RECURSIVE copies(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM copies \
                 WHERE n < {count}) INSERT INTO events ({columns}) SELECT {columns} FROM copies, \
                 (SELECT * FROM events ORDER BY id LIMIT 1)"
            ),
            [],
        )
        .unwrap();
    connection
        .query_row("SELECT max(id) FROM events", [], |row| row.get(0))
        .unwrap()
}

/// A checkpoint refresh that takes longer than a short interval is given
/// the time, not abandoned and begun again at the next tick: with
/// thousands of events since the last checkpoint and a 20 ms interval, a
/// checkpoint over all of them is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_longer_than_a_short_interval_still_signs() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |_| {}).await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let database = app.stop().await;
    let last_event = copy_unsealed_events(&database.data_dir.path().join("policyhub.db"), 5_000);
    let app = spawn_on(database, |settings| {
        settings.audit.checkpoint_interval = Duration::from_millis(20);
    })
    .await;
    let sql = app.sql().await;
    let started = Instant::now();
    loop {
        let covered: Option<i64> = sea_orm::ConnectionTrait::query_one_raw(
            &sql,
            sea_orm::Statement::from_string(
                sql.get_database_backend(),
                "SELECT max(last_event_id) AS covered FROM checkpoints",
            ),
        )
        .await
        .unwrap()
        .and_then(|row| row.try_get("", "covered").ok());
        if covered >= Some(last_event) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint over event {last_event} within 60 s; the newest covers {covered:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A runtime on a replica whose link to PostgreSQL is black-holed: the
/// replica goes on streaming, but its checkpoint stops advancing, and the
/// runtime says so within its maximum age, keeping its state; once the link
/// is back, a fresh checkpoint ends the stale spell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_reports_a_replica_cut_off_by_a_black_hole_as_stale() {
    let (database, proxy) = crate::helpers::postgres_behind_proxy().await;
    let app = spawn_on(database, |settings| {
        settings.audit.checkpoint_interval = Duration::from_millis(400);
        settings.watch.heartbeat_interval = Duration::from_millis(200);
        // The replica keeps streaming: only its checkpoints tell.
        settings.watch.vouch_timeout = Duration::from_secs(120);
    })
    .await;
    app.release("team", "limits", json!({"max": 1}), true).await;

    let max_age = Duration::from_secs(2);
    let events = Subscription::new(format!("http://{}", app.address), "team")
        .max_checkpoint_age(Some(max_age))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .events();
    let mut events = std::pin::pin!(events);
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event in time")
            .expect("the subscription goes on")
            .expect("not refused")
    };
    loop {
        if let Event::Applied(state) = next().await {
            assert_eq!(state.revision, 1);
            break;
        }
    }

    proxy.stall();
    let stalled = Instant::now();
    let (age, found_after) = loop {
        if let Event::CheckpointStale { age, .. } = next().await {
            break (age, stalled.elapsed());
        }
    };
    println!("stale after {found_after:?}, the checkpoint {age:?} old");
    assert!(age >= max_age, "{age:?}");
    assert!(
        found_after <= max_age + Duration::from_millis(500),
        "reported within the maximum age of the last checkpoint: {found_after:?}"
    );

    proxy.restore();
    loop {
        match next().await {
            Event::CheckpointFresh { .. } => break,
            Event::Applied(state) => panic!("nothing changed, yet {state:?}"),
            _ => {}
        }
    }
}
