//! Building and running the server: bind the listener (port 0 works), open
//! and migrate the database, load the keys and the active index, serve.

use std::{future::Future, net::SocketAddr};

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::interceptor::InterceptedService, transport::Server};
use tonic_health::server::HealthReporter;

use crate::config::Settings;
use crate::grpc::{
    BundleApi, PolicyApi, context,
    proto::{
        self, bundle_service_server::BundleServiceServer,
        policy_service_server::PolicyServiceServer,
    },
};
use crate::hub::PolicyHub;
use crate::{signing, storage};

/// A server that is bound and ready to run.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    hub: PolicyHub,
    settings: Settings,
}

fn prepare_data_dir(settings: &Settings) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !settings.data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.data_dir)
            .with_context(|| {
                format!(
                    "creating the data directory {}",
                    settings.data_dir.display()
                )
            })?;
    }
    Ok(())
}

/// Refuses to serve without authentication anywhere but on loopback.
fn check_security(settings: &Settings) -> anyhow::Result<()> {
    if !settings.insecure {
        bail!(
            "authentication is on by default, and this build cannot verify tokens yet: \
             run with --insecure on a loopback address (127.0.0.1 or [::1]) for local use"
        );
    }
    if !settings.listen.ip().is_loopback() {
        bail!(
            "--insecure is refused on {}: without authentication, listen on a loopback address only",
            settings.listen
        );
    }
    tracing::warn!(listen = %settings.listen, "authentication is disabled (--insecure): every caller is anonymous");
    Ok(())
}

/// Opens and migrates the database named by the settings.
pub async fn open_database(settings: &Settings) -> anyhow::Result<sea_orm::DatabaseConnection> {
    prepare_data_dir(settings)?;
    let url = settings.database_url();
    let db = storage::connect(url.expose_secret()).await?;
    storage::migrate(&db).await?;
    Ok(db)
}

impl Application {
    /// Binds the listener and prepares everything the server needs.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        check_security(&settings)?;
        let db = open_database(&settings).await?;
        let keys = signing::load_keys(&settings.signing.key_files, &settings.data_dir)?;
        let repository = storage::Repository::new(db, settings.issuer.clone());
        let hub = PolicyHub::start(repository, keys).await?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let address = listener.local_addr()?;
        Ok(Application {
            listener,
            address,
            hub,
            settings,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_task = tokio::spawn(watch_database(
            health,
            self.hub.clone(),
            self.settings.health_check_interval(),
        ));
        let replication_task = (!self.settings.is_sqlite()).then(|| {
            tokio::spawn(crate::replication::follow(
                self.hub.clone(),
                self.settings.database_url(),
                self.settings.watch.clone(),
            ))
        });
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let max_message = self.settings.limits.max_message_bytes();
        let policy_service = PolicyServiceServer::new(PolicyApi::new(
            self.hub.clone(),
            self.settings.limits.clone(),
        ))
        .max_decoding_message_size(max_message);
        let bundle_service = BundleServiceServer::new(BundleApi::new(
            self.hub.clone(),
            self.settings.watch.heartbeat_interval(),
        ))
        .max_decoding_message_size(max_message);
        // Watch streams never end by themselves: end them first, with
        // UNAVAILABLE, so the graceful drain does not wait on them forever.
        let index = self.hub.index().clone();
        let shutdown = async move {
            shutdown.await;
            index.close();
        };
        tracing::info!(address = %self.address, "serving grpc");
        let served = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(policy_service, context::anonymous))
            .add_service(InterceptedService::new(bundle_service, context::anonymous))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await;
        health_task.abort();
        if let Some(task) = replication_task {
            task.abort();
        }
        served.context("serving grpc")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reports NOT_SERVING while the database does not answer a ping.
async fn watch_database(health: HealthReporter, hub: PolicyHub, interval: std::time::Duration) {
    let mut serving = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let reachable = hub.repository().connection().ping().await.is_ok();
        if serving == Some(reachable) {
            continue;
        }
        let status = if reachable {
            tonic_health::ServingStatus::Serving
        } else {
            tracing::error!("the database does not answer: reporting not serving");
            tonic_health::ServingStatus::NotServing
        };
        for service in [
            "",
            <PolicyServiceServer<PolicyApi> as tonic::server::NamedService>::NAME,
            <BundleServiceServer<BundleApi> as tonic::server::NamedService>::NAME,
        ] {
            health.set_service_status(service, status).await;
        }
        if reachable && serving == Some(false) {
            tracing::info!("the database answers again: reporting serving");
        }
        serving = Some(reachable);
    }
}
