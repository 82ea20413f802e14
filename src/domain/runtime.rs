//! Runtimes and what they applied
//! (docs/src/contributing/design.md#runtimes-and-rollouts): identities,
//! labels and label selectors, per-policy outcomes, and the fleet's answer to
//! "did my change land?". Pure: the fleet module keeps these in memory and
//! storage persists them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use super::labels::{LabelSelector, RuntimeLabels};

pub mod opa;
use super::{Error, Namespace, PolicyName, Result};

/// A runtime's id: lowercase letters, digits, `-` and `.`, starting and
/// ending with a letter or digit, at most 128 bytes (a pod or host name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuntimeId(String);

/// Most bytes of a runtime id.
pub const MAX_RUNTIME_ID_BYTES: usize = 128;
/// A replica whose heartbeat is older than this no longer holds streams.
pub const REPLICA_TIMEOUT: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// Most bytes of a rejection's error text.
pub const MAX_REJECTION_ERROR_BYTES: usize = 1024;

impl RuntimeId {
    /// Parses a runtime id, naming `field` in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        let is_edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let problem = if value.is_empty() {
            Some("must not be empty".to_owned())
        } else if value.len() > MAX_RUNTIME_ID_BYTES {
            Some(format!(
                "is {} bytes long, at most {MAX_RUNTIME_ID_BYTES} are allowed",
                value.len()
            ))
        } else if !(value.starts_with(is_edge)
            && value.ends_with(is_edge)
            && value.chars().all(|c| is_edge(c) || c == '-' || c == '.'))
        {
            Some(format!(
                "{} is not valid: use lowercase letters, digits, '-' and '.', \
                 starting and ending with a letter or digit",
                super::quoted(value)
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::invalid(field, format!("runtime id {problem}"))),
            None => Ok(RuntimeId(value.to_owned())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RuntimeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a runtime did with a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplyState {
    /// It enforces the version.
    Applied,
    /// It refused the version and keeps what it had.
    Rejected,
}

/// A runtime's newest outcome for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOutcome {
    /// The version concerned.
    pub version: u32,
    /// Applied or rejected.
    pub state: ApplyState,
    /// Why it was rejected; empty when applied.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Revision of the report it came from.
    pub revision: u64,
    /// When a replica accepted the report it came from: of two different
    /// outcomes at one revision (a runtime that applied, then rejected),
    /// the later stands. `None` in rows stored before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<DateTime<Utc>>,
}

impl PolicyOutcome {
    /// Whether `other` says the same, whenever it was reported.
    fn says_what(&self, other: &PolicyOutcome) -> bool {
        (self.version, self.state, &self.error, self.revision)
            == (other.version, other.state, &other.error, other.revision)
    }
}

/// One report of a runtime, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// Namespace the runtime watches.
    pub namespace: Namespace,
    /// The runtime.
    pub runtime: RuntimeId,
    /// Revision of the state it decided on.
    pub revision: u64,
    /// Per policy, what it did.
    pub outcomes: Vec<(PolicyName, PolicyOutcome)>,
}

/// Whether a runtime is watching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuntimeState {
    /// Its stream is open on a live replica.
    Connected,
    /// Its stream closed recently.
    Disconnected,
    /// Silent for longer than the configured time.
    Stale,
}

/// What merging a report did to a runtime's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// Outcomes older than those already held, left out.
    pub ignored: u32,
    /// Whether an outcome or the applied revision moved: more than
    /// `last_seen`.
    pub changed: bool,
    /// The versions it turned to refusing: refused now, and not what it
    /// refused before.
    pub rejected: Vec<Rejection>,
}

/// A runtime's refusal of a version, to be recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub namespace: Namespace,
    pub runtime: RuntimeId,
    /// The principal whose report it was.
    pub subject: String,
    pub policy: PolicyName,
    pub version: u32,
    /// The runtime's reason, as it reported it (bounded by the API).
    pub error: String,
}

impl Rejection {
    /// The reason its event records.
    pub fn reason(&self) -> String {
        format!(
            "runtime {} rejected version {}: {}",
            self.runtime, self.version, self.error
        )
    }
}

/// What became of one reported outcome.
enum Kept {
    /// A newer one is held.
    Older,
    /// The same one is held.
    Held,
    /// It replaced what was held.
    New,
}

