//! Building and running the server: bind the listener (port 0 works), open
//! and migrate the database, load the keys and the active index, serve.

use std::{future::Future, net::SocketAddr};

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use tower::util::BoxCloneSyncService;

use crate::config::{Settings, TlsSettings};
use crate::connections::{Listener, TrackLayer};
use crate::fleet::{Fleet, Writers};
use crate::grpc::{
    BundleApi, BundleRoute, PolicyApi, SignInApi,
    auth::Authentication,
    message_limit::MessageLimitLayer,
    proto::{
        self, bundle_service_server::BundleServiceServer,
        policy_service_server::PolicyServiceServer, sign_in_service_server::SignInServiceServer,
    },
    quotas::Quotas,
};
use crate::http::Gateway;
use crate::hub::PolicyHub;
use crate::{signing, storage};

mod health;
mod identity;
mod notifications;
mod tasks;

pub use health::LIVENESS_SERVICE;
use health::{supervisor, watch_database};
pub use identity::ISSUERS_SERVICE;
use identity::guard;
use tasks::{OnEnd, Stop};

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
        let hub = hub.with_opa_namespaces(settings.opa.bundle_roots()?);
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

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut tasks = supervisor(&health);
        let (failed, repository) = (tasks.failed(), self.repository.clone());
        let interval = self.settings.health_check_interval();
        let reporter = health.clone();
        // Not started again: this task is the health report, so it ending
        // leaves the report stale; the supervisor reports NOT_SERVING.
        tasks.spawn("health", OnEnd::NotServing, Stop::Abort, move |_| {
            watch_database(
                reporter.clone(),
                repository.clone(),
                interval,
                failed.clone(),
            )
        });
        // These start again when they end: each round starts afresh from
        // state kept elsewhere (the hub, the store, the fleet view), and
        // the replica serves correctly meanwhile.
        let hub = self.hub.clone();
        tasks.spawn("keys-reload", OnEnd::Restart, Stop::Abort, move |_| {
            reload_keys_on_sighup(hub.clone())
        });
        identity::identity_tasks(&self.authentication, &self.settings, &health, &mut tasks);
        let (hub, interval) = (self.hub.clone(), self.settings.audit.checkpoint_interval());
        tasks.spawn("checkpoints", OnEnd::Restart, Stop::Abort, move |_| {
            refresh_checkpoints(hub.clone(), interval)
        });
        if let Some(retention) = self.settings.idempotency_retention {
            let repository = self.repository.clone();
            tasks.spawn(
                "idempotency-retention",
                OnEnd::Restart,
                Stop::Abort,
                move |_| forget_idempotency_records(repository.clone(), retention),
            );
        }
        if self.settings.is_sqlite() {
            let repository = self.repository.clone();
            tasks.spawn("log-checkpoints", OnEnd::Restart, Stop::Abort, move |_| {
                repository.clone().checkpoint_log_forever()
            });
        }
        // Not started again: the port's listener went with it, and a
        // replica whose port is gone does not serve as configured.
        if let Some(tcp) = self.metrics_listener {
            if let Ok(address) = tcp.local_addr() {
                tracing::info!(%address, "serving metrics");
            }
            let mut listener = Some(listener(tcp, "metrics", &self.settings.connections));
            let index = self.hub.index().clone();
            tasks.spawn("metrics", OnEnd::NotServing, Stop::Drain, move |stop| {
                let listener = listener.take().expect("started once");
                crate::metrics::serve(listener, index.clone(), stop)
            });
        }
        // Not started again: a replica that stopped following the others
        // serves stale revisions; out of rotation until it is restarted.
        if !self.settings.is_sqlite() {
            let (hub, url) = (self.hub.clone(), self.settings.database_url());
            let watch = self.settings.watch.clone();
            tasks.spawn("replication", OnEnd::NotServing, Stop::Abort, move |_| {
                crate::replication::follow(hub.clone(), url.clone(), watch.clone())
            });
        }
        // Both reflection versions: grpcurl 1.8 speaks only v1alpha.
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let max_message = self.settings.limits.max_message_bytes();
        let quotas = Quotas::new(self.settings.quotas.clone());
        let subscription_service =
            notifications::notifications(&self.hub, &self.settings, quotas.clone(), &mut tasks)?;
        let fleet = self.fleet;
        // A flush waits for a fan-out under way, at most an interval.
        let flush_interval = self.settings.runtimes.flush_interval();
        let (index, flushed) = (self.hub.index().clone(), fleet.clone());
        tasks.spawn("fleet-flush", OnEnd::Restart, Stop::Abort, move |_| {
            let index = index.clone();
            flushed.clone().run(flush_interval, move || {
                let index = index.clone();
                async move { index.fan_out_ended(flush_interval).await }
            })
        });
        // The witnessing and the controller start again too: their state
        // is rows, and their lock went with the run that ended.
        if !self.settings.audit.witnesses.is_empty() {
            let (hub, audit) = (self.hub.clone(), self.settings.audit.clone());
            tasks.spawn("witnessing", OnEnd::Restart, Stop::Abort, move |_| {
                let instruments = crate::metrics::global().witness_instruments();
                crate::witnessing::run(hub.clone(), audit.clone(), instruments)
            });
        }
        let (hub, tick) = (self.hub.clone(), self.settings.rollouts.tick_interval());
        tasks.spawn("controller", OnEnd::Restart, Stop::Abort, move |_| {
            crate::controller::run(hub.clone(), tick, controller_instruments())
        });
        let policy_service = PolicyServiceServer::new(PolicyApi::new(
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
        );
        let bundle_service = BundleRoute::new(
            BundleServiceServer::new(bundle_api.clone()).max_decoding_message_size(max_message + 1),
            bundle_api,
            max_message + 1,
        );
        let providers = match &self.authentication {
            Authentication::Tokens(authenticator) => authenticator.sign_in(),
            Authentication::Disabled => Vec::new(),
        };
        // Answered without a token, as a login page is.
        let sign_in_service = SignInServiceServer::new(SignInApi::new(&providers));
        tracing::info!(address = %self.address, "serving grpc");
        let grpc_listener = listener(self.listener, "grpc", &self.settings.connections);
        let authentication = self.authentication.clone();
        // The layer refuses an oversized message from its length prefix with
        // RESOURCE_EXHAUSTED; tonic's own limit, just above, is a backstop.
        let mut server = Server::builder()
            .trace_fn(crate::telemetry::rpc_span)
            .layer(TrackLayer)
            .layer(crate::metrics::RpcMetricsLayer)
            .layer(MessageLimitLayer { limit: max_message });
        if let Some(tls) = &self.settings.tls {
            server = server
                .tls_config(tls_config(tls)?)
                .context("configuring tls")?;
        }
        // The HTTP/JSON port hands every request to the same services, behind
        // the same authentication, metrics and message limit.
        let connections = self.settings.connections.clone();
        if let Some(tcp) = self.http_listener {
            let routes = Routes::new(guard(policy_service.clone(), &authentication))
                .add_service(guard(bundle_service.clone(), &authentication))
                .add_service(guard(subscription_service.clone(), &authentication))
                .add_service(sign_in_service.clone());
            let grpc = tower::ServiceBuilder::new()
                .layer(crate::metrics::RpcMetricsLayer)
                .layer(MessageLimitLayer { limit: max_message })
                .service(routes);
            let gateway = Gateway::new(
                BoxCloneSyncService::new(grpc),
                max_message,
                providers.iter().map(|provider| provider.issuer.as_str()),
            );
            if let Ok(address) = tcp.local_addr() {
                tracing::info!(%address, "serving http");
            }
            // Not started again, as the metrics port is not.
            let mut http_listener = Some(listener(tcp, "http", &connections));
            tasks.spawn("http", OnEnd::NotServing, Stop::Drain, move |stop| {
                let listener = http_listener.take().expect("started once");
                gateway.clone().serve(listener, stop)
            });
        }
        // Health (for probes) and reflection (for grpcurl) answer without a
        // token unless auth.public_reflection is off; they reveal no policy.
        let router = server
            .add_service(health_service)
            .add_service(sign_in_service);
        let router = if self.settings.auth.public_reflection {
            router
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
        } else {
            router
                .add_service(guard(reflection_v1, &authentication))
                .add_service(guard(reflection_v1alpha, &authentication))
        };
        let stopping = CancellationToken::new();
        let grpc = router
            .add_service(guard(policy_service, &authentication))
            .add_service(guard(bundle_service, &authentication))
            .add_service(guard(subscription_service, &authentication))
            .serve_with_incoming_shutdown(
                grpc_listener.into_incoming(),
                stopping.clone().cancelled_owned(),
            );
        // tonic waits for every call under way, however long: the grace
        // bounds it as it bounds the other ports.
        let grace = self.settings.notifications.timeout + SHUTDOWN_GRACE;
        let grpc = async {
            let cut = async {
                stopping.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                served = grpc => served,
                () = cut => {
                    tracing::warn!(?grace, "grpc calls still under way after the grace period: cutting them");
                    Ok(())
                }
            }
        };
        let mut grpc = std::pin::pin!(grpc);
        let ended_first = tokio::select! {
            served = &mut grpc => Some(served),
            () = shutdown => None,
        };
        // Watch streams never end by themselves: end them first, with
        // UNAVAILABLE, so the drain does not wait on them; the HTTP port's
        // long polls and event streams end with them. Then every port
        // stops accepting and drains the calls under way while the
        // background tasks stop (webhook deliveries under way finish), all
        // within the one grace period.
        self.hub.index().close();
        stopping.cancel();
        let served = match ended_first {
            Some(served) => {
                tasks.shutdown(grace).await;
                served
            }
            None => tokio::join!(grpc, tasks.shutdown(grace)).0,
        };
        // The fleet view records the runtimes of the closed streams as
        // disconnected.
        if let Err(error) = fleet.flush().await {
            tracing::warn!(%error, "cannot persist the fleet view at shutdown");
        }
        if let Err(error) = self.repository.empty_log().await {
            tracing::warn!(%error, "cannot empty the write-ahead log at shutdown");
        }
        served.context("serving grpc")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Raises the soft limit on open files to the hard limit, as Go programs
/// (etcd among them) do at start: every watch stream is a connection, and
/// the usual soft limit of 1,024 would refuse runtimes long before memory or
/// CPU run short. The hard limit stays the operator's to set.
/// The controller's metrics, each firing outcome counted under its name.
fn controller_instruments() -> crate::controller::Instruments {
    use crate::domain::schedule::FiringOutcome;
    let metrics = crate::metrics::global();
    crate::controller::Instruments {
        applied: metrics.schedule_firings(FiringOutcome::Applied.as_str()),
        already_active: metrics.schedule_firings(FiringOutcome::AlreadyActive.as_str()),
        refused: metrics.schedule_firings(FiringOutcome::Refused.as_str()),
        paused_by_refusal: metrics.schedules_paused_by_refusal(),
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

/// Forgets idempotency records older than `retention`, checking as often as
/// a tenth of it (at least every second, at most every minute).
async fn forget_idempotency_records(
    repository: storage::Repository,
    retention: std::time::Duration,
) {
    let period = (retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        let Some(cutoff) = chrono::TimeDelta::from_std(retention)
            .ok()
            .and_then(|retention| chrono::Utc::now().checked_sub_signed(retention))
        else {
            // A retention longer than the calendar: nothing is ever old enough.
            return std::future::pending().await;
        };
        match repository.forget_idempotency_records(cutoff).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::debug!(forgotten, "forgot old idempotency records"),
            Err(error) => tracing::warn!(%error, "cannot forget old idempotency records"),
        }
    }
}

/// Server reflection over every service served.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Re-reads the signing keys on every SIGHUP: with `signing.key_files`, put
/// the new key first in the files, then `kill -HUP`; the old key keeps
/// verifying.
async fn reload_keys_on_sighup(hub: PolicyHub) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for sighup: signing keys reload only at start");
            return std::future::pending().await;
        }
    };
    while hangups.recv().await.is_some() {
        let context = crate::domain::RequestContext {
            actor: "system:sighup".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        match hub.reload_keys(&context).await {
            Ok((previous, current)) => tracing::info!(%previous, %current, "signing keys reloaded"),
            Err(error) => {
                tracing::error!(%error, "signing keys not reloaded; the previous ones stay in use")
            }
        }
    }
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

/// The least time a checkpoint refresh is given, however short the
/// interval: a refresh checks every event since the last checkpoint, and
/// one abandoned begins again from the start, so a backlog that takes
/// longer than a short interval would never be signed.
const REFRESH_TIMEOUT_FLOOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Signs a checkpoint whenever the newest is older than half of
/// `interval`, checking twice per interval; a database that does not answer
/// within the interval (at least [`REFRESH_TIMEOUT_FLOOR`]) leaves the
/// served checkpoint to age.
async fn refresh_checkpoints(hub: PolicyHub, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let refresh = hub.refresh_checkpoint(interval / 2);
        match tokio::time::timeout(interval.max(REFRESH_TIMEOUT_FLOOR), refresh).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot sign a checkpoint"),
            Err(_) => tracing::warn!("the database did not answer for a checkpoint in time"),
        }
    }
}

/// How long, beyond `notifications.timeout` (a webhook attempt's
/// longest), a stopping server gives every port to answer the calls under
/// way and the background tasks to finish theirs (a delivery recorded), at
/// once; what is left then is cut.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
