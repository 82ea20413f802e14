//! Rego policies and OPA (docs/src/guides/opa.md): the namespaces served
//! to OPA, the check every body of theirs passes before it is stored or
//! signed, their bundles, built once per revision and cohort from the index
//! and served from memory, and what OPAs report of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tokio::sync::{OnceCell, watch};

use crate::config::DecisionSettings;
use crate::domain::impact::ImpactGate;
use crate::domain::rego::{self, BundleRoots};
use crate::domain::runtime::opa::{OpaBundleReport, OpaDue};
use crate::domain::runtime::{RuntimeId, RuntimeLabels, RuntimeRecord, StatusReport};
use crate::domain::{
    ActiveBundle, Error, Namespace, PolicyBody, PolicyName, Result, VersionRecord,
};
use crate::fleet::Arrival;
use crate::opa::{self, OpaBundle};
use crate::signing::{BundleClaims, OpaKeySource, OpaSigningKey};
use crate::storage::Transaction;
use crate::watch::{IndexedBundle, NamespaceIndex, Watcher};

use super::PolicyHub;

/// The namespaces served to OPA, the keys their bundles are signed with,
/// and the bundles built at each namespace's current revision.
#[derive(Default)]
pub(super) struct Opa {
    namespaces: BTreeMap<Namespace, BundleRoots>,
    /// The namespaces whose changes are judged by their impact first.
    pub(super) impact_gates: BTreeMap<Namespace, ImpactGate>,
    /// Where the keys are read again on a reload.
    source: Option<OpaKeySource>,
    /// The first signs; every one is published. Replaced whole on a
    /// reload, which wakes the discovery requests held.
    keys: watch::Sender<Arc<Vec<OpaSigningKey>>>,
    built: Mutex<HashMap<Namespace, Built>>,
    /// How long the decisions OPAs upload are kept.
    pub(super) decisions: DecisionSettings,
}

/// A namespace's bundles at one revision: one per set of versions given
/// (the stable bundle, and each cohort's), each built by the first request
/// that wants it while the others wait for it.
#[derive(Default)]
struct Built {
    revision: u64,
    bundles: HashMap<BTreeMap<PolicyName, u32>, BundleCell>,
    /// The stable bundle's cell, once a request found it: every OPA
    /// outside a rollout's cohort asks for it, after every change.
    stable: Option<BundleCell>,
    /// The stable bundle of a later revision, built while that revision
    /// commits (see [`PolicyHub::prepare_opa_bundles`]): the bundles of
    /// that revision begin with it.
    next: Option<(u64, BTreeMap<PolicyName, u32>, BundleCell)>,
}

type BundleCell = Arc<OnceCell<Arc<OpaBundle>>>;

impl Built {
    /// Moves on to `revision`, keeping the bundle built ahead for it.
    fn advance(&mut self, revision: u64) {
        let next = self.next.take();
        *self = Built {
            revision,
            ..Built::default()
        };
        match next {
            Some((at, versions, cell)) if at == revision => {
                self.bundles.insert(versions, cell);
            }
            Some(later) if later.0 > revision => self.next = Some(later),
            _ => {}
        }
    }
}

impl PolicyHub {
    /// Serves `namespaces` to OPA: their policies are Rego policies, whose
    /// packages lie under each namespace's bundle roots, and their bundles
    /// are signed with the first of the keys `source` holds; the decisions
    /// their OPAs upload are kept as `decisions` says, and changes to the
    /// namespaces of `impact_gates` are judged by their impact first.
    pub fn with_opa(
        mut self,
        namespaces: BTreeMap<Namespace, BundleRoots>,
        impact_gates: BTreeMap<Namespace, ImpactGate>,
        source: OpaKeySource,
        decisions: DecisionSettings,
    ) -> anyhow::Result<Self> {
        let keys = source.load()?;
        self.opa = Arc::new(Opa {
            namespaces,
            impact_gates,
            source: Some(source),
            keys: watch::Sender::new(Arc::new(keys)),
            built: Mutex::default(),
            decisions,
        });
        Ok(self)
    }

    /// Reads the OPA signing keys again (on SIGHUP): the new signer signs
    /// every bundle from now on, those built before included, and every
    /// key read is published; a discovery request held wakes to them.
    /// The new signer's key id; `None` when nothing is served to OPA.
    pub fn reload_opa_keys(&self) -> Result<Option<String>> {
        let Some(source) = &self.opa.source else {
            return Ok(None);
        };
        let keys = source.load().map_err(|error| {
            Error::precondition(format!("cannot reload the OPA signing keys: {error:#}"))
        })?;
        let signer = keys.first().map(|key| key.key_id().to_owned());
        // The keys first: a bundle built ahead (see
        // `prepare_opa_bundles`) after the clear is signed by the new signer.
        self.opa.keys.send_replace(Arc::new(keys));
        self.opa
            .built
            .lock()
            .expect("no panic holds this lock")
            .clear();
        Ok(signer)
    }

