//! Forgetting idempotency records older than the configured retention.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::entities::idempotency_records;
use super::repository::Repository;
use crate::domain::Result;

impl Repository {
    /// Deletes the idempotency records created before `cutoff`; returns how
    /// many. Idempotency records are bookkeeping, not history: the events
    /// and versions they point at stay.
    pub async fn forget_idempotency_records(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let deleted = idempotency_records::Entity::delete_many()
            .filter(idempotency_records::Column::CreatedAt.lt(cutoff))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected)
    }
}
