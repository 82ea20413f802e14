//! Replicas on PostgreSQL, seen from the database: the connections one
//! holds (its pool's bound, the listener, the leadership connection), no
//! transaction left open while it leads, and the delivery role moving to
//! another replica when the leader's connection is lost.

use std::time::{Duration, Instant};

use policyhub::config::PoolSize;
use policyhub::grpc::proto::{self, EventKind};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;

use crate::helpers::{Backend, TestApp, TestDatabase, spawn_on};
use crate::subscriptions::subscriptions;
use crate::webhooks::{Receiver, subscribe, webhook_settings};

/// The advisory lock key of the webhook delivery worker.
const NOTIFICATIONS_LOCK: i64 = 7_240_534;

/// A connection to the test cluster, outside every server.
async fn admin() -> DatabaseConnection {
    sea_orm::Database::connect(std::env::var("POLICYHUB_TEST_DATABASE_URL").unwrap())
        .await
        .unwrap()
}

/// The name of `app`'s database.
fn database_name(app: &TestApp) -> String {
    app.database.url.rsplit('/').next().unwrap().to_owned()
}

/// The rows `sql` returns, each as text in its one column `line`.
async fn lines(admin: &DatabaseConnection, sql: &str) -> Vec<String> {
    admin
        .query_all_raw(Statement::from_string(admin.get_database_backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "line").unwrap())
        .collect()
}

/// The client sessions on `database` other than the asking one's, by
/// `application_name` (empty when none was given). An autovacuum worker
/// on it is listed there too, nameless, and is no connection of the
/// server's.
async fn sessions(admin: &DatabaseConnection, database: &str) -> Vec<String> {
    lines(
        admin,
        &format!(
            "SELECT COALESCE(application_name, '') AS line FROM pg_stat_activity \
             WHERE datname = '{database}' AND backend_type = 'client backend' \
             AND pid <> pg_backend_pid()"
        ),
    )
    .await
}

/// Keeps `app` busy with `callers` concurrent reads until `until`.
async fn load(app: &TestApp, callers: usize, until: Instant) {
    let mut readers = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let mut policy = app.policy.clone();
        readers.spawn(async move {
            while Instant::now() < until {
                let _ = policy
                    .list_events(proto::ListEventsRequest {
                        namespace: "team".into(),
                        name: format!("p{}", caller % 4),
                        page_size: 500,
                        ..Default::default()
                    })
                    .await;
            }
        });
    }
    while readers.join_next().await.is_some() {}
}

