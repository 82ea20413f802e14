//! Database migrations of policyhub, applied at start and by
//! `policyhub migrate`.
//!
//! One file per migration; a migration that has been released is never
//! edited, only followed by a new one.

// sea-orm-migration's trait elides `SchemaManager`'s lifetime under
// `async_trait`: naming it in an implementation makes it early-bound, and
// the signature no longer matches the trait's.
#![allow(elided_lifetimes_in_paths)]

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

mod m20261121_000001_create_tables;
mod m20261121_000002_immutability_triggers;
mod m20261122_000001_runtimes;
mod m20261122_000002_events_kind_index;
mod m20261122_000003_no_replace;
mod m20261122_000004_signing_keys_key_id;
mod m20261122_000005_rollouts;
mod m20261123_000001_requirements;
mod m20261123_000002_schedules;
mod m20261123_000003_event_chain;
mod m20261124_000001_checkpoints;
mod m20261125_000001_runtimes_last_seen_index;
mod m20261126_000001_subscriptions;
mod m20261126_000002_merkle_log;
mod m20261126_000003_checkpoint_cosignatures;
mod m20261128_000001_rollout_measurements;
mod m20261128_000002_re_signing;
mod m20261129_000001_decisions;
mod m20261130_000001_decision_counts;

/// Every migration of the schema, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_tables::Migration),
            Box::new(m20261121_000002_immutability_triggers::Migration),
            Box::new(m20261122_000001_runtimes::Migration),
            Box::new(m20261122_000002_events_kind_index::Migration),
            Box::new(m20261122_000003_no_replace::Migration),
            Box::new(m20261122_000004_signing_keys_key_id::Migration),
            Box::new(m20261122_000005_rollouts::Migration),
            Box::new(m20261123_000001_requirements::Migration),
            Box::new(m20261123_000002_schedules::Migration),
            Box::new(m20261123_000003_event_chain::Migration),
            Box::new(m20261124_000001_checkpoints::Migration),
            Box::new(m20261125_000001_runtimes_last_seen_index::Migration),
            Box::new(m20261126_000001_subscriptions::Migration),
            Box::new(m20261126_000002_merkle_log::Migration),
            Box::new(m20261126_000003_checkpoint_cosignatures::Migration),
            Box::new(m20261128_000001_rollout_measurements::Migration),
            Box::new(m20261128_000002_re_signing::Migration),
            Box::new(m20261129_000001_decisions::Migration),
            Box::new(m20261130_000001_decision_counts::Migration),
        ]
    }
}

/// Every immutability trigger the migrations leave in place, as `(table,
/// trigger)`: what the server checks at start, since a history whose guard
/// was dropped may have been rewritten. A migration that adds, replaces or
/// drops one of them updates this list.
pub fn immutability_triggers(backend: DatabaseBackend) -> &'static [(&'static str, &'static str)] {
    match backend {
        DatabaseBackend::Postgres => &[
            ("versions", "versions_guard_update"),
            ("versions", "versions_refuse_delete"),
            ("versions", "versions_refuse_truncate"),
            ("versions", "versions_requirements_fixed"),
            ("policies", "policies_active_is_published"),
            ("events", "events_guard_update"),
            ("events", "events_refuse_delete"),
            ("events", "events_refuse_truncate"),
            ("signing_keys", "signing_keys_refuse_change"),
            ("signing_keys", "signing_keys_refuse_truncate"),
            ("checkpoints", "checkpoints_refuse_change"),
            ("checkpoints", "checkpoints_refuse_truncate"),
            ("log_hashes", "log_hashes_refuse_change"),
            ("log_hashes", "log_hashes_refuse_truncate"),
            ("log_origin", "log_origin_refuse_change"),
            ("log_origin", "log_origin_refuse_truncate"),
        ],
        _ => &[
            ("versions", "versions_guard_update"),
            ("versions", "versions_guard_replace"),
            ("versions", "versions_refuse_delete"),
            ("versions", "versions_requirements_fixed"),
            ("policies", "policies_active_is_published_insert"),
            ("policies", "policies_active_is_published_update"),
            ("events", "events_guard_replace"),
            ("events", "events_refuse_update"),
            ("events", "events_refuse_delete"),
            ("signing_keys", "signing_keys_guard_replace"),
            ("signing_keys", "signing_keys_refuse_update"),
            ("signing_keys", "signing_keys_refuse_delete"),
            ("checkpoints", "checkpoints_refuse_update"),
            ("checkpoints", "checkpoints_refuse_delete"),
            ("log_hashes", "log_hashes_guard_replace"),
            ("log_hashes", "log_hashes_refuse_update"),
            ("log_hashes", "log_hashes_refuse_delete"),
            ("log_origin", "log_origin_guard_replace"),
            ("log_origin", "log_origin_refuse_update"),
            ("log_origin", "log_origin_refuse_delete"),
        ],
    }
}
