//! Subscription requests as validated domain values, and subscriptions and
//! deliveries back as protobuf. Every bad field is reported at once, named
//! as the request names it.

use super::convert::{event_kind, event_kind_from, timestamp};
use super::policy_requests::optional_namespace;
use super::proto;
use crate::domain::subscription::{
    self, DeliveryRecord, EndpointRules, Format, NewSubscription, Outcome, Subscription,
    SubscriptionChange, SubscriptionName, WebhookSecret,
};
use crate::domain::{Error, EventKind, Namespace, Result, refuse_nul};

/// The scope and name a request names.
pub(super) fn named(namespace: &str, name: &str) -> Result<(Option<Namespace>, SubscriptionName)> {
    let mut namespace_found = None;
    let mut name_found = None;
    subscription::all_of([
        optional_namespace(namespace).map(|parsed| namespace_found = parsed),
        SubscriptionName::parse("name", name).map(|parsed| name_found = Some(parsed)),
    ])?;
    Ok((namespace_found, name_found.expect("checked above")))
}

fn event_kinds(raw: &[i32]) -> Result<Vec<EventKind>> {
    let mut kinds = Vec::with_capacity(raw.len());
    for (index, value) in raw.iter().enumerate() {
        kinds.push(event_kind_from(&format!("event_kinds[{index}]"), *value)?);
    }
    subscription::check_event_kinds("event_kinds", &kinds)?;
    Ok(kinds)
}

fn format(raw: i32) -> Result<Option<Format>> {
    match proto::SubscriptionFormat::try_from(raw) {
        Ok(proto::SubscriptionFormat::Unspecified) => Ok(None),
        Ok(proto::SubscriptionFormat::Cloudevents) => Ok(Some(Format::CloudEvents)),
        Ok(proto::SubscriptionFormat::Chat) => Ok(Some(Format::Chat)),
        Err(_) => Err(Error::invalid(
            "format",
            format!("{raw} is not a subscription format"),
        )),
    }
}

/// A `CreateSubscription` request, validated; `generated` is the secret
/// to use when the request gives none.
pub(super) fn new_subscription(
    request: proto::CreateSubscriptionRequest,
    rules: EndpointRules,
    generated: impl FnOnce() -> WebhookSecret,
) -> Result<NewSubscription> {
    let mut scope = None;
    let mut kinds = Vec::new();
    let mut chosen_format = None;
    let mut secret = None;
    subscription::all_of([
        named(&request.namespace, &request.name).map(|found| scope = Some(found)),
        refuse_nul("url", &request.url)
            .and_then(|()| subscription::check_url("url", &request.url, rules)),
        event_kinds(&request.event_kinds).map(|found| kinds = found),
        format(request.format).map(|found| chosen_format = found),
        match request.secret.as_str() {
            "" => Ok(()),
            given => WebhookSecret::parse("secret", given).map(|found| secret = Some(found)),
        },
    ])?;
    let (namespace, name) = scope.expect("checked above");
    Ok(NewSubscription {
        namespace,
        name,
        url: request.url,
        event_kinds: kinds,
        format: chosen_format.unwrap_or(Format::CloudEvents),
        secret: secret.unwrap_or_else(generated),
    })
}

/// An `UpdateSubscription` request, validated.
pub(super) fn change(
    request: proto::UpdateSubscriptionRequest,
    rules: EndpointRules,
) -> Result<(Option<Namespace>, SubscriptionName, SubscriptionChange)> {
    let mut scope = None;
    let mut change = SubscriptionChange {
        enabled: request.enabled,
        ..SubscriptionChange::default()
    };
    subscription::all_of([
        named(&request.namespace, &request.name).map(|found| scope = Some(found)),
        match request.url.as_str() {
            "" => Ok(()),
            url => refuse_nul("url", url)
                .and_then(|()| subscription::check_url("url", url, rules))
                .map(|()| change.url = Some(url.to_owned())),
        },
        if request.event_kinds.is_empty() {
            Ok(())
        } else {
            event_kinds(&request.event_kinds).map(|found| change.event_kinds = Some(found))
        },
        format(request.format).map(|found| change.format = found),
    ])?;
    let (namespace, name) = scope.expect("checked above");
    Ok((namespace, name, change))
}

/// A subscription as protobuf, without its secret.
pub(super) fn subscription(found: &Subscription) -> proto::Subscription {
    proto::Subscription {
        namespace: found
            .namespace
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        name: found.name.to_string(),
        url: found.url.clone(),
        event_kinds: found
            .event_kinds
            .iter()
            .map(|kind| event_kind(*kind) as i32)
            .collect(),
        format: match found.format {
            Format::CloudEvents => proto::SubscriptionFormat::Cloudevents,
            Format::Chat => proto::SubscriptionFormat::Chat,
        } as i32,
        enabled: found.enabled,
        disabled_reason: found.disabled_reason.clone(),
        delivered_through: found.delivered_through,
        consecutive_failures: found.consecutive_failures,
        created_at: Some(timestamp(found.created_at)),
        updated_at: Some(timestamp(found.updated_at)),
    }
}

/// A delivery attempt as protobuf.
pub(super) fn delivery(attempt: &DeliveryRecord) -> proto::Delivery {
    proto::Delivery {
        event_id: attempt.event_id,
        webhook_id: subscription::webhook_id(attempt.event_id),
        outcome: match attempt.outcome {
            Outcome::Delivered => proto::DeliveryOutcome::Delivered,
            Outcome::Failed => proto::DeliveryOutcome::Failed,
        } as i32,
        status_code: u32::from(attempt.status_code),
        latency_ms: attempt.latency_ms,
        error: attempt.error.clone(),
        at: Some(timestamp(attempt.at)),
        attempt: attempt.attempt,
    }
}
