//! SQLite's write-ahead log, copied back into the database beside the
//! writes rather than inside one of them.
//!
//! A commit appends its pages to the log; a *checkpoint* copies the log's
//! pages into the database file and syncs it. SQLite runs one in the
//! commit that takes the log to 1,000 pages, so that commit, and every
//! request waiting for it (an activation's fan-out among them), pays for
//! copying what hundreds of earlier commits wrote. Measured with 64 KiB
//! policies, whose published versions fill the log quickly: one
//! activation in twenty reached its first runtime 10 to 25 ms late, the
//! whole of the fan-out's tail.
//!
//! Here a task checkpoints every [`CHECKPOINT_INTERVAL`] on a connection of
//! its own, in SQLite's PASSIVE mode, which never waits for a writer or a
//! reader (a checkpoint with nothing new to copy does no I/O). Once the log
//! is copied whole, the next commit writes it from its start again, so a
//! commit reaches SQLite's 1,000 pages, and checkpoints itself, only after
//! more than a second of writes that never pause. A clean stop empties the
//! log, so the next start has none to read back.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

use super::Repository;
use crate::domain::{Error, Result};

/// How often the write-ahead log is checkpointed.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// What one checkpoint did, in pages of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Checkpointed {
    /// The pages in the log.
    log: u64,
    /// The pages of it now copied into the database file.
    copied: u64,
}

impl Repository {
    /// Checkpoints SQLite's write-ahead log every [`CHECKPOINT_INTERVAL`]
    /// until the task is dropped; returns at once on PostgreSQL.
    pub async fn checkpoint_log_forever(self) {
        if self.db.get_database_backend() != DatabaseBackend::Sqlite {
            return;
        }
        let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.checkpoint_log().await {
                tracing::warn!(%error, "cannot checkpoint the write-ahead log");
            }
        }
    }

    /// Copies the whole write-ahead log into the database file and empties
    /// it, waiting for readers and writers up to the busy timeout: at a
    /// clean stop, so that the next start reads no log back (a start after
    /// a crash reads back what the last second left). Does nothing on
    /// PostgreSQL.
    pub async fn empty_log(&self) -> Result<()> {
        if self.db.get_database_backend() == DatabaseBackend::Sqlite {
            self.wal_checkpoint("TRUNCATE").await?;
        }
        Ok(())
    }

    /// Copies the pages of SQLite's write-ahead log that no reader still
    /// needs into the database file, without waiting for anyone.
    pub(super) async fn checkpoint_log(&self) -> Result<Checkpointed> {
        self.wal_checkpoint("PASSIVE").await
    }

    /// SQLite's `wal_checkpoint` in `mode`, and what it did.
    async fn wal_checkpoint(&self, mode: &str) -> Result<Checkpointed> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                format!("PRAGMA wal_checkpoint({mode})"),
            ))
            .await?
            .ok_or_else(|| Error::Internal("a checkpoint of the log said nothing".into()))?;
        let pages = |index: usize| -> Result<u64> {
            let pages: i64 = row.try_get_by_index(index)?;
            // -1 when the database is not in WAL mode.
            Ok(u64::try_from(pages).unwrap_or(0))
        };
        Ok(Checkpointed {
            log: pages(1)?,
            copied: pages(2)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;

    use crate::storage::sqlite_repository;

    fn database_bytes(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[tokio::test]
    async fn a_checkpoint_leaves_the_next_commits_none_to_make() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policyhub.db");
        let repository = sqlite_repository(&path).await;
        let fill = |pages: u32| {
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {pages})
                 INSERT INTO filler SELECT randomblob(4000) FROM n;"
            )
        };
        repository
            .db
            .execute_unprepared("CREATE TABLE filler (page BLOB NOT NULL)")
            .await
            .unwrap();
        repository.db.execute_unprepared(&fill(600)).await.unwrap();
        let checkpointed = repository.checkpoint_log().await.unwrap();
        assert!(checkpointed.log >= 600, "{checkpointed:?}");
        assert_eq!(checkpointed.copied, checkpointed.log);
        let before = database_bytes(&path);

        // 600 pages more: together past SQLite's 1,000, but the log starts
        // over after the checkpoint, so this commit copies nothing itself.
        repository.db.execute_unprepared(&fill(600)).await.unwrap();
        assert_eq!(
            database_bytes(&path),
            before,
            "the commit copied the log into the database itself"
        );
        let checkpointed = repository.checkpoint_log().await.unwrap();
        assert!(checkpointed.log < 1000, "{checkpointed:?}");
        assert!(database_bytes(&path) >= before + 600 * 4000);

        // At a clean stop the log is emptied: the next start reads none back.
        repository.empty_log().await.unwrap();
        let log = path.with_file_name("policyhub.db-wal");
        assert_eq!(std::fs::metadata(log).unwrap().len(), 0);
    }
}