/// Everything known of one runtime of a namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    /// Namespace it watches.
    pub namespace: Namespace,
    /// Its id.
    pub id: RuntimeId,
    /// The subject whose token opened its stream; reports are accepted from
    /// that subject only.
    pub subject: String,
    /// Its labels.
    pub labels: RuntimeLabels,
    /// The policies its stream selects; empty for the whole namespace.
    pub names: Vec<PolicyName>,
    /// Whether a stream of it is open on `replica`.
    pub connected: bool,
    /// The replica that holds (or last held) its stream.
    pub replica: String,
    /// When its stream last opened or closed, or it last reported. While
    /// its stream is open its replica's heartbeat vouches for it (see
    /// [`seen`](Self::seen)), so the stored row is not written again for
    /// a report that changed nothing else.
    pub last_seen: DateTime<Utc>,
    /// The newest revision it reported.
    pub applied_revision: u64,
    /// Per policy, its newest outcome.
    pub policies: BTreeMap<PolicyName, PolicyOutcome>,
}

impl RuntimeRecord {
    /// Whether its stream selects `name`.
    pub fn watches(&self, name: &PolicyName) -> bool {
        self.names.is_empty() || self.names.contains(name)
    }

    /// Merges a report: per policy the newest revision wins, so reports may
    /// arrive out of order and twice.
    pub fn merge(&mut self, report: &StatusReport, now: DateTime<Utc>) -> Merged {
        let mut merged = Merged {
            ignored: 0,
            changed: report.revision > self.applied_revision,
            rejected: Vec::new(),
        };
        for (name, outcome) in &report.outcomes {
            let refused_before = self.policies.get(name).is_some_and(|held| {
                held.state == ApplyState::Rejected && held.version == outcome.version
            });
            match self.keep(name, outcome, Some(now)) {
                Kept::Older => merged.ignored += 1,
                Kept::Held => {}
                Kept::New => {
                    merged.changed = true;
                    if outcome.state == ApplyState::Rejected && !refused_before {
                        merged.rejected.push(Rejection {
                            namespace: self.namespace.clone(),
                            runtime: self.id.clone(),
                            subject: self.subject.clone(),
                            policy: name.clone(),
                            version: outcome.version,
                            error: outcome.error.clone(),
                        });
                    }
                }
            }
        }
        self.applied_revision = self.applied_revision.max(report.revision);
        self.last_seen = self.last_seen.max(now);
        merged
    }

    /// This record with every outcome of `other` newer than its own: of a
    /// later revision, or reported later at the same one. How two views of
    /// one runtime (two replicas, a stored row and a replica's record)
    /// combine, in either order.
    pub fn absorbing(mut self, other: &RuntimeRecord) -> Self {
        self.absorb(other);
        self
    }

    /// Takes every outcome of `other` newer than its own (see
    /// [`absorbing`](Self::absorbing)).
    pub fn absorb(&mut self, other: &RuntimeRecord) {
        for (name, outcome) in &other.policies {
            self.keep(name, outcome, outcome.reported_at);
        }
        self.applied_revision = self.applied_revision.max(other.applied_revision);
        self.last_seen = self.last_seen.max(other.last_seen);
    }

    /// Keeps `outcome`, reported at `reported_at`, unless the one held is
    /// of a later revision, says the same, or was reported later at the
    /// same revision.
    fn keep(
        &mut self,
        name: &PolicyName,
        outcome: &PolicyOutcome,
        reported_at: Option<DateTime<Utc>>,
    ) -> Kept {
        match self.policies.get(name) {
            Some(held) if held.revision > outcome.revision => Kept::Older,
            Some(held) if held.says_what(outcome) => Kept::Held,
            Some(held) if held.revision == outcome.revision && held.reported_at > reported_at => {
                Kept::Older
            }
            _ => {
                let outcome = PolicyOutcome {
                    reported_at,
                    ..outcome.clone()
                };
                self.policies.insert(name.clone(), outcome);
                Kept::New
            }
        }
    }

    /// When it was last seen as of `now`, and its state: connected while a
    /// live replica holds its stream, stale once silent for longer than
    /// `stale_after`, disconnected in between. `replica_seen` is its
    /// replica's last heartbeat; a connected runtime is seen until then, or
    /// until now while the replica is alive.
    pub fn seen(
        &self,
        now: DateTime<Utc>,
        stale_after: chrono::Duration,
        replica_seen: Option<DateTime<Utc>>,
    ) -> (DateTime<Utc>, RuntimeState) {
        let replica_alive = replica_seen.is_some_and(|seen| now - seen <= REPLICA_TIMEOUT);
        let mut last_seen = self.last_seen;
        if self.connected {
            let seen_until = if replica_alive {
                Some(now)
            } else {
                replica_seen
            };
            last_seen = last_seen.max(seen_until.unwrap_or(last_seen));
        }
        let state = if self.connected && replica_alive {
            RuntimeState::Connected
        } else if now - last_seen > stale_after {
            RuntimeState::Stale
        } else {
            RuntimeState::Disconnected
        };
        (last_seen, state)
    }
}

