//! Recurring schedules: named entries, each a cron pattern in an IANA time
//! zone and the published versions it activates, pinned by digest when the
//! schedule is saved. The controller fires the most recent due entry once,
//! as an ordinary activation; a firing that is refused pauses the schedule
//! with the reason instead of retrying.
//!
//! Patterns are read by the `croner` crate as it is configured in
//! `timing`; the unit tests below pin what that means: the day-of-month and
//! day-of-week fields match either (as in Vixie cron) unless the day of week
//! starts with `+`; a fixed time the clocks skip fires at the first time
//! after the gap and one they repeat fires once, at its first occurrence,
//! while a pattern with a wildcard, range or step in its time fields skips
//! the gap and fires in both passes; six fields put seconds first and a
//! seventh is a year.

mod timing;
mod validate;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    Digest, EntryName, Error, Label, Namespace, PolicyName, PolicyRef, Result, ScheduleName,
    VersionSelector,
};
use timing::Timing;
pub use validate::{ensure_pinned, ensure_spaced, pin, validate};

/// Entries a schedule may have.
pub const MAX_ENTRIES: usize = 16;

/// Firings `GetSchedule` shows ahead.
pub const UPCOMING: usize = 5;

/// One entry as requested: its targets not yet resolved.
#[derive(Debug, Clone, Serialize)]
pub struct EntryRequest {
    /// Its name, unique in the schedule.
    pub name: EntryName,
    /// A cron pattern: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// An IANA zone the pattern is read in.
    pub time_zone: String,
    /// What it activates: distinct policies of the schedule's namespace.
    pub targets: Vec<(PolicyName, VersionSelector)>,
}

/// What `SetSchedule` asks for, validated but not yet resolved.
#[derive(Debug, Clone, Serialize)]
pub struct SetScheduleCommand {
    /// The namespace of every target.
    pub namespace: Namespace,
    /// The schedule.
    pub name: ScheduleName,
    /// At least one, at most [`MAX_ENTRIES`].
    pub entries: Vec<EntryRequest>,
    /// Saved paused: nothing fires until it is resumed.
    pub paused: bool,
    /// Why; recorded in the events.
    pub reason: String,
}

impl SetScheduleCommand {
    /// Every policy some entry names, each once, in the order first named.
    pub fn policies(&self) -> Vec<PolicyRef> {
        let mut policies: Vec<PolicyRef> = Vec::new();
        for (name, _) in self.entries.iter().flat_map(|entry| &entry.targets) {
            if !policies.iter().any(|policy| &policy.name == name) {
                policies.push(PolicyRef {
                    namespace: self.namespace.clone(),
                    name: name.clone(),
                });
            }
        }
        policies
    }
}

/// One version an entry activates, pinned when the schedule was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleTarget {
    /// The policy.
    pub policy: PolicyRef,
    /// The published version.
    pub version: u32,
    /// Its label, when it was chosen by label.
    pub label: Option<Label>,
    /// Its digest when saved: a firing activates exactly this.
    pub digest: Digest,
}

/// One entry of a saved schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its name.
    pub name: EntryName,
    /// The cron pattern.
    pub cron: String,
    /// The IANA zone of the pattern.
    pub time_zone: String,
    /// What it activates.
    pub targets: Vec<ScheduleTarget>,
}

/// When an entry fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    /// The entry.
    pub entry: EntryName,
    /// The instant.
    pub at: DateTime<Utc>,
}

/// What a firing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FiringOutcome {
    /// At least one pointer moved, under a new revision.
    Applied,
    /// Every version the entry activates was already active: nothing moved.
    AlreadyActive,
    /// The activation was refused and the schedule paused itself.
    Refused,
}

impl FiringOutcome {
    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FiringOutcome::Applied => "applied",
            FiringOutcome::AlreadyActive => "already_active",
            FiringOutcome::Refused => "refused",
        }
    }
}

/// The outcome of the last firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    /// Which entry, due when.
    pub firing: Firing,
    /// The revision of its activation; `None` when it was refused.
    pub revision: Option<u64>,
    /// Why it was refused; empty when it activated.
    pub error: String,
}

/// A saved schedule and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The namespace of every target.
    pub namespace: Namespace,
    /// Its name.
    pub name: ScheduleName,
    /// Its entries, in the order given.
    pub entries: Vec<Entry>,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// Who paused it and why, or the refused firing that did.
    pub paused_because: String,
    /// Paused by a refused firing, not by an operator. Absent from
    /// schedules stored before it was kept.
    #[serde(default)]
    pub paused_by_refusal: bool,
    /// Firings due up to here have been decided: fired, refused, or passed
    /// over because the schedule was saved later.
    pub evaluated_at: DateTime<Utc>,
    /// The next firing, while not paused.
    pub next: Option<Firing>,
    /// The last firing.
    pub last: Option<Fired>,
    /// Who saved it, when and why.
    pub updated_by: String,
    /// When it was saved.
    pub updated_at: DateTime<Utc>,
    /// Why it was saved.
    pub reason: String,
}

impl Entry {
    /// Its pattern in its zone; validated when saved, so `None` only for a
    /// stored pattern a later parser reads otherwise, which then never
    /// fires rather than stopping the controller.
    fn timing(&self) -> Option<Timing> {
        Timing::parse("entry", &self.cron, &self.time_zone).ok()
    }

    /// The policies it activates.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyRef> {
        self.targets.iter().map(|target| &target.policy)
    }
}

