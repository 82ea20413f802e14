//! A roster's stored rows: read when the roster is made and, where other
//! replicas write rows too, read again as they age (see the module above).

use std::{collections::HashMap, time::Instant};

use chrono::Utc;

use super::roster::{Roster, Stored};
use super::{Fleet, Key, Local, MAX_ROSTERS, SWEEP_EVERY};
use crate::domain::{Namespace, Result, runtime::RuntimeId};
use crate::storage::Repository;

/// Who writes the fleet's stored rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// This replica alone (SQLite serves one): the rows a roster read once
    /// stay as this replica's flushes patch them.
    ThisReplica,
    /// Every replica of a shared database (PostgreSQL): a roster reads the
    /// rows again to learn what the others flushed.
    EveryReplica,
}

impl Writers {
    /// Who writes `repository`'s rows.
    pub fn of(repository: &Repository) -> Self {
        if repository.is_shared() {
            Writers::EveryReplica
        } else {
            Writers::ThisReplica
        }
    }
}

/// Flush intervals after which the stored rows a roster holds are read
/// again before a read answers; younger ones are read again in the
/// background. Other replicas' changes reach the stored rows once a flush
/// interval, so a read shows them at most six intervals late, and a read
/// after a pause of a few seconds (an operator's next command) answers
/// from memory.
pub(super) const ANSWER_WITHIN_FLUSHES: u32 = 5;

impl Fleet {
    /// Runs `read` on the roster of `namespace`. A roster that has no
    /// stored rows yet reads them before `read` runs; where every replica
    /// writes them, so does one whose rows are older than `answer_within`,
    /// and one whose rows are older than `refresh_after` has them read again
    /// in the background.
    pub(super) async fn with_roster<R>(
        &self,
        namespace: &Namespace,
        read: impl FnOnce(&Self, &mut Roster) -> R,
    ) -> Result<R> {
        if let Some(roster) = self.current(&mut self.rosters(), namespace) {
            return Ok(read(self, roster));
        }
        let _turn = self.inner.stored_turn.lock().await;
        // Reads that came at once waited for one another's turn: the first
        // read the rows for all.
        if let Some(roster) = self.current(&mut self.rosters(), namespace) {
            return Ok(read(self, roster));
        }
        let stored = self.load(namespace).await?;
        let local = self.local();
        let mut rosters = self.rosters();
        if !rosters.contains_key(namespace)
            && rosters.len() >= MAX_ROSTERS
            && let Some(least) = rosters
                .iter()
                .min_by_key(|(_, roster)| roster.read)
                .map(|(namespace, _)| namespace.clone())
        {
            rosters.remove(&least);
        }
        let roster = rosters.entry(namespace.clone()).or_default();
        self.restore(roster, namespace, stored, &local);
        drop(local);
        roster.read = Some(Instant::now());
        Ok(read(self, roster))
    }

    /// The roster of `namespace` if it has stored rows (where every replica
    /// writes them, rows younger than `answer_within`), marked read, its
    /// states current, and a refresh started where every replica writes
    /// the rows and they are older than `refresh_after`.
    fn current<'a>(
        &self,
        rosters: &'a mut HashMap<Namespace, Roster>,
        namespace: &Namespace,
    ) -> Option<&'a mut Roster> {
        let roster = rosters.get_mut(namespace)?;
        let age = roster.stored.read?.elapsed();
        // Rows only this replica writes are as its flushes patched them.
        let shared = self.inner.writers == Writers::EveryReplica;
        if shared && age >= self.inner.answer_within {
            return None;
        }
        roster.read = Some(Instant::now());
        if shared && age >= self.inner.refresh_after && !roster.refreshing {
            roster.refreshing = true;
            let refresh = Refresh {
                fleet: self.clone(),
                namespace: namespace.clone(),
            };
            tokio::spawn(refresh.run());
        }
        if roster
            .swept
            .is_none_or(|swept| swept.elapsed() >= SWEEP_EVERY * 2)
        {
            self.sweep_roster(roster);
        }
        Some(roster)
    }

    /// The stored rows of `namespace` and every replica's heartbeat.
    async fn load(&self, namespace: &Namespace) -> Result<Stored> {
        let read = Instant::now();
        let records = self.inner.repository.load_runtimes(namespace).await?;
        Ok(Stored {
            read: Some(read),
            records: records
                .into_iter()
                .map(|record| (record.id.clone(), record))
                .collect(),
            heartbeats: self.inner.repository.replica_heartbeats().await?,
        })
    }

    /// Moves `roster` to `stored`: every runtime whose stored row changed,
    /// and on a new roster every runtime held here too, is combined anew,
    /// then every state computed again.
    fn restore(
        &self,
        roster: &mut Roster,
        namespace: &Namespace,
        stored: Stored,
        local: &HashMap<Key, Local>,
    ) {
        let fresh = roster.stored.read.is_none();
        let mut changed: Vec<RuntimeId> = stored
            .records
            .iter()
            .filter(|(id, record)| roster.stored.records.get(*id) != Some(*record))
            .map(|(id, _)| id.clone())
            .collect();
        changed.extend(
            roster
                .stored
                .records
                .keys()
                .filter(|id| !stored.records.contains_key(*id))
                .cloned(),
        );
        if fresh {
            changed.extend(
                local
                    .keys()
                    .filter(|(held, id)| held == namespace && !stored.records.contains_key(id))
                    .map(|(_, id)| id.clone()),
            );
        }
        roster.stored = stored;
        let now = Utc::now();
        for id in changed {
            self.reflect_in(roster, local, &(namespace.clone(), id), now);
        }
        roster.sweep(|record, heartbeats| self.seen(record, heartbeats, now).1);
    }
}

/// A background read of one roster's stored rows. It clears the roster's
/// `refreshing` when it is dropped, however it ends: done, panicked, or
/// cancelled with its task (a runtime shutting down drops it unpolled).
/// Left set, no read would start another refresh of that roster, and its
/// rows would age until a read found them older than `answer_within` and
/// paid for reading them itself.
struct Refresh {
    fleet: Fleet,
    namespace: Namespace,
}

impl Refresh {
    /// Reads the stored rows of the namespace again and moves its roster
    /// to them.
    async fn run(self) {
        let fleet = &self.fleet;
        let _turn = fleet.inner.stored_turn.lock().await;
        let loaded = fleet.load(&self.namespace).await;
        let local = fleet.local();
        let mut rosters = fleet.rosters();
        let Some(roster) = rosters.get_mut(&self.namespace) else {
            return;
        };
        match loaded {
            Ok(stored) => fleet.restore(roster, &self.namespace, stored, &local),
            Err(error) => {
                tracing::warn!(%error, namespace = %self.namespace, "cannot read the fleet view")
            }
        }
        // `self` outlives the locks: its drop takes the rosters' again.
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        // Not `rosters()`: a refresh that panicked holding the lock
        // poisoned it, and a panic in a drop while unwinding aborts.
        let mut rosters = self
            .fleet
            .inner
            .rosters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(roster) = rosters.get_mut(&self.namespace) {
            roster.refreshing = false;
        }
    }
}
