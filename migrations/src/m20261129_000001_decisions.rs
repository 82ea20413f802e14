//! Decisions OPAs upload: one row per decision, kept once per namespace by
//! OPA's decision id, its input and result as canonical JSON. Rows are
//! dropped oldest first by the namespace's retention, so they are listed
//! and trimmed by namespace and id, and by namespace and time received.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Decisions {
    Table,
    Id,
    Namespace,
    DecisionId,
    RuntimeId,
    Path,
    Input,
    Result,
    Revision,
    DecidedAt,
    ReceivedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Decisions::Table)
                    .col(
                        ColumnDef::new(Decisions::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Decisions::Namespace)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Decisions::DecisionId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Decisions::RuntimeId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Decisions::Path).string_len(512).not_null())
                    .col(ColumnDef::new(Decisions::Input).text().null())
                    .col(ColumnDef::new(Decisions::Result).text().null())
                    .col(ColumnDef::new(Decisions::Revision).big_integer().null())
                    .col(
                        ColumnDef::new(Decisions::DecidedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Decisions::ReceivedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("decisions_namespace_decision_id")
                    .table(Decisions::Table)
                    .col(Decisions::Namespace)
                    .col(Decisions::DecisionId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("decisions_namespace_id")
                    .table(Decisions::Table)
                    .col(Decisions::Namespace)
                    .col(Decisions::Id)
                    .to_owned(),
            )
            .await?;
        // The retention drops by age at every upload.
        manager
            .create_index(
                Index::create()
                    .name("decisions_namespace_received_at")
                    .table(Decisions::Table)
                    .col(Decisions::Namespace)
                    .col(Decisions::ReceivedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("decisions_namespace_path_id")
                    .table(Decisions::Table)
                    .col(Decisions::Namespace)
                    .col(Decisions::Path)
                    .col(Decisions::Id)
                    .to_owned(),
            )
            .await
    }
}
