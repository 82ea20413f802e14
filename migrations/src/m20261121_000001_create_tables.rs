//! Policies, their versions, the event log, the deployment-wide revision
//! counter, signing keys and idempotency records.
//!
//! Bodies and schemas are stored as TEXT holding RFC 8785 canonical JSON, so
//! the stored bytes are exactly the bytes the digest was computed over and
//! anyone with SQL access can recompute it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Policies {
    Table,
    Id,
    Namespace,
    Name,
    Schema,
    ActiveVersion,
    ActiveRevision,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Versions {
    Table,
    Id,
    PolicyId,
    Version,
    State,
    Body,
    Digest,
    Label,
    ChangeNotes,
    CreatedBy,
    CreatedAt,
    PublishedBy,
    PublishedAt,
    Jws,
    KeyId,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    Kind,
    PolicyId,
    Namespace,
    Name,
    Actor,
    At,
    Reason,
    RequestId,
    PreviousVersion,
    NewVersion,
    Revision,
    KeyId,
}

#[derive(DeriveIden)]
enum RevisionCounter {
    Table,
    Id,
    Revision,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    PublicKey,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyRecords {
    Table,
    Method,
    Key,
    Fingerprint,
    Actor,
    Response,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Policies::Table)
                    .col(
                        ColumnDef::new(Policies::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Policies::Namespace)
                            .string_len(63)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Policies::Name).string_len(253).not_null())
                    .col(ColumnDef::new(Policies::Schema).text().null())
                    .col(ColumnDef::new(Policies::ActiveVersion).integer().null())
                    .col(
                        ColumnDef::new(Policies::ActiveRevision)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Policies::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("policies_namespace_name")
                    .table(Policies::Table)
                    .col(Policies::Namespace)
                    .col(Policies::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Versions::Table)
                    .col(
                        ColumnDef::new(Versions::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Versions::PolicyId).big_integer().not_null())
                    .col(ColumnDef::new(Versions::Version).integer().not_null())
                    .col(ColumnDef::new(Versions::State).string_len(16).not_null())
                    .col(ColumnDef::new(Versions::Body).text().not_null())
                    .col(ColumnDef::new(Versions::Digest).string_len(71).not_null())
                    .col(ColumnDef::new(Versions::Label).string_len(128).null())
                    .col(ColumnDef::new(Versions::ChangeNotes).text().not_null())
                    .col(
                        ColumnDef::new(Versions::CreatedBy)
                            .string_len(256)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Versions::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Versions::PublishedBy).string_len(256).null())
                    .col(
                        ColumnDef::new(Versions::PublishedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(Versions::Jws).text().null())
                    .col(ColumnDef::new(Versions::KeyId).string_len(64).null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("versions_policy")
                            .from(Versions::Table, Versions::PolicyId)
                            .to(Policies::Table, Policies::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("versions_policy_version")
                    .table(Versions::Table)
                    .col(Versions::PolicyId)
                    .col(Versions::Version)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Labels are only given at publish, so a NULL label never collides.
        manager
            .create_index(
                Index::create()
                    .name("versions_policy_label")
                    .table(Versions::Table)
                    .col(Versions::PolicyId)
                    .col(Versions::Label)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // At most one open draft per policy, enforced by the database itself.
        // Partial indexes are spelled the same in SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX versions_one_open_draft ON versions (policy_id) \
                 WHERE state = 'DRAFT'",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(
                        ColumnDef::new(Events::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Events::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(Events::PolicyId).big_integer().null())
                    .col(ColumnDef::new(Events::Namespace).string_len(63).null())
                    .col(ColumnDef::new(Events::Name).string_len(253).null())
                    .col(ColumnDef::new(Events::Actor).string_len(256).not_null())
                    .col(
                        ColumnDef::new(Events::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Events::Reason).text().not_null())
                    .col(ColumnDef::new(Events::RequestId).string_len(128).not_null())
                    .col(ColumnDef::new(Events::PreviousVersion).integer().null())
                    .col(ColumnDef::new(Events::NewVersion).integer().null())
                    .col(ColumnDef::new(Events::Revision).big_integer().null())
                    .col(ColumnDef::new(Events::KeyId).string_len(64).null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("events_policy")
                            .from(Events::Table, Events::PolicyId)
                            .to(Policies::Table, Policies::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("events_policy_revision")
                    .table(Events::Table)
                    .col(Events::PolicyId)
                    .col(Events::Revision)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("events_revision")
                    .table(Events::Table)
                    .col(Events::Revision)
                    .to_owned(),
            )
            .await?;

        // One row, id = 1: every activation transaction increments it, which
        // serializes activations across replicas (see
        // docs/src/contributing/design.md#replication).
        manager
            .create_table(
                Table::create()
                    .table(RevisionCounter::Table)
                    .col(
                        ColumnDef::new(RevisionCounter::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RevisionCounter::Revision)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(RevisionCounter::Table)
                    .columns([RevisionCounter::Id, RevisionCounter::Revision])
                    .values_panic([1.into(), 0i64.into()])
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SigningKeys::Table)
                    .col(
                        ColumnDef::new(SigningKeys::Kid)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(SigningKeys::PublicKey)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SigningKeys::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyRecords::Table)
                    .col(
                        ColumnDef::new(IdempotencyRecords::Method)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyRecords::Key)
                            .string_len(256)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyRecords::Fingerprint)
                            .string_len(71)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyRecords::Actor)
                            .string_len(256)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyRecords::Response)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyRecords::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(IdempotencyRecords::Method)
                            .col(IdempotencyRecords::Key),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
