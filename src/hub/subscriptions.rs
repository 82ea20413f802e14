//! Webhook subscriptions: what callers ask of them, and what the delivery
//! worker reads and records. Delivery itself (HTTP, signing) is the
//! worker's; the hub keeps the rows.

use chrono::{DateTime, Utc};

use crate::domain::subscription::{
    DeliveryRecord, NewSubscription, Subscription, SubscriptionChange, SubscriptionName,
};
use crate::domain::{EventKind, EventRecord, Namespace, RequestContext, Result};
use crate::storage::{Backlog, NewEvent};

use super::PolicyHub;

impl PolicyHub {
    /// Stores a new subscription, which hears the events recorded after it.
    #[tracing::instrument(name = "hub.create_subscription", skip_all)]
    pub async fn create_subscription(&self, new: NewSubscription) -> Result<Subscription> {
        self.repository
            .write("create_subscription", async |tx| {
                tx.insert_subscription(&new).await
            })
            .await
    }

    /// One subscription.
    pub async fn get_subscription(
        &self,
        namespace: Option<&Namespace>,
        name: &SubscriptionName,
    ) -> Result<Subscription> {
        self.repository.get_subscription(namespace, name).await
    }

    /// The subscriptions of a namespace, or the deployment-wide ones.
    pub async fn list_subscriptions(
        &self,
        namespace: Option<&Namespace>,
    ) -> Result<Vec<Subscription>> {
        self.repository.list_subscriptions(namespace).await
    }

    /// Changes a subscription.
    #[tracing::instrument(name = "hub.update_subscription", skip_all)]
    pub async fn update_subscription(
        &self,
        namespace: Option<&Namespace>,
        name: &SubscriptionName,
        change: SubscriptionChange,
    ) -> Result<Subscription> {
        self.repository
            .write("update_subscription", async |tx| {
                tx.update_subscription(namespace, name, &change).await
            })
            .await
    }

    /// Deletes a subscription.
    #[tracing::instrument(name = "hub.delete_subscription", skip_all)]
    pub async fn delete_subscription(
        &self,
        namespace: Option<&Namespace>,
        name: &SubscriptionName,
    ) -> Result<()> {
        self.repository
            .write("delete_subscription", async |tx| {
                tx.delete_subscription(namespace, name).await
            })
            .await
    }

    /// The recent delivery attempts of a subscription, newest first.
    pub async fn list_deliveries(
        &self,
        subscription: &Subscription,
    ) -> Result<Vec<DeliveryRecord>> {
        self.repository.list_deliveries(subscription).await
    }

    /// Records a test message's attempt among the subscription's
    /// deliveries.
    pub async fn record_test_delivery(
        &self,
        subscription: &Subscription,
        attempt: &DeliveryRecord,
    ) -> Result<()> {
        self.repository
            .write("record_test_delivery", async |tx| {
                tx.record_delivery(subscription.id, attempt).await
            })
            .await
    }

    /// Every subscription, enabled or not.
    pub async fn all_subscriptions(&self) -> Result<Vec<Subscription>> {
        self.repository.all_subscriptions().await
    }

    /// Deletes the outbox rows every subscription has passed; how many.
    pub async fn prune_outbox(&self) -> Result<u64> {
        self.repository.prune_outbox().await
    }

    /// A subscription as it is now; `None` once deleted.
    pub async fn subscription_by_id(&self, id: i64) -> Result<Option<Subscription>> {
        self.repository.subscription_by_id(id).await
    }

    /// The next `limit` events a subscription is to be told of.
    pub async fn next_announcements(
        &self,
        subscription: &Subscription,
        limit: u64,
    ) -> Result<Vec<EventRecord>> {
        self.repository
            .next_announcements(subscription, limit)
            .await
    }

    /// What a subscription has not been told yet.
    pub async fn backlog(&self, subscription: &Subscription) -> Result<Backlog> {
        self.repository.backlog(subscription).await
    }

    /// Records a run of attempts, in order, in one transaction: each one
    /// delivered moves the subscription past its event; the last may have
    /// failed, and `next_attempt_at` and `disabled` then apply. Nothing
    /// moves past an attempt made on a subscription that changed since it
    /// was read (`subscription`); disabling it records a
    /// SUBSCRIPTION_DISABLED event in the same transaction. Whether it
    /// moved is returned.
    #[tracing::instrument(name = "hub.record_attempts", skip_all, fields(attempts = attempts.len()))]
    pub async fn record_attempts(
        &self,
        subscription: &Subscription,
        attempts: &[DeliveryRecord],
        next_attempt_at: Option<DateTime<Utc>>,
        disabled: Option<&str>,
    ) -> Result<bool> {
        let context = RequestContext {
            actor: "system:notifications".into(),
            request_id: format!("subscription-{}", subscription.id),
        };
        self.repository
            .write("record_attempts", async |tx| {
                if !tx
                    .record_attempts(subscription, attempts, next_attempt_at, disabled)
                    .await?
                {
                    return Ok(false);
                }
                tx.trim_deliveries(subscription.id).await?;
                if let Some(reason) = disabled {
                    let reason = format!(
                        "subscription {} disabled: {reason}",
                        subscription.display_name()
                    );
                    tx.record_event(
                        &context,
                        None,
                        NewEvent::new(EventKind::SubscriptionDisabled, &reason),
                    )
                    .await?;
                }
                Ok(true)
            })
            .await
    }
}
