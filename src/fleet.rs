//! The fleet view (DESIGN §9): which runtimes watch, and what each applied.
//!
//! The replica that holds a runtime's stream keeps its record in memory and
//! updates it on connect, disconnect and every report, without touching the
//! database. A flusher writes the records that changed in one batch per
//! interval (about once a second), together with the replica's heartbeat;
//! reads combine the stored rows of every replica with this replica's
//! fresher records. So a report costs a map update, every replica sees the
//! whole fleet within an interval, and a replica that dies stops vouching for
//! its runtimes once its heartbeat is older than [`REPLICA_TIMEOUT`].
//!
//! The stored rows a read combines are reused for a quarter of the flush
//! interval (and dropped by each flush of this replica): at fleet scale,
//! reading and decoding every row of a namespace is most of what
//! `GetPolicyStatus` or a rollout's progress cost, and the rows of other
//! replicas are up to an interval old anyway. The combined view of a
//! namespace is kept as long as its stored rows are and nothing changed
//! here since (a connect, a disconnect, a report or a flush): reads after
//! the fleet settled share one view instead of merging and copying every
//! runtime's record each.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use prometheus_client::metrics::counter::Counter;

use crate::config::RuntimeSettings;
use crate::domain::{
    Error, Namespace, PolicyName, Result,
    runtime::{
        REPLICA_TIMEOUT, RuntimeId, RuntimeLabels, RuntimeRecord, RuntimeState, StatusReport,
    },
};
use crate::storage::{Flush, ReplicaHeartbeats, Repository};

type Key = (Namespace, RuntimeId);

/// One runtime as this replica knows it.
#[derive(Debug)]
struct Local {
    record: RuntimeRecord,
    /// Open streams of this runtime on this replica.
    streams: usize,
    /// Changed since the last flush.
    dirty: bool,
    /// Whether this replica holds the stream or only received a report.
    flush: Flush,
}

/// The fleet view of this replica; cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    /// This process's id in the `replicas` table, new at every start.
    replica: String,
    repository: Repository,
    /// Silence after which a runtime is STALE and its id may be taken by
    /// another subject.
    stale_after: chrono::TimeDelta,
    /// Silence after which a runtime leaves the fleet view.
    forget_after: chrono::TimeDelta,
    local: Mutex<HashMap<Key, Local>>,
    /// Changes to `local` so far; a view made before the last one is not
    /// reused.
    changes: AtomicU64,
    /// Stored rows read lately.
    stored: Mutex<StoredCache>,
    /// Each namespace's view made last, by the stored rows it combined.
    views: Mutex<HashMap<Namespace, CachedView>>,
    /// How long stored rows are reused.
    reuse_stored_for: Duration,
    instruments: Instruments,
}

/// Stored rows read since this replica's last flush.
#[derive(Default)]
struct StoredCache {
    /// Flushes so far: rows read across one are not kept.
    flushes: u64,
    namespaces: HashMap<Namespace, Arc<Stored>>,
}

/// The longest a namespace's view is reused: states move with time alone
/// (a silent runtime turns stale), so a view is made anew at least this
/// often while it is read.
const MAX_VIEW_AGE: Duration = Duration::from_secs(1);

/// A namespace's view, made at `made` from `stored` after `changes` changes
/// here.
struct CachedView {
    stored: Arc<Stored>,
    changes: u64,
    made: Instant,
    view: Arc<FleetView>,
}

/// Every runtime of a namespace with its state, ordered by id: the stored
/// rows of every replica overlaid with this replica's records, as seen
/// when it was made.
#[derive(Debug, Default)]
pub struct FleetView {
    runtimes: Vec<(RuntimeRecord, RuntimeState)>,
}

impl FleetView {
    /// Every runtime with its state.
    pub fn runtimes(&self) -> &[(RuntimeRecord, RuntimeState)] {
        &self.runtimes
    }

