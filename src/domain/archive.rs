//! Archives: what `Export` writes and `Import` loads, and the checks an
//! archive must pass before anything of it is written. The wire format
//! (JSON lines of `policyhub.v1.ArchiveRecord`) is the transport's; these
//! are its contents.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use policyhub_runtime::bundle::{Envelope, Jwk, Jwks, verify_envelope};
use policyhub_runtime::checkpoint::verify_checkpoint;

use super::chain::{self, Checkpoint};
use super::log;
use super::rollout::{Measurement, Rollout};
use super::{Error, EventRecord, Namespace, PolicyRef, PolicySchema, Result, VersionRecord};

/// The format an archive's header names.
pub const FORMAT: &str = "policyhub-archive/1";

/// A public key that signed, and since when it is known.
#[derive(Debug, Clone)]
pub struct ArchivedKey {
    /// The key.
    pub jwk: Jwk,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
}

/// A policy, without its versions.
#[derive(Debug, Clone)]
pub struct ArchivedPolicy {
    /// Which.
    pub policy: PolicyRef,
    /// Its JSON Schema, if set.
    pub schema: Option<PolicySchema>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The active version, if any.
    pub active_version: Option<u32>,
}

/// A rollout that ended, as stored.
#[derive(Debug, Clone)]
pub struct ArchivedRollout {
    /// The rollout.
    pub rollout: Rollout,
    /// When it was created and last changed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Every measurement of its analyses, oldest first: what its events'
    /// verdicts were judged on. Empty in archives written before they were
    /// carried.
    pub measurements: Vec<Measurement>,
}

/// The contents of an archive.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    /// The namespaces it holds; empty when it holds every namespace, and so
    /// the whole log.
    pub scope: Vec<Namespace>,
    /// When it was read, and the revision and chain head it was read at.
    pub exported_at: Option<DateTime<Utc>>,
    /// The revision it was read at.
    pub revision: u64,
    /// The head of the chain it was read at.
    pub chain_head: String,
    /// The origin line of its log, which its checkpoints' notes sign under
    /// (whole-log archives only).
    pub log_origin: String,
    /// Every public key that ever signed.
    pub keys: Vec<ArchivedKey>,
    /// Its policies.
    pub policies: Vec<ArchivedPolicy>,
    /// Their versions.
    pub versions: Vec<VersionRecord>,
    /// Their ended rollouts.
    pub rollouts: Vec<ArchivedRollout>,
    /// Their events (every event, for a whole-log archive), in id order.
    pub events: Vec<EventRecord>,
    /// The log's checkpoints (whole-log archives only), oldest first.
    pub checkpoints: Vec<Checkpoint>,
}

/// An archive its check passed, and so the only kind storage loads: it
/// holds together (every version and every active pointer names an
/// archived policy, each policy is archived once), which the loading
/// relies on as it indexes the policies it writes by what the versions
/// name. Only [`Archive::check`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct CheckedArchive<'a>(&'a Archive);

impl std::ops::Deref for CheckedArchive<'_> {
    type Target = Archive;

    fn deref(&self) -> &Archive {
        self.0
    }
}

impl Archive {
    /// The namespaces its policies live in.
    pub fn namespaces(&self) -> BTreeSet<Namespace> {
        self.policies
            .iter()
            .map(|policy| policy.policy.namespace.clone())
            .collect()
    }

