//! The agent's Prometheus metrics, served on its own port as the server's
//! are (the same exposition formats, the standard `process_*` metrics):
//!
//! - `policyhub_agent_revision{namespace}`: the revision in force;
//! - `policyhub_agent_state_age_seconds{namespace}`: since it was verified
//!   (by an earlier run too, for a state read back from the cache);
//! - `policyhub_agent_state_from_cache{namespace}`: 1 while it is the
//!   cache's, not yet confirmed by the server;
//! - `policyhub_agent_connected{namespace}`: 1 while a stream is open;
//! - `policyhub_agent_reconnects_total{namespace}`: streams opened again
//!   after one was lost (not the failed attempts between);
//! - `policyhub_agent_rejections_total{namespace}`: states refused or taken
//!   back;
//! - `policyhub_agent_refusals_total{namespace}`: the server's refusals of
//!   the agent's credentials (the state in force stays meanwhile);
//! - `policyhub_agent_history_refusals_total{namespace}`: histories the
//!   server showed that do not extend the log's tree verified last (wound
//!   back or forked; the state in force stays meanwhile);
//! - `policyhub_agent_history_restores_total{namespace}`: restored
//!   histories taken because the server proved that its operator declared
//!   the restore (raise it: a restore loses history);
//! - `policyhub_agent_accept_errors_total{port}` and
//!   `policyhub_agent_connections_refused_total{port}`: failed accepts and
//!   connections over `--api-max-connections` on the `api` and `metrics`
//!   ports, as the server counts its own.

use std::sync::{Arc, atomic::Ordering};

use policyhub_runtime::Source;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::followed::FollowedNamespaces;
use crate::metrics::{FamilyDescription, PortLabel, Registrar};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

/// The accept loops' counts, by port.
#[derive(Clone, Default)]
pub struct PortCounts {
    accept_errors: Family<PortLabel, Counter>,
    refused: Family<PortLabel, Counter>,
}

impl PortCounts {
    /// What the accept loop of `port` counts.
    pub fn of(&self, port: &str) -> crate::connections::Instruments {
        crate::metrics::connection_instruments(&self.accept_errors, &self.refused, port)
    }
}

/// The registry, with the gauges read from the held states at each scrape.
pub struct Exposition {
    namespaces: Arc<FollowedNamespaces>,
    registry: Registry,
    /// Every family `registry` holds, with a series or not yet.
    families: Vec<FamilyDescription>,
    revision: Family<NamespaceLabel, Gauge>,
    age: Family<NamespaceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    from_cache: Family<NamespaceLabel, Gauge>,
    connected: Family<NamespaceLabel, Gauge>,
    reconnects: Family<NamespaceLabel, Counter>,
    rejections: Family<NamespaceLabel, Counter>,
    refusals: Family<NamespaceLabel, Counter>,
    history_refusals: Family<NamespaceLabel, Counter>,
    history_restores: Family<NamespaceLabel, Counter>,
}

impl Exposition {
    pub fn new(namespaces: Arc<FollowedNamespaces>, ports: &PortCounts) -> Self {
        let mut root = Registry::default();
        root.register_collector(crate::metrics::process_collector());
        let mut registry = Registrar::new(
            root.sub_registry_with_prefix("policyhub_agent"),
            "policyhub_agent",
        );
        let exposition = Exposition {
            namespaces,
            registry: Registry::default(),
            families: Vec::new(),
            revision: Family::default(),
            age: Family::default(),
            from_cache: Family::default(),
            connected: Family::default(),
            reconnects: Family::default(),
            rejections: Family::default(),
            refusals: Family::default(),
            history_refusals: Family::default(),
            history_restores: Family::default(),
        };
        registry.register(
            "revision",
            "The revision in force",
            exposition.revision.clone(),
        );
        registry.register(
            "state_age_seconds",
            "Seconds since the state in force was verified (by an earlier run, for a state read back from the cache)",
            exposition.age.clone(),
        );
        registry.register(
            "state_from_cache",
            "1 while the state in force is the cache's, not yet confirmed by the server",
            exposition.from_cache.clone(),
        );
        registry.register(
            "connected",
            "1 while a watch stream is open",
            exposition.connected.clone(),
        );
        registry.register(
            "reconnects",
            "Watch streams opened again after one was lost",
            exposition.reconnects.clone(),
        );
        registry.register(
            "rejections",
            "States refused or taken back (a failed reload, a bundle that does not verify, the application's rejection)",
            exposition.rejections.clone(),
        );
        registry.register(
            "refusals",
            "Refusals of the agent's credentials by the server; the state in force stays, and the agent retries",
            exposition.refusals.clone(),
        );
        registry.register(
            "history_refusals",
            "Histories the server showed that do not extend the log's tree verified last (wound back or forked); the state in force stays",
            exposition.history_refusals.clone(),
        );
        registry.register(
            "history_restores",
            "Restored histories taken because the server proved that its operator declared the restore (a RESTORED event)",
            exposition.history_restores.clone(),
        );
        registry.register(
            "accept_errors",
            "Accepts that failed, by port; each is followed by a pause of up to a second",
            ports.accept_errors.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because their port held --api-max-connections, by port",
            ports.refused.clone(),
        );
        let families = registry.families();
        Exposition {
            registry: root,
            families,
            ..exposition
        }
    }

    /// Every family of the agent's registry: what the metrics reference
    /// lists.
    pub fn families(&self) -> &[FamilyDescription] {
        &self.families
    }

    /// The OpenMetrics text now.
    pub fn render(&self) -> String {
        for followed in self.namespaces.all() {
            let label = NamespaceLabel {
                namespace: followed.namespace.clone(),
            };
            if let Some(in_force) = followed.current() {
                self.revision
                    .get_or_create(&label)
                    .set(in_force.state.revision as i64);
                self.age
                    .get_or_create(&label)
                    .set(in_force.age().as_secs_f64());
                let cached = in_force.state.source == Source::Cache;
                self.from_cache.get_or_create(&label).set(cached.into());
            }
            self.connected
                .get_or_create(&label)
                .set(followed.connected().into());
            let count = |counter: &Counter, total: u64| {
                counter.inc_by(total.saturating_sub(counter.get()));
            };
            count(
                &self.reconnects.get_or_create(&label),
                followed.reconnects.load(Ordering::Relaxed),
            );
            count(
                &self.rejections.get_or_create(&label),
                followed.rejections.load(Ordering::Relaxed),
            );
            count(
                &self.refusals.get_or_create(&label),
                followed.refusals.load(Ordering::Relaxed),
            );
            count(
                &self.history_refusals.get_or_create(&label),
                followed.history_refusals.load(Ordering::Relaxed),
            );
            count(
                &self.history_restores.get_or_create(&label),
                followed.history_restores.load(Ordering::Relaxed),
            );
        }
        crate::metrics::encode_registry(&self.registry)
    }
}
