//! The fleet view (docs/src/contributing/design.md#runtimes-and-rollouts):
//! one row per runtime and namespace, written in batches by the replica that
//! holds the runtime's stream, and one row per replica whose heartbeat says
//! whether its streams are still open.
//!
//! Labels, selected names and per-policy outcomes are small JSON documents:
//! they are read and written whole with their runtime, never queried apart.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Runtimes {
    Table,
    Namespace,
    RuntimeId,
    Subject,
    Labels,
    Names,
    Connected,
    Replica,
    LastSeen,
    AppliedRevision,
    Policies,
}

#[derive(DeriveIden)]
enum Replicas {
    Table,
    Id,
    LastSeen,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Runtimes::Table)
                    .col(
                        ColumnDef::new(Runtimes::Namespace)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Runtimes::RuntimeId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Runtimes::Subject).text().not_null())
                    .col(ColumnDef::new(Runtimes::Labels).text().not_null())
                    .col(ColumnDef::new(Runtimes::Names).text().not_null())
                    .col(ColumnDef::new(Runtimes::Connected).boolean().not_null())
                    .col(ColumnDef::new(Runtimes::Replica).string_len(64).not_null())
                    .col(
                        ColumnDef::new(Runtimes::LastSeen)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Runtimes::AppliedRevision)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Runtimes::Policies).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(Runtimes::Namespace)
                            .col(Runtimes::RuntimeId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Replicas::Table)
                    .col(
                        ColumnDef::new(Replicas::Id)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Replicas::LastSeen)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }
}
