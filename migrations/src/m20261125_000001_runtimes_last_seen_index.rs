//! An index on the fleet's runtimes by when each was last seen, so the
//! replica heartbeat's forgetting of silent runtimes, once a second, seeks
//! the few old rows instead of reading every runtime while it holds the
//! writer.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Runtimes {
    Table,
    LastSeen,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("runtimes_last_seen")
                    .table(Runtimes::Table)
                    .col(Runtimes::LastSeen)
                    .to_owned(),
            )
            .await
    }
}
