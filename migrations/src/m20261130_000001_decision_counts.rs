//! How many decisions each namespace keeps, counted in the transaction
//! that keeps or drops them, so that an upload beyond the retention's count
//! finds the oldest to drop by walking those alone rather than every
//! decision the namespace keeps. Counted once from the decisions kept.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DecisionCounts {
    Table,
    Namespace,
    Kept,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DecisionCounts::Table)
                    .col(
                        ColumnDef::new(DecisionCounts::Namespace)
                            .string_len(63)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(DecisionCounts::Kept)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO decision_counts (namespace, kept) \
                 SELECT namespace, COUNT(*) FROM decisions GROUP BY namespace",
            )
            .await?;
        Ok(())
    }
}
