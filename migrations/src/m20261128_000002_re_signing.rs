//! A published version may be signed again, and only so: when the key that
//! signed it was revoked (a KEY_REVOKED event names it), its `jws` and
//! `key_id` may change to a signature by another stored key. Everything
//! else of the row stays as the first immutability migration fixed it;
//! the trigger keeps its name, so the server's check at start still finds
//! it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The first migration's refusal (a row that is not a draft, or a draft
/// changing what it may not), written with a null-safe inequality operator
/// (`IS NOT` in SQLite, `IS DISTINCT FROM` in PostgreSQL). Copied, not
/// shared: a released migration is never edited.
fn refused_before(differs: &str) -> String {
    let changed = any_changed(
        differs,
        &[
            "id",
            "policy_id",
            "version",
            "body",
            "digest",
            "change_notes",
            "created_by",
            "created_at",
        ],
    );
    format!(
        "OLD.state <> 'DRAFT' \
         OR NEW.state NOT IN ('DRAFT', 'PUBLISHED', 'SUPERSEDED', 'DISCARDED') \
         OR {changed} \
         OR (NEW.state = 'PUBLISHED' AND (NEW.jws IS NULL OR NEW.key_id IS NULL \
             OR NEW.published_by IS NULL OR NEW.published_at IS NULL)) \
         OR (NEW.state <> 'PUBLISHED' AND (NEW.jws IS NOT NULL OR NEW.key_id IS NOT NULL \
             OR NEW.label IS NOT NULL OR NEW.published_by IS NOT NULL \
             OR NEW.published_at IS NOT NULL))"
    )
}

/// Whether any of `columns` changes.
fn any_changed(differs: &str, columns: &[&str]) -> String {
    columns
        .iter()
        .map(|column| format!("NEW.{column} {differs} OLD.{column}"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// A published version signed again after its key was revoked: only the
/// signature and its key change, to a stored key other than the revoked one.
fn re_signature(differs: &str) -> String {
    let changed = any_changed(
        differs,
        &[
            "id",
            "policy_id",
            "version",
            "state",
            "body",
            "digest",
            "label",
            "change_notes",
            "created_by",
            "created_at",
            "published_by",
            "published_at",
            "requirements",
        ],
    );
    format!(
        "OLD.state = 'PUBLISHED' AND NOT ({changed}) \
         AND NEW.jws IS NOT NULL AND NEW.key_id IS NOT NULL AND NEW.key_id <> OLD.key_id \
         AND EXISTS (SELECT 1 FROM events e WHERE e.kind = 'KEY_REVOKED' AND e.key_id = OLD.key_id) \
         AND EXISTS (SELECT 1 FROM signing_keys k WHERE k.key_id = NEW.key_id)"
    )
}

fn refused(differs: &str) -> String {
    format!(
        "({}) AND NOT ({})",
        refused_before(differs),
        re_signature(differs)
    )
}

fn sqlite_statements() -> Vec<String> {
    // One statement text, so that both run on one of the pool's
    // connections: another one may still see the dropped trigger.
    vec![format!(
        "DROP TRIGGER versions_guard_update; \
         CREATE TRIGGER versions_guard_update BEFORE UPDATE ON versions \
         WHEN {} \
         BEGIN SELECT RAISE(ABORT, 'policyhub: version rows are immutable once \
         published, superseded or discarded; a draft may only change state, and a \
         version signed by a revoked key only its signature'); END",
        refused("IS NOT")
    )]
}

fn postgres_statements() -> Vec<String> {
    vec![format!(
        "CREATE OR REPLACE FUNCTION policyhub_guard_version_update() RETURNS trigger \
         LANGUAGE plpgsql AS $$ \
         BEGIN IF {} THEN RAISE EXCEPTION 'policyhub: version rows are immutable once \
         published, superseded or discarded; a draft may only change state, and a \
         version signed by a revoked key only its signature' \
         USING ERRCODE = 'integrity_constraint_violation'; END IF; RETURN NEW; END $$",
        refused("IS DISTINCT FROM")
    )]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Sqlite => sqlite_statements(),
            DatabaseBackend::Postgres => postgres_statements(),
            other => {
                return Err(DbErr::Migration(format!(
                    "policyhub supports SQLite and PostgreSQL, not {other:?}"
                )));
            }
        };
        let connection = manager.get_connection();
        for statement in statements {
            connection.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
