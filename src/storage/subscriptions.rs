//! Webhook subscription rows: each subscription with its cursor in the
//! outbox (the last event it delivered), and its recent delivery attempts.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    sea_query::Expr,
};

use super::entities::{deliveries, outbox, subscriptions};
use super::errors::is_unique_violation;
use super::transaction::{Repository, Transaction};
use crate::domain::subscription::{
    DeliveryRecord, DeliveryRun, Format, NewSubscription, Outcome, Subscription,
    SubscriptionChange, SubscriptionName, WebhookSecret,
};
use crate::domain::{Error, EventKind, Namespace, Result};

/// Delivery attempts kept per subscription.
pub const KEPT_DELIVERIES: u64 = 100;

/// The row recording one attempt.
fn delivery_row(subscription_id: i64, attempt: &DeliveryRecord) -> deliveries::ActiveModel {
    deliveries::ActiveModel {
        id: NotSet,
        subscription_id: Set(subscription_id),
        event_id: Set(i64::try_from(attempt.event_id).unwrap_or(i64::MAX)),
        attempt: Set(i32::try_from(attempt.attempt).unwrap_or(i32::MAX)),
        outcome: Set(attempt.outcome.as_str().to_owned()),
        status_code: Set(i32::from(attempt.status_code)),
        latency_ms: Set(i32::try_from(attempt.latency_ms).unwrap_or(i32::MAX)),
        error: Set(attempt.error.clone()),
        at: Set(attempt.at),
    }
}

fn scope(namespace: Option<&Namespace>) -> &str {
    namespace.map_or("", Namespace::as_str)
}

fn not_found(namespace: Option<&Namespace>, name: &SubscriptionName) -> Error {
    match namespace {
        Some(namespace) => Error::NotFound(format!(
            "subscription {name} does not exist in namespace {namespace}"
        )),
        None => Error::NotFound(format!(
            "deployment-wide subscription {name} does not exist"
        )),
    }
}