/// Which runtimes a listing returns.
#[derive(Debug, Clone, Default)]
pub struct RuntimeFilter {
    /// Only runtimes whose stream selects this policy.
    pub name: Option<PolicyName>,
    /// Only runtimes whose labels match.
    pub labels: LabelSelector,
    /// Only runtimes in these states; empty for all.
    pub states: Vec<RuntimeState>,
}

impl RuntimeFilter {
    fn matches(&self, runtime: &RuntimeRecord, state: RuntimeState) -> bool {
        self.name.as_ref().is_none_or(|name| runtime.watches(name))
            && self.labels.matches(&runtime.labels)
            && (self.states.is_empty() || self.states.contains(&state))
    }
}

/// Page tokens of runtime listings carry this prefix, so a token of another
/// listing is refused.
const PAGE_TOKEN_PREFIX: &str = "runtime:";

/// One page of `runtimes` (ordered by id) that `filter` selects, after the
/// runtime named by `page_token`.
pub fn runtimes_page(
    runtimes: &[(RuntimeRecord, RuntimeState)],
    filter: &RuntimeFilter,
    page_size: u32,
    page_token: &str,
) -> Result<super::Page<(RuntimeRecord, RuntimeState)>> {
    let after = match page_token {
        "" => None,
        token => Some(
            token
                .strip_prefix(PAGE_TOKEN_PREFIX)
                .and_then(|id| RuntimeId::parse("page_token", id).ok())
                .ok_or_else(|| {
                    Error::invalid(
                        "page_token",
                        format!(
                            "{} is not a page token of this listing",
                            super::quoted(token)
                        ),
                    )
                })?,
        ),
    };
    let mut items: Vec<_> = runtimes
        .iter()
        .filter(|(runtime, _)| after.as_ref().is_none_or(|after| &runtime.id > after))
        .filter(|(runtime, state)| filter.matches(runtime, *state))
        .take(page_size as usize + 1)
        .cloned()
        .collect();
    let next_page_token = (items.len() > page_size as usize).then(|| {
        items.truncate(page_size as usize);
        let last = &items.last().expect("a full page").0.id;
        format!("{PAGE_TOKEN_PREFIX}{last}")
    });
    Ok(super::Page {
        items,
        next_page_token,
    })
}

/// Runtimes that rejected a version with the same error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionGroup {
    /// The error.
    pub error: String,
    /// How many runtimes reported it.
    pub runtimes: u32,
    /// The first few of them, by id.
    pub runtime_ids: Vec<RuntimeId>,
}

/// The fleet's outcome for one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    /// The version.
    pub version: u32,
    /// Runtimes whose newest outcome is that they applied it.
    pub applied: u32,
    /// Runtimes whose newest outcome is that they rejected it.
    pub rejected: u32,
    /// Rejections grouped by error, most frequent first.
    pub rejections: Vec<RejectionGroup>,
}

/// "Did my change land?" for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyStatus {
    /// Identified runtimes whose stream selects the policy.
    pub runtimes: u32,
    /// Of those, on the active version.
    pub applied: u32,
    /// Of those, rejected the active version.
    pub rejected: u32,
    /// Of those, neither yet.
    pub pending: u32,
    /// Of those, stale.
    pub stale: u32,
    /// Per version any runtime reported on, newest first.
    pub versions: Vec<VersionStatus>,
}

/// What a namespace's runtimes applied and rejected, counted per policy
/// and kept up to date one runtime at a time, so "did my change land?" is
/// answered from counts instead of a pass over the fleet.
#[derive(Debug, Clone, Default)]
pub struct PolicyTally {
    /// Runtimes whose stream selects the whole namespace.
    everywhere: Watchers,
    /// Per policy: runtimes that select it by name, and outcomes of every
    /// runtime that watches it.
    names: HashMap<PolicyName, NameTally>,
}

/// Runtimes watching, and how many of them are stale.
#[derive(Debug, Clone, Copy, Default)]
struct Watchers {
    runtimes: u32,
    stale: u32,
}

