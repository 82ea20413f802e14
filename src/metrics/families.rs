//! The families a registry holds, as registered: what the metrics reference
//! lists, and what every scrape declares. prometheus-client writes no
//! `# HELP` or `# TYPE` for a family without a series yet (one with labels
//! until its first observation, such as a webhook subscription's
//! deliveries), so an alert or a dashboard on it would see no series at
//! all on a fresh process. Every family of the server and of the agent is
//! registered through a [`Registrar`], which remembers it and registers it
//! [`Declared`]: its `# HELP` and `# TYPE` lines are in every scrape, as the
//! Prometheus client libraries of other languages write a labelled family
//! with no child yet. The series whose labels are known from the start (a
//! configured witness's outcomes, the ports) are made at zero where they are
//! known.

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder},
    metrics::MetricType,
    registry::{Metric, Registry},
};

/// One registered family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDescription {
    /// Its full name, prefix included, as OpenMetrics declares it (a
    /// counter's without `_total`).
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// Its help text, as the exposition writes it (prometheus-client ends
    /// it with a full stop).
    pub help: String,
}

/// Registers families in a prefixed registry and remembers each.
pub struct Registrar<'r> {
    registry: &'r mut Registry,
    prefix: &'static str,
    families: Vec<FamilyDescription>,
}

impl<'r> Registrar<'r> {
    /// Registers into `registry`, whose names `prefix` starts.
    pub fn new(registry: &'r mut Registry, prefix: &'static str) -> Self {
        Registrar {
            registry,
            prefix,
            families: Vec::new(),
        }
    }

    /// Registers `metric` as `name` with `help`.
    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.families.push(FamilyDescription {
            name: format!("{}_{name}", self.prefix),
            kind: metric.metric_type().as_str().to_owned(),
            help: format!("{help}."),
        });
        self.registry.register(name, help, Declared(metric));
    }

    /// The families registered, in order.
    pub fn families(self) -> Vec<FamilyDescription> {
        self.families
    }
}

/// A family declared in every scrape, with a series or not yet: its
/// samples are the family's own, but it never counts as empty, which is
/// what makes prometheus-client leave out the descriptor.
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::{counter::Counter, family::Family};

    use super::*;

    #[test]
    fn a_family_without_a_series_is_remembered_and_declared_in_a_scrape() {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("policyhub");
        let mut registrar = Registrar::new(registry, "policyhub");
        let deliveries = Family::<Vec<(&'static str, String)>, Counter>::default();
        registrar.register("webhook_deliveries", "Deliveries", deliveries);
        let families = registrar.families();
        assert_eq!(
            families,
            [FamilyDescription {
                name: "policyhub_webhook_deliveries".into(),
                kind: "counter".into(),
                help: "Deliveries.".into(),
            }]
        );
        let scraped = super::super::encode_registry(&root);
        assert_eq!(
            scraped,
            "# HELP policyhub_webhook_deliveries Deliveries.\n\
             # TYPE policyhub_webhook_deliveries counter\n\
             # EOF\n"
        );
    }
}
