//! The server's webhook wiring: the courier both the delivery worker and
//! TestSubscription send through, the service, and the worker's task with
//! its metrics.

use std::sync::Arc;

use crate::config::Settings;
use crate::grpc::{
    SubscriptionApi, proto::subscription_service_server::SubscriptionServiceServer, quotas::Quotas,
};
use crate::hub::PolicyHub;
use crate::notifications::{HttpCourier, Worker};

use super::tasks::{OnEnd, Stop, Supervisor};

/// The subscription service, with the delivery worker running under
/// `supervisor`.
pub fn notifications(
    hub: &PolicyHub,
    settings: &Settings,
    quotas: Arc<Quotas>,
    supervisor: &mut Supervisor,
) -> anyhow::Result<SubscriptionServiceServer<SubscriptionApi>> {
    let notification_settings = &settings.notifications;
    let courier = Arc::new(HttpCourier::new(
        notification_settings.timeout,
        notification_settings.allow_private_addresses,
        settings.bundle_issuer.clone(),
    )?);
    let service = SubscriptionServiceServer::new(SubscriptionApi::new(
        hub.clone(),
        quotas,
        notification_settings,
        courier.clone(),
        crate::signing::new_webhook_secret,
    ));
    let worker = Worker {
        hub: hub.clone(),
        settings: Arc::new(notification_settings.clone()),
        courier,
        instruments: crate::metrics::global().notification_instruments(),
    };
    // Started again when it ends: the cursors are rows, and a new run
    // resumes from them. At shutdown it finishes the attempts under way.
    supervisor.spawn("notifications", OnEnd::Restart, Stop::Drain, move |stop| {
        crate::notifications::run(worker.clone(), stop)
    });
    Ok(service)
}
