//! The store, and the write transaction every mutation runs in.
//!
//! A mutation locks what it decides on before it reads it, in one fixed
//! order, so concurrent requests on several replicas serialize without
//! deadlocks and no decision is judged on state another transaction is
//! about to change (docs/src/contributing/design.md#storage):
//!
//! 0. **Signing keys** (sorted by id), by
//!    [`Transaction::lock_signing_keys`]: shared by a transaction that signs
//!    with the key, exclusive by the key's revocation, so that a version is
//!    signed either before the revocation reads what the key signed, and
//!    is signed again by it, or after it commits, and is refused.
//! 1. **Namespaces** (sorted), by [`Transaction::lock_namespaces`]. This
//!    lock guards the decisions that read *across* the policies of a
//!    namespace: its active set (requirements judged at Activate, Rollback,
//!    Publish with activate, StartRollout and rollout completion) and its
//!    requirement graph (the cycle check of a Draft with requirements).
//!    Every writer of that state takes it too: moving a pointer and storing
//!    a draft with requirements. It also guards the namespace's set of
//!    policies, rollouts and schedules: creating one takes it, and an import
//!    judges the namespace empty under it. A key's revocation takes the
//!    namespaces of every policy the key signed a version of, so no
//!    rollout of such a version starts between its check and its commit. Storage refuses to read a namespace's
//!    active set or graph in a transaction that does not hold its lock, so
//!    a decision cannot forget it.
//! 2. **Rollout and schedule rows**, `FOR UPDATE`: a control or a
//!    controller step re-reads the rollout or schedule it changes
//!    (approvals counted toward a threshold, state transitions, a firing).
//! 3. **Policy rows** (sorted by namespace and name), `FOR UPDATE`: the
//!    pointer, open draft, schema and holding rollout of each policy a
//!    mutation touches (compare-and-swap, one rollout per policy, schema
//!    set against activation).
//! 4. **The revision counter**: the next revision, which serializes every
//!    activation of the deployment
//!    (docs/src/contributing/design.md#replication).
//! 5. **The head of the event chain**, by the first event the transaction
//!    records (`chain`): after it, a transaction only writes rows it holds.
//!
//! On PostgreSQL, where each statement of a READ COMMITTED transaction reads
//! the latest commits, a read made after taking a lock sees everything the
//! previous holder committed. SQLite has no row locks; there a process-wide
//! writer lock plays every part (SQLite allows one writer anyway), and the
//! namespace lock only records that it was asked for.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, TransactionTrait,
};
use tracing::Instrument;

use super::leadership::{Leadership, Term};
use super::rows::now;
use super::statement_runner::{StatementRunner, Txn};
use super::writer::{CommitSigned, SqliteWriter, WriterTurn};
use crate::domain::chain::Checkpoint;
use crate::domain::log::TreeExtension;
use crate::domain::{Error, Namespace, Result};
use crate::signing::CheckpointClaims;

/// The advisory lock class of namespace locks; PostgreSQL keeps two-key
/// advisory locks apart from the single-key ones of migrations and the
/// rollout controller.
const NAMESPACE_LOCK_CLASS: i32 = 0x7068_6e73;

/// How an advisory lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LockMode {
    /// Beside other shared holders.
    Shared,
    /// Alone.
    Exclusive,
}

/// Signs a checkpoint: its claims into a JWS, and the checkpoint body of
/// the log's Merkle tree into a signed note under the log's origin (the
/// second argument); the JWS, the id of the key that signed, the note.
pub type CheckpointSigner =
    Arc<dyn Fn(&CheckpointClaims, &str, &str) -> Result<(String, String, String)> + Send + Sync>;

/// What every clone of a repository shares about checkpoints.
#[derive(Default)]
pub(super) struct Checkpoints {
    pub(super) signer: OnceLock<CheckpointSigner>,
    /// The origin line naming this deployment's log in its notes.
    pub(super) origin: OnceLock<String>,
    /// The newest checkpoint this replica committed or read.
    pub(super) newest: RwLock<Option<Checkpoint>>,
    /// The proof made as this replica last signed a checkpoint, that its
    /// tree extends the one signed before (see `signed_extension`).
    pub(super) extension: Mutex<Option<TreeExtension>>,
    /// Whether the newest is read with its cosignatures (witnesses are
    /// configured); set once, never cleared.
    pub(super) reads_cosignatures: AtomicBool,
    /// Woken (one permit kept) when a newer one is held.
    pub(super) newer: tokio::sync::Notify,
    /// How many checkpoints this replica refused to sign over a log that
    /// does not extend the last signed one: health reports it.
    pub(super) refused: AtomicU64,
    /// The process's count of them, once the metrics are wired in.
    pub(super) refused_metric: OnceLock<prometheus_client::metrics::counter::Counter>,
}

