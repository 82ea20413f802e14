//! What the server checks of its database before it trusts it: at start,
//! that every immutability trigger of the migrations is in place and that
//! the log, its chain and its tree, extends the newest signed checkpoint;
//! before every checkpoint it signs, the latter again, so a history
//! rewritten behind its back is never signed over
//! (`checkpoints::extends_last_checkpoint`, which the signer calls too).
//! Only the events since the newest checkpoint are read, with O(log n) of
//! the tree's stored hashes beside the ones since, and one is signed per
//! revision and per interval: the check stays short however long the log
//! (`policyhub verify-log` reads it all).

use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

use super::checkpoints::extends_last_checkpoint;
use super::transaction::Repository;
use crate::domain::Result;

impl Repository {
    /// The immutability triggers of the migrations that are missing (or, on
    /// PostgreSQL, disabled), as `trigger on table`.
    pub async fn missing_immutability_triggers(&self) -> Result<Vec<String>> {
        let backend = self.db.get_database_backend();
        // A PostgreSQL trigger fires in an ordinary session only when
        // enabled as origin ('O') or always ('A').
        let sql = match backend {
            DatabaseBackend::Postgres => {
                "SELECT c.relname AS table_name, t.tgname AS trigger_name FROM pg_trigger t \
                 JOIN pg_class c ON c.oid = t.tgrelid \
                 WHERE NOT t.tgisinternal AND t.tgenabled IN ('O', 'A') \
                 AND pg_table_is_visible(c.oid)"
            }
            _ => {
                "SELECT tbl_name AS table_name, name AS trigger_name FROM sqlite_master \
                 WHERE type = 'trigger'"
            }
        };
        let present = self
            .db
            .query_all_raw(Statement::from_string(backend, sql))
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String>("", "table_name")?,
                    row.try_get::<String>("", "trigger_name")?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, sea_orm::DbErr>>()?;
        Ok(policyhub_migrations::immutability_triggers(backend)
            .iter()
            .filter(|(table, trigger)| {
                !present
                    .iter()
                    .any(|(on, name)| on == table && name == trigger)
            })
            .map(|(table, trigger)| format!("{trigger} on {table}"))
            .collect())
    }

    /// Checks that the log extends the newest signed checkpoint: DATA_LOSS
    /// naming the break otherwise.
    pub async fn verify_since_last_checkpoint(&self) -> Result<()> {
        extends_last_checkpoint(&self.db).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    /// The list the start-up check reads is every trigger the migrations
    /// leave, no more and no fewer: a migration that adds one without
    /// listing it fails here, not silently in production.
    #[tokio::test]
    async fn the_migrations_list_every_trigger_they_leave_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let repository = super::super::sqlite_repository(&dir.path().join("hub.db")).await;
        assert_eq!(
            repository.missing_immutability_triggers().await.unwrap(),
            Vec::<String>::new()
        );
        let mut present: Vec<(String, String)> = repository
            .db
            .query_all_raw(Statement::from_string(
                repository.db.get_database_backend(),
                "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'",
            ))
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row.try_get::<String>("", "tbl_name").unwrap(),
                    row.try_get::<String>("", "name").unwrap(),
                )
            })
            .collect();
        present.sort();
        let mut listed: Vec<(String, String)> =
            policyhub_migrations::immutability_triggers(sea_orm::DatabaseBackend::Sqlite)
                .iter()
                .map(|(table, trigger)| (table.to_string(), trigger.to_string()))
                .collect();
        listed.sort();
        assert_eq!(present, listed);
    }
}
