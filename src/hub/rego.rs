//! Rego policies (docs/src/guides/opa.md): the namespaces served to OPA,
//! and the check every body of theirs passes before it is stored or
//! signed.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::rego::{self, BundleRoots};
use crate::domain::{Namespace, PolicyBody, Result};

use super::PolicyHub;

impl PolicyHub {
    /// Serves `namespaces` to OPA: their policies are Rego policies, whose
    /// packages lie under each namespace's bundle roots.
    pub fn with_opa_namespaces(mut self, namespaces: BTreeMap<Namespace, BundleRoots>) -> Self {
        self.opa_namespaces = Arc::new(namespaces);
        self
    }

    /// Checks `body` as a Rego policy when `namespace` is served to OPA.
    pub(super) fn check_rego(&self, namespace: &Namespace, body: &PolicyBody) -> Result<()> {
        match self.opa_namespaces.get(namespace) {
            Some(roots) => rego::check_policy(body.value(), roots),
            None => Ok(()),
        }
    }
}