impl Watchers {
    fn count(&mut self, state: RuntimeState, sign: Sign) {
        sign.apply(&mut self.runtimes);
        if state == RuntimeState::Stale {
            sign.apply(&mut self.stale);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct NameTally {
    by_name: Watchers,
    versions: BTreeMap<u32, VersionTally>,
}

#[derive(Debug, Clone, Default)]
struct VersionTally {
    applied: u32,
    /// Runtimes that rejected the version, by error.
    rejections: BTreeMap<String, BTreeSet<RuntimeId>>,
}

impl VersionTally {
    fn rejected(&self) -> u32 {
        self.rejections.values().map(|ids| ids.len() as u32).sum()
    }
}

/// Whether a runtime is counted in or out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Add,
    Remove,
}

impl Sign {
    fn apply(self, count: &mut u32) {
        match self {
            Sign::Add => *count += 1,
            Sign::Remove => *count -= 1,
        }
    }
}

/// How many runtime ids a rejection group lists.
const LISTED_REJECTERS: usize = 10;

impl PolicyTally {
    /// Counts a runtime in `state`.
    pub fn add(&mut self, runtime: &RuntimeRecord, state: RuntimeState) {
        self.count(runtime, state, Sign::Add);
    }

    /// Counts out a runtime added before with the same record and state.
    pub fn remove(&mut self, runtime: &RuntimeRecord, state: RuntimeState) {
        self.count(runtime, state, Sign::Remove);
    }

    fn count(&mut self, runtime: &RuntimeRecord, state: RuntimeState, sign: Sign) {
        if runtime.names.is_empty() {
            self.everywhere.count(state, sign);
        }
        for name in &runtime.names {
            self.name(name).by_name.count(state, sign);
        }
        for (name, outcome) in &runtime.policies {
            if !runtime.watches(name) {
                continue;
            }
            let versions = &mut self.name(name).versions;
            let version = versions.entry(outcome.version).or_default();
            match (outcome.state, sign) {
                (ApplyState::Applied, sign) => sign.apply(&mut version.applied),
                (ApplyState::Rejected, Sign::Add) => {
                    version
                        .rejections
                        .entry(outcome.error.clone())
                        .or_default()
                        .insert(runtime.id.clone());
                }
                (ApplyState::Rejected, Sign::Remove) => {
                    if let Some(ids) = version.rejections.get_mut(&outcome.error) {
                        ids.remove(&runtime.id);
                        if ids.is_empty() {
                            version.rejections.remove(&outcome.error);
                        }
                    }
                }
            }
            if version.applied == 0 && version.rejections.is_empty() {
                versions.remove(&outcome.version);
            }
        }
        for name in runtime.names.iter().chain(runtime.policies.keys()) {
            if self
                .names
                .get(name)
                .is_some_and(|tally| tally.by_name.runtimes == 0 && tally.versions.is_empty())
            {
                self.names.remove(name);
            }
        }
    }

    fn name(&mut self, name: &PolicyName) -> &mut NameTally {
        if !self.names.contains_key(name) {
            self.names.insert(name.clone(), NameTally::default());
        }
        self.names.get_mut(name).expect("inserted")
    }

    /// The fleet's outcome for `name`, whose active version is `active`
    /// (0: none).
    pub fn status(&self, name: &PolicyName, active: u32) -> PolicyStatus {
        let tally = self.names.get(name);
        let by_name = tally.map(|tally| tally.by_name).unwrap_or_default();
        let runtimes = self.everywhere.runtimes + by_name.runtimes;
        let on_active = tally.and_then(|tally| tally.versions.get(&active));
        let applied = on_active.map_or(0, |version| version.applied);
        let rejected = on_active.map_or(0, VersionTally::rejected);
        let versions = tally
            .into_iter()
            .flat_map(|tally| tally.versions.iter().rev())
            .map(|(&version, tally)| {
                let mut rejections: Vec<RejectionGroup> = tally
                    .rejections
                    .iter()
                    .map(|(error, ids)| RejectionGroup {
                        error: error.clone(),
                        runtimes: ids.len() as u32,
                        runtime_ids: ids.iter().take(LISTED_REJECTERS).cloned().collect(),
                    })
                    .collect();
                rejections.sort_by(|a, b| b.runtimes.cmp(&a.runtimes).then(a.error.cmp(&b.error)));
                VersionStatus {
                    version,
                    applied: tally.applied,
                    rejected: tally.rejected(),
                    rejections,
                }
            })
            .collect();
        PolicyStatus {
            runtimes,
            applied,
            rejected,
            pending: runtimes - applied - rejected,
            stale: self.everywhere.stale + by_name.stale,
            versions,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
