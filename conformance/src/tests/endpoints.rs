//! Several addresses (capability `endpoints`): two replicas of one server
//! over one PostgreSQL database, each behind a proxy of its own, so that
//! the kit sees which one the runtime uses. The runtime moves to the other
//! when its replica is killed, missing nothing, and moves back once it
//! returns.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::json;

use super::{applied_once_in_order, holds, test};
use crate::{
    harness::{Context, NAMESPACE, Test},
    protocol::{RuntimeEvent, RuntimeView},
    proxy::FaultProxy,
    server::Server,
    service::Runtime,
};

pub fn tests() -> Vec<Test> {
    vec![
        test!(
            "endpoints.moves-when-its-replica-dies",
            ["E1"],
            [Endpoints],
            replicas,
            moves_when_its_replica_dies
        ),
        test!(
            "endpoints.drifts-back-when-its-replica-returns",
            ["E1", "E2"],
            [Endpoints],
            replicas,
            drifts_back_when_its_replica_returns
        ),
    ]
}

/// The rebalance interval the kit gives its runtimes: away from the
/// address it prefers, a runtime tries it again within this.
const REBALANCE: Duration = Duration::from_millis(1000);

/// Two replicas, each behind its proxy, and a runtime following both.
struct Replicas {
    servers: [Server; 2],
    proxies: [FaultProxy; 2],
    runtime: Runtime,
}

impl Replicas {
    /// Starts the second replica, publishes version 1 of `p` and starts
    /// runtime 1 with both addresses; waits until it holds revision 1.
    async fn start(context: Context) -> anyhow::Result<(Self, RuntimeView)> {
        let (replica, replica_proxy) = context.replica(1).await?;
        let mut settings = context.settings(1);
        settings.endpoints = vec![context.proxy.endpoint(), replica_proxy.endpoint()];
        settings.rebalance_interval_ms = Some(REBALANCE.as_millis() as u64);
        let replicas = Replicas {
            servers: [context.server, replica],
            proxies: [context.proxy, replica_proxy],
            runtime: context.service.start(&settings).await?,
        };
        release(&replicas.servers[0], "p", 1).await?;
        let view = replicas.runtime.until_revision(1).await?;
        Ok((replicas, view))
    }

    /// The index of the replica behind `endpoint`.
    fn behind(&self, endpoint: &str) -> anyhow::Result<usize> {
        self.proxies
            .iter()
            .position(|proxy| proxy.endpoint() == endpoint)
            .with_context(|| {
                format!("the runtime connected to {endpoint}, which the kit never gave")
            })
    }
}

/// Publishes version `n` of `name` through `server`, active; its revision.
async fn release(server: &Server, name: &str, n: u32) -> anyhow::Result<u64> {
    server
        .release(NAMESPACE, name, json!({ "name": name, "n": n }))
        .await
}

/// The addresses of the streams the runtime opened, in order.
fn connections(view: &RuntimeView) -> Vec<&str> {
    view.events
        .iter()
        .filter_map(|event| match event {
            RuntimeEvent::Connected { endpoint } => Some(endpoint.as_str()),
            _ => None,
        })
        .collect()
}

/// The address of the stream opened last.
fn on(view: &RuntimeView) -> Option<&str> {
    connections(view).last().copied()
}

/// The replica a runtime is on killed with SIGKILL: what changes
/// meanwhile through the other arrives through the other, once, in order.
async fn moves_when_its_replica_dies(context: Context) -> anyhow::Result<()> {
    let (mut replicas, view) = Replicas::start(context).await?;
    let first = on(&view).context("the runtime holds revision 1 and said no connected")?;
    let dead = replicas.behind(first)?;
    let alive = 1 - dead;
    let other = replicas.proxies[alive].endpoint();
    replicas.servers[dead].kill().await?;
    release(&replicas.servers[alive], "p", 2).await?;
    let last = release(&replicas.servers[alive], "q", 1).await?;
    let view = replicas
        .runtime
        .until(
            "the changes made through the other replica, through it",
            Duration::from_secs(20),
            |view| view.revision() >= last && on(view) == Some(other.as_str()),
        )
        .await?;
    holds(&view, &[("p", 2), ("q", 1)])?;
    applied_once_in_order(&view)
}

/// After the move, the replica the runtime preferred comes back: the
/// runtime opens a stream to it again within its rebalance interval (and
/// the time to connect), and misses nothing across either move.
async fn drifts_back_when_its_replica_returns(context: Context) -> anyhow::Result<()> {
    let (mut replicas, view) = Replicas::start(context).await?;
    let preferred = on(&view)
        .context("the runtime holds revision 1 and said no connected")?
        .to_owned();
    let dead = replicas.behind(&preferred)?;
    let alive = 1 - dead;
    let other = replicas.proxies[alive].endpoint();
    replicas.servers[dead].kill().await?;
    let moved = release(&replicas.servers[alive], "p", 2).await?;
    replicas
        .runtime
        .until(
            "the change made through the other replica, through it",
            Duration::from_secs(20),
            |view| view.revision() >= moved && on(view) == Some(other.as_str()),
        )
        .await?;
    replicas.servers[dead].restart().await?;
    let returned = tokio::time::Instant::now();
    release(&replicas.servers[alive], "p", 3).await?;
    let within = REBALANCE + Duration::from_secs(5);
    let view = replicas
        .runtime
        .until("back on the replica it preferred", within, |view| {
            on(view) == Some(preferred.as_str()) && connections(view).len() >= 3
        })
        .await?;
    let took = returned.elapsed();
    ensure!(
        connections(&view).ends_with(&[other.as_str(), preferred.as_str()]),
        "the runtime's streams opened to {:?}",
        connections(&view)
    );
    let last = release(&replicas.servers[dead], "q", 1).await?;
    let view = replicas.runtime.until_revision(last).await?;
    holds(&view, &[("p", 3), ("q", 1)])?;
    ensure!(
        on(&view) == Some(preferred.as_str()),
        "the runtime left the replica it preferred again: {:?}",
        connections(&view)
    );
    applied_once_in_order(&view).with_context(|| format!("back after {took:?}"))
}
