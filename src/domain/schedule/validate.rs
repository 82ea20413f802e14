//! What a schedule must be before it is saved: the checks that need no
//! storage, the pinning of each target, and the pin checked at a firing.

use chrono::{TimeDelta, Utc};

use super::timing::Timing;
use super::{MAX_ENTRIES, ScheduleTarget, SetScheduleCommand};
use crate::domain::{Error, Result, VersionRecord, VersionState, quoted};

/// Checks what can be checked without storage: the entry count, names,
/// patterns, zones, that each pattern fires at all, and the targets' count
/// and distinctness.
pub fn validate(command: &SetScheduleCommand, max_targets: usize) -> Result<()> {
    if command.entries.is_empty() {
        return Err(Error::invalid("entries", "give at least one entry"));
    }
    if command.entries.len() > MAX_ENTRIES {
        return Err(Error::invalid(
            "entries",
            format!(
                "{} entries, at most {MAX_ENTRIES} are allowed in one schedule",
                command.entries.len()
            ),
        ));
    }
    for (index, entry) in command.entries.iter().enumerate() {
        let field = format!("entries[{index}]");
        if let Some(first) = command.entries[..index]
            .iter()
            .position(|seen| seen.name == entry.name)
        {
            return Err(Error::invalid(
                format!("{field}.name"),
                format!("{} is already the name of entries[{first}]", entry.name),
            ));
        }
        let timing = Timing::parse(&field, &entry.cron, &entry.time_zone)?;
        if timing.next_after(Utc::now()).is_none() {
            return Err(Error::invalid(
                format!("{field}.cron"),
                format!("{} never fires", quoted(&entry.cron)),
            ));
        }
        if entry.targets.is_empty() {
            return Err(Error::invalid(
                format!("{field}.targets"),
                "name at least one policy to activate",
            ));
        }
        if entry.targets.len() > max_targets {
            return Err(Error::invalid(
                format!("{field}.targets"),
                format!(
                    "{} targets, at most {max_targets} are allowed in one entry",
                    entry.targets.len()
                ),
            ));
        }
        for (at, (name, _)) in entry.targets.iter().enumerate() {
            if let Some(first) = entry.targets[..at]
                .iter()
                .position(|(seen, _)| seen == name)
            {
                return Err(Error::invalid(
                    format!("{field}.targets[{at}]"),
                    format!("{name} is already targeted by targets[{first}]"),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses an entry whose pattern can fire more often than once every
/// `min_interval`: each firing that moves a pointer is a revision, and a
/// per-second pattern would write 86,400 a day.
pub fn ensure_spaced(command: &SetScheduleCommand, min_interval: TimeDelta) -> Result<()> {
    for (index, entry) in command.entries.iter().enumerate() {
        let field = format!("entries[{index}]");
        let gap = Timing::parse(&field, &entry.cron, &entry.time_zone)?.shortest_gap();
        if gap < min_interval {
            return Err(Error::invalid(
                format!("{field}.cron"),
                format!(
                    "entry {} fires {} apart at the shortest ({}); a schedule's entries fire at \
                     most once every {} (schedules.min_interval)",
                    entry.name,
                    span(gap),
                    quoted(&entry.cron),
                    span(min_interval)
                ),
            ));
        }
    }
    Ok(())
}

/// A duration as people write it: `1s`, `1m`, `1h 30m`.
fn span(duration: TimeDelta) -> String {
    let duration = duration.to_std().unwrap_or_default();
    humantime::format_duration(duration).to_string()
}

/// Pins one requested target: it must name a published version.
pub fn pin(field: &str, record: &VersionRecord) -> Result<ScheduleTarget> {
    if record.state != VersionState::Published {
        return Err(Error::invalid(
            field,
            format!(
                "version {} of {} is {}: a schedule activates published versions only",
                record.version,
                record.policy,
                record.state.as_str().to_lowercase()
            ),
        ));
    }
    Ok(ScheduleTarget {
        policy: record.policy.clone(),
        version: record.version,
        label: record.label.clone(),
        digest: record.digest().clone(),
    })
}

/// Refuses a version whose digest is not the one pinned.
pub fn ensure_pinned(target: &ScheduleTarget, record: &VersionRecord) -> Result<()> {
    if record.digest() == &target.digest {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "version {} of {} no longer has the digest {} the schedule pinned",
        target.version, target.policy, target.digest
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schedule::EntryRequest;
    use crate::domain::{EntryName, Namespace, PolicyName, ScheduleName, VersionSelector};

    #[test]
    fn bad_patterns_and_zones_are_refused() {
        let command = |cron: &str, zone: &str| SetScheduleCommand {
            namespace: Namespace::parse("namespace", "payments").unwrap(),
            name: ScheduleName::parse("name", "s").unwrap(),
            entries: vec![EntryRequest {
                name: EntryName::parse("name", "e").unwrap(),
                cron: cron.into(),
                time_zone: zone.into(),
                targets: vec![(
                    PolicyName::parse("name", "limits").unwrap(),
                    VersionSelector::Number(1),
                )],
            }],
            paused: false,
            reason: String::new(),
        };
        for (cron, zone, field) in [
            ("61 * * * *", "UTC", "entries[0].cron"),
            ("* * *", "UTC", "entries[0].cron"),
            ("0 0 31 2 *", "UTC", "entries[0].cron"),
            ("0 0 * * *", "Mars/Olympus", "entries[0].time_zone"),
            ("0 0 * * *", "europe/berlin", "entries[0].time_zone"),
        ] {
            match validate(&command(cron, zone), 100) {
                Err(Error::InvalidArgument(violations)) => {
                    assert_eq!(violations[0].field, field, "{cron} {zone}")
                }
                other => panic!("{cron} {zone}: {other:?}"),
            }
        }
        assert!(validate(&command("0 18 * * FRI", "Europe/Berlin"), 100).is_ok());
    }

    #[test]
    fn an_entry_firing_more_often_than_the_floor_is_refused() {
        let command = |crons: &[&str]| SetScheduleCommand {
            namespace: Namespace::parse("namespace", "payments").unwrap(),
            name: ScheduleName::parse("name", "s").unwrap(),
            entries: crons
                .iter()
                .enumerate()
                .map(|(index, cron)| EntryRequest {
                    name: EntryName::parse("name", &format!("e{index}")).unwrap(),
                    cron: (*cron).into(),
                    time_zone: "Europe/Berlin".into(),
                    targets: Vec::new(),
                })
                .collect(),
            paused: false,
            reason: String::new(),
        };
        let minute = TimeDelta::minutes(1);
        for (crons, floor, refused) in [
            (
                &["0 18 * * FRI", "* * * * * *"][..],
                minute,
                Some(("entries[1].cron", "1s apart")),
            ),
            (
                &["*/30 * * * * *"],
                minute,
                Some(("entries[0].cron", "30s apart")),
            ),
            (
                &["0,59 * * * * *"],
                minute,
                Some(("entries[0].cron", "1s apart")),
            ),
            (&["* * * * *"], minute, None),
            (
                &["*/5 * * * *"],
                TimeDelta::minutes(10),
                Some(("entries[0].cron", "5m apart")),
            ),
            // 23:59 then 00:00 the next day.
            (&["0 59 23 * * *", "0 0 0 * * *"], minute, None),
            (
                &["0 0,59 0,23 * * *"],
                TimeDelta::minutes(2),
                Some(("entries[0].cron", "1m apart")),
            ),
            (&["0 0 * * MON"], TimeDelta::hours(24), None),
            (&["* * * * * *"], TimeDelta::seconds(1), None),
        ] {
            match (ensure_spaced(&command(crons), floor), refused) {
                (Ok(()), None) => {}
                (Err(Error::InvalidArgument(violations)), Some((field, says))) => {
                    assert_eq!(violations[0].field, field, "{crons:?}");
                    assert!(violations[0].description.contains(says), "{violations:?}");
                    assert!(violations[0].description.contains("schedules.min_interval"));
                }
                (outcome, _) => panic!("{crons:?} under {floor}: {outcome:?}"),
            }
        }
    }
}
