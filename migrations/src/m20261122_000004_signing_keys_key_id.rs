//! The signing key's id is `key_id` in every table, as in the API; `kid`
//! stays the JWK member's name.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    KeyId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Both SQLite (3.25 and later) and PostgreSQL carry the rename into
        // the triggers that name the column.
        manager
            .alter_table(
                Table::alter()
                    .table(SigningKeys::Table)
                    .rename_column(SigningKeys::Kid, SigningKeys::KeyId)
                    .to_owned(),
            )
            .await
    }
}