impl Checkpoints {
    /// Keeps `checkpoint` when it is newer than the one held, or the same
    /// one read again (with the cosignatures gathered since).
    pub(super) fn publish(&self, checkpoint: Checkpoint) {
        let mut newest = self.newest.write().expect("checkpoint lock");
        let newer = |held: &Checkpoint| {
            held.id < checkpoint.id
                || (held.id == checkpoint.id
                    && held.note.as_ref().map(String::len)
                        <= checkpoint.note.as_ref().map(String::len))
        };
        if newest.as_ref().is_none_or(newer) {
            if newest.as_ref().is_none_or(|held| held.id < checkpoint.id) {
                self.newer.notify_one();
            }
            *newest = Some(checkpoint);
        }
    }

    /// Notes a checkpoint refused because the log does not extend the last
    /// signed one, loudly: nothing else stops until an operator acts.
    pub(super) fn refuse(&self, error: &Error) {
        tracing::error!(%error, "refusing to sign a checkpoint");
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(metric) = self.refused_metric.get() {
            metric.inc();
        }
    }

    pub(super) fn signer(&self) -> Option<&CheckpointSigner> {
        self.signer.get()
    }

    /// The origin line of this deployment's log.
    pub(super) fn origin(&self) -> Result<&str> {
        self.origin
            .get()
            .map(String::as_str)
            .ok_or_else(|| Error::Internal("the log's origin is read before it is settled".into()))
    }
}

/// The policy store.
#[derive(Clone)]
pub struct Repository {
    pub(super) db: DatabaseConnection,
    /// On SQLite, the one writer (see `writer`); `None` on PostgreSQL,
    /// where row locks serialize writers.
    sqlite_writer: Option<Arc<SqliteWriter>>,
    /// Whether writes on SQLite run on the direct SQLite connection (see
    /// `statement_runner`).
    direct: bool,
    /// The signer of checkpoints and the newest one, shared by every clone.
    pub(super) checkpoints: Arc<Checkpoints>,
    /// On PostgreSQL, the connection holding this replica's leadership
    /// locks (see `leadership`).
    leadership: Option<Arc<Leadership>>,
}

/// An open write transaction, the instant it writes as, and on SQLite the
/// writer's turn it holds.
pub struct Transaction {
    pub(super) txn: Txn,
    at: DateTime<Utc>,
    turn: Option<WriterTurn>,
    /// The signing keys this transaction holds the lock of.
    pub(super) signing_keys: BTreeSet<String>,
    /// The namespaces this transaction holds the lock of.
    namespaces: BTreeSet<Namespace>,
    /// Whether a row lock was taken, after which no namespace lock may be
    /// (the fixed order of the module doc).
    rows_locked: AtomicBool,
    /// The revision this transaction took, 0 for none: it commits with a
    /// checkpoint of it.
    revision_taken: AtomicU64,
    /// The chain's last event and head once read (see `chain`).
    pub(super) chain: std::sync::Mutex<Option<(u64, String)>>,
}

impl Transaction {
    fn new(txn: Txn, turn: Option<WriterTurn>) -> Self {
        Transaction {
            txn,
            at: now(),
            turn,
            signing_keys: BTreeSet::new(),
            namespaces: BTreeSet::new(),
            rows_locked: AtomicBool::new(false),
            revision_taken: AtomicU64::new(0),
            chain: std::sync::Mutex::new(None),
        }
    }

