//! The webhook delivery worker's metrics, and the gauges of what waits for
//! a person.

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use super::Registrar;

/// A metric's labels: `subscription` (`namespace/name`, or the name of a
/// deployment-wide one), and `outcome` for deliveries.
pub type SubscriptionLabels = Vec<(&'static str, String)>;

/// What the delivery worker feeds.
#[derive(Debug, Clone, Default)]
pub struct NotificationInstruments {
    /// Delivery attempts, by subscription and outcome (`delivered`,
    /// `failed`).
    pub deliveries: Family<SubscriptionLabels, Counter>,
    /// Subscriptions disabled after repeated failures.
    pub disabled: Counter,
    /// Events waiting, by subscription.
    pub queue_depth: Family<SubscriptionLabels, Gauge>,
    /// Age in seconds of the oldest event waiting, by subscription; 0 when
    /// none waits.
    pub oldest_undelivered_age: Family<SubscriptionLabels, Gauge>,
    /// Rollouts waiting for approvals.
    pub rollouts_awaiting_approval: Gauge,
    /// Rollouts the controller paused (a step failed, or a requirement
    /// moved out of range as it completed), waiting for an operator.
    pub rollouts_self_paused: Gauge,
}

/// Registers them under their names.
pub(super) fn register_notifications(
    registry: &mut Registrar<'_>,
    instruments: &NotificationInstruments,
) {
    registry.register(
        "webhook_deliveries",
        "Webhook delivery attempts, by subscription and outcome: delivered or failed",
        instruments.deliveries.clone(),
    );
    registry.register(
        "webhook_subscriptions_disabled",
        "Webhook subscriptions this replica disabled after repeated failures",
        instruments.disabled.clone(),
    );
    registry.register(
        "webhook_queue_depth",
        "Events waiting to be delivered, by subscription",
        instruments.queue_depth.clone(),
    );
    registry.register(
        "webhook_oldest_undelivered_age_seconds",
        "Age of the oldest event waiting to be delivered, by subscription; 0 when none waits",
        instruments.oldest_undelivered_age.clone(),
    );
    registry.register(
        "rollouts_awaiting_approval",
        "Rollouts that wait for approvals",
        instruments.rollouts_awaiting_approval.clone(),
    );
    registry.register(
        "rollouts_self_paused",
        "Rollouts that paused themselves (a step failed, or a requirement moved out of range as they completed) and wait for an operator",
        instruments.rollouts_self_paused.clone(),
    );
}