    /// Refuses an archive that does not hold together: a version of a
    /// policy it lacks, an active version that is not a published one, a
    /// signature that does not verify against its keys, an event of a
    /// policy it lacks, a live rollout; and for a whole-log archive, a
    /// broken chain or a checkpoint that does not hold. What it passes is
    /// the archive as storage may load it.
    pub fn check(&self) -> Result<CheckedArchive<'_>> {
        let refused = |why: String| Error::invalid("archive", why);
        let jwks = Jwks {
            keys: self.keys.iter().map(|key| key.jwk.clone()).collect(),
        };
        let policies: BTreeMap<&PolicyRef, &ArchivedPolicy> = self
            .policies
            .iter()
            .map(|policy| (&policy.policy, policy))
            .collect();
        if policies.len() != self.policies.len() {
            return Err(refused("a policy is archived twice".into()));
        }
        let mut published = BTreeSet::new();
        for version in &self.versions {
            let name = format!("{} version {}", version.policy, version.version);
            if !policies.contains_key(&version.policy) {
                return Err(refused(format!("{name} belongs to no archived policy")));
            }
            if let Some(publication) = &version.publication {
                let envelope = Envelope {
                    namespace: version.policy.namespace.as_str(),
                    name: version.policy.name.as_str(),
                    version: version.version,
                    digest: &version.digest().to_string(),
                };
                verify_envelope(&publication.jws, &envelope, &jwks)
                    .map_err(|why| refused(format!("{name} does not verify: {why}")))?;
                published.insert((&version.policy, version.version));
            }
        }
        for policy in &self.policies {
            if let Some(active) = policy.active_version
                && !published.contains(&(&policy.policy, active))
            {
                return Err(refused(format!(
                    "{} is active at version {active}, which is not an archived published version",
                    policy.policy
                )));
            }
        }
        let archived = |namespace: &str, name: &str| {
            policies.keys().any(|policy| {
                policy.namespace.as_str() == namespace && policy.name.as_str() == name
            })
        };
        for event in &self.events {
            if let Some((namespace, name)) = &event.policy
                && !archived(namespace, name)
            {
                return Err(refused(format!(
                    "event {} is about {namespace}/{name}, which is not archived",
                    event.id
                )));
            }
        }
        if let Some(live) = self
            .rollouts
            .iter()
            .find(|rollout| rollout.rollout.state.is_live())
        {
            return Err(refused(format!(
                "rollout {} is still {}: let it end before exporting",
                live.rollout.id,
                live.rollout.state.as_str()
            )));
        }
        if self.scope.is_empty() {
            self.check_whole_log(&jwks).map_err(refused)?;
        }
        Ok(CheckedArchive(self))
    }

    /// The chain and checkpoints of a whole-log archive.
    fn check_whole_log(&self, jwks: &Jwks) -> std::result::Result<(), String> {
        let (head, _) = chain::verify(&self.events).map_err(|broken| broken.to_string())?;
        if head != self.chain_head {
            return Err(format!(
                "the log ends at {head}, the header says {}",
                self.chain_head
            ));
        }
        for checkpoint in &self.checkpoints {
            let claims = verify_checkpoint(&checkpoint.jws, jwks)
                .map_err(|error| format!("checkpoint {}: {error}", checkpoint.id))?;
            chain::confirms(&self.events, &claims)
                .map_err(|why| format!("checkpoint {} does not hold: {why}", checkpoint.id))?;
        }
        let notes = self.checkpoints.iter().filter_map(|checkpoint| {
            let note = checkpoint.note.as_deref()?;
            Some((checkpoint.revision, note))
        });
        let origin = Some(self.log_origin.as_str()).filter(|origin| !origin.is_empty());
        log::check_notes(&self.events, notes, origin, jwks)
    }

    /// The revisions its events took, in order: an import maps them, in
    /// the same order, to the next revisions of the deployment it joins.
    pub fn revisions(&self) -> Vec<u64> {
        let taken: BTreeSet<u64> = self
            .events
            .iter()
            .filter_map(|event| event.revision)
            .collect();
        taken.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PolicyBody, VersionState};

    fn policy(name: &str) -> ArchivedPolicy {
        ArchivedPolicy {
            policy: PolicyRef::parse("team", name).unwrap(),
            schema: None,
            created_at: Utc::now(),
            active_version: None,
        }
    }

    fn draft_of(name: &str) -> VersionRecord {
        VersionRecord {
            policy: PolicyRef::parse("team", name).unwrap(),
            version: 1,
            state: VersionState::Draft,
            body: PolicyBody::parse("body", serde_json::json!({"max": 1}), usize::MAX).unwrap(),
            label: None,
            change_notes: String::new(),
            created_by: "alice".into(),
            created_at: Utc::now(),
            publication: None,
            active: false,
            requirements: Vec::new(),
        }
    }

    fn refused(archive: &Archive, saying: &str) {
        let error = archive.check().map(|_| ()).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidArgument(violations) if violations[0].description.contains(saying)),
            "{saying}: {error:?}"
        );
    }

    /// What storage indexes by when it loads an archive never reaches it
    /// unchecked: a version of a policy the archive lacks, a policy
    /// archived twice, an active version that is not archived.
    #[test]
    fn only_an_archive_that_holds_together_is_checked() {
        let scoped = |policies, versions| Archive {
            scope: vec![Namespace::parse("namespace", "team").unwrap()],
            policies,
            versions,
            ..Archive::default()
        };
        let whole = scoped(vec![policy("limits")], vec![draft_of("limits")]);
        assert_eq!(whole.check().unwrap().policies.len(), 1);
        refused(
            &scoped(vec![policy("limits")], vec![draft_of("quotas")]),
            "belongs to no archived policy",
        );
        refused(
            &scoped(vec![policy("limits"), policy("limits")], Vec::new()),
            "archived twice",
        );
        let mut active = policy("limits");
        active.active_version = Some(1);
        refused(
            &scoped(vec![active], vec![draft_of("limits")]),
            "not an archived published version",
        );
    }
}
