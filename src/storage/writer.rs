//! SQLite's one writer, and group commit.
//!
//! SQLite allows one writer at a time, and each durable commit waits for an
//! fsync. Write transactions run on one connection, lent to one at a time:
//! a *turn*. A transaction that finished its work while other writers wait
//! for a turn does not commit: its changes stay in the connection's open
//! transaction, the *batch*, and the next writer works inside it under a
//! savepoint of its own, so an error rolls back only that writer's changes.
//! The batch commits once, with one fsync, at the first turn nobody joins
//! it: when a member finishes and nobody is waiting, or when an earlier
//! member's turn comes round again. Every member learns the outcome of that
//! commit before it answers, so nothing is acknowledged before it is
//! durable. Each keeps its own revision; the commit signs one checkpoint,
//! of the newest revision it makes durable, which covers every member's
//! (docs/src/guides/history.md, "Signed checkpoints").
//!
//! What follows a member's work runs in a task of its own: a caller that
//! goes away after its work neither strands the batch open nor loses the
//! other members' commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use sea_orm::{
    DatabaseConnection, DbErr, RuntimeErr, SqlxSqliteConnector, TransactionTrait,
    sqlx::sqlite::SqlitePoolOptions,
};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::sqlite_direct::{DirectSqlite, Open};
use super::statement_runner::Txn;
use crate::domain::{Error, Result};

/// The connections write transactions run on, SeaORM's and the direct
/// SQLite one (see `statement_runner`), and whose turn it is. On one
/// connection a transaction also finds the pages and prepared statements
/// the previous one left; a connection that did not make the last commit
/// drops its page cache and reads the pages again.
pub(super) struct SqliteWriter {
    turn: Arc<Mutex<Option<Batch>>>,
    /// Writers waiting for a turn to start their work.
    waiting: AtomicUsize,
    db: DatabaseConnection,
    direct: Arc<DirectSqlite>,
    /// How a commit is made: with a signed checkpoint of its newest
    /// revision.
    commit: CommitSigned,
}

/// Commits a transaction whose newest revision is the second argument (0
/// for none) with a signed checkpoint of it, if one is to be signed;
/// resolves once the commit is durable.
pub(super) type CommitSigned =
    Arc<dyn Fn(Txn, u64) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// A turn on the writer, with the batch open on its connection, if any.
pub(super) type WriterTurn = OwnedMutexGuard<Option<Batch>>;

/// Finished write transactions sharing the connection's open transaction.
pub(super) struct Batch {
    txn: Txn,
    committed: watch::Sender<Option<Result<()>>>,
    /// The newest revision a member took, 0 for none: the commit signs a
    /// checkpoint of it.
    revision: u64,
}

impl Batch {
    /// Commits every member at once, with a checkpoint covering their
    /// revisions, and tells them the outcome.
    async fn commit(self, commit: CommitSigned) {
        let outcome = commit(self.txn, self.revision).await;
        self.committed.send_replace(Some(outcome));
    }
}

