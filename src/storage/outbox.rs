//! The outbox: one row per event, written in the transaction that records
//! the event, so that an event committed is an event to announce whatever
//! happens to the process next. Subscriptions read it from their own
//! cursor; nothing is copied per subscription. The rows every subscription
//! has passed are pruned by the delivering replica.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait,
};

use super::entities::{events, outbox, subscriptions};
use super::events::record;
use super::statement_runner::StatementRunner;
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
        let row = outbox::Entity::insert(outbox::ActiveModel {
            event_id: Set(event_id),
            kind: Set(kind.as_str().to_owned()),
            namespace: Set(namespace),
        });
        self.txn.run(row.build(self.backend())).await?;
        Ok(())
    }
}

/// The most outbox rows one prune deletes, so that a first prune of a long
/// history holds the writer briefly.
const PRUNED_AT_ONCE: i64 = 10_000;

impl Repository {
    /// Deletes the outbox rows every subscription, enabled or not, has
    /// passed (all of them when there is none: a new subscription hears
    /// only what is recorded after it), at most [`PRUNED_AT_ONCE`];
    /// returns how many.
    #[tracing::instrument(name = "storage.prune_outbox", skip_all)]
    pub async fn prune_outbox(&self) -> Result<u64> {
        self.write("prune_outbox", async |tx| {
            let passed: Option<i64> = subscriptions::Entity::find()
                .select_only()
                .column_as(
                    subscriptions::Column::DeliveredThrough.min(),
                    "delivered_through",
                )
                .into_tuple::<Option<i64>>()
                .one(&tx.txn)
                .await?
                .flatten();
            let bounds: (Option<i64>, Option<i64>) = outbox::Entity::find()
                .select_only()
                .column_as(outbox::Column::EventId.min(), "oldest")
                .column_as(outbox::Column::EventId.max(), "newest")
                .into_tuple()
                .one(&tx.txn)
                .await?
                .unwrap_or_default();
            let (Some(oldest), Some(newest)) = bounds else {
                return Ok(0);
            };
            let through = passed
                .unwrap_or(newest)
                .min(oldest.saturating_add(PRUNED_AT_ONCE - 1));
            let deleted = outbox::Entity::delete_many()
                .filter(outbox::Column::EventId.lte(through))
                .exec(&tx.txn)
                .await?;
            Ok(deleted.rows_affected)
        })
        .await
    }

    /// The next `limit` events a subscription is to be told of, in event
    /// order.
    #[tracing::instrument(name = "storage.next_announcements", skip_all)]
    pub async fn next_announcements(
        &self,
        subscription: &Subscription,
        limit: u64,
    ) -> Result<Vec<EventRecord>> {
        let ids: Vec<i64> = pending_for(subscription)
            .select_only()
            .column(outbox::Column::EventId)
            .order_by(outbox::Column::EventId, Order::Asc)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        events::Entity::find()
            .filter(events::Column::Id.is_in(ids))
            .order_by(events::Column::Id, Order::Asc)
            .all(&self.db)
            .await?
            .into_iter()
            .map(record)
            .collect()
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

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};

    use super::super::{NewEvent, entities::outbox, sqlite_repository};
    use crate::domain::subscription::{Format, NewSubscription, SubscriptionName, WebhookSecret};
    use crate::domain::{EventKind, RequestContext};

    /// Outbox rows go once every subscription has passed them, all of them
    /// when there is none; a disabled subscription keeps its place.
    #[tokio::test]
    async fn the_outbox_keeps_what_a_subscription_has_not_passed() {
        let dir = tempfile::tempdir().unwrap();
        let repository = sqlite_repository(&dir.path().join("outbox.db")).await;
        let context = RequestContext {
            actor: "alice".into(),
            request_id: "r".into(),
        };
        let record = async |count| {
            for _ in 0..count {
                repository
                    .write("test", async |tx| {
                        let event = NewEvent::new(EventKind::KeyRotated, "yearly");
                        tx.record_event(&context, None, event).await?;
                        Ok(())
                    })
                    .await
                    .unwrap();
            }
        };
        let rows = async || outbox::Entity::find().count(&repository.db).await.unwrap();
        record(3).await;
        assert_eq!(repository.prune_outbox().await.unwrap(), 3, "none listens");
        record(2).await;
        repository
            .write("test", async |tx| {
                tx.insert_subscription(&NewSubscription {
                    namespace: None,
                    name: SubscriptionName::parse("name", "audit").unwrap(),
                    url: "https://hooks.example.com/".into(),
                    event_kinds: vec![EventKind::KeyRotated],
                    format: Format::CloudEvents,
                    secret: WebhookSecret::from_random(&[7; 32]),
                })
                .await
            })
            .await
            .unwrap();
        record(4).await;
        assert_eq!(
            repository.prune_outbox().await.unwrap(),
            2,
            "what came before the subscription"
        );
        assert_eq!(rows().await, 4);
        // Disabled after delivering one of the four: it keeps its place.
        repository
            .db
            .execute_unprepared(
                "UPDATE subscriptions SET delivered_through = delivered_through + 1, \
                 enabled = false",
            )
            .await
            .unwrap();
        assert_eq!(repository.prune_outbox().await.unwrap(), 1);
        assert_eq!(repository.prune_outbox().await.unwrap(), 0);
        assert_eq!(rows().await, 3, "the three it has not passed");
    }
}
