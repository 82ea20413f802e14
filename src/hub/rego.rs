//! Rego policies and OPA (docs/src/guides/opa.md): the namespaces served
//! to OPA, the check every body of theirs passes before it is stored or
//! signed, and their bundles, built once per revision from the index and
//! served from memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use crate::domain::rego::{self, BundleRoots};
use crate::domain::{Error, Namespace, PolicyBody, PolicyName, Result, VersionRecord};
use crate::opa::{self, OpaBundle};
use crate::signing::{BundleClaims, OpaSigningKey};
use crate::watch::{ActiveIndex, NamespaceIndex};

use super::PolicyHub;

/// The namespaces served to OPA, the keys their bundles are signed with,
/// and the bundle last built for each.
#[derive(Default)]
pub(super) struct Opa {
    namespaces: BTreeMap<Namespace, BundleRoots>,
    /// The first signs; every one is published.
    keys: Vec<OpaSigningKey>,
    built: Mutex<HashMap<Namespace, Arc<Built>>>,
}

/// A namespace's bundle at one revision, built by the first request that
/// wants it while the others wait for it.
struct Built {
    revision: u64,
    bundle: OnceCell<Arc<OpaBundle>>,
}

impl PolicyHub {
    /// Serves `namespaces` to OPA: their policies are Rego policies, whose
    /// packages lie under each namespace's bundle roots, and their bundles
    /// are signed with the first of `keys`.
    pub fn with_opa(
        mut self,
        namespaces: BTreeMap<Namespace, BundleRoots>,
        keys: Vec<OpaSigningKey>,
    ) -> Self {
        self.opa = Arc::new(Opa {
            namespaces,
            keys,
            built: Mutex::default(),
        });
        self
    }

    /// Checks `body` as a Rego policy when `namespace` is served to OPA.
    pub(super) fn check_rego(&self, namespace: &Namespace, body: &PolicyBody) -> Result<()> {
        match self.opa.namespaces.get(namespace) {
            Some(roots) => rego::check_policy(body.value(), roots),
            None => Ok(()),
        }
    }

    /// What keeps pointer moves from leaving a namespace served to OPA
    /// without a bundle.
    pub(super) fn bundle_guard(&self) -> BundleGuard<'_> {
        BundleGuard {
            opa: &self.opa,
            index: &self.index,
        }
    }

    /// The keys OPA bundles are signed with, the signer first.
    pub fn opa_signing_keys(&self) -> &[OpaSigningKey] {
        &self.opa.keys
    }

    /// The bundle of `namespace` as it stands in the index: its active
    /// policies' modules and data, at the revision that last changed them.
    /// Built once per revision; every request for it meanwhile waits for
    /// that one build.
    pub async fn opa_bundle(&self, namespace: &Namespace) -> Result<Arc<OpaBundle>> {
        let (Some(roots), Some(key)) = (self.opa.namespaces.get(namespace), self.opa.keys.first())
        else {
            return Err(Error::NotFound(format!(
                "namespace {namespace} is not served to OPA (opa.namespaces in the server's \
                 settings)"
            )));
        };
        let snapshot = self.index.snapshot();
        let index = snapshot
            .namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_default();
        let built = {
            let mut built = self.opa.built.lock().expect("no panic holds this lock");
            match built.get(namespace) {
                Some(found) if found.revision == index.revision => found.clone(),
                _ => {
                    let fresh = Arc::new(Built {
                        revision: index.revision,
                        bundle: OnceCell::new(),
                    });
                    built.insert(namespace.clone(), fresh.clone());
                    fresh
                }
            }
        };
        built
            .bundle
            .get_or_try_init(|| async { build(namespace, roots, &index, key).map(Arc::new) })
            .await
            .cloned()
    }
}

/// Refuses moving pointers of a namespace served to OPA to versions its
/// bundle could not hold together with the policies active beside them
/// (two giving one data path), before anything is written: every runtime
/// would take the activation while every OPA was refused its bundle.
#[derive(Clone, Copy)]
pub(super) struct BundleGuard<'a> {
    opa: &'a Opa,
    index: &'a ActiveIndex,
}

impl BundleGuard<'_> {
    /// Checks the bundles `versions` would make active.
    pub(super) fn check(&self, versions: &[VersionRecord]) -> Result<()> {
        let served = versions
            .iter()
            .map(|version| &version.policy.namespace)
            .filter(|namespace| self.opa.namespaces.contains_key(*namespace))
            .collect::<std::collections::BTreeSet<_>>();
        if served.is_empty() {
            return Ok(());
        }
        let snapshot = self.index.snapshot();
        for namespace in served {
            let mut bodies: BTreeMap<&PolicyName, Value> = BTreeMap::new();
            if let Some(index) = snapshot.namespaces.get(namespace) {
                for (name, claims) in active_claims(index)? {
                    bodies.insert(name, claims.body);
                }
            }
            for version in versions
                .iter()
                .filter(|version| &version.policy.namespace == namespace)
            {
                bodies.insert(&version.policy.name, version.body.value().clone());
            }
            rego::compose(bodies.iter().map(|(name, body)| (*name, body)))?;
        }
        Ok(())
    }
}

/// The bundle of the stable policies of `index`.
fn build(
    namespace: &Namespace,
    roots: &BundleRoots,
    index: &NamespaceIndex,
    key: &OpaSigningKey,
) -> Result<OpaBundle> {
    let mut bodies = Vec::with_capacity(index.policies.len());
    let mut versions = Map::new();
    for (name, claims) in active_claims(index)? {
        versions.insert(name.to_string(), Value::from(claims.ver));
        bodies.push((name, claims.body));
    }
    let content = rego::compose(bodies.iter().map(|(name, body)| (*name, body)))?;
    opa::build(
        namespace,
        index.revision,
        roots,
        &content,
        versions,
        key,
        chrono::Utc::now().timestamp(),
    )
}

/// The claims of each stable bundle of `index`, in name order.
fn active_claims(index: &NamespaceIndex) -> Result<Vec<(&PolicyName, BundleClaims)>> {
    index
        .policies
        .iter()
        .map(|(name, indexed)| Ok((name, claims(&indexed.bundle.jws)?)))
        .collect()
}

/// The claims of a bundle this server signed.
fn claims(jws: &str) -> Result<BundleClaims> {
    let unreadable =
        |why: String| Error::Internal(format!("an active bundle is unreadable: {why}"));
    let payload = jws
        .split('.')
        .nth(1)
        .ok_or_else(|| unreadable("not a JWS".into()))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|error| unreadable(error.to_string()))?;
    serde_json::from_slice(&payload).map_err(|error| unreadable(error.to_string()))
}
