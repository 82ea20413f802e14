//! Webhook subscriptions: what callers ask of them, and what the delivery
//! worker reads and records. Delivery itself (HTTP, signing) is the
//! worker's; the hub keeps the rows.

use crate::domain::subscription::{
    DeliveryRecord, DeliveryRun, NewSubscription, Subscription, SubscriptionChange,
    SubscriptionName,
};
use crate::domain::{EventKind, EventRecord, Namespace, RequestContext, Result};
use crate::storage::{Backlog, NewEvent, Transaction};

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

    /// Records runs of attempts, each on its own subscription, in one
    /// transaction (see [`crate::storage::Transaction::record_attempts`]):
    /// nothing moves past an attempt made on a subscription that changed
    /// since the run read it, and disabling one records a
    /// SUBSCRIPTION_DISABLED event in the same transaction. Whether each
    /// moved is returned, in the runs' order.
    #[tracing::instrument(name = "hub.record_runs", skip_all, fields(runs = runs.len()))]
    pub async fn record_runs(&self, runs: &[DeliveryRun]) -> Result<Vec<bool>> {
        self.repository
            .write("record_runs", async |tx| {
                let mut moved = Vec::with_capacity(runs.len());
                for run in runs {
                    moved.push(record_run(tx, run).await?);
                }
                Ok(moved)
            })
            .await
    }
}

async fn record_run(tx: &Transaction, run: &DeliveryRun) -> Result<bool> {
    if !tx.record_attempts(run).await? {
        return Ok(false);
    }
    let subscription = &run.subscription;
    tx.trim_deliveries(subscription.id).await?;
    if let Some(reason) = &run.disabled {
        let context = RequestContext {
            actor: "system:notifications".into(),
            request_id: format!("subscription-{}", subscription.id),
        };
        let reason = format!(
            "subscription {} disabled: {reason}",
            subscription.display_name()
        );
        tx.record_namespace_event(
            &context,
            subscription.namespace.as_ref(),
            NewEvent::new(EventKind::SubscriptionDisabled, &reason),
        )
        .await?;
    }
    Ok(true)
}
