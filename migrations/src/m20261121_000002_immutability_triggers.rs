//! History that the database itself refuses to rewrite.
//!
//! The service already never updates a published version or an event; these
//! triggers make the same promise hold for a buggy code path or a manual SQL
//! session:
//!
//! - a version row may only change while it is a DRAFT, and then only its
//!   state and the publish stamp (label, published_by/at, jws, key_id); its
//!   body, digest, number and authorship never change;
//! - versions, events and signing keys are never deleted (nor truncated, on
//!   PostgreSQL); events and signing keys are never updated;
//! - an active pointer can only name a PUBLISHED version.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The condition under which an UPDATE of a version row is refused, written
/// with a null-safe inequality operator (`IS NOT` in SQLite, `IS DISTINCT
/// FROM` in PostgreSQL).
fn version_update_refused(differs: &str) -> String {
    let unchanged = [
        "id",
        "policy_id",
        "version",
        "body",
        "digest",
        "change_notes",
        "created_by",
        "created_at",
    ]
    .iter()
    .map(|column| format!("NEW.{column} {differs} OLD.{column}"))
    .collect::<Vec<_>>()
    .join(" OR ");
    format!(
        "OLD.state <> 'DRAFT' \
         OR NEW.state NOT IN ('DRAFT', 'PUBLISHED', 'SUPERSEDED', 'DISCARDED') \
         OR {unchanged} \
         OR (NEW.state = 'PUBLISHED' AND (NEW.jws IS NULL OR NEW.key_id IS NULL \
             OR NEW.published_by IS NULL OR NEW.published_at IS NULL)) \
         OR (NEW.state <> 'PUBLISHED' AND (NEW.jws IS NOT NULL OR NEW.key_id IS NOT NULL \
             OR NEW.label IS NOT NULL OR NEW.published_by IS NOT NULL \
             OR NEW.published_at IS NOT NULL))"
    )
}

const ACTIVE_NOT_PUBLISHED: &str = "NEW.active_version IS NOT NULL AND NOT EXISTS (\
     SELECT 1 FROM versions v WHERE v.policy_id = NEW.id \
     AND v.version = NEW.active_version AND v.state = 'PUBLISHED')";

fn sqlite_statements() -> Vec<String> {
    let mut statements = vec![format!(
        "CREATE TRIGGER versions_guard_update BEFORE UPDATE ON versions \
         WHEN {} \
         BEGIN SELECT RAISE(ABORT, 'policyhub: version rows are immutable once \
         published, superseded or discarded; a draft may only change state'); END",
        version_update_refused("IS NOT")
    )];
    for table in ["versions", "events", "signing_keys"] {
        statements.push(format!(
            "CREATE TRIGGER {table}_refuse_delete BEFORE DELETE ON {table} \
             BEGIN SELECT RAISE(ABORT, 'policyhub: {table} rows are never deleted'); END"
        ));
    }
    for table in ["events", "signing_keys"] {
        statements.push(format!(
            "CREATE TRIGGER {table}_refuse_update BEFORE UPDATE ON {table} \
             BEGIN SELECT RAISE(ABORT, 'policyhub: {table} rows are never updated'); END"
        ));
    }
    for operation in ["INSERT", "UPDATE"] {
        statements.push(format!(
            "CREATE TRIGGER policies_active_is_published_{} BEFORE {operation} ON policies \
             WHEN {ACTIVE_NOT_PUBLISHED} \
             BEGIN SELECT RAISE(ABORT, 'policyhub: only a published version can be active'); END",
            operation.to_lowercase()
        ));
    }
    statements
}

fn postgres_statements() -> Vec<String> {
    let mut statements = vec![
        "CREATE FUNCTION policyhub_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'policyhub: % of % rows is refused: history is never rewritten', \
         TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation'; END $$"
            .to_owned(),
        format!(
            "CREATE FUNCTION policyhub_guard_version_update() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF {} THEN RAISE EXCEPTION 'policyhub: version rows are immutable once \
             published, superseded or discarded; a draft may only change state' \
             USING ERRCODE = 'integrity_constraint_violation'; END IF; RETURN NEW; END $$",
            version_update_refused("IS DISTINCT FROM")
        ),
        "CREATE TRIGGER versions_guard_update BEFORE UPDATE ON versions \
         FOR EACH ROW EXECUTE FUNCTION policyhub_guard_version_update()"
            .to_owned(),
        format!(
            "CREATE FUNCTION policyhub_guard_active_pointer() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF {ACTIVE_NOT_PUBLISHED} THEN RAISE EXCEPTION \
             'policyhub: only a published version can be active' \
             USING ERRCODE = 'integrity_constraint_violation'; END IF; RETURN NEW; END $$"
        ),
        "CREATE TRIGGER policies_active_is_published BEFORE INSERT OR UPDATE ON policies \
         FOR EACH ROW EXECUTE FUNCTION policyhub_guard_active_pointer()"
            .to_owned(),
    ];
    statements.push(
        "CREATE TRIGGER versions_refuse_delete BEFORE DELETE ON versions \
         FOR EACH ROW EXECUTE FUNCTION policyhub_refuse()"
            .to_owned(),
    );
    for table in ["events", "signing_keys"] {
        statements.push(format!(
            "CREATE TRIGGER {table}_refuse_change BEFORE UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION policyhub_refuse()"
        ));
    }
    for table in ["versions", "events", "signing_keys"] {
        statements.push(format!(
            "CREATE TRIGGER {table}_refuse_truncate BEFORE TRUNCATE ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION policyhub_refuse()"
        ));
    }
    statements
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
