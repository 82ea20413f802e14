//! `policyhub agent`: one small process per host or pod that follows
//! namespaces through the runtime library (verification, resume, backoff,
//! keepalive, the last-known-good cache, reports) and hands any local
//! process plain, already-verified policy: over a localhost HTTP API
//! (`api`), which also speaks OFREP to OpenFeature SDKs (`ofrep`), as files swapped in whole per revision (`files`), and to
//! Prometheus (`metrics`). It joins the fleet view and rollout cohorts as
//! the runtime it names.
//!
//! ```text
//!   server ──WatchActive──> follow (one Subscription per namespace)
//!                             │ each whole, verified state:
//!                             │   files: render, swap, run the command ── Ok / Err ──> APPLIED / REJECTED
//!                             v
//!                           followed (the state in force per namespace) ──> api, metrics
//!   application ── POST state:reject ──> Revoker ──> REJECTED, the state before is back
//! ```

mod api;
mod files;
mod follow;
mod followed;
mod metrics;
mod ofrep;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use policyhub_runtime::Subscription;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use self::files::Command;
use self::followed::FollowedNamespaces;
use crate::connections::Listener;

/// Every metric family the agent registers, with a series or not yet: what
/// the metrics reference lists.
pub fn metric_families() -> Vec<crate::metrics::FamilyDescription> {
    let exposition = metrics::Exposition::new(Arc::default(), &metrics::PortCounts::default());
    exposition.families().to_vec()
}

/// Where the API is served, and to whom.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The listen address; loopback unless TLS and a token are given.
    pub listen: SocketAddr,
    /// Callers must send `Authorization: Bearer <this>` (all but `/healthz`).
    pub token: Option<String>,
    /// Certificate chain and private key (PEM) to serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bounds on the connections of the API and metrics ports.
    pub connections: crate::connections::Limits,
}

/// What one agent does.
pub struct Settings {
    /// One subscription per namespace followed, already configured (server,
    /// TLS, token, runtime identity, cache).
    pub subscriptions: Vec<Subscription>,
    /// The namespaces, in the order of `subscriptions`.
    pub namespaces: Vec<String>,
    /// The localhost API.
    pub api: ApiSettings,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to render each namespace's policies as files, and what to run
    /// after each swap.
    pub render: Option<Render>,
}

/// The policies as files.
#[derive(Debug, Clone)]
pub struct Render {
    /// Where each namespace's link and revision directories are.
    pub dir: PathBuf,
    /// What to run after each swap.
    pub command: Option<Command>,
    /// How long a revision's directory is kept once the link moved off it.
    pub grace_period: Duration,
}

/// How long a stopping agent gives the requests under way and a state
/// being put in force to finish, beyond the command's timeout when a
/// command runs after each swap; what is left then is cut. Long polls and
/// event streams end at once.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running agent: its bound addresses, and the tasks that serve them.
pub struct Agent {
    api_address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    /// The followers and the ports; none ends before `stop` but a
    /// follower whose subscription is refused for good.
    tasks: JoinSet<()>,
    /// Cancelled to stop: each task finishes what it has under way.
    stop: CancellationToken,
    /// How long the tasks are given once `stop` is cancelled.
    grace: Duration,
}

impl Agent {
    /// Binds the ports and starts following.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        refuse_open_api(&settings.api)?;
        let tls = settings
            .api
            .tls
            .as_ref()
            .map(|(cert, key)| api::tls_acceptor(cert, key))
            .transpose()?;
        let listener = TcpListener::bind(settings.api.listen)
            .await
            .with_context(|| format!("binding the agent API {}", settings.api.listen))?;
        let api_address = listener.local_addr()?;
        let metrics_listener = match settings.metrics_listen {
            Some(address) => Some(crate::metrics::bind(address).await?),
            None => None,
        };
        let metrics_address = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let stop = CancellationToken::new();
        let mut namespaces = FollowedNamespaces::default();
        let mut followers = Vec::new();
        for (namespace, subscription) in settings.namespaces.iter().zip(settings.subscriptions) {
            let (subscription, revoker) = subscription.revocable();
            let followed = namespaces.add(namespace, revoker);
            let files = settings
                .render
                .as_ref()
                .map(|render| {
                    files::Files::new(
                        &render.dir,
                        namespace,
                        render.command.clone(),
                        render.grace_period,
                    )
                })
                .transpose()?;
            followers.push(follow::follow(subscription, followed, files, stop.clone()));
        }
        let namespaces = Arc::new(namespaces);
        let mut tasks = JoinSet::new();
        for follower in followers {
            tasks.spawn(follower);
        }
        let ports = metrics::PortCounts::default();
        let limits = &settings.api.connections;
        let api = api::Api::new(namespaces.clone(), settings.api.token.clone(), stop.clone());
        let listener = Listener::new(listener, "api", limits.clone(), ports.of("api"));
        tasks.spawn(api.serve(listener, tls));
        if let Some(tcp) = metrics_listener {
            let render = Arc::new(metrics::Exposition::new(namespaces.clone(), &ports));
            let listener = Listener::new(tcp, "metrics", limits.clone(), ports.of("metrics"));
            tasks.spawn(crate::metrics::serve_with(
                listener,
                Arc::new(move || render.render()),
                stop.clone(),
            ));
        }
        let command_timeout = settings
            .render
            .as_ref()
            .and_then(|render| render.command.as_ref())
            .map_or(Duration::ZERO, |command| command.timeout);
        tracing::info!(
            api = %api_address,
            metrics = %metrics_address.map_or_else(|| "off".to_string(), |address| address.to_string()),
            namespaces = %settings.namespaces.join(","),
            "agent started"
        );
        Ok(Agent {
            api_address,
            metrics_address,
            tasks,
            stop,
            grace: command_timeout + SHUTDOWN_GRACE,
        })
    }

    /// The API's bound address.
    pub fn api_address(&self) -> SocketAddr {
        self.api_address
    }

    /// The metrics port's bound address.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Serves until `shutdown` completes or a subscription is refused for
    /// good (an error then). Then stops: the ports stop accepting and
    /// answer the requests under way, and each follower finishes putting a
    /// state in force if it is, within the grace period; what is left then
    /// is cut.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let result = tokio::select! {
            () = shutdown => Ok(()),
            Some(ended) = self.tasks.join_next() => match ended {
                Ok(()) => Err(anyhow::anyhow!("a subscription ended for good; the log says why")),
                Err(error) => Err(error.into()),
            },
        };
        self.stop.cancel();
        let drained = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, drained).await.is_err() {
            tracing::warn!(
                tasks = self.tasks.len(),
                grace = ?self.grace,
                "requests or a reload still under way after the grace period: cutting them"
            );
        }
        self.tasks.shutdown().await;
        result
    }
}

/// Refuses an API other machines can reach unless it is served over TLS
/// and asks for a token, as `serve --insecure` is refused off loopback.
fn refuse_open_api(api: &ApiSettings) -> anyhow::Result<()> {
    if api.listen.ip().is_loopback() || (api.tls.is_some() && api.token.is_some()) {
        return Ok(());
    }
    bail!(
        "the agent API on {} would be reachable from other machines: listen on a loopback \
         address, or give it --api-tls-cert-file, --api-tls-key-file and --api-token-file",
        api.listen
    )
}
