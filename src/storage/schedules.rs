//! Schedule rows: each schedule's entries and state as one JSON document,
//! and its next firing as a column the controller finds due rows by.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Expr,
};

use super::entities::schedules;
use super::transaction::{Repository, Transaction};
use crate::domain::schedule::Schedule;
use crate::domain::{Error, Namespace, Result, ScheduleName};

fn to_row(schedule: &Schedule) -> Result<String> {
    serde_json::to_string(schedule)
        .map_err(|error| Error::Internal(format!("cannot store the schedule: {error}")))
}

fn from_row(row: schedules::Model) -> Result<Schedule> {
    serde_json::from_str(&row.spec).map_err(|error| {
        Error::Internal(format!(
            "stored schedule {}/{} is unreadable: {error}",
            row.namespace, row.name
        ))
    })
}

fn not_found(namespace: &Namespace, name: &ScheduleName) -> Error {
    Error::NotFound(format!(
        "schedule {name} does not exist in namespace {namespace}"
    ))
}

fn next_fire_at(schedule: &Schedule) -> Option<DateTime<Utc>> {
    schedule.next.as_ref().map(|firing| firing.at)
}

/// The schedule `name` of `namespace`, if any, locked (`FOR UPDATE`) when
/// asked.
async fn find_schedule<C: ConnectionTrait>(
    db: &C,
    namespace: &Namespace,
    name: &ScheduleName,
    lock: bool,
) -> Result<Option<Schedule>> {
    let mut query = schedules::Entity::find()
        .filter(schedules::Column::Namespace.eq(namespace.as_str()))
        .filter(schedules::Column::Name.eq(name.as_str()));
    if lock {
        query = query.lock_exclusive();
    }
    query.one(db).await?.map(from_row).transpose()
}

/// The schedules of `namespace`, by name.
async fn list<C: ConnectionTrait>(db: &C, namespace: &Namespace) -> Result<Vec<Schedule>> {
    schedules::Entity::find()
        .filter(schedules::Column::Namespace.eq(namespace.as_str()))
        .order_by(schedules::Column::Name, Order::Asc)
        .all(db)
        .await?
        .into_iter()
        .map(from_row)
        .collect()
}

impl Transaction {
    /// The schedule, if it exists, locked for the rest of the transaction.
    pub async fn lock_schedule(
        &self,
        namespace: &Namespace,
        name: &ScheduleName,
    ) -> Result<Option<Schedule>> {
        self.rows_locked();
        find_schedule(&self.txn, namespace, name, true).await
    }

    /// The schedule, locked; NOT_FOUND when it does not exist.
    pub async fn lock_existing_schedule(
        &self,
        namespace: &Namespace,
        name: &ScheduleName,
    ) -> Result<Schedule> {
        self.lock_schedule(namespace, name)
            .await?
            .ok_or_else(|| not_found(namespace, name))
    }

    /// Every schedule of a namespace whose lock this transaction holds.
    pub async fn schedules_of(&self, namespace: &Namespace) -> Result<Vec<Schedule>> {
        self.ensure_namespace_locked(namespace)?;
        list(&self.txn, namespace).await
    }

    /// Stores a new schedule.
    pub async fn insert_schedule(&self, schedule: &Schedule) -> Result<()> {
        schedules::Entity::insert(schedules::ActiveModel {
            namespace: Set(schedule.namespace.to_string()),
            name: Set(schedule.name.to_string()),
            spec: Set(to_row(schedule)?),
            next_fire_at: Set(next_fire_at(schedule)),
            created_at: Set(self.at()),
            updated_at: Set(self.at()),
        })
        .exec_without_returning(&self.txn)
        .await?;
        Ok(())
    }

    /// Stores a schedule's new entries or state.
    pub async fn save_schedule(&self, schedule: &Schedule) -> Result<()> {
        schedules::Entity::update_many()
            .col_expr(schedules::Column::Spec, Expr::value(to_row(schedule)?))
            .col_expr(
                schedules::Column::NextFireAt,
                Expr::value(next_fire_at(schedule)),
            )
            .col_expr(schedules::Column::UpdatedAt, Expr::value(self.at()))
            .filter(schedules::Column::Namespace.eq(schedule.namespace.as_str()))
            .filter(schedules::Column::Name.eq(schedule.name.as_str()))
            .exec(&self.txn)
            .await?;
        Ok(())
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, schedule: &Schedule) -> Result<()> {
        schedules::Entity::delete_many()
            .filter(schedules::Column::Namespace.eq(schedule.namespace.as_str()))
            .filter(schedules::Column::Name.eq(schedule.name.as_str()))
            .exec(&self.txn)
            .await?;
        Ok(())
    }
}

impl Repository {
    /// One schedule.
    #[tracing::instrument(name = "storage.get_schedule", skip_all)]
    pub async fn get_schedule(
        &self,
        namespace: &Namespace,
        name: &ScheduleName,
    ) -> Result<Schedule> {
        find_schedule(&self.db, namespace, name, false)
            .await?
            .ok_or_else(|| not_found(namespace, name))
    }

    /// The schedules of a namespace, by name.
    #[tracing::instrument(name = "storage.list_schedules", skip_all)]
    pub async fn list_schedules(&self, namespace: &Namespace) -> Result<Vec<Schedule>> {
        list(&self.db, namespace).await
    }

    /// The schedules with no next firing: the paused ones, and any whose
    /// pattern no longer fires.
    #[tracing::instrument(name = "storage.paused_schedules", skip_all)]
    pub async fn paused_schedules(&self) -> Result<Vec<Schedule>> {
        schedules::Entity::find()
            .filter(schedules::Column::NextFireAt.is_null())
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    /// The schedules whose next firing is at or before `now`, earliest
    /// first: what the controller fires.
    #[tracing::instrument(name = "storage.due_schedules", skip_all)]
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>> {
        schedules::Entity::find()
            .filter(schedules::Column::NextFireAt.lte(now))
            .order_by(schedules::Column::NextFireAt, Order::Asc)
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }
}