    /// The runtimes that count for rollout cohorts: every one not stale.
    pub fn not_stale(&self) -> impl Iterator<Item = &RuntimeRecord> + Clone {
        self.runtimes
            .iter()
            .filter(|(_, state)| *state != RuntimeState::Stale)
            .map(|(record, _)| record)
    }
}

/// A namespace's stored rows, and every replica's heartbeat, as read at
/// `read`.
struct Stored {
    read: Instant,
    records: HashMap<RuntimeId, RuntimeRecord>,
    heartbeats: ReplicaHeartbeats,
}

/// The metrics the fleet view feeds; whoever exposes them registers them.
#[derive(Debug, Clone, Default)]
pub struct Instruments {
    /// Status reports accepted.
    pub reports: Counter,
    /// Batches written to the database.
    pub flushes: Counter,
}

/// An open stream of an identified runtime; dropping it marks the runtime
/// disconnected once its last stream here closes.
pub struct Connection {
    fleet: Fleet,
    key: Key,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut local = self.fleet.local_mut();
        if let Some(entry) = local.get_mut(&self.key) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                entry.record.connected = false;
                entry.record.last_seen = Utc::now();
                entry.dirty = true;
            }
        }
    }
}

/// A runtime opening a stream.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Namespace it watches.
    pub namespace: Namespace,
    /// Its id.
    pub id: RuntimeId,
    /// Its labels.
    pub labels: RuntimeLabels,
    /// The policies its stream selects.
    pub names: Vec<PolicyName>,
    /// The subject of its token.
    pub subject: String,
}

fn held_by_other(runtime: &RuntimeId, holder: &str) -> Error {
    Error::PermissionDenied(format!(
        "runtime {runtime} is held by subject {holder:?}; a runtime id is bound to the subject \
         that first opened its stream until the runtime is stale"
    ))
}