    /// The instant everything this transaction writes is stamped with.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    pub(super) fn backend(&self) -> DatabaseBackend {
        self.txn.backend()
    }

    /// On PostgreSQL, takes the transaction-scoped advisory lock of `key`
    /// in `class`, shared or exclusive; nothing on SQLite, where the
    /// writer lock serializes instead.
    pub(super) async fn advisory_lock(&self, class: i32, key: &str, mode: LockMode) -> Result<()> {
        if self.backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let function = match mode {
            LockMode::Shared => "pg_advisory_xact_lock_shared",
            LockMode::Exclusive => "pg_advisory_xact_lock",
        };
        self.txn
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                format!("SELECT {function}($1, hashtext($2))"),
                [class.into(), key.into()],
            ))
            .await?;
        Ok(())
    }

    /// Whether a namespace or row lock was taken, after which no signing
    /// key's may be (the fixed order of the module doc).
    pub(super) fn holds_later_locks(&self) -> bool {
        !self.namespaces.is_empty() || self.rows_locked.load(Ordering::Relaxed)
    }

    /// Locks `namespaces` for the rest of the transaction: taken before any
    /// row lock, in sorted order, by every transaction that decides on or
    /// changes a namespace's active set or requirement graph.
    pub async fn lock_namespaces<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
    ) -> Result<()> {
        if self.rows_locked.load(Ordering::Relaxed) {
            return Err(Error::Internal(
                "a namespace lock was asked for after a row lock".into(),
            ));
        }
        let wanted: BTreeSet<&Namespace> = namespaces.into_iter().collect();
        for namespace in wanted {
            if self.namespaces.contains(namespace) {
                continue;
            }
            self.advisory_lock(
                NAMESPACE_LOCK_CLASS,
                namespace.as_str(),
                LockMode::Exclusive,
            )
            .await?;
            self.namespaces.insert(namespace.clone());
        }
        Ok(())
    }

    /// Refuses a read of `namespace`'s shared state (its active set or
    /// requirement graph) in a transaction that does not hold its lock.
    pub(super) fn ensure_namespace_locked(&self, namespace: &Namespace) -> Result<()> {
        if self.namespaces.contains(namespace) {
            return Ok(());
        }
        Err(Error::Internal(format!(
            "namespace {namespace} was read for a decision without its lock"
        )))
    }

    /// Notes that a row lock was taken.
    pub(super) fn rows_locked(&self) {
        self.rows_locked.store(true, Ordering::Relaxed);
    }

    /// Notes the revision this transaction took.
    pub(super) fn took_revision(&self, revision: u64) {
        self.revision_taken.store(revision, Ordering::Relaxed);
    }
}

impl Repository {
    /// Whether other replicas may write this store too: PostgreSQL serves
    /// several replicas, SQLite one.
    pub fn is_shared(&self) -> bool {
        self.sqlite_writer.is_none()
    }

    /// A repository over a migrated database; on SQLite it opens the
    /// connection writes run on.
    pub async fn open(db: DatabaseConnection) -> Result<Self> {
        let checkpoints = Arc::<Checkpoints>::default();
        let sqlite_writer = match db.get_database_backend() {
            DatabaseBackend::Sqlite => {
                let signs = checkpoints.clone();
                let commit: CommitSigned = Arc::new(move |txn, revision| {
                    let signs = signs.clone();
                    Box::pin(async move { signs.commit_signed(txn, revision, None).await })
                });
                Some(Arc::new(SqliteWriter::open(&db, commit).await?))
            }
            _ => None,
        };
        let leadership = match db.get_database_backend() {
            DatabaseBackend::Postgres => Some(Leadership::new(
                db.get_postgres_connection_pool().connect_options().as_ref(),
            )),
            _ => None,
        };
        Ok(Repository {
            db,
            sqlite_writer,
            direct: false,
            checkpoints,
            leadership,
        })
    }

    /// This store, its writes on SQLite running on the direct SQLite
    /// connection (see `statement_runner`): for the transactions whose
    /// storage is all on it.
    pub fn direct(&self) -> Self {
        Repository {
            direct: true,
            ..self.clone()
        }
    }

    /// Whether the database answers, for health checks.
    pub async fn ping(&self) -> Result<()> {
        Ok(self.db.ping().await?)
    }