/// Counts a writer as waiting for a turn until it has one or goes away.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SqliteWriter {
    /// A pool of one connection, opened as `db`'s are, whose commits
    /// `commit` makes.
    pub(super) async fn open(db: &DatabaseConnection, commit: CommitSigned) -> Result<Self> {
        let readers = db.get_sqlite_connection_pool();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(readers.options().get_acquire_timeout())
            .test_before_acquire(false)
            .connect_with((*readers.connect_options()).clone())
            .await
            .map_err(|error| DbErr::Conn(RuntimeErr::SqlxError(error.into())))?;
        Ok(SqliteWriter {
            turn: Arc::default(),
            waiting: AtomicUsize::new(0),
            db: SqlxSqliteConnector::from_sqlx_sqlite_pool(pool),
            direct: DirectSqlite::open(readers.connect_options().get_filename())?,
            commit,
        })
    }

    /// A transaction of its own, on the direct SQLite connection or SeaORM's.
    async fn begin(&self, direct: bool) -> Result<Txn> {
        Ok(match direct {
            true => Txn::Direct(Open::begin(&self.direct)?),
            false => Txn::SeaOrm(self.db.begin().await?),
        })
    }

    /// A turn for a write transaction that may share its commit: a
    /// savepoint in the open batch (one on the same connection; another
    /// commits first), or a transaction of its own that may become one.
    /// Finish it with [`finish`](Self::finish).
    pub(super) async fn begin_grouped(&self, direct: bool) -> Result<(WriterTurn, Txn)> {
        let waiting = Waiting::new(&self.waiting);
        let mut turn = self.turn.clone().lock_owned().await;
        drop(waiting);
        if turn
            .as_ref()
            .is_some_and(|batch| batch.txn.is_direct() != direct)
        {
            turn = detached(commit_open(turn, self.commit.clone())).await?;
        }
        let txn = match turn.as_ref() {
            Some(batch) => batch.txn.nested().await?,
            None => self.begin(direct).await?,
        };
        Ok((turn, txn))
    }

    /// A turn for a transaction that commits by itself: the open batch, if
    /// any, commits first.
    pub(super) async fn begin_ungrouped(&self, direct: bool) -> Result<(WriterTurn, Txn)> {
        let mut turn = self.turn.clone().lock_owned().await;
        if turn.is_some() {
            turn = detached(commit_open(turn, self.commit.clone())).await?;
        }
        let txn = self.begin(direct).await?;
        Ok((turn, txn))
    }

    /// Commits `txn`, which [`begin_grouped`](Self::begin_grouped) began,
    /// whose work succeeded and took `revision` (0 for none), and returns
    /// once that commit is durable with a checkpoint covering it: alone, or
    /// with the batch it leaves open for the writers waiting now.
    pub(super) async fn finish(
        self: Arc<Self>,
        turn: WriterTurn,
        txn: Txn,
        revision: u64,
    ) -> Result<()> {
        detached(async move { self.close(turn, txn, revision).await }).await?
    }

    async fn close(&self, mut turn: WriterTurn, txn: Txn, revision: u64) -> Result<()> {
        let mut committed = match turn.as_mut() {
            // Releases the savepoint; the batch's commit makes it durable.
            Some(batch) => {
                txn.commit().await?;
                batch.revision = batch.revision.max(revision);
                batch.committed.subscribe()
            }
            None if self.waiting.load(Ordering::SeqCst) == 0 => {
                return (self.commit)(txn, revision).await;
            }
            None => {
                let (committed, outcome) = watch::channel(None);
                *turn = Some(Batch {
                    txn,
                    committed,
                    revision,
                });
                outcome
            }
        };
        if self.waiting.load(Ordering::SeqCst) == 0 {
            drop(commit_open(turn, self.commit.clone()).await);
        } else {
            // The waiting writers join the batch; it commits at the first
            // turn nobody does, this member's own turn at the latest.
            drop(turn);
            tokio::select! {
                biased;
                _ = async { committed.wait_for(Option::is_some).await.is_ok() } => {}
                turn = self.turn.clone().lock_owned() => {
                    drop(commit_open(turn, self.commit.clone()).await);
                }
            }
        }
        let outcome = committed.borrow().clone();
        outcome.unwrap_or_else(|| Err(Error::Internal("a batch ended without a commit".into())))
    }
}

/// Runs `commit` in a task of its own, which goes on when its caller goes
/// away (see the module doc).
async fn detached<T: Send + 'static>(
    commit: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    tokio::spawn(commit)
        .await
        .map_err(|error| Error::Internal(format!("a commit failed: {error}")))
}

/// Commits the batch open in `turn`, if any; the turn stays held.
async fn commit_open(mut turn: WriterTurn, commit: CommitSigned) -> WriterTurn {
    if let Some(batch) = turn.take() {
        batch.commit(commit).await;
    }
    turn
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::domain::Error;
    use crate::storage::sqlite_repository;

    /// Concurrent writers share commits, none answers before its commit (a
    /// reader on another connection sees it at once), and a writer that
    /// fails rolls back only its own changes, on either connection: the
    /// revisions of those that succeeded are exactly 1..=n, each once, and
    /// a new connection reads them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_commits_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("group.db");
        let repository = sqlite_repository(&path).await;
        let writers = (0..60).map(|writer| {
            let repository = match writer % 4 < 2 {
                true => repository.direct(),
                false => repository.clone(),
            };
            tokio::spawn(async move {
                let revision = repository
                    .write("test", async |tx| {
                        let revision = tx.take_revision().await?;
                        tokio::task::yield_now().await;
                        match writer % 3 {
                            0 => Err(Error::precondition("refused after writing")),
                            _ => Ok(revision),
                        }
                    })
                    .await?;
                // Acknowledged means committed: another connection reads it.
                let committed = repository.current_revision().await?;
                assert!(
                    committed >= revision,
                    "{revision} answered before its commit"
                );
                Ok(revision)
            })
        });
        let mut revisions = BTreeSet::new();
        let mut refused = 0;
        for writer in writers.collect::<Vec<_>>() {
            match writer.await.unwrap() {
                Ok(revision) => assert!(revisions.insert(revision), "revision {revision} twice"),
                Err(Error::FailedPrecondition { .. }) => refused += 1,
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(refused, 20);
        assert_eq!(revisions, (1..=40).collect());
        let reread = sqlite_repository(&path).await;
        assert_eq!(reread.current_revision().await.unwrap(), 40);
    }
}
