//! Signed checkpoints of the event log: one row per checkpoint, written in
//! the transaction of every revision and at least every
//! `audit.checkpoint_interval`; never updated or deleted, like events.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Checkpoints {
    Table,
    Id,
    Revision,
    LastEventId,
    ChainHead,
    At,
    KeyId,
    Jws,
}

fn guards(backend: DatabaseBackend) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![
            "CREATE TRIGGER checkpoints_refuse_change BEFORE UPDATE OR DELETE ON checkpoints \
             FOR EACH ROW EXECUTE FUNCTION policyhub_refuse()"
                .to_owned(),
            "CREATE TRIGGER checkpoints_refuse_truncate BEFORE TRUNCATE ON checkpoints \
             FOR EACH STATEMENT EXECUTE FUNCTION policyhub_refuse()"
                .to_owned(),
        ],
        _ => ["UPDATE", "DELETE"]
            .iter()
            .map(|operation| {
                format!(
                    "CREATE TRIGGER checkpoints_refuse_{} BEFORE {operation} ON checkpoints \
                     BEGIN SELECT RAISE(ABORT, 'policyhub: checkpoints rows are never \
                     changed'); END",
                    operation.to_lowercase()
                )
            })
            .collect(),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Checkpoints::Table)
                    .col(
                        ColumnDef::new(Checkpoints::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Checkpoints::Revision)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Checkpoints::LastEventId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Checkpoints::ChainHead)
                            .string_len(71)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Checkpoints::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Checkpoints::KeyId).string_len(64).not_null())
                    .col(ColumnDef::new(Checkpoints::Jws).text().not_null())
                    .to_owned(),
            )
            .await?;
        // GetActive as of a revision or time finds its proof by these.
        for (name, column) in [
            ("checkpoints_revision", Checkpoints::Revision),
            ("checkpoints_at", Checkpoints::At),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Checkpoints::Table)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        for statement in guards(manager.get_database_backend()) {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