fn kinds_row(kinds: &[EventKind]) -> String {
    kinds
        .iter()
        .map(|kind| kind.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn unreadable(row: &subscriptions::Model, error: impl std::fmt::Display) -> Error {
    Error::Internal(format!(
        "stored subscription {} is unreadable: {error}",
        row.id
    ))
}

fn from_row(row: subscriptions::Model) -> Result<Subscription> {
    let namespace = match row.namespace.as_str() {
        "" => None,
        text => Some(Namespace::parse("namespace", text).map_err(|e| unreadable(&row, e))?),
    };
    let event_kinds = row
        .event_kinds
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<EventKind>>>()
        .map_err(|e| unreadable(&row, e))?;
    Ok(Subscription {
        id: row.id,
        namespace,
        name: SubscriptionName::parse("name", &row.name).map_err(|e| unreadable(&row, e))?,
        event_kinds,
        format: Format::parse(&row.format)?,
        secret: WebhookSecret::parse("secret", &row.secret).map_err(|e| unreadable(&row, e))?,
        url: row.url,
        enabled: row.enabled,
        disabled_reason: row.disabled_reason,
        delivered_through: u64::try_from(row.delivered_through).unwrap_or(0),
        consecutive_failures: u32::try_from(row.consecutive_failures).unwrap_or(0),
        next_attempt_at: row.next_attempt_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

async fn find<C: ConnectionTrait>(
    db: &C,
    namespace: Option<&Namespace>,
    name: &SubscriptionName,
) -> Result<Subscription> {
    subscriptions::Entity::find()
        .filter(subscriptions::Column::Namespace.eq(scope(namespace)))
        .filter(subscriptions::Column::Name.eq(name.as_str()))
        .one(db)
        .await?
        .map(from_row)
        .transpose()?
        .ok_or_else(|| not_found(namespace, name))
}

impl Transaction {
    /// Stores a new subscription; it hears the events recorded after it.
    pub async fn insert_subscription(&self, new: &NewSubscription) -> Result<Subscription> {
        let newest_event: Option<i64> = outbox::Entity::find()
            .select_only()
            .column_as(outbox::Column::EventId.max(), "event_id")
            .into_tuple::<Option<i64>>()
            .one(&self.txn)
            .await?
            .flatten();
        let row = subscriptions::ActiveModel {
            id: NotSet,
            namespace: Set(scope(new.namespace.as_ref()).to_owned()),
            name: Set(new.name.to_string()),
            url: Set(new.url.clone()),
            event_kinds: Set(kinds_row(&new.event_kinds)),
            format: Set(new.format.as_str().to_owned()),
            secret: Set(new.secret.expose().to_owned()),
            enabled: Set(true),
            disabled_reason: Set(String::new()),
            delivered_through: Set(newest_event.unwrap_or(0)),
            consecutive_failures: Set(0),
            next_attempt_at: Set(None),
            created_at: Set(self.at()),
            updated_at: Set(self.at()),
        };
        match subscriptions::Entity::insert(row).exec(&self.txn).await {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(Error::AlreadyExists(format!(
                    "subscription {} already exists",
                    new.name
                )));
            }
            Err(error) => return Err(error.into()),
        }
        find(&self.txn, new.namespace.as_ref(), &new.name).await
    }

    /// Applies a change to a subscription. Enabling a disabled one clears
    /// its failures, so that it delivers again from where it stopped.
    pub async fn update_subscription(
        &self,
        namespace: Option<&Namespace>,
        name: &SubscriptionName,
        change: &SubscriptionChange,
    ) -> Result<Subscription> {
        let found = find(&self.txn, namespace, name).await?;
        let mut update = subscriptions::Entity::update_many()
            .col_expr(subscriptions::Column::UpdatedAt, Expr::value(self.at()))
            .filter(subscriptions::Column::Id.eq(found.id));
        if let Some(url) = &change.url {
            update = update.col_expr(subscriptions::Column::Url, Expr::value(url.clone()));
        }
        if let Some(kinds) = &change.event_kinds {
            update = update.col_expr(
                subscriptions::Column::EventKinds,
                Expr::value(kinds_row(kinds)),
            );
        }
        if let Some(format) = change.format {
            update = update.col_expr(subscriptions::Column::Format, Expr::value(format.as_str()));
        }
        match change.enabled {
            Some(true) if !found.enabled => {
                update = update
                    .col_expr(subscriptions::Column::Enabled, Expr::value(true))
                    .col_expr(subscriptions::Column::DisabledReason, Expr::value(""))
                    .col_expr(subscriptions::Column::ConsecutiveFailures, Expr::value(0))
                    .col_expr(
                        subscriptions::Column::NextAttemptAt,
                        Expr::value(Option::<DateTime<Utc>>::None),
                    );
            }
            Some(false) if found.enabled => {
                update = update
                    .col_expr(subscriptions::Column::Enabled, Expr::value(false))
                    .col_expr(
                        subscriptions::Column::DisabledReason,
                        Expr::value("disabled by an operator"),
                    );
            }
            _ => {}
        }
        update.exec(&self.txn).await?;
        find(&self.txn, namespace, name).await
    }

    /// Deletes a subscription and its delivery attempts.
    pub async fn delete_subscription(
        &self,
        namespace: Option<&Namespace>,
        name: &SubscriptionName,
    ) -> Result<()> {
        let found = find(&self.txn, namespace, name).await?;
        deliveries::Entity::delete_many()
            .filter(deliveries::Column::SubscriptionId.eq(found.id))
            .exec(&self.txn)
            .await?;
        subscriptions::Entity::delete_by_id(found.id)
            .exec(&self.txn)
            .await?;
        Ok(())
    }

    /// Records a run of attempts on a subscription, in order, and moves it
    /// on: past the last event delivered (its failures cleared), counting
    /// the failures after it, to the run's `next_attempt_at`, and disabled
    /// with its reason when given. The move happens only while the
    /// subscription is still where the run's `subscription` saw it, so that
    /// a replica acting on stale state changes nothing; whether it moved is
    /// returned.
    /// One update and one insert, however long the run.
    pub async fn record_attempts(&self, run: &DeliveryRun) -> Result<bool> {
        let DeliveryRun {
            subscription,
            attempts,
            next_attempt_at,
            disabled,
        } = run;
        let mut delivered_through = None;
        let mut failures = subscription.consecutive_failures;
        for attempt in attempts {
            match attempt.outcome {
                Outcome::Delivered => {
                    delivered_through = Some(attempt.event_id);
                    failures = 0;
                }
                Outcome::Failed => failures = failures.saturating_add(1),
            }
        }
        let mut update = subscriptions::Entity::update_many()
            .filter(subscriptions::Column::Id.eq(subscription.id))
            .filter(subscriptions::Column::Enabled.eq(true))
            .filter(
                subscriptions::Column::DeliveredThrough
                    .eq(i64::try_from(subscription.delivered_through).unwrap_or(i64::MAX)),
            )
            .col_expr(
                subscriptions::Column::NextAttemptAt,
                Expr::value(*next_attempt_at),
            )
            .col_expr(
                subscriptions::Column::ConsecutiveFailures,
                Expr::value(i32::try_from(failures).unwrap_or(i32::MAX)),
            );
        if let Some(event_id) = delivered_through {
            update = update.col_expr(
                subscriptions::Column::DeliveredThrough,
                Expr::value(i64::try_from(event_id).unwrap_or(i64::MAX)),
            );
        }
        if let Some(reason) = disabled {
            update = update
                .col_expr(subscriptions::Column::Enabled, Expr::value(false))
                .col_expr(
                    subscriptions::Column::DisabledReason,
                    Expr::value(reason.as_str()),
                );
        }
        let moved = update.exec(&self.txn).await?.rows_affected == 1;
        if moved && !attempts.is_empty() {
            deliveries::Entity::insert_many(
                attempts
                    .iter()
                    .map(|attempt| delivery_row(subscription.id, attempt)),
            )
            .exec_without_returning(&self.txn)
            .await?;
        }
        Ok(moved)
    }

    /// Records one attempt and forgets all but the newest
    /// [`KEPT_DELIVERIES`] of the subscription.
    pub async fn record_delivery(
        &self,
        subscription_id: i64,
        attempt: &DeliveryRecord,
    ) -> Result<()> {
        deliveries::Entity::insert(delivery_row(subscription_id, attempt))
            .exec_without_returning(&self.txn)
            .await?;
        self.trim_deliveries(subscription_id).await
    }

    /// Forgets all but the newest [`KEPT_DELIVERIES`] attempts of the
    /// subscription.
    pub async fn trim_deliveries(&self, subscription_id: i64) -> Result<()> {
        let oldest_kept: Option<i64> = deliveries::Entity::find()
            .select_only()
            .column(deliveries::Column::Id)
            .filter(deliveries::Column::SubscriptionId.eq(subscription_id))
            .order_by(deliveries::Column::Id, Order::Desc)
            .offset(KEPT_DELIVERIES - 1)
            .into_tuple::<i64>()
            .one(&self.txn)
            .await?;
        if let Some(oldest_kept) = oldest_kept {
            deliveries::Entity::delete_many()
                .filter(deliveries::Column::SubscriptionId.eq(subscription_id))
                .filter(deliveries::Column::Id.lt(oldest_kept))
                .exec(&self.txn)
                .await?;
        }
        Ok(())
    }
}

impl Repository {
    /// One subscription.
    #[tracing::instrument(name = "storage.get_subscription", skip_all)]
    pub async fn get_subscription(
        &self,
        namespace: Option<&Namespace>,
        name: &SubscriptionName,
    ) -> Result<Subscription> {
        find(&self.db, namespace, name).await
    }

    /// The subscriptions of a namespace, or the deployment-wide ones, by
    /// name.
    #[tracing::instrument(name = "storage.list_subscriptions", skip_all)]
    pub async fn list_subscriptions(
        &self,
        namespace: Option<&Namespace>,
    ) -> Result<Vec<Subscription>> {
        subscriptions::Entity::find()
            .filter(subscriptions::Column::Namespace.eq(scope(namespace)))
            .order_by(subscriptions::Column::Name, Order::Asc)
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    /// Every subscription of the deployment, enabled or not.
    #[tracing::instrument(name = "storage.all_subscriptions", skip_all)]
    pub async fn all_subscriptions(&self) -> Result<Vec<Subscription>> {
        subscriptions::Entity::find()
            .order_by(subscriptions::Column::Id, Order::Asc)
            .all(&self.db)
            .await?
            .into_iter()
            .map(from_row)
            .collect()
    }

    /// A subscription by id, as it is now.
    pub async fn subscription_by_id(&self, id: i64) -> Result<Option<Subscription>> {
        subscriptions::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(from_row)
            .transpose()
    }

    /// The recent delivery attempts of a subscription, newest first.
    #[tracing::instrument(name = "storage.list_deliveries", skip_all)]
    pub async fn list_deliveries(
        &self,
        subscription: &Subscription,
    ) -> Result<Vec<DeliveryRecord>> {
        deliveries::Entity::find()
            .filter(deliveries::Column::SubscriptionId.eq(subscription.id))
            .order_by(deliveries::Column::Id, Order::Desc)
            .limit(KEPT_DELIVERIES)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                Ok(DeliveryRecord {
                    event_id: u64::try_from(row.event_id).unwrap_or(0),
                    attempt: u32::try_from(row.attempt).unwrap_or(0),
                    outcome: match row.outcome.as_str() {
                        "delivered" => Outcome::Delivered,
                        _ => Outcome::Failed,
                    },
                    status_code: u16::try_from(row.status_code).unwrap_or(0),
                    latency_ms: u32::try_from(row.latency_ms).unwrap_or(0),
                    error: row.error,
                    at: row.at,
                })
            })
            .collect()
    }
}
