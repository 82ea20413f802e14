//! The event log as a Merkle tree (RFC 9162): `log_hashes` holds the
//! tree's stored hashes in the dense order of C2SP tlog-tiles (every
//! leaf, then each complete subtree's hash as soon as it completes), the
//! leaves naming their event; `log_origin` the one origin line that names
//! this deployment's log, random on creation; checkpoints gain the tree
//! they sign and their signed note. Events written before the tree
//! existed are appended to it by the server when it starts, in id order,
//! as events before the chain were sealed. Stored hashes are never
//! changed or removed, like events.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LogHashes {
    Table,
    Id,
    Hash,
    EventId,
}

#[derive(DeriveIden)]
enum LogOrigin {
    Table,
    Id,
    Origin,
}

#[derive(DeriveIden)]
enum Checkpoints {
    Table,
    TreeSize,
    RootHash,
    Note,
}

fn guards(backend: DatabaseBackend) -> Vec<String> {
    let tables = ["log_hashes", "log_origin"];
    match backend {
        DatabaseBackend::Postgres => tables
            .iter()
            .flat_map(|table| {
                [
                    format!(
                        "CREATE TRIGGER {table}_refuse_change BEFORE UPDATE OR DELETE ON {table} \
                         FOR EACH ROW EXECUTE FUNCTION policyhub_refuse()"
                    ),
                    format!(
                        "CREATE TRIGGER {table}_refuse_truncate BEFORE TRUNCATE ON {table} \
                         FOR EACH STATEMENT EXECUTE FUNCTION policyhub_refuse()"
                    ),
                ]
            })
            .collect(),
        _ => tables
            .iter()
            .flat_map(|table| {
                let replace = format!(
                    "CREATE TRIGGER {table}_guard_replace BEFORE INSERT ON {table} \
                     WHEN EXISTS (SELECT 1 FROM {table} WHERE id = NEW.id) \
                     BEGIN SELECT RAISE(ABORT, 'policyhub: {table} rows are never \
                     replaced'); END"
                );
                ["UPDATE", "DELETE"]
                    .map(|operation| {
                        format!(
                            "CREATE TRIGGER {table}_refuse_{} BEFORE {operation} ON {table} \
                             BEGIN SELECT RAISE(ABORT, 'policyhub: {table} rows are never \
                             changed'); END",
                            operation.to_lowercase()
                        )
                    })
                    .into_iter()
                    .chain([replace])
            })
            .collect(),
    }
}

/// The random origin of a new log: 128 bits, hex.
fn random_origin(backend: DatabaseBackend) -> String {
    let random = match backend {
        DatabaseBackend::Postgres => "md5(random()::text || clock_timestamp()::text)",
        _ => "lower(hex(randomblob(16)))",
    };
    format!("INSERT INTO log_origin (id, origin) SELECT 1, 'policyhub.log/' || {random}")
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LogHashes::Table)
                    .col(
                        ColumnDef::new(LogHashes::Id)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(LogHashes::Hash).blob().not_null())
                    .col(ColumnDef::new(LogHashes::EventId).big_integer().null())
                    .to_owned(),
            )
            .await?;
        // An event's leaf, and the events not yet in the tree, by this.
        manager
            .create_index(
                Index::create()
                    .name("log_hashes_event_id")
                    .table(LogHashes::Table)
                    .col(LogHashes::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LogOrigin::Table)
                    .col(
                        ColumnDef::new(LogOrigin::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(LogOrigin::Origin).text().not_null())
                    .to_owned(),
            )
            .await?;
        for column in [
            ColumnDef::new(Checkpoints::TreeSize)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Checkpoints::RootHash)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(Checkpoints::Note).text().null().to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Checkpoints::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        db.execute_unprepared(&random_origin(backend)).await?;
        for statement in guards(backend) {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
