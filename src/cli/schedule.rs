//! `policyhub set-policy-schedule|get-policy-schedule|list-policy-schedules|
//! pause-policy-schedule|resume-policy-schedule|delete-policy-schedule`: the
//! schedule RPCs. A schedule's entries come from a file, as with
//! `kubectl apply -f`, in the protobuf JSON mapping of `SetScheduleRequest`
//! (JSON or YAML).

use std::path::PathBuf;

use anyhow::Context;
use chrono_tz::Tz;
use serde_json::Value;

use super::Client;
use super::args::parse_namespace;
use super::document;
use super::failure::{Reply, Unusable, What};
use super::output::{Output, Table, message_from_json, print_message, time_text};
use crate::domain::{Namespace, ScheduleName};
use crate::grpc::convert::from_timestamp;
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// The schedule commands.
#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    // Verbatim: clap would rewrap the example onto one line. The lines are
    // written as they print.
    /// Save a schedule, creating or replacing it, from a file of entries (SetSchedule)
    ///
    /// The file (JSON, or YAML; `-` is standard input) holds the entries in the
    /// protobuf JSON mapping:
    ///
    ///   entries:
    ///     - name: weekday
    ///       cron: "0 0 * * MON"
    ///       timeZone: Europe/Berlin
    ///       targets: [{name: card-limits, label: 2.0.0}]
    ///     - name: weekend
    ///       cron: "0 18 * * FRI"
    ///       timeZone: Europe/Berlin
    ///       targets: [{name: card-limits, label: 1.0.0}]
    #[command(verbatim_doc_comment)]
    SetPolicySchedule {
        #[command(flatten)]
        args: SetArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show a schedule and its next five firings, in its zones and in UTC
    /// (GetSchedule).
    GetPolicySchedule {
        /// The schedule, namespace/name.
        #[arg(value_parser = parse_schedule)]
        schedule: (Namespace, ScheduleName),
        #[command(flatten)]
        client: Client,
    },
    /// List the schedules of a namespace (ListSchedules).
    ListPolicySchedules {
        /// The namespace.
        #[arg(value_parser = parse_namespace)]
        namespace: Namespace,
        #[command(flatten)]
        client: Client,
    },
    /// Stop a schedule firing (PauseSchedule).
    PausePolicySchedule {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Start a paused schedule again; the most recent firing it missed
    /// fires once (ResumeSchedule).
    ResumePolicySchedule {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Delete a schedule; what it activated stays active (DeleteSchedule).
    DeletePolicySchedule {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
}

/// Arguments of `set-policy-schedule`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The schedule, namespace/name.
    #[arg(value_parser = parse_schedule)]
    schedule: (Namespace, ScheduleName),
    /// The file of entries; `-` reads standard input.
    #[arg(long, short = 'f')]
    filename: PathBuf,
    /// Save it paused: nothing fires until it is resumed.
    #[arg(long)]
    paused: bool,
    /// Why; recorded in the events.
    #[arg(long, default_value = "")]
    reason: String,
}

/// Arguments of pause, resume and delete.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The schedule, namespace/name.
    #[arg(value_parser = parse_schedule)]
    schedule: (Namespace, ScheduleName),
    /// Why; recorded in the events.
    #[arg(long, default_value = "")]
    reason: String,
}

/// A schedule written namespace/name.
fn parse_schedule(text: &str) -> Result<(Namespace, ScheduleName), String> {
    let (namespace, name) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not namespace/name, such as payments/weekend-mode"))?;
    let namespace = Namespace::parse("namespace", namespace).map_err(|error| error.to_string())?;
    let name = ScheduleName::parse("name", name).map_err(|error| error.to_string())?;
    Ok((namespace, name))
}

/// The request a file of entries makes, with the schedule named on the
/// command line.
fn set_request(args: SetArgs) -> anyhow::Result<proto::SetScheduleRequest> {
    let not_entries = || {
        Unusable::new(
            What::Document,
            format!(
                "{} is not a schedule's entries: an object with \"entries\", each with \
                 name, cron, timeZone and targets",
                args.filename.display()
            ),
        )
    };
    let mut document = document::read(&args.filename)?;
    let Value::Object(fields) = &mut document else {
        return Err(not_entries().into());
    };
    let (namespace, name) = &args.schedule;
    fields.insert("namespace".into(), namespace.to_string().into());
    fields.insert("name".into(), name.to_string().into());
    fields.insert("reason".into(), args.reason.clone().into());
    if args.paused {
        fields.insert("paused".into(), true.into());
    }
    message_from_json(document).with_context(not_entries)
}

fn control_request(args: ControlArgs) -> proto::ScheduleControlRequest {
    let (namespace, name) = args.schedule;
    proto::ScheduleControlRequest {
        namespace: namespace.to_string(),
        name: name.to_string(),
        reason: args.reason,
    }
}

/// Runs a schedule command.
pub async fn run(command: ScheduleCommand) -> anyhow::Result<()> {
    use ScheduleCommand::*;
    let (SetPolicySchedule { client, .. }
    | GetPolicySchedule { client, .. }
    | ListPolicySchedules { client, .. }
    | PausePolicySchedule { client, .. }
    | ResumePolicySchedule { client, .. }
    | DeletePolicySchedule { client, .. }) = &command;
    let (channel, output) = client.connect().await?;
    let mut api = PolicyServiceClient::new(channel);
    let shown = match command {
        SetPolicySchedule { args, .. } => api
            .set_schedule(set_request(args)?)
            .await
            .reply("saving the schedule")?,
        GetPolicySchedule {
            schedule: (namespace, name),
            ..
        } => api
            .get_schedule(proto::GetScheduleRequest {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
            .await
            .reply("reading the schedule")?,
        ListPolicySchedules { namespace, .. } => {
            let listed = api
                .list_schedules(proto::ListSchedulesRequest {
                    namespace: namespace.to_string(),
                })
                .await
                .reply("listing schedules")?;
            print_list(output, &listed);
            return Ok(());
        }
        PausePolicySchedule { args, .. } => api
            .pause_schedule(control_request(args))
            .await
            .reply("pausing the schedule")?,
        ResumePolicySchedule { args, .. } => api
            .resume_schedule(control_request(args))
            .await
            .reply("resuming the schedule")?,
        DeletePolicySchedule { args, .. } => {
            let (namespace, name) = args.schedule.clone();
            let deleted = api
                .delete_schedule(control_request(args))
                .await
                .reply("deleting the schedule")?;
            match output {
                Output::Json => print_message(&deleted),
                Output::Table => outln!("schedule {namespace}/{name} deleted"),
            }
            return Ok(());
        }
    };
    match output {
        Output::Json => print_message(&shown),
        Output::Table => print_schedule(&shown),
    }
    Ok(())
}

/// `2026-11-27 18:00:00 CET` for a firing in `zone`.
fn in_zone(at: Option<prost_types::Timestamp>, zone: &str) -> String {
    let Some(at) = at.and_then(|at| from_timestamp("at", at).ok()) else {
        return String::new();
    };
    match zone.parse::<Tz>() {
        Ok(zone) => at
            .with_timezone(&zone)
            .format("%a %Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => String::new(),
    }
}

fn targets_text(entry: &proto::ScheduleEntry) -> String {
    entry
        .targets
        .iter()
        .map(|target| match target.label.as_str() {
            "" => format!("{} v{}", target.name, target.version),
            label => format!("{} v{} ({label})", target.name, target.version),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_schedule(schedule: &proto::Schedule) {
    outln!("schedule {}/{}", schedule.namespace, schedule.name);
    if schedule.paused {
        outln!("paused: {}", schedule.paused_because);
    }
    outln!(
        "saved by {} at {}{}",
        schedule.updated_by,
        time_text(schedule.updated_at),
        match schedule.reason.as_str() {
            "" => String::new(),
            reason => format!(": {reason}"),
        }
    );
    outln!();
    let mut entries = Table::new(&["ENTRY", "CRON", "TIME ZONE", "ACTIVATES"]);
    for entry in &schedule.entries {
        entries.row(vec![
            entry.name.clone(),
            entry.cron.clone(),
            entry.time_zone.clone(),
            targets_text(entry),
        ]);
    }
    out!("{entries}");
    let zone_of = |name: &str| {
        schedule
            .entries
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.time_zone.as_str())
            .unwrap_or("UTC")
    };
    if !schedule.upcoming.is_empty() {
        outln!();
        let mut next = Table::new(&["NEXT", "IN ITS ZONE", "UTC"]);
        for firing in &schedule.upcoming {
            next.row(vec![
                firing.entry.clone(),
                in_zone(firing.at, zone_of(&firing.entry)),
                time_text(firing.at),
            ]);
        }
        out!("{next}");
    }
    if let Some(last) = &schedule.last_firing {
        outln!();
        let outcome = match last.revision {
            0 => format!("refused: {}", last.error),
            revision => format!("activated at revision {revision}"),
        };
        outln!(
            "last firing: {} due at {}, {outcome}",
            last.entry,
            time_text(last.at)
        );
    }
}

fn print_list(output: Output, listed: &proto::ListSchedulesResponse) {
    if output == Output::Json {
        print_message(listed);
        return;
    }
    let mut table = Table::new(&["SCHEDULE", "ENTRIES", "STATE", "NEXT", "AT (UTC)"]);
    for schedule in &listed.schedules {
        let next = schedule.upcoming.first();
        table.row(vec![
            schedule.name.clone(),
            schedule.entries.len().to_string(),
            if schedule.paused { "paused" } else { "active" }.into(),
            next.map(|firing| firing.entry.clone()).unwrap_or_default(),
            next.map(|firing| time_text(firing.at)).unwrap_or_default(),
        ]);
    }
    out!("{table}");
}