impl Schedule {
    /// A schedule saved by `by` at `at`, deciding nothing due before `at`.
    pub fn saved(
        command: SetScheduleCommand,
        entries: Vec<Entry>,
        by: &str,
        at: DateTime<Utc>,
    ) -> Schedule {
        let mut schedule = Schedule {
            namespace: command.namespace,
            name: command.name,
            entries,
            paused: command.paused,
            paused_because: if command.paused {
                format!("saved paused by {by}")
            } else {
                String::new()
            },
            paused_by_refusal: false,
            evaluated_at: at,
            next: None,
            last: None,
            updated_by: by.to_owned(),
            updated_at: at,
            reason: command.reason,
        };
        schedule.plan_next();
        schedule
    }

    /// Every policy some entry activates, each once.
    pub fn policies(&self) -> Vec<&PolicyRef> {
        let mut policies: Vec<&PolicyRef> = Vec::new();
        for policy in self.entries.iter().flat_map(Entry::policies) {
            if !policies.contains(&policy) {
                policies.push(policy);
            }
        }
        policies
    }

    /// Refuses a policy one of `others` (the namespace's other schedules)
    /// already activates: a policy belongs to at most one schedule.
    pub fn ensure_unclaimed(&self, others: &[Schedule]) -> Result<()> {
        let policies = self.policies();
        for other in others {
            if let Some(taken) = other.policies().into_iter().find(|p| policies.contains(p)) {
                return Err(Error::precondition(format!(
                    "{taken} is already activated by schedule {} of namespace {}: a policy \
                     belongs to at most one schedule",
                    other.name, self.namespace
                )));
            }
        }
        Ok(())
    }

    /// The entry named `name`.
    pub fn entry(&self, name: &EntryName) -> Option<&Entry> {
        self.entries.iter().find(|entry| &entry.name == name)
    }

    /// The earliest firing strictly after `after`; on a tie, the entry
    /// listed last, which would have the last word.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<Firing> {
        self.entries
            .iter()
            .filter_map(|entry| {
                entry.timing()?.next_after(after).map(|at| Firing {
                    entry: entry.name.clone(),
                    at,
                })
            })
            .reduce(|earliest, firing| {
                if firing.at <= earliest.at {
                    firing
                } else {
                    earliest
                }
            })
    }

    /// The next `count` firings after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<Firing> {
        let mut firings = Vec::with_capacity(count);
        let mut from = after;
        while firings.len() < count {
            let Some(firing) = self.next_after(from) else {
                break;
            };
            from = firing.at;
            firings.push(firing);
        }
        firings
    }

    /// The firing due at `now`: of the firings after `evaluated_at` and at
    /// or before `now`, the most recent (on a tie, the entry listed last).
    /// After downtime, only that one fires, not every one missed.
    pub fn due(&self, now: DateTime<Utc>) -> Option<Firing> {
        if self.paused {
            return None;
        }
        self.latest_between(self.evaluated_at, now)
    }

    /// The firing whose entry should be in force at `now`: the most recent
    /// at or before `now` since the schedule was saved (on a tie, the entry
    /// listed last), whether it fired, was refused or fell in a pause.
    pub fn in_force(&self, now: DateTime<Utc>) -> Option<Firing> {
        self.latest_between(self.updated_at, now)
    }

    /// Of the firings after `after` and at or before `until`, the most
    /// recent; on a tie, the entry listed last.
    fn latest_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<Firing> {
        self.entries
            .iter()
            .filter_map(|entry| {
                entry
                    .timing()?
                    .latest_until(until)
                    .filter(|at| *at > after)
                    .map(|at| Firing {
                        entry: entry.name.clone(),
                        at,
                    })
            })
            .reduce(|latest, firing| {
                if firing.at >= latest.at {
                    firing
                } else {
                    latest
                }
            })
    }

    fn plan_next(&mut self) {
        self.next = if self.paused {
            None
        } else {
            self.next_after(self.evaluated_at)
        };
    }

    /// `firing` activated at `revision`; everything due until `now` is
    /// decided.
    pub fn fired(&mut self, firing: Firing, revision: u64, now: DateTime<Utc>) {
        self.last = Some(Fired {
            firing,
            revision: Some(revision),
            error: String::new(),
        });
        self.evaluated_at = now;
        self.plan_next();
    }

    /// `firing` was refused: the schedule pauses with the reason.
    pub fn refused(&mut self, firing: Firing, error: &Error, now: DateTime<Utc>) {
        let why = format!(
            "entry {} due at {} was refused: {error}",
            firing.entry,
            firing.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        self.last = Some(Fired {
            firing,
            revision: None,
            error: error.to_string(),
        });
        self.evaluated_at = now;
        self.pause(why);
        self.paused_by_refusal = true;
    }

    /// Stops firing, saying why.
    pub fn pause(&mut self, why: String) {
        self.paused = true;
        self.paused_because = why;
        self.paused_by_refusal = false;
        self.plan_next();
    }

    /// Fires again from `now`. What was due while paused does not fire
    /// later: whoever resumes applies the entry in force (`in_force`) at
    /// once, and records it with `fired`.
    pub fn resume(&mut self, now: DateTime<Utc>) {
        self.paused = false;
        self.paused_because = String::new();
        self.paused_by_refusal = false;
        self.evaluated_at = now;
        self.plan_next();
    }

    /// Refuses pausing a paused schedule or resuming a running one.
    pub fn ensure_paused(&self, paused: bool, verb: &str) -> Result<()> {
        if self.paused == paused {
            return Ok(());
        }
        Err(Error::precondition(format!(
            "cannot {verb} schedule {} of namespace {}: it is {}",
            self.name,
            self.namespace,
            if self.paused { "paused" } else { "not paused" }
        )))
    }
}

#[cfg(test)]
mod tests;
