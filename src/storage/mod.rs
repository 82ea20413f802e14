//! Persistence on SeaORM: SQLite embedded, PostgreSQL for several replicas.

mod archive;
mod backup;
mod chain;
mod checkpoints;
mod cosignatures;
mod decisions;
mod entities;
mod errors;
mod events;
mod idempotency;
mod integrity;
mod keys;
mod leadership;
mod listener;
mod log;
mod outbox;
mod paging;
mod pointers;
mod policies;
mod reads;
mod requirements;
mod rollouts;
mod rows;
mod runtimes;
mod schedules;
mod sqlite_direct;
mod statement_runner;
mod subscriptions;
mod transaction;
mod versions;
mod wal;
mod writer;

use std::time::Duration;

use anyhow::Context;
use policyhub_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection,
    TransactionTrait,
};

pub use archive::Imported;
pub use cosignatures::{Cosignature, ToWitness};
pub use decisions::Retention;
pub use events::NewEvent;
pub use idempotency::IdempotencyClaim;
pub use keys::{KeyUse, Revocation};
pub use leadership::{LEADERSHIP_APPLICATION_NAME, Term};
pub use listener::{Heard, LISTENER_APPLICATION_NAME, RevisionListener};
pub use outbox::Backlog;
pub use policies::LockedPolicy;
pub use runtimes::{Flush, ReplicaHeartbeats, Saved};
pub use transaction::{CheckpointSigner, Repository, Transaction};
pub use versions::StoredVersion;

/// How long a SQLite statement waits for a lock another connection holds
/// (the checkpointing task, a backup) before it fails.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings every SQLite connection opens with, the pool's and the
/// direct SQLite connection's: WAL, durable commits, foreign keys.
const SQLITE_PRAGMAS: [(&str, &str); 3] = [
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
    ("foreign_keys", "ON"),
];

/// The `application_name` of the pool's connections on PostgreSQL, so
/// operators (and tests) can count a replica's in `pg_stat_activity`.
pub const POOL_APPLICATION_NAME: &str = "policyhub";

/// Opens the database at `url` (`sqlite://…` or `postgres://…`), with a
/// pool of at most `pool_size` connections.
///
/// SQLite runs in WAL mode with `synchronous = FULL`, so an activation that
/// returned OK survives a crash or `kill -9`; the log is checkpointed beside
/// the writes (see `wal`); foreign keys are on and writers wait up to five
/// seconds for a lock instead of failing.
pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .max_connections(pool_size)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .map_sqlx_postgres_opts(|postgres| postgres.application_name(POOL_APPLICATION_NAME))
        .map_sqlx_sqlite_opts(|sqlite| {
            SQLITE_PRAGMAS.into_iter().fold(
                sqlite
                    .create_if_missing(true)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT),
                |sqlite, (pragma, value)| sqlite.pragma(pragma, value),
            )
        });
    if DatabaseBackend::Sqlite.is_prefix_of(url) {
        // A connection to a local file cannot have been cut: lend it without
        // the ping sqlx sends first by default, a round trip to the
        // connection's worker thread before every transaction.
        options.test_before_acquire(false);
    }
    let db = Database::connect(options)
        .await
        .with_context(|| format!("connecting to the database at {}", redact(url)))?;
    Ok(db)
}

/// A repository on a migrated SQLite file at `path`, for tests; called
/// again on the same path, a second repository on the same database.
#[cfg(test)]
pub(crate) async fn sqlite_repository(path: &std::path::Path) -> Repository {
    let db = connect(&format!("sqlite://{}", path.display()), 10)
        .await
        .unwrap();
    migrate(&db).await.unwrap();
    Repository::open(db).await.unwrap()
}

/// SQLite's query plan of `sql` on the migrated database at `path`, its
/// steps joined with "; ", for tests that a statement seeks by an index
/// instead of scanning a table. Planned on a connection opened now: a plan
/// is made from the schema its connection read last, which for a
/// connection opened before the migrations lacks their indexes.
#[cfg(test)]
pub(crate) async fn sqlite_plan(path: &std::path::Path, sql: &str) -> String {
    use sea_orm::{ConnectionTrait, Statement};
    let db = connect(&format!("sqlite://{}", path.display()), 10)
        .await
        .unwrap();
    let sql = format!("EXPLAIN QUERY PLAN {sql}");
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "detail").unwrap())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Applies pending migrations. On PostgreSQL an advisory lock keeps replicas
/// that start together from migrating at the same time.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            let txn = db.begin().await?;
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7240531)")
                .await?;
            Migrator::up(&txn, None).await.context("migrating")?;
            txn.commit().await?;
        }
        _ => Migrator::up(db, None).await.context("migrating")?,
    }
    Ok(())
}

/// A database URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    /// The plan of the query that loads the active index at start, on
    /// SQLite: one index lookup per policy, not a scan of every version row.
    #[tokio::test]
    async fn loading_the_active_index_uses_the_index_on_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        super::sqlite_repository(&path).await;
        let active = super::sqlite_plan(&path, super::pointers::ACTIVE_BUNDLES).await;
        assert!(!active.contains("SCAN v"), "{active}");
        assert!(active.contains("SEARCH v USING INDEX"), "{active}");
    }

    /// The bundled SQLite keeps its plans independent of bound values (the
    /// build sets SQLITE_ENABLE_QPSG), so a statement binding `LIMIT ?`, as
    /// every single-row query does, is prepared once per connection, not
    /// on every execution.
    #[tokio::test]
    async fn sqlite_plans_do_not_depend_on_bound_values() {
        let db = super::connect("sqlite::memory:", 10).await.unwrap();
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT sqlite_compileoption_used('ENABLE_QPSG') AS used",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<i32>("", "used").unwrap(), 1);
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            super::redact("postgres://hub:s3cret@db:5432/hub"),
            "postgres://hub:***@db:5432/hub"
        );
        assert_eq!(
            super::redact("sqlite:///data/hub.db"),
            "sqlite:///data/hub.db"
        );
        assert_eq!(
            super::redact("postgres://hub@db/hub"),
            "postgres://hub@db/hub"
        );
    }
}
