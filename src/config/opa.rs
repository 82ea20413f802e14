//! The namespaces served to OPA (docs/src/guides/opa.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::Namespace;
use crate::domain::rego::BundleRoots;

/// Namespaces served to Open Policy Agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpaSettings {
    /// The namespaces served to OPA, by name, each with the bundle roots
    /// its bundle owns (`/`-separated paths of OPA's data document, as its
    /// manifest writes them: `roots = ["payments"]`). Their policies are
    /// Rego policies: `modules` (file path to Rego source) and `data`,
    /// checked with an embedded Rego engine at draft and publish. No root
    /// may lie inside another, in one namespace or across namespaces, as
    /// one OPA may load several. Unset: none.
    pub namespaces: BTreeMap<String, OpaNamespace>,
}

/// One namespace served to OPA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpaNamespace {
    /// The bundle roots.
    pub roots: Vec<String>,
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
}
