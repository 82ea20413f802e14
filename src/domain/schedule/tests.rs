//! The schedule's tests: firings, resumes, the floor, cron semantics.

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
