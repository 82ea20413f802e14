//! The services the server answers, and the routers in front of them: the
//! gRPC port's, and the HTTP/JSON port's gateway, which hands every request
//! to the same services behind the same authentication, metrics and
//! message limit.

use std::future::Future;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use tonic_health::pb::health_server::{Health, HealthServer};
use tower::util::BoxCloneSyncService;

use crate::config::{Settings, TlsSettings};
use crate::connections::{Listener, TrackLayer};
use crate::grpc::{
    BundleApi, BundleRoute, PolicyApi, SignInApi, SubscriptionApi,
    auth::{Authentication, SignIn},
    message_limit::MessageLimitLayer,
    proto::{
        self, bundle_service_server::BundleServiceServer,
        policy_service_server::PolicyServiceServer, sign_in_service_server::SignInServiceServer,
        subscription_service_server::SubscriptionServiceServer,
    },
    quotas::Quotas,
};
use crate::http::Gateway;

use super::Application;
use super::identity::guard;
use super::notifications;
use super::tasks::Supervisor;

/// The services of the public API, built once for both ports.
pub(super) struct Services {
    policy: PolicyServiceServer<PolicyApi>,
    bundle: BundleRoute<BundleServiceServer<BundleApi>>,
    /// The bundle service's handler, which the HTTP port's OPA polls call.
    bundle_api: BundleApi,
    subscriptions: SubscriptionServiceServer<SubscriptionApi>,
    /// Answered without a token, as a login page is.
    sign_in: SignInServiceServer<SignInApi>,
    /// The issuers people sign in with, which the console may reach.
    providers: Vec<SignIn>,
    /// The largest message a request may carry.
    max_message: usize,
}

impl Application {
    /// The services over the hub, sharing one set of quotas; the webhook
    /// deliveries start under `tasks` with theirs.
    pub(super) fn services(&self, tasks: &mut Supervisor) -> anyhow::Result<Services> {
        let max_message = self.settings.limits.max_message_bytes();
        let quotas = Quotas::new(self.settings.quotas.clone());
        let subscriptions =
            notifications::notifications(&self.hub, &self.settings, quotas.clone(), tasks)?;
        let policy = PolicyServiceServer::new(PolicyApi::new(
            self.hub.clone(),
            self.settings.limits.clone(),
            quotas.clone(),
            self.settings.data_dir.clone(),
        ))
        .max_decoding_message_size(max_message + 1);
        let bundle_api = BundleApi::new(
            self.hub.clone(),
            self.settings.watch.heartbeat_interval(),
            quotas,
            crate::metrics::global().decision_instruments(),
        );
        let bundle = BundleRoute::new(
            BundleServiceServer::new(bundle_api.clone()).max_decoding_message_size(max_message + 1),
            bundle_api.clone(),
            max_message + 1,
        );
        let providers = match &self.authentication {
            Authentication::Tokens(authenticator) => authenticator.sign_in(),
            Authentication::Disabled => Vec::new(),
        };
        Ok(Services {
            policy,
            bundle,
            bundle_api,
            subscriptions,
            sign_in: SignInServiceServer::new(SignInApi::new(&providers)),
            providers,
            max_message,
        })
    }
}

impl Services {
    /// The HTTP/JSON port's gateway: every request handed to the same
    /// services, behind the same authentication, metrics and message
    /// limit as the gRPC port's (OPA's polls to the bundle service's
    /// handler directly, after the same authentication).
    pub(super) fn gateway(&self, authentication: &Authentication) -> Gateway {
        let routes = Routes::new(guard(self.policy.clone(), authentication))
            .add_service(guard(self.bundle.clone(), authentication))
            .add_service(guard(self.subscriptions.clone(), authentication))
            .add_service(self.sign_in.clone());
        let grpc = tower::ServiceBuilder::new()
            .layer(crate::metrics::RpcMetricsLayer)
            .layer(MessageLimitLayer {
                limit: self.max_message,
            })
            .service(routes);
        Gateway::new(
            BoxCloneSyncService::new(grpc),
            self.bundle_api.clone(),
            authentication.clone(),
            self.max_message,
            self.providers
                .iter()
                .map(|provider| provider.issuer.as_str()),
        )
    }
}

/// The gRPC port: `services`, health and reflection behind its router,
/// served on `listener` until `stopping` is cancelled and the calls under
/// way end (however long: the caller bounds it).
pub(super) fn grpc_port<H: Health>(
    settings: &Settings,
    authentication: &Authentication,
    services: Services,
    health: HealthServer<H>,
    listener: Listener,
    stopping: &CancellationToken,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + use<H>> {
    // Both reflection versions: grpcurl 1.8 speaks only v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // The layer refuses an oversized message from its length prefix with
    // RESOURCE_EXHAUSTED; tonic's own limit, just above, is a backstop.
    let mut server = Server::builder()
        .trace_fn(crate::telemetry::rpc_span)
        .layer(TrackLayer)
        .layer(crate::metrics::RpcMetricsLayer)
        .layer(MessageLimitLayer {
            limit: services.max_message,
        });
    if let Some(tls) = &settings.tls {
        server = server
            .tls_config(tls_config(tls)?)
            .context("configuring tls")?;
    }
    // Health (for probes) and reflection (for grpcurl) answer without a
    // token unless auth.public_reflection is off; they reveal no policy.
    let router = server.add_service(health).add_service(services.sign_in);
    let router = if settings.auth.public_reflection {
        router
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
    } else {
        router
            .add_service(guard(reflection_v1, authentication))
            .add_service(guard(reflection_v1alpha, authentication))
    };
    Ok(router
        .add_service(guard(services.policy, authentication))
        .add_service(guard(services.bundle, authentication))
        .add_service(guard(services.subscriptions, authentication))
        .serve_with_incoming_shutdown(listener.into_incoming(), stopping.clone().cancelled_owned()))
}

/// Server reflection over every service served.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The rustls configuration of the gRPC port.
fn tls_config(tls: &TlsSettings) -> anyhow::Result<ServerTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read(&tls.cert_file)?,
        read(&tls.key_file)?,
    ));
    if let Some(client_ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(client_ca)?));
    }
    Ok(config)
}
