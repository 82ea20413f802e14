//! The fleet view (docs/src/contributing/design.md#runtimes-and-rollouts):
//! which runtimes watch, and what each applied.
//!
//! The replica that holds a runtime's stream keeps its record in memory and
//! updates it on connect, disconnect and every report, without touching the
//! database. A flusher writes the records that changed in one batch per
//! interval (about once a second), together with the replica's heartbeat;
//! reads combine the stored rows of every replica with this replica's
//! fresher records. So a report costs a map update, every replica sees the
//! whole fleet within an interval, and a replica that dies stops vouching for
//! its runtimes once its heartbeat is older than
//! [`REPLICA_TIMEOUT`](crate::domain::runtime::REPLICA_TIMEOUT).
//!
//! A namespace that is read gets a roster: its runtimes as the stored rows
//! and this replica's records combine, kept up to date as each runtime
//! connects, reports or leaves, with counts of what they applied per policy
//! and per live rollout step. `GetPolicyStatus`, and the progress that
//! `GetRollout`, `StartRollout` and `ListRollouts` show, answer from those
//! counts, not from a pass over the fleet. This replica's flushes patch the
//! stored rows a roster holds with what they forgot and wrote, and flushes
//! and reads of the stored rows take turns, so rows read never miss what a
//! flush changed. Where other replicas write rows too (PostgreSQL), once a
//! read finds the stored rows behind it older than a quarter of the flush
//! interval, they are read again in the background; a read that finds them
//! older than five intervals (a first read after a pause) reads them itself
//! before it answers, so an answer never rests on rows much older than the
//! other replicas' own flushes. Reads that find them so at once wait for
//! one another, and the first reads them for all. Where this replica is the
//! only writer (SQLite), the rows are read once, when the roster is made
//! (or after a flush that failed): reading every row took 0.12–0.6 s at
//! ten thousand runtimes in the bench, and each fleet read after a pause
//! would otherwise start one beside the call it answers; and a flush
//! writes a record it flushed before as it is, without reading its row
//! back to merge with it ([`Flush::Own`]). A roster no read used for
//! [`IDLE_ROSTER`] is dropped, and at most [`MAX_ROSTERS`] are kept.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;

use crate::config::RuntimeSettings;
use crate::domain::{
    Error, Namespace, PolicyName, Result,
    rollout::{Progress, Rollout, progress},
    runtime::{
        PolicyStatus, Rejection, RuntimeId, RuntimeLabels, RuntimeRecord, RuntimeState,
        StatusReport,
    },
};
use crate::storage::{Flush, ReplicaHeartbeats, Repository, Saved};

mod roster;
mod stored;

pub use roster::FleetView;
use roster::Roster;
use stored::ANSWER_WITHIN_FLUSHES;
pub use stored::Writers;

type Key = (Namespace, RuntimeId);

/// One runtime as this replica knows it.
#[derive(Debug)]
struct Local {
    record: RuntimeRecord,
    /// Open streams of this runtime on this replica.
    streams: usize,
    /// Changed since the last flush.
    dirty: bool,
    /// Whether this replica holds the stream or only received a report,
    /// and whether the record holds everything its row does.
    flush: Flush,
    /// Versions it turned to refusing since the last flush, which records
    /// them in the log.
    rejected: Vec<Rejection>,
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
    /// Locked before `rosters` when both are.
    local: Mutex<HashMap<Key, Local>>,
    rosters: Mutex<HashMap<Namespace, Roster>>,
    /// Flushes and reads of the stored rows take turns.
    stored_turn: tokio::sync::Mutex<()>,
    writers: Writers,
    /// Stored rows older than this are read again in the background.
    refresh_after: Duration,
    /// Stored rows older than this are read again before a read answers.
    answer_within: Duration,
    instruments: Instruments,
}

/// How old a view may be: states move with time alone (a silent runtime
/// turns stale), and a view shows a connected runtime seen until the
/// moment it was made. The flusher computes every roster's states anew at
/// each flush; a read does so itself only for a roster left unswept twice
/// as long (flushes further apart, or late), so reads seldom pay a pass
/// over the fleet.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A roster no read used for this long is dropped.
const IDLE_ROSTER: Duration = Duration::from_secs(300);

