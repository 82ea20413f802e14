//! Rollouts (docs/src/contributing/design.md#runtimes-and-rollouts): one row
//! per rollout, its plan and progress kept as a JSON document read and
//! written whole; the policy a live rollout holds names it, so a second
//! rollout or a manual activation of the policy is refused under the policy's
//! row lock; rollout events name their rollout.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Rollouts {
    Table,
    Id,
    Namespace,
    State,
    Spec,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Policies {
    Table,
    RolloutId,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    RolloutId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Rollouts::Table)
                    .col(
                        ColumnDef::new(Rollouts::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Rollouts::Namespace)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Rollouts::State).string_len(16).not_null())
                    .col(ColumnDef::new(Rollouts::Spec).text().not_null())
                    .col(
                        ColumnDef::new(Rollouts::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Rollouts::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("rollouts_namespace_created")
                    .table(Rollouts::Table)
                    .col(Rollouts::Namespace)
                    .col(Rollouts::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("rollouts_state")
                    .table(Rollouts::Table)
                    .col(Rollouts::State)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Policies::Table)
                    .add_column(ColumnDef::new(Policies::RolloutId).string_len(36).null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .add_column(ColumnDef::new(Events::RolloutId).string_len(36).null())
                    .to_owned(),
            )
            .await
    }
}
