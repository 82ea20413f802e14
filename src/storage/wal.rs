//! SQLite's write-ahead log, copied back into the database beside the
//! writes rather than inside one of them.
//!
//! A commit appends its pages to the log; a *checkpoint* copies the log's
//! pages into the database file and syncs it. By default SQLite runs one in
//! the commit that takes the log past 1,000 pages, so that commit, and
//! every request waiting for it (an activation's fan-out among them), pays
//! for copying what hundreds of earlier commits wrote. Measured with 64 KiB
//! policies, whose published versions fill the log quickly: one activation
//! in twenty reached its first runtime 10 to 25 ms late, the whole of the
//! fan-out's tail.
//!
//! Here a task checkpoints every [`CHECKPOINT_INTERVAL`] on a connection of
//! its own, in SQLite's PASSIVE mode, which never waits for a writer or a
//! reader (a checkpoint with nothing new to copy does no I/O). A commit
//! checkpoints only when the log outgrows [`LOG_LIMIT_PAGES`] anyway, so
//! the log stays bounded under writes that never pause long enough for
//! the task to catch up.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

use super::Repository;
use crate::domain::{Error, Result};

/// How often the write-ahead log is checkpointed.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The log's size, in pages, past which a commit checkpoints it itself
/// (SQLite's `wal_autocheckpoint`; its default is 1,000): about 40 MiB.
pub(super) const LOG_LIMIT_PAGES: u32 = 10_000;

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

    /// Copies the pages of SQLite's write-ahead log that no reader still
    /// needs into the database file, without waiting for anyone.
    pub(super) async fn checkpoint_log(&self) -> Result<Checkpointed> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                "PRAGMA wal_checkpoint(PASSIVE)",
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
    async fn commits_leave_the_log_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policyhub.db");
        let repository = sqlite_repository(&path).await;
        repository.checkpoint_log().await.unwrap();
        let before = database_bytes(&path);

        // 2,000 pages in one commit: past SQLite's default of 1,000.
        repository
            .db
            .execute_unprepared(
                "CREATE TABLE filler (page BLOB NOT NULL);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO filler SELECT randomblob(4000) FROM n;",
            )
            .await
            .unwrap();
        assert_eq!(
            database_bytes(&path),
            before,
            "the commit copied the log into the database itself"
        );

        let checkpointed = repository.checkpoint_log().await.unwrap();
        assert!(checkpointed.log >= 2000, "{checkpointed:?}");
        assert_eq!(checkpointed.copied, checkpointed.log);
        assert!(database_bytes(&path) >= before + 2000 * 4000);
    }
}
