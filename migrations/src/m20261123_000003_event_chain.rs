//! The hash chain over the event log: every event gets the column holding
//! its link. Events written before it are sealed by the server when it
//! starts, in id order; so the one UPDATE of an event row the database now
//! allows is setting a missing hash, every other column unchanged.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DatabaseBackend, TransactionTrait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Hash,
}

/// The columns an UPDATE must leave as they are.
const COLUMNS: [&str; 14] = [
    "id",
    "kind",
    "policy_id",
    "namespace",
    "name",
    "actor",
    "at",
    "reason",
    "request_id",
    "previous_version",
    "new_version",
    "revision",
    "key_id",
    "rollout_id",
];

/// Whether an UPDATE only seals an event, with a null-safe inequality.
fn sealing(differs: &str) -> String {
    let unchanged = COLUMNS
        .iter()
        .map(|column| format!("NOT (NEW.{column} {differs} OLD.{column})"))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!("OLD.hash IS NULL AND NEW.hash IS NOT NULL AND {unchanged}")
}

fn sqlite_statements() -> Vec<String> {
    vec![
        "DROP TRIGGER events_refuse_update".to_owned(),
        format!(
            "CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events \
             WHEN NOT ({}) \
             BEGIN SELECT RAISE(ABORT, 'policyhub: events rows are never updated'); END",
            sealing("IS NOT")
        ),
    ]
}

fn postgres_statements() -> Vec<String> {
    vec![
        "DROP TRIGGER events_refuse_change ON events".to_owned(),
        "CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events \
         FOR EACH ROW EXECUTE FUNCTION policyhub_refuse()"
            .to_owned(),
        format!(
            "CREATE FUNCTION policyhub_guard_event_update() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NOT ({}) THEN RAISE EXCEPTION \
             'policyhub: UPDATE of events rows is refused: history is never rewritten' \
             USING ERRCODE = 'integrity_constraint_violation'; END IF; RETURN NEW; END $$",
            sealing("IS DISTINCT FROM")
        ),
        "CREATE TRIGGER events_guard_update BEFORE UPDATE ON events \
         FOR EACH ROW EXECUTE FUNCTION policyhub_guard_event_update()"
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Sqlite => sqlite_statements(),
            DatabaseBackend::Postgres => postgres_statements(),
            other => {
                return Err(DbErr::Migration(format!(
                    "policyhub supports SQLite and PostgreSQL, not {other:?}"
                )));
            }
        };
        let add_column = Table::alter()
            .table(Events::Table)
            .add_column(ColumnDef::new(Events::Hash).string_len(71).null())
            .to_owned();
        // One transaction on one connection: a pooled SQLite connection
        // reading an older snapshot would still see the dropped trigger.
        let transaction = manager.get_connection().begin().await?;
        transaction.execute(&add_column).await?;
        for statement in statements {
            transaction.execute_unprepared(&statement).await?;
        }
        transaction.commit().await
    }
}
