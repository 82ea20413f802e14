//! `policyhub.v1.SubscriptionService`: webhook subscriptions, each handler
//! identifying the caller, validating the request, admitting the caller
//! (operator of the namespace; `*:admin` for a deployment-wide
//! subscription), calling the hub and converting the answer back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Identified, Rpc, identify};
use super::proto::{self, subscription_service_server::SubscriptionService};
use super::quotas::Quotas;
use super::subscriptions::{change, delivery, named, new_subscription, subscription};
use crate::config::NotificationSettings;
use crate::domain::subscription::{Announcement, Courier, EndpointRules, WebhookSecret};
use crate::domain::{Namespace, Result};
use crate::hub::PolicyHub;

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Serves `SubscriptionService` through the hub.
#[derive(Clone)]
pub struct SubscriptionApi {
    hub: PolicyHub,
    quotas: Arc<Quotas>,
    /// Which endpoints subscriptions may name.
    rules: EndpointRules,
    /// Sends TestSubscription's message.
    courier: Arc<dyn Courier>,
    /// Makes the secret of a subscription created without one.
    generate_secret: fn() -> WebhookSecret,
}

impl SubscriptionApi {
    /// The service over `hub`, under the deployment's `settings`, sending
    /// test messages through `courier` and generating secrets with
    /// `generate_secret`.
    pub fn new(
        hub: PolicyHub,
        quotas: Arc<Quotas>,
        settings: &NotificationSettings,
        courier: Arc<dyn Courier>,
        generate_secret: fn() -> WebhookSecret,
    ) -> Self {
        SubscriptionApi {
            hub,
            quotas,
            rules: EndpointRules {
                allow_http: settings.allow_http,
                allow_private_addresses: settings.allow_private_addresses,
            },
            courier,
            generate_secret,
        }
    }

    /// Admits the caller to `rpc` on a subscription of `namespace` (none:
    /// deployment-wide).
    fn admit(&self, caller: &Identified, rpc: Rpc, namespace: Option<&Namespace>) -> Result<()> {
        match namespace {
            Some(namespace) => caller.admit(rpc, [namespace], &self.quotas).map(drop),
            None => {
                caller.caller().authorize_admin(rpc)?;
                if rpc.mutates() {
                    self.quotas.admit_mutation(&caller.caller().subject)?;
                }
                Ok(())
            }
        }
    }
}

#[tonic::async_trait]
impl SubscriptionService for SubscriptionApi {
    async fn create_subscription(
        &self,
        request: Request<proto::CreateSubscriptionRequest>,
    ) -> Reply<proto::CreateSubscriptionResponse> {
        let caller = identify(&request)?;
        let new = new_subscription(request.into_inner(), self.rules, self.generate_secret)?;
        self.admit(&caller, Rpc::CreateSubscription, new.namespace.as_ref())?;
        let secret = new.secret.expose().to_owned();
        let created = self.hub.create_subscription(new).await?;
        Ok(Response::new(proto::CreateSubscriptionResponse {
            subscription: Some(subscription(&created)),
            secret,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<proto::GetSubscriptionRequest>,
    ) -> Reply<proto::Subscription> {
        let caller = identify(&request)?;
        let (namespace, name) = named(&request.get_ref().namespace, &request.get_ref().name)?;
        self.admit(&caller, Rpc::GetSubscription, namespace.as_ref())?;
        let found = self.hub.get_subscription(namespace.as_ref(), &name).await?;
        Ok(Response::new(subscription(&found)))
    }

    async fn list_subscriptions(
        &self,
        request: Request<proto::ListSubscriptionsRequest>,
    ) -> Reply<proto::ListSubscriptionsResponse> {
        let caller = identify(&request)?;
        let namespace = super::policy_requests::optional_namespace(&request.get_ref().namespace)?;
        self.admit(&caller, Rpc::ListSubscriptions, namespace.as_ref())?;
        let found = self.hub.list_subscriptions(namespace.as_ref()).await?;
        Ok(Response::new(proto::ListSubscriptionsResponse {
            subscriptions: found.iter().map(subscription).collect(),
        }))
    }

    async fn update_subscription(
        &self,
        request: Request<proto::UpdateSubscriptionRequest>,
    ) -> Reply<proto::Subscription> {
        let caller = identify(&request)?;
        let (namespace, name, change) = change(request.into_inner(), self.rules)?;
        self.admit(&caller, Rpc::UpdateSubscription, namespace.as_ref())?;
        let updated = self
            .hub
            .update_subscription(namespace.as_ref(), &name, change)
            .await?;
        Ok(Response::new(subscription(&updated)))
    }

    async fn delete_subscription(
        &self,
        request: Request<proto::DeleteSubscriptionRequest>,
    ) -> Reply<proto::DeleteSubscriptionResponse> {
        let caller = identify(&request)?;
        let (namespace, name) = named(&request.get_ref().namespace, &request.get_ref().name)?;
        self.admit(&caller, Rpc::DeleteSubscription, namespace.as_ref())?;
        self.hub
            .delete_subscription(namespace.as_ref(), &name)
            .await?;
        Ok(Response::new(proto::DeleteSubscriptionResponse {}))
    }

    async fn test_subscription(
        &self,
        request: Request<proto::TestSubscriptionRequest>,
    ) -> Reply<proto::Delivery> {
        let caller = identify(&request)?;
        let (namespace, name) = named(&request.get_ref().namespace, &request.get_ref().name)?;
        self.admit(&caller, Rpc::TestSubscription, namespace.as_ref())?;
        let found = self.hub.get_subscription(namespace.as_ref(), &name).await?;
        let attempt = self.courier.deliver(&found, Announcement::Test, 1).await;
        self.hub.record_test_delivery(&found, &attempt).await?;
        Ok(Response::new(delivery(&attempt)))
    }

    async fn list_deliveries(
        &self,
        request: Request<proto::ListDeliveriesRequest>,
    ) -> Reply<proto::ListDeliveriesResponse> {
        let caller = identify(&request)?;
        let (namespace, name) = named(&request.get_ref().namespace, &request.get_ref().name)?;
        self.admit(&caller, Rpc::ListDeliveries, namespace.as_ref())?;
        let found = self.hub.get_subscription(namespace.as_ref(), &name).await?;
        let attempts = self.hub.list_deliveries(&found).await?;
        Ok(Response::new(proto::ListDeliveriesResponse {
            deliveries: attempts.iter().map(delivery).collect(),
        }))
    }
}