impl Fleet {
    /// The fleet view of a new replica.
    pub fn new(
        repository: Repository,
        settings: &RuntimeSettings,
        instruments: Instruments,
    ) -> Self {
        let delta =
            |duration| chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX);
        Fleet {
            inner: Arc::new(Inner {
                replica: uuid::Uuid::new_v4().to_string(),
                repository,
                stale_after: delta(settings.stale_after),
                forget_after: delta(settings.forget_after),
                local: Mutex::default(),
                changes: AtomicU64::new(0),
                stored: Mutex::default(),
                views: Mutex::default(),
                reuse_stored_for: settings.flush_interval() / 4,
                instruments,
            }),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Local>> {
        self.inner.local.lock().expect("fleet lock")
    }

    /// This replica's records, to change: no view made before is reused.
    fn local_mut(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Local>> {
        let local = self.local();
        self.inner.changes.fetch_add(1, Ordering::Relaxed);
        local
    }

    /// Registers a stream of an identified runtime. Refused when another
    /// subject holds the id and the runtime is not stale.
    pub async fn connect(&self, arrival: Arrival) -> Result<Connection> {
        let key = (arrival.namespace.clone(), arrival.id.clone());
        let held_here = self
            .local()
            .get(&key)
            .is_some_and(|entry| entry.record.subject == arrival.subject);
        if !held_here {
            self.claim(&arrival).await?;
        }
        let now = Utc::now();
        let mut local = self.local_mut();
        let entry = local.entry(key.clone()).or_insert_with(|| Local {
            record: self.new_record(&arrival, now),
            streams: 0,
            dirty: true,
            flush: Flush::Held,
        });
        let stale = now - entry.record.last_seen > self.inner.stale_after;
        if entry.record.subject != arrival.subject && (entry.streams > 0 || !stale) {
            return Err(held_by_other(&arrival.id, &entry.record.subject));
        }
        entry.record.subject = arrival.subject;
        entry.record.labels = arrival.labels;
        entry.record.names = arrival.names;
        entry.record.connected = true;
        entry.record.replica = self.inner.replica.clone();
        entry.record.last_seen = now;
        entry.streams += 1;
        entry.dirty = true;
        entry.flush = Flush::Held;
        drop(local);
        Ok(Connection {
            fleet: self.clone(),
            key,
        })
    }

    /// A runtime first seen here, connected now.
    fn new_record(&self, arrival: &Arrival, now: chrono::DateTime<Utc>) -> RuntimeRecord {
        RuntimeRecord {
            namespace: arrival.namespace.clone(),
            id: arrival.id.clone(),
            subject: arrival.subject.clone(),
            labels: arrival.labels.clone(),
            names: arrival.names.clone(),
            connected: true,
            replica: self.inner.replica.clone(),
            last_seen: now,
            applied_revision: 0,
            policies: Default::default(),
        }
    }

    /// Binds the arrival's id to its subject in the database, which every
    /// replica shares, unless another subject holds it and is not stale.
    /// The check and the binding are one locked step: two subjects arriving
    /// at once on two replicas cannot both pass a check the other has not
    /// yet written.
    async fn claim(&self, arrival: &Arrival) -> Result<()> {
        let claim = self.new_record(arrival, Utc::now());
        let holder = self
            .inner
            .repository
            .claim_runtime(&claim, |stored, heartbeats| {
                self.observe(stored.clone(), heartbeats).1 != RuntimeState::Stale
            })
            .await?;
        match holder {
            Some(subject) => Err(held_by_other(&arrival.id, &subject)),
            None => Ok(()),
        }
    }

    /// Records a report from `subject`; returns how many outcomes were older
    /// than what the runtime reported before.
    pub async fn report(&self, subject: &str, report: StatusReport) -> Result<u32> {
        let key = (report.namespace.clone(), report.runtime.clone());
        if let Some(entry) = self.local_mut().get_mut(&key) {
            if entry.record.subject != subject {
                return Err(held_by_other(&report.runtime, &entry.record.subject));
            }
            entry.dirty = true;
            self.inner.instruments.reports.inc();
            return Ok(entry.record.merge(&report, Utc::now()));
        }
        // The stream is held by another replica (or was, before a restart).
        let Some(mut stored) = self
            .inner
            .repository
            .load_runtime(&report.namespace, &report.runtime)
            .await?
        else {
            return Err(Error::precondition(format!(
                "runtime {} has not opened a watch stream in namespace {}: open WatchActive \
                 with runtime.id first",
                report.runtime, report.namespace
            )));
        };
        if stored.subject != subject {
            return Err(held_by_other(&report.runtime, &stored.subject));
        }
        let ignored = stored.merge(&report, Utc::now());
        let mut local = self.local_mut();
        let entry = local.entry(key).or_insert_with(|| Local {
            record: stored.clone(),
            streams: 0,
            dirty: true,
            flush: Flush::ReportOnly,
        });
        entry.record = entry.record.clone().absorbing(&stored);
        entry.dirty = true;
        self.inner.instruments.reports.inc();
        Ok(ignored)
    }

    /// Writes what changed since the last flush, with this replica's
    /// heartbeat, and forgets runtimes that are gone from this replica.
    pub async fn flush(&self) -> Result<()> {
        let batch: Vec<(RuntimeRecord, Flush)> = self
            .local_mut()
            .values_mut()
            .filter(|entry| entry.dirty)
            .map(|entry| {
                entry.dirty = false;
                (entry.record.clone(), entry.flush)
            })
            .collect();
        let keys: Vec<Key> = batch
            .iter()
            .map(|(record, _)| (record.namespace.clone(), record.id.clone()))
            .collect();
        let saved = self
            .inner
            .repository
            .save_runtimes(&self.inner.replica, batch, self.inner.forget_after)
            .await;
        let mut local = self.local_mut();
        let merged = match saved {
            Ok(merged) => {
                self.inner.instruments.flushes.inc();
                merged
            }
            Err(error) => {
                for key in &keys {
                    if let Some(entry) = local.get_mut(key) {
                        entry.dirty = true;
                    }
                }
                return Err(error);
            }
        };
        // Outcomes reported through other replicas flow back into the
        // records of the streams held here.
        for record in merged {
            let key = (record.namespace.clone(), record.id.clone());
            if let Some(entry) = local.get_mut(&key) {
                entry.record = entry.record.clone().absorbing(&record);
            }
        }
        local.retain(|_, entry| entry.dirty || entry.streams > 0);
        drop(local);
        // Rows read before the flush may show runtimes it just forgot.
        let mut cache = self.stored_cache();
        cache.flushes += 1;
        cache.namespaces.clear();
        drop(cache);
        self.views().clear();
        Ok(())
    }

    /// Flushes every `interval` until the task is aborted.
    pub async fn run(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "cannot persist the fleet view; retrying");
            }
        }
    }

    /// A record as seen now, with its state. A connected runtime was last
    /// seen now; one whose replica stopped heartbeating, when it last did.
    fn observe(
        &self,
        mut record: RuntimeRecord,
        heartbeats: &ReplicaHeartbeats,
    ) -> (RuntimeRecord, RuntimeState) {
        let now = Utc::now();
        let replica_seen = if record.replica == self.inner.replica {
            Some(now)
        } else {
            heartbeats.get(&record.replica).copied()
        };
        let replica_alive = replica_seen.is_some_and(|seen| now - seen <= REPLICA_TIMEOUT);
        if record.connected {
            let seen_until = if replica_alive {
                Some(now)
            } else {
                replica_seen
            };
            record.last_seen = record.last_seen.max(seen_until.unwrap_or(record.last_seen));
        }
        let state = record.state(now, self.inner.stale_after, replica_alive);
        (record, state)
    }

    /// Every runtime of `namespace` with its state: the view made last when
    /// its stored rows are still reused, nothing changed here since and it
    /// is younger than [`MAX_VIEW_AGE`], else a new one.
    pub async fn runtimes(&self, namespace: &Namespace) -> Result<Arc<FleetView>> {
        let stored = self.stored(namespace).await?;
        if let Some(cached) = self.views().get(namespace)
            && Arc::ptr_eq(&cached.stored, &stored)
            && cached.changes == self.inner.changes.load(Ordering::Relaxed)
            && cached.made.elapsed() < MAX_VIEW_AGE
        {
            return Ok(cached.view.clone());
        }
        let made = Instant::now();
        let (view, changes) = self.view(namespace, &stored);
        let view = Arc::new(view);
        self.views().insert(
            namespace.clone(),
            CachedView {
                stored,
                changes,
                made,
                view: view.clone(),
            },
        );
        Ok(view)
    }

    /// The stored rows of every replica, overlaid with this replica's
    /// records, and how many changes here it includes.
    fn view(&self, namespace: &Namespace, stored: &Stored) -> (FleetView, u64) {
        let local = self.local();
        let changes = self.inner.changes.load(Ordering::Relaxed);
        let here: Vec<&Local> = local
            .values()
            .filter(|entry| &entry.record.namespace == namespace)
            .collect();
        let held_here: HashSet<&RuntimeId> = here.iter().map(|entry| &entry.record.id).collect();
        let mut records: Vec<RuntimeRecord> = stored
            .records
            .values()
            .filter(|record| !held_here.contains(&record.id))
            .cloned()
            .collect();
        records.extend(here.iter().map(|entry| {
            match (stored.records.get(&entry.record.id), entry.flush) {
                (Some(stored), Flush::ReportOnly) => stored.clone().absorbing(&entry.record),
                (Some(stored), Flush::Held) => entry.record.clone().absorbing(stored),
                (None, _) => entry.record.clone(),
            }
        }));
        drop(local);
        records.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let runtimes = records
            .into_iter()
            .map(|record| self.observe(record, &stored.heartbeats))
            .collect();
        (FleetView { runtimes }, changes)
    }

    fn views(&self) -> std::sync::MutexGuard<'_, HashMap<Namespace, CachedView>> {
        self.inner.views.lock().expect("fleet lock")
    }

    /// The stored rows of `namespace`, read anew once older than
    /// `reuse_stored_for`.
    async fn stored(&self, namespace: &Namespace) -> Result<Arc<Stored>> {
        let flushes = {
            let cache = self.stored_cache();
            let cached = cache.namespaces.get(namespace);
            if let Some(stored) =
                cached.filter(|stored| stored.read.elapsed() < self.inner.reuse_stored_for)
            {
                return Ok(stored.clone());
            }
            cache.flushes
        };
        let read = Instant::now();
        let records = self.inner.repository.load_runtimes(namespace).await?;
        let stored = Arc::new(Stored {
            read,
            records: records
                .into_iter()
                .map(|record| (record.id.clone(), record))
                .collect(),
            heartbeats: self.inner.repository.replica_heartbeats().await?,
        });
        let mut cache = self.stored_cache();
        if cache.flushes == flushes {
            cache.namespaces.insert(namespace.clone(), stored.clone());
        }
        Ok(stored)
    }

    fn stored_cache(&self) -> std::sync::MutexGuard<'_, StoredCache> {
        self.inner.stored.lock().expect("fleet lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::runtime::{ApplyState, PolicyOutcome};

    fn namespace() -> Namespace {
        Namespace::parse("namespace", "team").unwrap()
    }

    fn policy() -> PolicyName {
        PolicyName::parse("name", "limits").unwrap()
    }

    async fn fleet(dir: &std::path::Path) -> Fleet {
        let repository = crate::storage::sqlite_repository(&dir.join("fleet.db")).await;
        Fleet::new(
            repository,
            &RuntimeSettings::default(),
            Instruments::default(),
        )
    }

    fn applied(version: u32) -> StatusReport {
        StatusReport {
            namespace: namespace(),
            runtime: RuntimeId::parse("runtime.id", "rt-1").unwrap(),
            revision: u64::from(version),
            outcomes: vec![(
                policy(),
                PolicyOutcome {
                    version,
                    state: ApplyState::Applied,
                    error: String::new(),
                    revision: u64::from(version),
                },
            )],
        }
    }

    /// Reads share one view of a namespace until a connect, a report or a
    /// disconnect here; each of those shows in the next read.
    #[tokio::test]
    async fn a_view_is_shared_until_something_changes_here() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = fleet(dir.path()).await;
        let connection = fleet
            .connect(Arrival {
                namespace: namespace(),
                id: RuntimeId::parse("runtime.id", "rt-1").unwrap(),
                labels: RuntimeLabels::default(),
                names: Vec::new(),
                subject: "alice".into(),
            })
            .await
            .unwrap();
        let first = fleet.runtimes(&namespace()).await.unwrap();
        assert_eq!(first.runtimes().len(), 1);
        assert_eq!(first.runtimes()[0].1, RuntimeState::Connected);
        let again = fleet.runtimes(&namespace()).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "nothing changed: one view");

        fleet.report("alice", applied(1)).await.unwrap();
        let reported = fleet.runtimes(&namespace()).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &reported));
        assert_eq!(reported.runtimes()[0].0.policies[&policy()].version, 1);
        fleet.report("alice", applied(2)).await.unwrap();
        let newer = fleet.runtimes(&namespace()).await.unwrap();
        assert_eq!(newer.runtimes()[0].0.policies[&policy()].version, 2);

        drop(connection);
        let gone = fleet.runtimes(&namespace()).await.unwrap();
        assert_eq!(gone.runtimes()[0].1, RuntimeState::Disconnected);
        assert_eq!(gone.not_stale().count(), 1);
    }
}
