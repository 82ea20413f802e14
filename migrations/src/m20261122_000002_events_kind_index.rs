//! An index on the event log by kind, so the start of a server finds the
//! last key rotation with one index seek instead of reading the whole log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Kind,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("events_kind_id")
                    .table(Events::Table)
                    .col(Events::Kind)
                    .col(Events::Id)
                    .to_owned(),
            )
            .await
    }
}
