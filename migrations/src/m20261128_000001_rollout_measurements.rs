//! Rollout analyses' measurements: one row per measurement of one analysis
//! of a rollout, its value (none when Prometheus answered no number), the
//! condition it was judged by and how it came out. The analyses themselves
//! live in the rollout's plan document; measurements grow with time, so
//! they are rows of their own, read by rollout in the order taken.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RolloutMeasurements {
    Table,
    Id,
    RolloutId,
    Analysis,
    Step,
    Phase,
    Value,
    SuccessCondition,
    Message,
    TakenAt,
}

#[derive(DeriveIden)]
enum Rollouts {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RolloutMeasurements::Table)
                    .col(
                        ColumnDef::new(RolloutMeasurements::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RolloutMeasurements::RolloutId)
                            .string_len(36)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RolloutMeasurements::Analysis)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RolloutMeasurements::Step)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RolloutMeasurements::Phase)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(RolloutMeasurements::Value).double().null())
                    .col(
                        ColumnDef::new(RolloutMeasurements::SuccessCondition)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RolloutMeasurements::Message)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RolloutMeasurements::TakenAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(RolloutMeasurements::Table, RolloutMeasurements::RolloutId)
                            .to(Rollouts::Table, Rollouts::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("rollout_measurements_rollout")
                    .table(RolloutMeasurements::Table)
                    .col(RolloutMeasurements::RolloutId)
                    .col(RolloutMeasurements::Id)
                    .to_owned(),
            )
            .await
    }
}
