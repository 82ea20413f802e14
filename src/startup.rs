//! Building and running the server: bind the listener (port 0 works), open
//! and migrate the database, load the keys and the active index, serve.

use std::{future::Future, net::SocketAddr};

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::connections::Listener;
use crate::fleet::{Fleet, Writers};
use crate::grpc::auth::Authentication;
use crate::hub::PolicyHub;
use crate::{signing, storage};

mod background;
mod drain;
mod health;
mod identity;
mod notifications;
mod ports;
mod routers;
mod tasks;

pub use health::LIVENESS_SERVICE;
use health::supervisor;
pub use identity::ISSUERS_SERVICE;

/// A server that is bound and ready to run.
pub struct Application {
    listener: TcpListener,
    /// The metrics port, when `metrics_listen` is set.
    metrics_listener: Option<TcpListener>,
    /// The HTTP/JSON port, when `http_listen` is set.
    http_listener: Option<TcpListener>,
    address: SocketAddr,
    hub: PolicyHub,
    /// The fleet view the hub answers from, flushed beside it.
    fleet: Fleet,
    /// The store, for what runs beside the hub: health, retention.
    repository: storage::Repository,
    authentication: Authentication,
    settings: Settings,
}

fn prepare_data_dir(settings: &Settings) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = &settings.data_dir;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    // Say which directory and why now, rather than SQLite's "unable to open
    // database file" or "disk I/O error" later.
    let probe = dir.join(".policyhub-write-test");
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("the data directory {} is not writable", dir.display()))?;
    Ok(())
}

/// Refuses `--insecure` on an address other machines can reach.
fn refuse_insecure_off_loopback(settings: &Settings) -> anyhow::Result<()> {
    let addresses = std::iter::once(settings.listen).chain(settings.http_listen);
    for address in addresses {
        if settings.insecure && !address.ip().is_loopback() {
            bail!(
                "--insecure is refused on {address}: without authentication, listen on a loopback address only"
            );
        }
    }
    Ok(())
}

async fn refuse_unguarded_history(repository: &storage::Repository) -> anyhow::Result<()> {
    let missing = repository.missing_immutability_triggers().await?;
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve: {} immutability triggers are missing or disabled ({}), so history \
         may have been rewritten while they were off; restore the database from a backup taken \
         before, or recreate them as the migrations define them (on postgresql `alter table … \
         enable trigger` re-enables a disabled one), start again and check the whole log with \
         `policyhub verify-log`",
        missing.len(),
        missing.join(", ")
    )
}

/// Opens and migrates the database named by the settings.
pub async fn open_database(settings: &Settings) -> anyhow::Result<sea_orm::DatabaseConnection> {
    prepare_data_dir(settings)?;
    let url = settings.database_url();
    let db = storage::connect(url.expose_secret(), settings.database_pool_size.get()).await?;
    storage::migrate(&db).await?;
    Ok(db)
}