    /// Checks `body` as a Rego policy when `namespace` is served to OPA.
    pub(super) fn check_rego(&self, namespace: &Namespace, body: &PolicyBody) -> Result<()> {
        match self.opa.namespaces.get(namespace) {
            Some(roots) => rego::check_policy(body.value(), roots),
            None => Ok(()),
        }
    }

    /// Runs the tests of `body` as Rego when `namespace` is served to OPA
    /// (a publication's last check).
    pub(super) fn test_rego(&self, namespace: &Namespace, body: &PolicyBody) -> Result<()> {
        match self.opa.namespaces.contains_key(namespace) {
            true => rego::run_tests(body.value()),
            false => Ok(()),
        }
    }

    /// What keeps pointer moves from leaving a namespace served to OPA
    /// without a bundle.
    pub(super) fn bundle_guard(&self) -> BundleGuard<'_> {
        BundleGuard { opa: &self.opa }
    }

    /// The keys OPA bundles are signed with, the signer first.
    pub fn opa_signing_keys(&self) -> Arc<Vec<OpaSigningKey>> {
        self.opa.keys.borrow().clone()
    }

    /// An OPA's arrival in the fleet: the runtime `watcher` of `namespace`,
    /// labelled as an OPA, asking as `subject`.
    pub fn opa_arrival(
        &self,
        namespace: &Namespace,
        watcher: &Watcher,
        subject: &str,
    ) -> Result<Arrival> {
        self.served_to_opa(namespace)?;
        let labels = watcher
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .chain([(
                opa::ENGINE_LABEL.0.to_owned(),
                opa::ENGINE_LABEL.1.to_owned(),
            )]);
        Ok(Arrival {
            namespace: namespace.clone(),
            id: watcher.id.clone(),
            labels: RuntimeLabels::parse("runtime.labels", labels)?,
            names: Vec::new(),
            subject: subject.to_owned(),
        })
    }

    /// The bundle of `namespace` as `watcher` (anonymous: `None`) is given
    /// it: its active policies' modules and data, a rollout's candidate
    /// where the watcher is in its cohort, at the revision that last
    /// changed the namespace. `None` when that is still the bundle tagged
    /// `held`, after waiting up to `wait` for it to change (a long poll).
    /// Each bundle is built once per revision; every request for it
    /// meanwhile waits for that one build.
    pub async fn opa_bundle(
        &self,
        namespace: &Namespace,
        watcher: Option<&Watcher>,
        held: Option<&str>,
        wait: Duration,
    ) -> Result<Option<Arc<OpaBundle>>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (bundle, revision) = self.opa_bundle_now(namespace, watcher).await?;
            if held != Some(bundle.etag.as_str()) {
                return Ok(Some(bundle));
            }
            let changed = self.index.namespace_changed(namespace, revision);
            if !tokio::time::timeout_at(deadline, changed)
                .await
                .unwrap_or(false)
            {
                return Ok(None);
            }
        }
    }

    /// The discovery bundle of `namespace` for `watcher` (anonymous:
    /// `None`), or `None` when it is still the one tagged `held` after
    /// waiting up to `wait` for it to change: it changes only with the
    /// keys, when they are reloaded.
    pub async fn opa_discovery(
        &self,
        namespace: &Namespace,
        watcher: Option<&Watcher>,
        held: Option<&str>,
        wait: Duration,
    ) -> Result<Option<Arc<OpaBundle>>> {
        self.served_to_opa(namespace)?;
        let runtime = watcher.map(|watcher| (&watcher.id, &watcher.labels));
        let deadline = tokio::time::Instant::now() + wait;
        let mut keys = self.opa.keys.subscribe();
        loop {
            let current = keys.borrow_and_update().clone();
            let discovery = opa::discovery(namespace, runtime, &current)?;
            if held != Some(discovery.etag.as_str()) {
                return Ok(Some(Arc::new(discovery)));
            }
            let changed = tokio::select! {
                changed = keys.changed() => changed.is_ok(),
                () = self.index.closed() => false,
                () = tokio::time::sleep_until(deadline) => false,
            };
            if !changed {
                return Ok(None);
            }
        }
    }

    /// The bundle `watcher` is given now, and the revision it is of.
    async fn opa_bundle_now(
        &self,
        namespace: &Namespace,
        watcher: Option<&Watcher>,
    ) -> Result<(Arc<OpaBundle>, u64)> {
        let (roots, keys) = self.served_to_opa(namespace)?;
        let index = self.namespace_index(namespace);
        // Without a rollout every OPA is given the stable bundle, found
        // without working out what it holds.
        let cohort = watcher.filter(|_| !index.candidates.is_empty());
        let cell = {
            let mut built = self.opa.built.lock().expect("no panic holds this lock");
            let built = built.entry(namespace.clone()).or_default();
            if built.revision != index.revision {
                built.advance(index.revision);
            }
            match (cohort, &built.stable) {
                (None, Some(stable)) => stable.clone(),
                _ => {
                    let (_, due) = given(&index, cohort);
                    let cell = built.bundles.entry(due.versions).or_default().clone();
                    if cohort.is_none() {
                        built.stable = Some(cell.clone());
                    }
                    cell
                }
            }
        };
        let bundle = cell
            .get_or_try_init(|| async {
                let (view, due) = given(&index, cohort);
                build(namespace, roots, &due, &view, &keys[0]).map(Arc::new)
            })
            .await?
            .clone();
        Ok((bundle, index.revision))
    }

    /// Builds, while `revision` commits, the stable bundle of each
    /// namespace served to OPA whose policies `changed` there, on a task of
    /// its own: the OPAs it wakes find their bundle built, where the first
    /// of them would otherwise build it once the commit is durable. Keyed
    /// by revision and versions, a bundle built for a transaction that then
    /// fails is never given: one that took the same revision and versions
    /// would build the same bundle. Nothing is built when the index is not
    /// at the revision before.
    pub(super) fn prepare_opa_bundles(&self, revision: u64, changed: &[ActiveBundle]) {
        let namespaces: BTreeSet<&Namespace> = changed
            .iter()
            .map(|bundle| &bundle.policy.namespace)
            .filter(|namespace| self.opa.namespaces.contains_key(*namespace))
            .collect();
        for namespace in namespaces {
            let Ok((roots, keys)) = self.served_to_opa(namespace) else {
                continue;
            };
            let Some(index) = self.index.preview(namespace, revision, changed) else {
                continue;
            };
            let cell = BundleCell::default();
            {
                let mut built = self.opa.built.lock().expect("no panic holds this lock");
                let built = built.entry(namespace.clone()).or_default();
                if built.revision >= revision {
                    continue;
                }
                let (_, due) = given(&index, None);
                built.next = Some((revision, due.versions, cell.clone()));
            }
            let (namespace, roots) = (namespace.clone(), roots.clone());
            tokio::spawn(async move {
                // A build that fails fails again for the request that
                // wants it, which says why.
                let _ = cell
                    .get_or_try_init(|| async {
                        let (view, due) = given(&index, None);
                        build(&namespace, &roots, &due, &view, &keys[0]).map(Arc::new)
                    })
                    .await;
            });
        }
    }

    /// `namespace` as the index holds it now.
    pub(super) fn namespace_index(&self, namespace: &Namespace) -> Arc<NamespaceIndex> {
        self.index
            .snapshot()
            .namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }

    /// Records an OPA's status report from `subject` (see
    /// [`OpaBundleReport::outcomes`]); returns how many outcomes were older
    /// than what it reported before.
    pub async fn report_opa_status(
        &self,
        subject: &str,
        namespace: &Namespace,
        runtime: &RuntimeId,
        report: &OpaBundleReport,
    ) -> Result<u32> {
        let record = self.opa_runtime(namespace, runtime).await?;
        let watcher = Watcher {
            id: runtime.clone(),
            labels: record.labels.clone(),
        };
        let (_, due) = given(&self.namespace_index(namespace), Some(&watcher));
        let Some((revision, outcomes)) = report.outcomes(&due) else {
            return Ok(0);
        };
        let report = StatusReport {
            namespace: namespace.clone(),
            runtime: runtime.clone(),
            revision,
            outcomes,
        };
        self.report_status(subject, report).await
    }

    /// The record of `runtime`, an OPA of `namespace` served to OPA that
    /// has asked for its bundle: what it reports and uploads is taken only
    /// then.
    pub(super) async fn opa_runtime(
        &self,
        namespace: &Namespace,
        runtime: &RuntimeId,
    ) -> Result<RuntimeRecord> {
        self.served_to_opa(namespace)?;
        let fleet = self.fleet_view(namespace).await?;
        match fleet.runtime(runtime) {
            Some((record, _)) => Ok(record.clone()),
            None => Err(Error::precondition(format!(
                "runtime {runtime} has not asked for the bundle of namespace {namespace}: name it \
                 in the bundle resource (bundles/{namespace}?runtime.id={runtime}) first"
            ))),
        }
    }

    /// The roots of `namespace` and the keys its bundles are signed with
    /// (the first signs), when it is served to OPA.
    pub(super) fn served_to_opa(
        &self,
        namespace: &Namespace,
    ) -> Result<(&BundleRoots, Arc<Vec<OpaSigningKey>>)> {
        let keys = self.opa.keys.borrow().clone();
        match self.opa.namespaces.get(namespace) {
            Some(roots) if !keys.is_empty() => Ok((roots, keys)),
            _ => Err(Error::NotFound(format!(
                "namespace {namespace} is not served to OPA (opa.namespaces in the server's \
                 settings)"
            ))),
        }
    }
}

