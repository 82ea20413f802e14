//! What the server checks of its database before it trusts it: at start,
//! that every immutability trigger of the migrations is in place and that
//! the log extends the newest signed checkpoint; before every checkpoint it
//! signs, the latter again, so a history rewritten behind its back is
//! never signed over (`checkpoints::extends_last_checkpoint`, which the
//! signer calls too). Only the events since the newest checkpoint are
//! read, and one is signed per revision and per interval: the check stays
//! short however long the log (`policyhub verify-log` reads it all).

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
        extends_last_checkpoint(&self.db).await
    }
}