impl Application {
    /// Binds the ports and prepares everything the server needs, then
    /// listens.
    ///
    /// A start that cannot succeed fails before it writes anything: the
    /// settings are checked and the ports bound before the data directory,
    /// keys, secrets or migrations are touched. The gRPC and HTTP ports
    /// accept connections only once the store is open and the active index
    /// loaded: a port that accepted while migrating, or while the database
    /// does not answer, would pass a TCP probe and take a client's call
    /// that cannot be served.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        refuse_insecure_off_loopback(&settings)?;
        raise_open_files_limit();
        let socket =
            bind(settings.listen).with_context(|| format!("binding {}", settings.listen))?;
        let address = socket.local_addr()?;
        let metrics_listener = match settings.metrics_listen {
            Some(metrics_address) => Some(crate::metrics::bind(metrics_address).await?),
            None => None,
        };
        let http_socket = match settings.http_listen {
            Some(http_address) => Some(
                bind(http_address)
                    .with_context(|| format!("binding the http port {http_address}"))?,
            ),
            None => None,
        };
        prepare_data_dir(&settings)?;
        let authentication = identity::authentication(&settings)?;
        let db = open_database(&settings).await?;
        let keys = signing::KeySource::new(&settings.signing.key_files, &settings.data_dir);
        let repository = storage::Repository::open(db).await?;
        refuse_unguarded_history(&repository).await?;
        repository.count_refused_checkpoints_in(crate::metrics::global().checkpoints_refused());
        let sealed = repository.seal_events().await?;
        if sealed > 0 {
            tracing::info!(
                events = sealed,
                "sealed the events written before the hash chain"
            );
        }
        let grown = repository.grow_log().await?;
        if grown > 0 {
            tracing::info!(
                events = grown,
                "appended the events written before the log's tree"
            );
        }
        let origin = repository
            .settle_log_origin(settings.audit.log_origin.as_deref())
            .await?;
        tracing::info!(%origin, "the log's origin");
        // Bounded: only the events since the newest checkpoint are read.
        repository
            .verify_since_last_checkpoint()
            .await
            .context("refusing to serve a history rewritten since its last signed checkpoint")?;
        let fleet = Fleet::new(
            repository.clone(),
            Writers::of(&repository),
            &settings.runtimes,
            crate::metrics::global().fleet_instruments(),
        );
        let hub = PolicyHub::start(
            repository.clone(),
            fleet.clone(),
            settings.bundle_issuer.clone(),
            settings.rollouts.clone(),
            settings.schedules.clone(),
            keys,
            (
                crate::grpc::convert::encoded_bundle,
                crate::grpc::convert::encoded_checkpoint,
            ),
            crate::metrics::global().index_instruments(),
        )
        .await?;
        let hub = match settings.audit.witnesses.is_empty() {
            true => hub,
            false => hub.with_witnesses(settings.audit.witness_timeout()).await?,
        };
        let hub = match crate::prometheus::PrometheusServers::from_settings(&settings.rollouts)? {
            Some(servers) => hub.with_metrics_source(std::sync::Arc::new(servers)),
            None => hub,
        };
        let opa_namespaces = settings.opa.bundle_roots()?;
        let impact_gates = settings.opa.impact_gates()?;
        settings.check_opa_signing()?;
        // A key is made only for a deployment that serves OPA.
        let hub = if opa_namespaces.is_empty() {
            hub
        } else {
            let keys =
                signing::OpaKeySource::new(&settings.signing.opa_key_files, &settings.data_dir);
            hub.with_opa(
                opa_namespaces,
                impact_gates,
                keys,
                settings.decisions.clone(),
            )?
        };
        let listener = socket
            .listen(settings.listen_backlog)
            .with_context(|| format!("listening on {address}"))?;
        let http_listener = match http_socket {
            Some(socket) => Some(
                socket
                    .listen(settings.listen_backlog)
                    .context("listening on the http port")?,
            ),
            None => None,
        };
        Ok(Application {
            listener,
            metrics_listener,
            http_listener,
            address,
            hub,
            fleet,
            repository,
            authentication,
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

    /// The bound metrics address, when metrics are served.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The bound HTTP/JSON address, when it is served.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops: the ports drain the
    /// calls under way while the background tasks finish theirs, within
    /// one grace period (`drain`).
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut tasks = supervisor(&health);
        self.spawn_background(&health, &mut tasks);
        self.serve_metrics(&mut tasks);
        let services = self.services(&mut tasks)?;
        self.serve_http(&services, &mut tasks);
        tracing::info!(address = %self.address, "serving grpc");
        let stopping = CancellationToken::new();
        let grpc = routers::grpc_port(
            &self.settings,
            &self.authentication,
            services,
            health_service,
            listener(self.listener, "grpc", &self.settings.connections),
            &stopping,
        )?;
        let grace = self.settings.notifications.timeout + drain::SHUTDOWN_GRACE;
        let index = self.hub.index();
        let served = drain::serve_until(grpc, shutdown, &stopping, index, tasks, grace).await;
        drain::record_at_stop(&self.fleet, &self.repository).await;
        served.context("serving grpc")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// `tcp` as the port named `port`, with the connection bounds of the
/// settings and its counts in the metrics.
fn listener(tcp: TcpListener, port: &'static str, limits: &crate::connections::Limits) -> Listener {
    Listener::new(
        tcp,
        port,
        limits.clone(),
        crate::metrics::global().connection_instruments(port),
    )
}

/// Raises the soft limit on open files to the hard limit, as Go programs
/// (etcd among them) do at start: every watch stream is a connection, and
/// the usual soft limit of 1,024 would refuse runtimes long before memory or
/// CPU run short. The hard limit stays the operator's to set.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
}

/// A socket bound to `address`, not yet listening: connections to it are
/// refused until `listen` (with the configured backlog).
fn bind(address: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Like every server: a restart may bind while old connections linger in
    // TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    Ok(socket)
}