/// Refuses moving pointers of a namespace served to OPA to versions its
/// bundle could not hold together with the policies active beside them
/// (two giving one data path), before anything is written: every runtime
/// would take the activation while every OPA was refused its bundle.
#[derive(Clone, Copy)]
pub(super) struct BundleGuard<'a> {
    opa: &'a Opa,
}

impl BundleGuard<'_> {
    /// Checks the bundles `versions` would make active, beside the active
    /// versions `tx` reads under the namespaces' locks.
    pub(super) async fn check(&self, tx: &Transaction, versions: &[VersionRecord]) -> Result<()> {
        let served = versions
            .iter()
            .map(|version| &version.policy.namespace)
            .filter(|namespace| self.opa.namespaces.contains_key(*namespace))
            .collect::<std::collections::BTreeSet<_>>();
        for namespace in served {
            let mut bodies = tx.active_bodies(namespace).await?;
            for version in versions
                .iter()
                .filter(|version| &version.policy.namespace == namespace)
            {
                bodies.insert(version.policy.name.clone(), version.body.clone());
            }
            rego::compose(bodies.iter().map(|(name, body)| (name, body.value())))?;
        }
        Ok(())
    }
}

/// The bundles of `index` that `watcher` is given (a rollout's candidates
/// where it is in the cohort), and what they are.
pub(super) fn given<'a>(
    index: &'a NamespaceIndex,
    watcher: Option<&Watcher>,
) -> (Vec<(&'a PolicyName, &'a Arc<IndexedBundle>)>, OpaDue) {
    let view = index.bundles_for(watcher);
    let due = OpaDue {
        revision: index.revision,
        versions: view
            .iter()
            .map(|(name, indexed)| ((*name).clone(), indexed.bundle.version))
            .collect(),
    };
    (view, due)
}

