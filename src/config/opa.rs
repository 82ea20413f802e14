//! The namespaces served to OPA (docs/src/guides/opa.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::Namespace;
use crate::domain::impact::{DEFAULT_REPLAYED, ImpactGate};
use crate::domain::rego::BundleRoots;

/// Namespaces served to Open Policy Agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpaSettings {
    /// The namespaces served to OPA, by name, each with the bundle roots
    /// its bundle owns (`/`-separated paths of OPA's data document, as its
    /// manifest writes them: `roots = ["payments"]`). Their policies are
    /// Rego policies: `modules` (file path to Rego source) and `data`,
    /// checked with an embedded Rego engine at draft and publish. No root
    /// may lie inside another, in one namespace or across namespaces, as
    /// one OPA may load several. A namespace's `impact_gate =
    /// { max_changed_percent = 1.0, decisions = 1000 }` makes Publish,
    /// Activate and StartRollout of its policies replay its newest
    /// `decisions` first, and refuses them when more than
    /// `max_changed_percent` of a path's would change (unknown ones
    /// count as changed). Unset: none.
    pub namespaces: BTreeMap<String, OpaNamespace>,
}

/// One namespace served to OPA.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpaNamespace {
    /// The bundle roots.
    pub roots: Vec<String>,
    /// Publish, Activate and StartRollout of the namespace's policies
    /// replay its newest recorded decisions first and are refused when
    /// more than this share of a path's decisions would change. Unset: no
    /// gate.
    pub impact_gate: Option<ImpactGateSettings>,
}

/// The bound of an impact gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpactGateSettings {
    /// The most a path's decisions may change, in percent (`1.0`: 1 %);
    /// decisions the engine cannot evaluate count as changed.
    pub max_changed_percent: f64,
    /// How many of the newest decisions are replayed (1 to 10000).
    #[serde(default = "default_gate_decisions")]
    pub decisions: u32,
}

fn default_gate_decisions() -> u32 {
    DEFAULT_REPLAYED
}

impl OpaSettings {
    /// The namespaces and their roots, each valid and none overlapping
    /// another's.
    pub fn bundle_roots(&self) -> anyhow::Result<BTreeMap<Namespace, BundleRoots>> {
        let mut parsed: BTreeMap<Namespace, BundleRoots> = BTreeMap::new();
        for (name, served) in &self.namespaces {
            let field = format!("opa.namespaces.{name}");
            let namespace = Namespace::parse(&field, name).map_err(anyhow::Error::msg)?;
            let roots = BundleRoots::parse(&format!("{field}.roots"), &served.roots)
                .map_err(anyhow::Error::msg)?;
            for (other, theirs) in &parsed {
                if let Some((mine, their)) = roots.overlapping(theirs) {
                    anyhow::bail!(
                        "{field}.roots: {mine} overlaps {their} of opa.namespaces.{other}: an OPA \
                         that loads both bundles would take neither"
                    );
                }
            }
            parsed.insert(namespace, roots);
        }
        Ok(parsed)
    }

    /// The namespaces with an impact gate, and their gates.
    pub fn impact_gates(&self) -> anyhow::Result<BTreeMap<Namespace, ImpactGate>> {
        self.namespaces
            .iter()
            .filter_map(|(name, served)| Some((name, served.impact_gate.as_ref()?)))
            .map(|(name, gate)| {
                let field = format!("opa.namespaces.{name}.impact_gate");
                let namespace = Namespace::parse(&field, name).map_err(anyhow::Error::msg)?;
                let gate = ImpactGate::new(&field, gate.max_changed_percent, gate.decisions)
                    .map_err(anyhow::Error::msg)?;
                Ok((namespace, gate))
            })
            .collect()
    }
}