/// With `database_pool_size` 3, a replica under load (more concurrent
/// calls than its pool, webhook deliveries, a watch stream, the
/// controller) holds at most 3 + 2 sessions: its pool's, the listener and
/// the leadership connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_holds_at_most_its_pool_and_two_connections() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let app = spawn_on(database, |settings| {
        webhook_settings(settings);
        settings.database_pool_size = PoolSize::try_from(3).unwrap();
    })
    .await;
    let mut receiver = Receiver::start(&["ok"], 0.0).await;
    subscribe(
        &app,
        "team",
        "audit",
        &receiver.url,
        &[EventKind::Activated],
    )
    .await;
    let _watch = app.watch("team", &[], 0).await;
    for n in 0..4 {
        app.release("team", &format!("p{n}"), json!({ "n": n }), true)
            .await;
    }
    let admin = admin().await;
    let name = database_name(&app);
    let until = Instant::now() + Duration::from_secs(3);
    let busy = load(&app, 24, until);
    let watch = async {
        let mut most: Vec<String> = Vec::new();
        while Instant::now() < until {
            let now = sessions(&admin, &name).await;
            if now.len() > most.len() {
                most = now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        most
    };
    let ((), most) = tokio::join!(busy, watch);
    receiver.until_delivered(4, Duration::from_secs(20)).await;
    let pool = most.iter().filter(|name| *name == "policyhub").count();
    assert!(most.len() <= 3 + 2, "{most:?}");
    assert!(pool <= 3, "{most:?}");
    // The bound was reached: the load needed more than the pool.
    assert_eq!(pool, 3, "{most:?}");
    for other in [
        policyhub::storage::LISTENER_APPLICATION_NAME,
        policyhub::storage::LEADERSHIP_APPLICATION_NAME,
    ] {
        assert!(most.iter().any(|name| name == other), "{other}: {most:?}");
    }
}

/// A pool of no connection, or of an absurd number, is refused at start,
/// naming the setting, from a flag as from the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_size_of_zero_or_an_absurd_one_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    for (flag, variable, named) in [
        (Some("0"), None, "--database-pool-size"),
        (None, Some("100000"), "POLICYHUB_DATABASE_POOL_SIZE"),
    ] {
        let mut command = std::process::Command::new(crate::helpers::policyhub_binary());
        command.args(crate::helpers::serve_args(
            crate::helpers::free_port(),
            data.path(),
        ));
        if let Some(value) = flag {
            command.args(["--database-pool-size", value]);
        }
        if let Some(value) = variable {
            command.env("POLICYHUB_DATABASE_POOL_SIZE", value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
        assert!(stderr.contains("from 1 to 1000"), "{stderr}");
    }
}

/// The transactions of `database` open for longer than `longer_than`, with
/// who holds them.
async fn long_transactions(
    admin: &DatabaseConnection,
    database: &str,
    longer_than: Duration,
) -> Vec<String> {
    lines(
        admin,
        &format!(
            "SELECT COALESCE(application_name, '') || ' ' || state || ' for ' \
             || CAST(now() - xact_start AS TEXT) || ': ' || query AS line \
             FROM pg_stat_activity WHERE datname = '{database}' \
             AND pid <> pg_backend_pid() AND xact_start IS NOT NULL \
             AND now() - xact_start > interval '{} milliseconds'",
            longer_than.as_millis()
        ),
    )
    .await
}

/// Two replicas, one delivering webhooks (a slow endpoint keeps attempts
/// under way) and both ticking the controller: no session of either stays
/// in a transaction for more than a second and a half, and the delivery
/// lock is a session lock on a leadership connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_stays_idle_in_transaction_while_it_leads() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let first = spawn_on(database, webhook_settings).await;
    let second = spawn_on(replica, webhook_settings).await;
    let mut receiver = Receiver::start(&["slow"], 0.3).await;
    subscribe(
        &first,
        "team",
        "audit",
        &receiver.url,
        &[EventKind::Activated],
    )
    .await;
    for n in 0..6 {
        let app = if n % 2 == 0 { &first } else { &second };
        app.release("team", "limits", json!({ "n": n }), true).await;
    }
    let admin = admin().await;
    let name = database_name(&first);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let open = long_transactions(&admin, &name, Duration::from_millis(1500)).await;
        assert!(open.is_empty(), "{open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every event reached the endpoint (each answered slowly).
    for _ in 0..6 {
        receiver
            .next(Duration::from_secs(20))
            .await
            .expect("delivered");
    }
    let holders = lines(
        &admin,
        &format!(
            "SELECT COALESCE(a.application_name, '') AS line FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objid = {NOTIFICATIONS_LOCK} \
             AND a.datname = '{name}'"
        ),
    )
    .await;
    assert_eq!(
        holders,
        [policyhub::storage::LEADERSHIP_APPLICATION_NAME],
        "the delivery lock's holder"
    );
}

/// The pid of the session holding the delivery lock on `database`, once one
/// does.
async fn delivery_leader(admin: &DatabaseConnection, database: &str) -> i32 {
    let started = Instant::now();
    loop {
        let rows = admin
            .query_all_raw(Statement::from_string(
                admin.get_database_backend(),
                format!(
                    "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                     WHERE l.locktype = 'advisory' AND l.granted \
                     AND l.objid = {NOTIFICATIONS_LOCK} AND d.datname = '{database}'"
                ),
            ))
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.try_get::<i32>("", "pid").unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no replica took the delivery lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The delivering replica's connection is terminated: it stops delivering
/// (its lock went with the connection), a replica takes the lock again
/// within seconds, and every event, before and after, is delivered once,
/// in order, by one replica at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leaders_connection_hands_the_deliveries_over() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let first = spawn_on(database, webhook_settings).await;
    let second = spawn_on(replica, webhook_settings).await;
    let mut receiver = Receiver::start(&["ok"], 0.0).await;
    subscribe(
        &first,
        "team",
        "audit",
        &receiver.url,
        &[EventKind::Activated],
    )
    .await;
    first
        .release("team", "limits", json!({ "n": 0 }), true)
        .await;
    let first_delivery = receiver.until_delivered(1, Duration::from_secs(20)).await;
    // Delivery is at least once: an event whose delivery was not yet
    // recorded when the role moves is delivered again, by the next leader.
    // Cut once it is recorded, so that every delivery after is a new event.
    let first_event = first_delivery[0]["id"].as_str().unwrap();
    until_recorded(&first, "team", "audit", first_event).await;
    let admin = admin().await;
    let name = database_name(&first);
    let leader = delivery_leader(&admin, &name).await;
    // Waits until the backend has ended: until then its locks still show
    // as granted, and the old leader would read as the next one.
    let ended = admin
        .query_one_raw(Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT pg_terminate_backend({leader}, 5000) AS ended"),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(ended.try_get::<bool>("", "ended").unwrap());
    let cut = Instant::now();
    let next = delivery_leader(&admin, &name).await;
    assert_ne!(next, leader);
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "{:?}",
        cut.elapsed()
    );
    // The old leader learns of the loss at its next check of the
    // connection (every second): from then on, only the new one delivers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in 1..=20 {
        let app = if n % 2 == 0 { &first } else { &second };
        app.release("team", "limits", json!({ "n": n }), true).await;
    }
    let deliveries = receiver.until_delivered(20, Duration::from_secs(30)).await;
    let ids: Vec<&str> = deliveries
        .iter()
        .map(|delivery| delivery["id"].as_str().unwrap())
        .collect();
    let mut once = ids.clone();
    once.dedup();
    assert_eq!(ids, once, "each event once, in order: {deliveries:?}");
    assert_eq!(ids.len(), 20, "each event once: {deliveries:?}");
}

/// Waits until the subscription `namespace`/`name` recorded its delivery
/// of the event `id` (`evt_<n>`).
async fn until_recorded(app: &TestApp, namespace: &str, name: &str, id: &str) {
    let event: u64 = id.strip_prefix("evt_").unwrap().parse().unwrap();
    let mut client = subscriptions(app).await;
    let started = Instant::now();
    loop {
        let subscription = client
            .get_subscription(proto::GetSubscriptionRequest {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if subscription.delivered_through >= event {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the delivery of {id} was not recorded: {subscription:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
