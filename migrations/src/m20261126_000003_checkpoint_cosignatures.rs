//! Witnesses' cosignatures of checkpoints (C2SP tlog-cosignature): one row
//! per checkpoint and witness, the signature line the witness answered,
//! verified with its configured key before it is stored. A checkpoint's
//! note as served is its own note followed by these lines. The checkpoint
//! rows stay unchanged; a cosignature is only ever added.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum CheckpointCosignatures {
    Table,
    CheckpointId,
    Witness,
    Line,
    At,
}

#[derive(DeriveIden)]
enum Checkpoints {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CheckpointCosignatures::Table)
                    .col(
                        ColumnDef::new(CheckpointCosignatures::CheckpointId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CheckpointCosignatures::Witness)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CheckpointCosignatures::Line)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CheckpointCosignatures::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(CheckpointCosignatures::CheckpointId)
                            .col(CheckpointCosignatures::Witness),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                CheckpointCosignatures::Table,
                                CheckpointCosignatures::CheckpointId,
                            )
                            .to(Checkpoints::Table, Checkpoints::Id),
                    )
                    .to_owned(),
            )
            .await
    }
}
