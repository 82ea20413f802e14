//! The outbox: one row per event, written in the transaction that records
//! the event, so that an event committed is an event to announce whatever
//! happens to the process next. Subscriptions read it from their own
//! cursor; nothing is copied per subscription.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder,
};

use super::entities::{events, outbox};
use super::events::record;
use super::transaction::{Repository, Transaction};
use crate::domain::subscription::Subscription;
use crate::domain::{EventKind, EventRecord, Result};

/// What a subscription has not been told yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    /// Events waiting.
    pub depth: u64,
    /// When the oldest of them was recorded.
    pub oldest_at: Option<DateTime<Utc>>,
}

/// The outbox rows a subscription wants after its cursor.
fn pending_for(subscription: &Subscription) -> sea_orm::Select<outbox::Entity> {
    let after = i64::try_from(subscription.delivered_through).unwrap_or(i64::MAX);
    let mut wanted = Condition::all()
        .add(outbox::Column::EventId.gt(after))
        .add(outbox::Column::Kind.is_in(subscription.event_kinds.iter().map(|k| k.as_str())));
    if let Some(namespace) = &subscription.namespace {
        wanted = wanted.add(outbox::Column::Namespace.eq(namespace.as_str()));
    }
    outbox::Entity::find().filter(wanted)
}

impl Transaction {
    /// Writes the outbox row of the event just appended.
    pub(super) async fn enqueue_announcement(
        &self,
        event_id: i64,
        kind: EventKind,
        namespace: Option<String>,
    ) -> Result<()> {
        outbox::Entity::insert(outbox::ActiveModel {
            event_id: Set(event_id),
            kind: Set(kind.as_str().to_owned()),
            namespace: Set(namespace),
        })
        .exec_without_returning(&self.txn)
        .await?;
        Ok(())
    }
}

impl Repository {
    /// The next event a subscription is to be told of, in event order.
    #[tracing::instrument(name = "storage.next_announcement", skip_all)]
    pub async fn next_announcement(
        &self,
        subscription: &Subscription,
    ) -> Result<Option<EventRecord>> {
        let Some(next) = pending_for(subscription)
            .order_by(outbox::Column::EventId, Order::Asc)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        events::Entity::find_by_id(next.event_id)
            .one(&self.db)
            .await?
            .map(record)
            .transpose()
    }

    /// How many events a subscription waits to deliver, and since when.
    #[tracing::instrument(name = "storage.backlog", skip_all)]
    pub async fn backlog(&self, subscription: &Subscription) -> Result<Backlog> {
        let depth = pending_for(subscription).count(&self.db).await?;
        if depth == 0 {
            return Ok(Backlog::default());
        }
        let oldest = match pending_for(subscription)
            .order_by(outbox::Column::EventId, Order::Asc)
            .one(&self.db)
            .await?
        {
            Some(row) => events::Entity::find_by_id(row.event_id)
                .one(&self.db)
                .await?
                .map(|event| event.at),
            None => None,
        };
        Ok(Backlog {
            depth,
            oldest_at: oldest,
        })
    }
}
