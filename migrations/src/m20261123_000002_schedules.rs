//! Recurring schedules: one row per schedule, its entries and state kept as
//! a JSON document read and written whole, and the next firing as a column
//! the controller finds due rows by.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Schedules {
    Table,
    Namespace,
    Name,
    Spec,
    NextFireAt,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Schedules::Table)
                    .col(
                        ColumnDef::new(Schedules::Namespace)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Schedules::Name).string_len(253).not_null())
                    .col(ColumnDef::new(Schedules::Spec).text().not_null())
                    .col(
                        ColumnDef::new(Schedules::NextFireAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Schedules::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Schedules::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(Schedules::Namespace)
                            .col(Schedules::Name),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("schedules_next_fire_at")
                    .table(Schedules::Table)
                    .col(Schedules::NextFireAt)
                    .to_owned(),
            )
            .await
    }
}
