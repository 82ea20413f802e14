//! A version's requirements: the other policies of its namespace it needs
//! active beside it, as a JSON list of `{name, range}`, fixed when the draft
//! is written (the immutability guard of versions covers them from here on).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Versions {
    Table,
    Requirements,
}

const REFUSED: &str = "policyhub: the requirements of a version never change";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Versions::Table)
                    .add_column(
                        ColumnDef::new(Versions::Requirements)
                            .text()
                            .not_null()
                            .default("[]"),
                    )
                    .to_owned(),
            )
            .await?;
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Sqlite => vec![format!(
                "CREATE TRIGGER versions_requirements_fixed BEFORE UPDATE OF requirements \
                 ON versions WHEN NEW.requirements IS NOT OLD.requirements \
                 BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
            )],
            _ => vec![
                format!(
                    "CREATE FUNCTION policyhub_guard_requirements() RETURNS trigger \
                     LANGUAGE plpgsql AS $$ BEGIN \
                     IF NEW.requirements IS DISTINCT FROM OLD.requirements THEN \
                     RAISE EXCEPTION '{REFUSED}' \
                     USING ERRCODE = 'integrity_constraint_violation'; END IF; \
                     RETURN NEW; END $$"
                ),
                "CREATE TRIGGER versions_requirements_fixed BEFORE UPDATE ON versions \
                 FOR EACH ROW EXECUTE FUNCTION policyhub_guard_requirements()"
                    .to_owned(),
            ],
        };
        let db = manager.get_connection();
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
