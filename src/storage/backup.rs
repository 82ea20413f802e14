//! Online backups of the SQLite database: `VACUUM INTO` copies it in one
//! read transaction, so the copy is consistent and holds every commit made
//! before it began, while writers go on (WAL mode).

use std::path::Path;

use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

use super::transaction::Repository;
use crate::domain::{Error, Precondition, Result};

impl Repository {
    /// Writes a consistent copy of the database to `path`, an empty file,
    /// and returns the revision it holds. PostgreSQL has its own tools.
    #[tracing::instrument(name = "storage.backup", skip_all)]
    pub async fn backup_into(&self, path: &Path) -> Result<u64> {
        if self.db.get_database_backend() != DatabaseBackend::Sqlite {
            return Err(Error::refused_by(
                Precondition::State,
                "this server stores its data in PostgreSQL: back it up with pg_dump \
                 (see \"Backup and restore\" in the book, docs/src/guides/backup.md)",
            ));
        }
        let target = path
            .to_str()
            .ok_or_else(|| Error::Internal("the backup path is not UTF-8".into()))?;
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DatabaseBackend::Sqlite,
                "VACUUM INTO ?",
                [target.into()],
            ))
            .await?;
        let copy = sea_orm::Database::connect(format!("sqlite://{target}?mode=ro")).await?;
        let revision = copy
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                "SELECT revision FROM revision_counter",
            ))
            .await?
            .map(|row| row.try_get_by_index::<i64>(0))
            .transpose()?
            .unwrap_or(0);
        copy.close().await?;
        Ok(u64::try_from(revision).unwrap_or(0))
    }
}