/// Most rosters kept: past this, a new one replaces the one read least
/// lately, so reading many namespaces cannot grow memory without bound.
const MAX_ROSTERS: usize = 1024;

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
        let mut local = self.fleet.local();
        if let Some(entry) = local.get_mut(&self.key) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                entry.record.connected = false;
                entry.record.last_seen = Utc::now();
                entry.dirty = true;
                self.fleet.reflect(&local, &self.key);
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

pub(crate) fn held_by_other(runtime: &RuntimeId, holder: &str) -> Error {
    Error::PermissionDenied(format!(
        "runtime {runtime} is held by subject {holder:?}; a runtime id is bound to the subject \
         that first opened its stream until the runtime is stale"
    ))
}

/// A runtime as its stored row and this replica's record of it combine.
fn combined(stored: Option<&RuntimeRecord>, local: Option<&Local>) -> Option<RuntimeRecord> {
    match (stored, local) {
        (Some(stored), Some(local)) => Some(match local.flush {
            Flush::ReportOnly => stored.clone().absorbing(&local.record),
            Flush::StreamHere | Flush::Own => local.record.clone().absorbing(stored),
        }),
        (None, Some(local)) => Some(local.record.clone()),
        (Some(stored), None) => Some(stored.clone()),
        (None, None) => None,
    }
}