    /// A read-only transaction whose reads all see one snapshot: REPEATABLE
    /// READ on PostgreSQL, whose default would let a commit in between show
    /// through; SQLite transactions are snapshots already.
    pub(super) async fn snapshot(&self) -> Result<DatabaseTransaction> {
        Ok(match self.db.get_database_backend() {
            DatabaseBackend::Postgres => {
                self.db
                    .begin_with_config(
                        Some(sea_orm::IsolationLevel::RepeatableRead),
                        Some(sea_orm::AccessMode::ReadOnly),
                    )
                    .await?
            }
            _ => self.db.begin().await?,
        })
    }

    /// A write transaction its caller commits.
    pub(super) async fn begin(&self) -> Result<Transaction> {
        Ok(match &self.sqlite_writer {
            Some(writer) => {
                let (turn, txn) = writer.begin_ungrouped(self.direct).await?;
                Transaction::new(txn, Some(turn))
            }
            None => Transaction::new(Txn::SeaOrm(self.db.begin().await?), None),
        })
    }

    /// A write transaction that [`commit_signed`](Self::commit_signed)
    /// ends: on SQLite, one that may share its commit with others (see
    /// `writer`).
    async fn begin_shared(&self) -> Result<Transaction> {
        Ok(match &self.sqlite_writer {
            Some(writer) => {
                let (turn, txn) = writer.begin_grouped(self.direct).await?;
                Transaction::new(txn, Some(turn))
            }
            None => Transaction::new(Txn::SeaOrm(self.db.begin().await?), None),
        })
    }

    /// Runs `work` in one write transaction and commits when it succeeds;
    /// an error rolls everything back. A transaction that took a revision
    /// commits with a signed checkpoint covering it (once the hub installed
    /// the signer). Its span is `storage.<operation>`.
    pub async fn write<T>(
        &self,
        operation: &str,
        work: impl AsyncFnOnce(&mut Transaction) -> Result<T>,
    ) -> Result<T> {
        async {
            let mut transaction = self.begin_shared().await?;
            let outcome = work(&mut transaction).await?;
            self.commit_signed(transaction).await?;
            Ok(outcome)
        }
        .instrument(span(operation))
        .await
    }

    /// Commits what [`begin_shared`](Self::begin_shared) or
    /// [`begin`](Self::begin) began, with a signed checkpoint covering the
    /// revision it took, if any (once the hub installed the signer);
    /// returns once it is durable. On SQLite the writer signs one
    /// checkpoint per commit, which transactions sharing the commit share
    /// (see `writer`); on PostgreSQL each transaction signs its own.
    pub(super) async fn commit_signed(&self, mut transaction: Transaction) -> Result<()> {
        let taken = transaction.revision_taken.load(Ordering::Relaxed);
        if let (Some(writer), Some(turn)) = (&self.sqlite_writer, transaction.turn.take()) {
            return writer.clone().finish(turn, transaction.txn, taken).await;
        }
        // The tip the transaction read under the chain's lock, and moved
        // with each event it appended, is the one its commit signs.
        let tip = transaction.chain.lock().expect("chain tip").take();
        self.checkpoints
            .commit_signed(transaction.txn, taken, tip)
            .await
    }
}

impl Repository {
    /// A term leading the role of `key`, unless another replica leads it
    /// now: on PostgreSQL, a session advisory lock on this replica's
    /// leadership connection (see `leadership`); on SQLite, with its single
    /// replica, always.
    pub async fn try_lead(&self, key: i64) -> Result<Option<Term>> {
        match &self.leadership {
            Some(leadership) => leadership.try_lead(key).await,
            None => Ok(Some(Term::sole(key))),
        }
    }

    /// Runs `work` as the leader of `key`'s role, unless another replica
    /// leads it now, then ends the term. `work` that lasts should stop when
    /// the term is [`lost`](Term::lost).
    pub async fn exclusively(
        &self,
        key: i64,
        work: impl AsyncFnOnce(&Term) -> Result<()>,
    ) -> Result<()> {
        let Some(term) = self.try_lead(key).await? else {
            return Ok(());
        };
        let outcome = work(&term).await;
        term.release().await;
        outcome
    }
}

/// The span of one write transaction, exported as `storage.<operation>`.
pub(super) fn span(operation: &str) -> tracing::Span {
    let name = format!("storage.{operation}");
    tracing::info_span!("storage.write", otel.name = name.as_str())
}
