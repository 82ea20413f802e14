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
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn entry(name: &str, cron: &str, zone: &str) -> Entry {
        Entry {
            name: EntryName::parse("name", name).unwrap(),
            cron: cron.into(),
            time_zone: zone.into(),
            targets: Vec::new(),
        }
    }

    fn schedule(entries: Vec<Entry>, evaluated_at: DateTime<Utc>) -> Schedule {
        Schedule {
            namespace: Namespace::parse("namespace", "payments").unwrap(),
            name: ScheduleName::parse("name", "weekend-mode").unwrap(),
            entries,
            paused: false,
            paused_because: String::new(),
            paused_by_refusal: false,
            evaluated_at,
            next: None,
            last: None,
            updated_by: "alice".into(),
            updated_at: evaluated_at,
            reason: String::new(),
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    /// Strict from Monday 00:00 and permissive from Friday 18:00, Berlin
    /// time, across the spring change (29 March 2026, 02:00 CET → 03:00
    /// CEST) and the autumn one (25 October 2026, 03:00 CEST → 02:00 CET).
    fn weekday_weekend() -> Vec<Entry> {
        vec![
            entry("weekday", "0 0 * * MON", "Europe/Berlin"),
            entry("weekend", "0 18 * * FRI", "Europe/Berlin"),
        ]
    }

    fn names_and_times(firings: &[Firing]) -> Vec<(String, DateTime<Utc>)> {
        firings
            .iter()
            .map(|firing| (firing.entry.to_string(), firing.at))
            .collect()
    }

    #[test]
    fn weekday_and_weekend_switch_across_the_spring_change() {
        let schedule = schedule(weekday_weekend(), utc(2026, 3, 20, 12, 0));
        let upcoming = schedule.upcoming(utc(2026, 3, 20, 12, 0), UPCOMING);
        assert_eq!(
            names_and_times(&upcoming),
            [
                ("weekend".into(), utc(2026, 3, 20, 17, 0)), // 18:00 CET
                ("weekday".into(), utc(2026, 3, 22, 23, 0)), // Mon 00:00 CET
                ("weekend".into(), utc(2026, 3, 27, 17, 0)), // 18:00 CET
                ("weekday".into(), utc(2026, 3, 29, 22, 0)), // Mon 00:00 CEST
                ("weekend".into(), utc(2026, 4, 3, 16, 0)),  // 18:00 CEST
            ]
        );
    }

    #[test]
    fn weekday_and_weekend_switch_across_the_autumn_change() {
        let schedule = schedule(weekday_weekend(), utc(2026, 10, 22, 0, 0));
        let upcoming = schedule.upcoming(utc(2026, 10, 22, 0, 0), 3);
        assert_eq!(
            names_and_times(&upcoming),
            [
                ("weekend".into(), utc(2026, 10, 23, 16, 0)), // 18:00 CEST
                ("weekday".into(), utc(2026, 10, 25, 23, 0)), // Mon 00:00 CET
                ("weekend".into(), utc(2026, 10, 30, 17, 0)), // 18:00 CET
            ]
        );
    }

    #[test]
    fn a_time_the_clocks_skip_fires_after_the_gap_and_a_repeated_one_once() {
        let nightly = schedule(
            vec![entry("nightly", "30 2 * * *", "Europe/Berlin")],
            utc(2026, 3, 28, 12, 0),
        );
        let spring = nightly.upcoming(utc(2026, 3, 28, 12, 0), 2);
        // 02:30 does not exist on 29 March: 03:00 CEST, then 02:30 CEST.
        assert_eq!(spring[0].at, utc(2026, 3, 29, 1, 0));
        assert_eq!(spring[1].at, utc(2026, 3, 30, 0, 30));
        let autumn = nightly.upcoming(utc(2026, 10, 24, 12, 0), 2);
        // 02:30 happens twice on 25 October: once, at 02:30 CEST.
        assert_eq!(autumn[0].at, utc(2026, 10, 25, 0, 30));
        assert_eq!(autumn[1].at, utc(2026, 10, 26, 1, 30));
    }

    #[test]
    fn after_downtime_only_the_most_recent_due_firing_is_due() {
        // Down from Thursday to the next Tuesday: Friday's weekend and
        // Monday's weekday were both missed; only Monday's is due.
        let schedule = schedule(weekday_weekend(), utc(2026, 3, 19, 12, 0));
        let due = schedule.due(utc(2026, 3, 24, 9, 0)).unwrap();
        assert_eq!(due.entry.to_string(), "weekday");
        assert_eq!(due.at, utc(2026, 3, 22, 23, 0));
        // Nothing is due before the first firing after evaluated_at.
        assert_eq!(schedule.due(utc(2026, 3, 20, 16, 59)), None);
    }

    #[test]
    fn a_firing_decides_everything_due_and_plans_the_next() {
        let mut schedule = schedule(weekday_weekend(), utc(2026, 3, 19, 12, 0));
        let now = utc(2026, 3, 24, 9, 0);
        let due = schedule.due(now).unwrap();
        schedule.fired(due, 41, now);
        assert_eq!(schedule.due(now), None);
        assert_eq!(schedule.next.as_ref().unwrap().at, utc(2026, 3, 27, 17, 0));
        assert_eq!(schedule.last.as_ref().unwrap().revision, Some(41));
    }

    #[test]
    fn a_refused_firing_pauses_the_schedule_with_the_reason() {
        let mut schedule = schedule(weekday_weekend(), utc(2026, 3, 19, 12, 0));
        let now = utc(2026, 3, 21, 9, 0);
        let due = schedule.due(now).unwrap();
        schedule.refused(due, &Error::precondition("rollout r1 is moving it"), now);
        assert!(schedule.paused);
        assert!(
            schedule
                .paused_because
                .contains("entry weekend due at 2026-03-20T17:00:00Z")
        );
        assert!(schedule.paused_because.contains("rollout r1 is moving it"));
        assert!(schedule.paused_by_refusal);
        assert_eq!(schedule.next, None);
        assert_eq!(schedule.due(utc(2026, 3, 30, 0, 0)), None);
    }

    #[test]
    fn a_resume_finds_the_entry_in_force_and_nothing_due_until_the_next_firing() {
        // Refused on Friday evening, resumed on Saturday: the weekend entry
        // is in force, and nothing is due until Monday's weekday.
        let mut schedule = schedule(weekday_weekend(), utc(2026, 3, 19, 12, 0));
        let friday = utc(2026, 3, 20, 17, 0);
        let due = schedule.due(friday).unwrap();
        schedule.refused(due, &Error::precondition("rollout r1 is moving it"), friday);
        let saturday = utc(2026, 3, 21, 9, 0);
        let in_force = schedule.in_force(saturday).unwrap();
        assert_eq!(
            (in_force.entry.to_string(), in_force.at),
            ("weekend".into(), friday)
        );
        schedule.resume(saturday);
        assert!(!schedule.paused && !schedule.paused_by_refusal);
        assert_eq!(schedule.due(utc(2026, 3, 22, 22, 59)), None);
        assert_eq!(schedule.next.as_ref().unwrap().at, utc(2026, 3, 22, 23, 0));
        // Nothing is in force before the first firing after the save.
        assert_eq!(schedule.in_force(utc(2026, 3, 20, 16, 59)), None);
    }

    fn at(pattern: &str, zone: &str, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let schedule = schedule(vec![entry("e", pattern, zone)], after);
        let firings = schedule.upcoming(after, count);
        firings.iter().map(|firing| firing.at).collect()
    }

    #[test]
    fn day_of_month_and_day_of_week_match_either_unless_the_day_of_week_starts_with_plus() {
        // As in Vixie cron: the 13th or a Friday.
        let either = at("0 0 13 * FRI", "UTC", utc(2026, 11, 14, 0, 0), 5);
        assert_eq!(
            either,
            [
                utc(2026, 11, 20, 0, 0),
                utc(2026, 11, 27, 0, 0),
                utc(2026, 12, 4, 0, 0),
                utc(2026, 12, 11, 0, 0),
                utc(2026, 12, 13, 0, 0), // a Sunday
            ]
        );
        // `+`: both, a Friday the 13th.
        let both = at("0 0 13 * +FRI", "UTC", utc(2026, 11, 14, 0, 0), 1);
        assert_eq!(both, [utc(2027, 8, 13, 0, 0)]);
    }

    #[test]
    fn two_entries_due_at_the_same_instant_fire_once_as_the_entry_listed_last() {
        let mut noon = schedule(
            vec![
                entry("first", "0 12 * * *", "UTC"),
                entry("last", "0 12 * * *", "UTC"),
            ],
            utc(2026, 3, 19, 0, 0),
        );
        let upcoming = noon.upcoming(utc(2026, 3, 19, 0, 0), 2);
        assert_eq!(
            names_and_times(&upcoming),
            [
                ("last".into(), utc(2026, 3, 19, 12, 0)),
                ("last".into(), utc(2026, 3, 20, 12, 0)),
            ]
        );
        let now = utc(2026, 3, 19, 12, 0);
        let due = noon.due(now).unwrap();
        assert_eq!(due.entry.to_string(), "last");
        noon.fired(due, 7, now);
        assert_eq!(
            noon.due(now),
            None,
            "the first entry's firing is passed over"
        );
    }

    #[test]
    fn a_repeated_hour_fires_a_fixed_time_once_and_a_recurring_one_in_both_passes() {
        // 25 October 2026 in Berlin: 02:00–03:00 happens in CEST, then CET.
        // 02:30 fires once, in CEST (the fixed-time test above); a pattern
        // with a wildcard or a step in its time fields fires in both passes.
        let hourly = at("30 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23, 0), 4);
        assert_eq!(
            hourly,
            [
                utc(2026, 10, 24, 23, 30), // 01:30 CEST
                utc(2026, 10, 25, 0, 30),  // 02:30 CEST
                utc(2026, 10, 25, 1, 30),  // 02:30 CET
                utc(2026, 10, 25, 2, 30),  // 03:30 CET
            ]
        );
        // 29 March 2026: 02:00–03:00 does not exist; the hourly pattern
        // skips it.
        let spring = at("30 * * * *", "Europe/Berlin", utc(2026, 3, 29, 0, 0), 2);
        assert_eq!(
            spring,
            [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30)] // 01:30 CET, 03:30 CEST
        );
    }

    #[test]
    fn six_fields_put_seconds_first_a_seventh_is_a_year_and_nicknames_work() {
        let seconds = at("30 0 12 * * *", "UTC", utc(2026, 3, 19, 0, 0), 1);
        assert_eq!(
            seconds,
            [utc(2026, 3, 19, 12, 0) + chrono::TimeDelta::seconds(30)]
        );
        let year = at("0 0 12 1 1 * 2028", "UTC", utc(2026, 3, 19, 0, 0), 2);
        assert_eq!(year, [utc(2028, 1, 1, 12, 0)], "a year fires once");
        let daily = at("@daily", "UTC", utc(2026, 3, 19, 9, 0), 1);
        assert_eq!(daily, [utc(2026, 3, 20, 0, 0)]);
        for refused in ["* * * *", "0 0 0 1 1 * 2028 1"] {
            assert!(Timing::parse("e", refused, "UTC").is_err(), "{refused}");
        }
    }

    #[test]
    fn seconds_are_optional() {
        let fast = schedule(
            vec![entry("fast", "*/2 * * * * *", "UTC")],
            utc(2026, 1, 1, 0, 0),
        );
        let next = fast.upcoming(utc(2026, 1, 1, 0, 0), 2);
        assert_eq!(next[1].at - next[0].at, chrono::TimeDelta::seconds(2));
    }
}
