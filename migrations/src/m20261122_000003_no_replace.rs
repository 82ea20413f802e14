//! SQLite's `REPLACE` (and `INSERT OR REPLACE`) resolves a key conflict by
//! deleting the existing row, and that delete fires no DELETE trigger unless
//! a session turns `recursive_triggers` on, which a manual session does not.
//! So a plain `sqlite3` session could rewrite a published version or an
//! event. These triggers refuse any insert that collides with history,
//! whatever the conflict clause, before the conflict is resolved.
//!
//! PostgreSQL has no REPLACE: `INSERT … ON CONFLICT DO UPDATE` goes through
//! the UPDATE triggers of the previous migration.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE: &[&str] = &[
    "CREATE TRIGGER versions_guard_replace BEFORE INSERT ON versions \
     WHEN EXISTS (SELECT 1 FROM versions WHERE id = NEW.id) \
       OR EXISTS (SELECT 1 FROM versions WHERE policy_id = NEW.policy_id AND version = NEW.version) \
       OR EXISTS (SELECT 1 FROM versions WHERE policy_id = NEW.policy_id AND label = NEW.label) \
       OR (NEW.state = 'DRAFT' AND EXISTS (SELECT 1 FROM versions \
           WHERE policy_id = NEW.policy_id AND state = 'DRAFT')) \
     BEGIN SELECT RAISE(ABORT, 'policyhub: version rows are never replaced'); END",
    "CREATE TRIGGER events_guard_replace BEFORE INSERT ON events \
     WHEN EXISTS (SELECT 1 FROM events WHERE id = NEW.id) \
     BEGIN SELECT RAISE(ABORT, 'policyhub: events are never replaced'); END",
    "CREATE TRIGGER signing_keys_guard_replace BEFORE INSERT ON signing_keys \
     WHEN EXISTS (SELECT 1 FROM signing_keys WHERE kid = NEW.kid) \
     BEGIN SELECT RAISE(ABORT, 'policyhub: signing keys are never replaced'); END",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        for statement in SQLITE {
            manager
                .get_connection()
                .execute_unprepared(statement)
                .await?;
        }
        Ok(())
    }
}