/// The bundle of `view`, the bundles `given` of `namespace`.
fn build(
    namespace: &Namespace,
    roots: &BundleRoots,
    given: &OpaDue,
    view: &[(&PolicyName, &Arc<IndexedBundle>)],
    key: &OpaSigningKey,
) -> Result<OpaBundle> {
    let bodies = view
        .iter()
        .map(|(name, indexed)| Ok((*name, claims(&indexed.bundle.jws)?.body)))
        .collect::<Result<Vec<_>>>()?;
    let content = rego::compose(bodies.iter().map(|(name, body)| (*name, body)))?;
    opa::build(
        namespace,
        given,
        roots,
        &content,
        key,
        chrono::Utc::now().timestamp(),
    )
}

/// The claims of a bundle this server signed.
pub(super) fn claims(jws: &str) -> Result<BundleClaims> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(version: u32) -> BTreeMap<PolicyName, u32> {
        BTreeMap::from([(PolicyName::parse("name", "authz").unwrap(), version)])
    }

    /// A bundle built ahead is given from the revision it was built for,
    /// kept while the namespace is still before it, and dropped once the
    /// namespace is past it.
    #[test]
    fn a_bundle_built_ahead_serves_its_own_revision_alone() {
        let ahead = BundleCell::default();
        let mut built = Built {
            revision: 4,
            next: Some((6, versions(2), ahead.clone())),
            ..Built::default()
        };
        built.advance(5);
        assert!(built.bundles.is_empty());
        built.advance(6);
        assert!(Arc::ptr_eq(&built.bundles[&versions(2)], &ahead));
        assert!(built.next.is_none());

        built.next = Some((7, versions(3), BundleCell::default()));
        built.advance(8);
        assert!(built.bundles.is_empty());
        assert!(built.next.is_none());
    }
}