impl Fleet {
    /// The fleet view of a new replica.
    pub fn new(
        repository: Repository,
        writers: Writers,
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
                rosters: Mutex::default(),
                stored_turn: tokio::sync::Mutex::default(),
                writers,
                refresh_after: settings.flush_interval() / 4,
                answer_within: settings.flush_interval() * ANSWER_WITHIN_FLUSHES,
                instruments,
            }),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Local>> {
        self.inner.local.lock().expect("fleet lock")
    }

    fn rosters(&self) -> std::sync::MutexGuard<'_, HashMap<Namespace, Roster>> {
        self.inner.rosters.lock().expect("fleet lock")
    }

    /// Shows a change of `key` in this replica's records in its namespace's
    /// roster, if it has one.
    fn reflect(&self, local: &HashMap<Key, Local>, key: &Key) {
        if let Some(roster) = self.rosters().get_mut(&key.0) {
            self.reflect_in(roster, local, key, Utc::now());
        }
    }

    fn reflect_in(
        &self,
        roster: &mut Roster,
        local: &HashMap<Key, Local>,
        key: &Key,
        now: DateTime<Utc>,
    ) {
        let record = combined(roster.stored.records.get(&key.1), local.get(key));
        let next = record.map(|record| {
            let (_, state) = self.seen(&record, &roster.stored.heartbeats, now);
            (record, state)
        });
        roster.set(&key.1, next);
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
        let mut local = self.local();
        let entry = local.entry(key.clone()).or_insert_with(|| Local {
            record: self.new_record(&arrival, now),
            streams: 0,
            dirty: true,
            flush: Flush::StreamHere,
            rejected: Vec::new(),
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
        // A record this replica held and flushed still holds what its row
        // does; any other is merged with its row at the next flush (a
        // claim may have written the row).
        if !(held_here && entry.flush == Flush::Own) {
            entry.flush = Flush::StreamHere;
        }
        self.reflect(&local, &key);
        drop(local);
        Ok(Connection {
            fleet: self.clone(),
            key,
        })
    }

    /// A runtime first seen here, connected now.
    fn new_record(&self, arrival: &Arrival, now: DateTime<Utc>) -> RuntimeRecord {
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
                self.seen(stored, heartbeats, Utc::now()).1 != RuntimeState::Stale
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
        {
            let mut local = self.local();
            if let Some(entry) = local.get_mut(&key) {
                if entry.record.subject != subject {
                    return Err(held_by_other(&report.runtime, &entry.record.subject));
                }
                let merged = entry.record.merge(&report, Utc::now());
                entry.rejected.extend(merged.rejected);
                self.inner.instruments.reports.inc();
                // While a stream of it is open here, this replica's
                // heartbeat vouches for it: a report that changed nothing
                // else leaves its row and its roster as they are.
                if merged.changed || entry.streams == 0 {
                    entry.dirty = true;
                    self.reflect(&local, &key);
                }
                return Ok(merged.ignored);
            }
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
        let merged = stored.merge(&report, Utc::now());
        let mut local = self.local();
        let entry = local.entry(key.clone()).or_insert_with(|| Local {
            record: stored.clone(),
            streams: 0,
            dirty: true,
            flush: Flush::ReportOnly,
            rejected: Vec::new(),
        });
        entry.record.absorb(&stored);
        entry.rejected.extend(merged.rejected);
        entry.dirty = true;
        self.inner.instruments.reports.inc();
        self.reflect(&local, &key);
        Ok(merged.ignored)
    }

    /// Writes what changed since the last flush, with this replica's
    /// heartbeat, and forgets runtimes that are gone from this replica.
    pub async fn flush(&self) -> Result<()> {
        let _turn = self.inner.stored_turn.lock().await;
        let mut rejected = Vec::new();
        let batch: Vec<(RuntimeRecord, Flush)> = self
            .local()
            .values_mut()
            .filter(|entry| entry.dirty)
            .map(|entry| {
                entry.dirty = false;
                rejected.append(&mut entry.rejected);
                (entry.record.clone(), entry.flush)
            })
            .collect();
        let keys: Vec<Key> = batch
            .iter()
            .map(|(record, _)| (record.namespace.clone(), record.id.clone()))
            .collect();
        if let Err(error) = self.inner.repository.record_rejections(&rejected).await {
            let mut local = self.local();
            for rejection in rejected {
                let key = (rejection.namespace.clone(), rejection.runtime.clone());
                if let Some(entry) = local.get_mut(&key) {
                    entry.rejected.push(rejection);
                }
            }
            for key in &keys {
                if let Some(entry) = local.get_mut(key) {
                    entry.dirty = true;
                }
            }
            return Err(error);
        }
        let saved = self
            .inner
            .repository
            .save_runtimes(&self.inner.replica, batch, self.inner.forget_after)
            .await;
        let mut local = self.local();
        let Saved { forgotten, merged } = match saved {
            Ok(saved) => {
                self.inner.instruments.flushes.inc();
                saved
            }
            Err(error) => {
                for key in &keys {
                    if let Some(entry) = local.get_mut(key) {
                        entry.dirty = true;
                    }
                }
                for entry in local.values_mut() {
                    if entry.flush == Flush::Own {
                        entry.flush = Flush::StreamHere;
                    }
                }
                // Part of the flush may have committed: the heartbeat's
                // forgetting, some of the records. The next read reads the
                // stored rows again instead of trusting them.
                for roster in self.rosters().values_mut() {
                    roster.stored.read = None;
                }
                return Err(error);
            }
        };
        let mut rosters = self.rosters();
        rosters.retain(|_, roster| roster.read.is_some_and(|read| read.elapsed() < IDLE_ROSTER));
        // Outcomes reported through other replicas flow back into the
        // records of the streams held here, and what was forgotten and
        // written is what the rosters' stored rows now hold.
        for (namespace, id) in &forgotten {
            if let Some(roster) = rosters.get_mut(namespace) {
                roster.stored.records.remove(id);
            }
        }
        let alone = self.inner.writers == Writers::ThisReplica;
        for record in merged {
            let key = (record.namespace.clone(), record.id.clone());
            if let Some(entry) = local.get_mut(&key) {
                entry.record.absorb(&record);
                // Where no other replica writes the row, it now holds what
                // the record does: the next flush need not read it back.
                if alone && entry.flush == Flush::StreamHere {
                    entry.flush = Flush::Own;
                }
            }
            if let Some(roster) = rosters.get_mut(&key.0) {
                roster.stored.records.insert(key.1, record);
            }
        }
        local.retain(|_, entry| entry.dirty || entry.streams > 0);
        let now = Utc::now();
        for key in forgotten.iter().chain(&keys) {
            if let Some(roster) = rosters.get_mut(&key.0) {
                self.reflect_in(roster, &local, key, now);
            }
        }
        Ok(())
    }

    /// Flushes every `interval` until the task is aborted, each flush once
    /// `deliveries_done` resolves: deliveries go first, and a flush due
    /// while a revision is written to the watch streams waits for them.
    pub async fn run<Done>(self, interval: Duration, deliveries_done: impl Fn() -> Done)
    where
        Done: Future<Output = ()>,
    {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            deliveries_done().await;
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "cannot persist the fleet view; retrying");
            }
            self.sweep();
        }
    }

    /// Moves every roster's runtimes to their states as of now: done here,
    /// once an interval, so that no read pays a pass over a large fleet.
    fn sweep(&self) {
        for roster in self.rosters().values_mut() {
            self.sweep_roster(roster);
        }
    }

    /// Moves `roster`'s runtimes to their states as of now.
    fn sweep_roster(&self, roster: &mut Roster) {
        let now = Utc::now();
        roster.sweep(|record, heartbeats| self.seen(record, heartbeats, now).1);
    }

    /// When `record`'s runtime was last seen as of `now`, and its state.
    fn seen(
        &self,
        record: &RuntimeRecord,
        heartbeats: &ReplicaHeartbeats,
        now: DateTime<Utc>,
    ) -> (DateTime<Utc>, RuntimeState) {
        let replica_seen = if record.replica == self.inner.replica {
            Some(now)
        } else {
            heartbeats.get(&record.replica).copied()
        };
        record.seen(now, self.inner.stale_after, replica_seen)
    }

    /// Every runtime of `namespace` with its state, as of at most
    /// [`SWEEP_EVERY`] ago.
    pub async fn runtimes(&self, namespace: &Namespace) -> Result<Arc<FleetView>> {
        self.with_roster(namespace, |fleet, roster| {
            roster.view(SWEEP_EVERY, |record, heartbeats| {
                let mut record = record.clone();
                record.last_seen = fleet.seen(&record, heartbeats, Utc::now()).0;
                record
            })
        })
        .await
    }

    /// What the namespace's runtimes applied or rejected of `name`, whose
    /// active version is `active` (0: none).
    pub async fn policy_status(
        &self,
        namespace: &Namespace,
        name: &PolicyName,
        active: u32,
    ) -> Result<PolicyStatus> {
        self.with_roster(namespace, |_, roster| roster.policy_status(name, active))
            .await
    }

    /// What the namespace's runtimes applied or rejected of each of
    /// `policies` (a name and its active version, 0: none), from one read
    /// of the roster.
    pub async fn policy_statuses(
        &self,
        namespace: &Namespace,
        policies: &[(&PolicyName, u32)],
    ) -> Result<Vec<PolicyStatus>> {
        self.with_roster(namespace, |_, roster| {
            policies
                .iter()
                .map(|(name, active)| roster.policy_status(name, *active))
                .collect()
        })
        .await
    }

    /// How the cohort of `rollout`'s current step fares: a live rollout's
    /// from counts kept up to date, an ended one's counted over the view.
    pub async fn progress(&self, rollout: &Rollout) -> Result<Progress> {
        if rollout.state.is_live() {
            return self
                .with_roster(&rollout.namespace, |_, roster| roster.progress(rollout))
                .await;
        }
        let view = self.runtimes(&rollout.namespace).await?;
        Ok(progress(rollout, view.not_stale()))
    }

    /// Counts the cohort of `rollout`'s current step in a task of its own
    /// and keeps the tally, which [`Fleet::progress`] then reads: a call
    /// that begins a step counts while its transaction commits, instead of
    /// after. A count that fails is made again by the read.
    pub fn count_ahead(&self, rollout: &Rollout) -> tokio::task::JoinHandle<()> {
        let fleet = self.clone();
        let rollout = rollout.clone();
        tokio::spawn(async move {
            if let Err(error) = fleet.progress(&rollout).await {
                tracing::debug!(%error, "cannot count a rollout step ahead");
            }
        })
    }

    /// Reads the stored rows of `namespace` now if the next read would
    /// have to read them first: a call that reads the fleet right after
    /// its commit wakes every stream of the namespace then answers from
    /// memory, instead of waiting for the database behind those streams.
    pub async fn prepare(&self, namespace: &Namespace) -> Result<()> {
        self.with_roster(namespace, |_, _| ()).await
    }
}

#[cfg(test)]
mod tests;
