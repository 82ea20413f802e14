//! Schedule requests as validated domain commands, and schedules back as
//! protobuf.

use chrono::Utc;

use super::convert::timestamp;
use super::policy_requests::version_selector;
use super::proto;
use crate::config::Limits;
use crate::domain::schedule::{self, EntryRequest, Firing, Schedule, SetScheduleCommand, UPCOMING};
use crate::domain::{EntryName, Error, Namespace, PolicyName, Result, ScheduleName, refuse_nul};

/// A `SetSchedule` request, validated.
pub(super) fn set_command(
    request: proto::SetScheduleRequest,
    limits: &Limits,
) -> Result<SetScheduleCommand> {
    let (namespace, name) = named(&request.namespace, &request.name)?;
    let entries = request
        .entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let field = format!("entries[{index}]");
            refuse_nul(&format!("{field}.cron"), &entry.cron)?;
            refuse_nul(&format!("{field}.time_zone"), &entry.time_zone)?;
            let targets = entry
                .targets
                .into_iter()
                .enumerate()
                .map(|(at, target)| {
                    let prefix = format!("{field}.targets[{at}]");
                    let name = PolicyName::parse(&format!("{prefix}.name"), &target.name)?;
                    use proto::schedule_target_request::Selector;
                    let (number, label) = match target.selector {
                        Some(Selector::Version(number)) => (Some(number), None),
                        Some(Selector::Label(label)) => (None, Some(label)),
                        None => (None, None),
                    };
                    let selector = version_selector(&format!("{prefix}.version"), number, label)?;
                    Ok((name, selector))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(EntryRequest {
                name: EntryName::parse(&format!("{field}.name"), &entry.name)?,
                cron: entry.cron,
                time_zone: entry.time_zone,
                targets,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let command = SetScheduleCommand {
        namespace,
        name,
        entries,
        paused: request.paused,
        reason: limits.text("reason", request.reason)?,
    };
    schedule::validate(&command, limits.max_activation_targets)?;
    Ok(command)
}

/// The namespace and schedule a request names.
pub(super) fn named(namespace: &str, name: &str) -> Result<(Namespace, ScheduleName)> {
    match (
        Namespace::parse("namespace", namespace),
        ScheduleName::parse("name", name),
    ) {
        (Ok(namespace), Ok(name)) => Ok((namespace, name)),
        (Err(Error::InvalidArgument(mut a)), Err(Error::InvalidArgument(b))) => {
            a.extend(b);
            Err(Error::InvalidArgument(a))
        }
        (Err(error), _) | (_, Err(error)) => Err(error),
    }
}

/// The schedule a control names, and the reason given.
pub(super) fn control_wanted(
    request: proto::ScheduleControlRequest,
    limits: &Limits,
) -> Result<(Namespace, ScheduleName, String)> {
    let (namespace, name) = named(&request.namespace, &request.name)?;
    Ok((namespace, name, limits.text("reason", request.reason)?))
}

fn firing(firing: &Firing) -> proto::ScheduleFiring {
    proto::ScheduleFiring {
        entry: firing.entry.to_string(),
        at: Some(timestamp(firing.at)),
        revision: 0,
        error: String::new(),
    }
}

/// A schedule as protobuf, with its next firings from now.
pub(super) fn schedule(schedule: &Schedule) -> proto::Schedule {
    let upcoming = if schedule.paused {
        Vec::new()
    } else {
        schedule.upcoming(Utc::now(), UPCOMING)
    };
    proto::Schedule {
        namespace: schedule.namespace.to_string(),
        name: schedule.name.to_string(),
        entries: schedule
            .entries
            .iter()
            .map(|entry| proto::ScheduleEntry {
                name: entry.name.to_string(),
                cron: entry.cron.clone(),
                time_zone: entry.time_zone.clone(),
                targets: entry
                    .targets
                    .iter()
                    .map(|target| proto::ScheduleTarget {
                        name: target.policy.name.to_string(),
                        version: target.version,
                        label: target
                            .label
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        digest: target.digest.to_string(),
                    })
                    .collect(),
            })
            .collect(),
        paused: schedule.paused,
        paused_because: schedule.paused_because.clone(),
        upcoming: upcoming.iter().map(firing).collect(),
        last_firing: schedule.last.as_ref().map(|last| proto::ScheduleFiring {
            revision: last.revision.unwrap_or(0),
            error: last.error.clone(),
            ..firing(&last.firing)
        }),
        updated_by: schedule.updated_by.clone(),
        updated_at: Some(timestamp(schedule.updated_at)),
        reason: schedule.reason.clone(),
    }
}
