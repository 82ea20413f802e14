//! Which replica leads a role (the delivery worker, the rollout controller,
//! the witnessing): the one holding the role's PostgreSQL session advisory
//! lock.
//!
//! Every lock a replica takes is held on one connection of its own, outside
//! the pool, so that leading keeps no transaction open (a transaction-scoped
//! lock held for a term would leave a pool connection "idle in transaction"
//! for minutes, and a pooler in transaction mode could not hand its server
//! connection to anyone else) and takes no connection from the requests.
//! A replica keeps that connection whether it leads or not: the others try
//! the locks on it at every poll, so a new connection per attempt would cost
//! a backend's start each time.
//!
//! Losing the connection loses every lock on it, and the leader learns it
//! within [`CHECK_INTERVAL`] plus [`CHECK_TIMEOUT`]: a term checks its
//! connection that often and ends when it does not answer. The server learns
//! it too: a killed replica's socket closes at once, and TCP keepalives,
//! set short on this connection, end a session whose peer vanished within
//! about ten seconds, releasing its locks for another replica.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::{
    self, Connection,
    postgres::{PgConnectOptions, PgConnection},
};
use tokio::sync::Mutex;

use crate::domain::{Error, Result};

/// The `application_name` of the connection holding a replica's leadership
/// locks, so operators (and tests) can find it in `pg_stat_activity`.
pub const LEADERSHIP_APPLICATION_NAME: &str = "policyhub-leadership";

/// How often a term checks that its connection still answers.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a statement on the connection may take before the connection
/// is taken for lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Server-side TCP keepalives of the connection: a replica whose machine
/// vanished (no FIN, no RST) is dropped after about 5 + 3 × 1 s, its locks
/// with it. Ignored on a Unix socket, where a dead peer is seen at once.
const KEEPALIVES: [&str; 3] = [
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 1",
    "SET tcp_keepalives_count = 3",
];

/// A replica's connection for its leadership locks.
pub(super) struct Leadership {
    options: PgConnectOptions,
    held: Mutex<Held>,
}

/// The connection, and how many times one was lost: a term belongs to the
/// connection of its generation and ends when that one is gone.
#[derive(Default)]
struct Held {
    connection: Option<PgConnection>,
    generation: u64,
}

impl Held {
    /// Drops the connection (its session's locks go with it) after a
    /// statement failed or did not answer.
    fn lose(&mut self) {
        self.connection = None;
        self.generation += 1;
    }

    /// Runs `statement` (one bool column, one row) binding `key`, within
    /// [`CHECK_TIMEOUT`]; the connection is lost when it fails.
    async fn ask(&mut self, statement: &'static str, key: Option<i64>) -> Result<bool> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(Error::Unavailable(
                "the leadership connection is closed".into(),
            ));
        };
        let mut query = sqlx::query_scalar::<_, bool>(statement);
        if let Some(key) = key {
            query = query.bind(key);
        }
        match tokio::time::timeout(CHECK_TIMEOUT, query.fetch_one(connection)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.lose();
                Err(Error::Unavailable(format!(
                    "the leadership connection failed: {error}"
                )))
            }
            Err(_) => {
                self.lose();
                Err(Error::Unavailable(
                    "the leadership connection did not answer in time".into(),
                ))
            }
        }
    }
}

impl Leadership {
    /// Leadership over connections made with `options` (the pool's), opened
    /// at the first attempt.
    pub(super) fn new(options: &PgConnectOptions) -> Arc<Self> {
        Arc::new(Leadership {
            options: options
                .clone()
                .application_name(LEADERSHIP_APPLICATION_NAME),
            held: Mutex::default(),
        })
    }

    /// Takes the lock of `key` unless another session holds it; connects
    /// first when the connection is closed.
    pub(super) async fn try_lead(self: &Arc<Self>, key: i64) -> Result<Option<Term>> {
        let mut held = self.held.lock().await;
        if held.connection.is_none() {
            held.connection = Some(self.connect().await?);
        }
        let generation = held.generation;
        let taken = held
            .ask("SELECT pg_try_advisory_lock($1)", Some(key))
            .await?;
        Ok(taken.then(|| Term {
            leadership: Some(self.clone()),
            key,
            generation,
        }))
    }

    async fn connect(&self) -> Result<PgConnection> {
        let connecting = async {
            let mut connection = PgConnection::connect_with(&self.options).await?;
            for setting in KEEPALIVES {
                sqlx::query(setting).execute(&mut connection).await?;
            }
            Ok::<_, sqlx::Error>(connection)
        };
        match tokio::time::timeout(CHECK_TIMEOUT.max(Duration::from_secs(5)), connecting).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(Error::Unavailable(format!(
                "cannot open the leadership connection: {error}"
            ))),
            Err(_) => Err(Error::Unavailable(
                "the database did not answer the leadership connection".into(),
            )),
        }
    }

    /// Whether the connection of `generation` still answers.
    async fn answers(&self, generation: u64) -> bool {
        let mut held = self.held.lock().await;
        held.generation == generation && held.ask("SELECT true", None).await.is_ok()
    }

    /// Releases `key`'s lock, held on the connection of `generation`.
    async fn release(&self, key: i64, generation: u64) {
        let mut held = self.held.lock().await;
        if held.generation != generation {
            return;
        }
        if let Err(error) = held.ask("SELECT pg_advisory_unlock($1)", Some(key)).await {
            tracing::warn!(%error, key, "cannot release a leadership lock; its connection was closed");
        }
    }
}

/// A replica's term leading the role of one lock: it lasts until
/// [`release`](Self::release)d (or dropped) or until [`lost`](Self::lost)
/// completes. On SQLite, with its single replica, a term is never lost.
pub struct Term {
    leadership: Option<Arc<Leadership>>,
    key: i64,
    generation: u64,
}

impl Term {
    /// The term of the single replica of a SQLite store.
    pub(super) fn sole(key: i64) -> Self {
        Term {
            leadership: None,
            key,
            generation: 0,
        }
    }

    /// Completes once the lock is lost: its connection no longer answers,
    /// or was replaced after failing. A leader stops acting for the role
    /// then, as another replica may already have taken it.
    pub async fn lost(&self) {
        let Some(leadership) = &self.leadership else {
            return std::future::pending().await;
        };
        let mut checks = tokio::time::interval(CHECK_INTERVAL);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            checks.tick().await;
            if !leadership.answers(self.generation).await {
                tracing::warn!(key = self.key, "lost a leadership lock with its connection");
                return;
            }
        }
    }

    /// Ends the term, so another replica may take the role at once.
    pub async fn release(mut self) {
        if let Some(leadership) = self.leadership.take() {
            leadership.release(self.key, self.generation).await;
        }
    }
}

impl Drop for Term {
    /// A term dropped unreleased (its holder panicked, or was cancelled)
    /// still gives its lock back: a lock held on by a connection that
    /// outlives its holder would keep the role from every replica.
    fn drop(&mut self) {
        let Some(leadership) = self.leadership.take() else {
            return;
        };
        let (key, generation) = (self.key, self.generation);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { leadership.release(key, generation).await });
        }
    }
}
