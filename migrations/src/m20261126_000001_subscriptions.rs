//! Webhook subscriptions: the subscriptions themselves, each with its cursor
//! in the outbox; the outbox, one row per event written in the event's
//! transaction; and the recent delivery attempts of each subscription.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
    Namespace,
    Name,
    Url,
    EventKinds,
    Format,
    Secret,
    Enabled,
    DisabledReason,
    DeliveredThrough,
    ConsecutiveFailures,
    NextAttemptAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    EventId,
    Kind,
    Namespace,
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Id,
    SubscriptionId,
    EventId,
    Attempt,
    Outcome,
    StatusCode,
    LatencyMs,
    Error,
    At,
}

fn id(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

fn at(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Subscriptions::Table)
                    .col(id(Subscriptions::Id))
                    // Empty for a deployment-wide subscription.
                    .col(
                        ColumnDef::new(Subscriptions::Namespace)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Subscriptions::Name)
                            .string_len(253)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Subscriptions::Url).text().not_null())
                    .col(ColumnDef::new(Subscriptions::EventKinds).text().not_null())
                    .col(
                        ColumnDef::new(Subscriptions::Format)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Subscriptions::Secret).text().not_null())
                    .col(ColumnDef::new(Subscriptions::Enabled).boolean().not_null())
                    .col(
                        ColumnDef::new(Subscriptions::DisabledReason)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Subscriptions::DeliveredThrough)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Subscriptions::ConsecutiveFailures)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Subscriptions::NextAttemptAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(at(Subscriptions::CreatedAt))
                    .col(at(Subscriptions::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("subscriptions_namespace_name")
                    .table(Subscriptions::Table)
                    .col(Subscriptions::Namespace)
                    .col(Subscriptions::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(
                        ColumnDef::new(Outbox::EventId)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::Kind).string_len(64).not_null())
                    .col(ColumnDef::new(Outbox::Namespace).string_len(63).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .col(id(Deliveries::Id))
                    .col(
                        ColumnDef::new(Deliveries::SubscriptionId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Deliveries::EventId).big_integer().not_null())
                    .col(ColumnDef::new(Deliveries::Attempt).integer().not_null())
                    .col(
                        ColumnDef::new(Deliveries::Outcome)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Deliveries::StatusCode).integer().not_null())
                    .col(ColumnDef::new(Deliveries::LatencyMs).integer().not_null())
                    .col(ColumnDef::new(Deliveries::Error).text().not_null())
                    .col(at(Deliveries::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("deliveries_subscription_id")
                    .table(Deliveries::Table)
                    .col(Deliveries::SubscriptionId)
                    .col(Deliveries::Id)
                    .to_owned(),
            )
            .await
    }
}
