//! The server's webhook wiring: the courier both the delivery worker and
//! TestSubscription send through, the service, and the worker's task with
//! its metrics.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::grpc::{
    SubscriptionApi, proto::subscription_service_server::SubscriptionServiceServer, quotas::Quotas,
};
use crate::hub::PolicyHub;
use crate::notifications::{HttpCourier, Worker};

/// The subscription service, and the delivery worker running.
pub fn notifications(
    hub: &PolicyHub,
    settings: &Settings,
    quotas: Arc<Quotas>,
) -> anyhow::Result<(SubscriptionServiceServer<SubscriptionApi>, JoinHandle<()>)> {
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
    let worker = tokio::spawn(crate::notifications::run(Worker {
        hub: hub.clone(),
        settings: Arc::new(notification_settings.clone()),
        courier,
        instruments: crate::metrics::global().notification_instruments(),
    }));
    Ok((service, worker))
}
