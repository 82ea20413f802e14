//! `policyhub rollout start|status|list|pause|resume|promote|abort|approve`: the
//! rollout RPCs (StartRollout, GetRollout, ListRollouts, …), in the shape of
//! `kubectl rollout`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use serde_json::Value;

use super::Client;
use super::args::{Expectation, Target, parse_expectation, parse_namespace, parse_target};
use super::connection::AuthChannel;
use super::document;
use super::failure::{Reply, Unusable, Usage, What};
use super::output::{Output, Table, message_from_json, print_message, time_text};
use crate::domain::Namespace;
use crate::grpc::proto::{self, policy_service_client::PolicyServiceClient};

/// The rollout commands.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Start moving versions through the namespace's identified runtimes
    /// step by step (StartRollout).
    Start {
        #[command(flatten)]
        args: StartArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show a rollout: its step, and how the step's cohort fares
    /// (GetRollout).
    Status {
        #[command(flatten)]
        args: StatusArgs,
        #[command(flatten)]
        client: Client,
    },
    /// List the rollouts of a namespace, newest first (ListRollouts).
    List {
        /// The namespace.
        #[arg(value_parser = parse_namespace)]
        namespace: Namespace,
        #[command(flatten)]
        client: Client,
    },
    /// Halt a running rollout; the cohort keeps what it has (PauseRollout).
    Pause {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Resume a paused rollout (ResumeRollout).
    Resume {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Complete a rollout now: its versions become active everywhere
    /// (PromoteRollout).
    Promote {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Stop a rollout; its cohort gets the stable versions again
    /// (AbortRollout).
    Abort {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Approve someone else's rollout (ApproveRollout, approver role).
    Approve {
        #[command(flatten)]
        args: ControlArgs,
        #[command(flatten)]
        client: Client,
    },
}

/// Arguments of `policyhub rollout start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The versions to roll out, all in one namespace:
    /// namespace/name@3 or namespace/name@1.2.0.
    #[arg(required = true, value_parser = parse_target)]
    targets: Vec<Target>,
    /// A step: PERCENT[:BAKE[:SELECTOR]], such as 10:1h, 50:30m:region=eu
    /// or 100. Repeat, percentages increasing.
    #[arg(long = "step", required = true, value_parser = parse_step)]
    steps: Vec<proto::RolloutStep>,
    /// Only if version N is active now: namespace/name@N.
    #[arg(long = "expected-active-version", value_parser = parse_expectation)]
    expectations: Vec<Expectation>,
    /// More cohort runtimes than this rejecting fail the step (default 0).
    #[arg(long, default_value_t = 0)]
    max_rejected: u32,
    /// Or, when above 0, this fraction of the cohort.
    #[arg(long, default_value_t = 0.0)]
    max_rejected_fraction: f64,
    /// A cohort runtime that has not applied within this long fails.
    #[arg(long, value_parser = humantime::parse_duration)]
    apply_deadline: Option<Duration>,
    /// On failure send the cohort the stable versions again (true) or pause.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_rollback: bool,
    /// Why; recorded in every event of the rollout.
    #[arg(long, default_value = "")]
    reason: String,
    /// Makes retries safe.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    /// Begin no earlier than this instant (RFC 3339).
    #[arg(long)]
    start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Analyses measured through the whole rollout: a file (JSON, or YAML;
    /// `-` is standard input) of one analysis or a list, each in the
    /// protobuf JSON mapping of RolloutAnalysis (name, query,
    /// successCondition, interval, count, failureLimit, …). Repeat.
    #[arg(long = "analysis", value_name = "FILE")]
    analyses: Vec<PathBuf>,
    /// Analyses measured while one step runs: STEP=FILE, STEP counting the
    /// --step flags from 1, the file as for --analysis. Repeat.
    #[arg(long = "step-analysis", value_name = "STEP=FILE", value_parser = parse_step_analysis)]
    step_analyses: Vec<(usize, PathBuf)>,
}

/// Arguments of `policyhub rollout status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The namespace.
    #[arg(value_parser = parse_namespace)]
    namespace: Namespace,
    /// The rollout id.
    id: String,
    /// Keep showing it, every second, until it ends.
    #[arg(long, short = 'w')]
    watch: bool,
}

/// Arguments of pause, resume, promote and abort.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The namespace.
    #[arg(value_parser = parse_namespace)]
    namespace: Namespace,
    /// The rollout id.
    id: String,
    /// Why; recorded in the event.
    #[arg(long, default_value = "")]
    reason: String,
}

/// A step written PERCENT[:BAKE[:SELECTOR]].
fn parse_step(text: &str) -> Result<proto::RolloutStep, String> {
    let mut parts = text.splitn(3, ':');
    let percentage = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| format!("{text:?}: a step is PERCENT[:BAKE[:SELECTOR]], such as 10:1h"))?;
    let bake = match parts.next() {
        Some(bake) => {
            humantime::parse_duration(bake).map_err(|error| format!("{text:?}: {error}"))?
        }
        None => Duration::ZERO,
    };
    Ok(proto::RolloutStep {
        percentage,
        label_selector: parts.next().unwrap_or_default().to_owned(),
        bake: prost_types::Duration::try_from(bake).ok(),
        analyses: Vec::new(),
    })
}

/// A step's analyses written STEP=FILE.
fn parse_step_analysis(text: &str) -> Result<(usize, PathBuf), String> {
    let usage = || format!("{text:?}: a step's analyses are STEP=FILE, such as 1=error-ratio.yaml");
    let (step, file) = text.split_once('=').ok_or_else(usage)?;
    match step.parse::<usize>() {
        Ok(step) if step > 0 && !file.is_empty() => Ok((step, PathBuf::from(file))),
        _ => Err(usage()),
    }
}

/// The analyses of a file: one, or a list.
fn read_analyses(path: &Path) -> anyhow::Result<Vec<proto::RolloutAnalysis>> {
    let not_analyses = || {
        Unusable::new(
            What::Document,
            format!(
                "{} is not an analysis or a list of analyses: each an object with name, \
                 query, successCondition and interval",
                path.display()
            ),
        )
    };
    let entries = match document::read(path)? {
        Value::Array(entries) => entries,
        entry => vec![entry],
    };
    entries
        .into_iter()
        .map(|entry| message_from_json(entry).with_context(not_analyses))
        .collect()
}

/// Runs a rollout command.
pub async fn run(command: RolloutCommand) -> anyhow::Result<()> {
    use RolloutCommand::*;
    let (Start { client, .. }
    | Status { client, .. }
    | List { client, .. }
    | Pause { client, .. }
    | Resume { client, .. }
    | Promote { client, .. }
    | Abort { client, .. }
    | Approve { client, .. }) = &command;
    let (channel, output) = client.connect().await?;
    let mut api = PolicyServiceClient::new(channel);
    let control = |args: ControlArgs| proto::RolloutControlRequest {
        namespace: args.namespace.to_string(),
        id: args.id,
        reason: args.reason,
    };
    let shown = match command {
        Start { args, .. } => api
            .start_rollout(start_request(args)?)
            .await
            .reply("starting the rollout")?,
        Status { args, .. } => return status(&mut api, output, args).await,
        List { namespace, .. } => {
            let listed = api
                .list_rollouts(proto::ListRolloutsRequest {
                    namespace: namespace.to_string(),
                    ..Default::default()
                })
                .await
                .reply("listing rollouts")?;
            print_list(output, &listed.rollouts);
            return Ok(());
        }
        Pause { args, .. } => api
            .pause_rollout(control(args))
            .await
            .reply("pausing the rollout")?,
        Resume { args, .. } => api
            .resume_rollout(control(args))
            .await
            .reply("resuming the rollout")?,
        Promote { args, .. } => api
            .promote_rollout(control(args))
            .await
            .reply("promoting the rollout")?,
        Abort { args, .. } => api
            .abort_rollout(control(args))
            .await
            .reply("aborting the rollout")?,
        Approve { args, .. } => api
            .approve_rollout(control(args))
            .await
            .reply("approving the rollout")?,
    };
    print_rollout(output, &shown);
    Ok(())
}

fn start_request(mut args: StartArgs) -> anyhow::Result<proto::StartRolloutRequest> {
    for (step, file) in &args.step_analyses {
        let steps = args.steps.len();
        let Some(analysed) = args.steps.get_mut(step - 1) else {
            return Err(Usage::new(
                format!(
                    "--step-analysis {step}={}: there are {steps} steps",
                    file.display()
                ),
                "STEP counts the --step flags from 1",
            )
            .into());
        };
        analysed.analyses.extend(read_analyses(file)?);
    }
    let mut analyses = Vec::new();
    for file in &args.analyses {
        analyses.extend(read_analyses(file)?);
    }
    let namespace = args.targets[0].policy.namespace.clone();
    if let Some(other) = args
        .targets
        .iter()
        .find(|target| target.policy.namespace != namespace)
    {
        return Err(Usage::new(
            format!(
                "{} is not in namespace {namespace}: a rollout moves policies of one namespace",
                other.policy
            ),
            "start one rollout per namespace",
        )
        .into());
    }
    let targets = args
        .targets
        .iter()
        .map(|target| proto::RolloutTargetRequest {
            name: target.policy.name.to_string(),
            selector: Some(match &target.selector {
                crate::domain::VersionSelector::Number(number) => {
                    proto::rollout_target_request::Selector::Version(*number)
                }
                crate::domain::VersionSelector::Label(label) => {
                    proto::rollout_target_request::Selector::Label(label.to_string())
                }
            }),
            expected_active_version: args
                .expectations
                .iter()
                .find(|expectation| expectation.policy == target.policy)
                .map(|expectation| expectation.active_version),
        })
        .collect();
    Ok(proto::StartRolloutRequest {
        namespace: namespace.to_string(),
        targets,
        steps: args.steps,
        failure_rule: Some(proto::FailureRule {
            max_rejected: args.max_rejected,
            max_rejected_fraction: args.max_rejected_fraction,
            apply_deadline: args
                .apply_deadline
                .and_then(|deadline| prost_types::Duration::try_from(deadline).ok()),
        }),
        auto_rollback: Some(args.auto_rollback),
        reason: args.reason,
        idempotency_key: args.idempotency_key,
        start_at: args.start_at.map(crate::grpc::convert::timestamp),
        analyses,
    })
}

async fn status(
    client: &mut PolicyServiceClient<AuthChannel>,
    output: Output,
    args: StatusArgs,
) -> anyhow::Result<()> {
    let request = proto::GetRolloutRequest {
        namespace: args.namespace.to_string(),
        id: args.id,
    };
    loop {
        let shown = client
            .get_rollout(request.clone())
            .await
            .reply("reading the rollout")?;
        print_rollout(output, &shown);
        let live = matches!(
            shown.state(),
            proto::RolloutState::Running | proto::RolloutState::Paused
        );
        if !args.watch || !live {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn state_name(state: proto::RolloutState) -> &'static str {
    state.as_str_name().trim_start_matches("ROLLOUT_STATE_")
}

fn print_rollout(output: Output, rollout: &proto::Rollout) {
    if output == Output::Json {
        print_message(rollout);
        return;
    }
    let targets: Vec<String> = rollout
        .targets
        .iter()
        .map(|target| {
            format!(
                "{}/{} v{} (stable v{})",
                rollout.namespace, target.name, target.version, target.stable_version
            )
        })
        .collect();
    outln!("rollout {} of {}", rollout.id, targets.join(", "));
    let step = rollout.steps.get(rollout.step as usize);
    outln!(
        "state: {}, step {} of {} ({}% since {})",
        state_name(rollout.state()).to_lowercase(),
        rollout.step + 1,
        rollout.steps.len(),
        step.map_or(0, |step| step.percentage),
        time_text(rollout.step_started_at)
    );
    let progress = rollout.progress.unwrap_or_default();
    outln!(
        "cohort: {} runtimes: {} applied, {} rejected, {} pending",
        progress.cohort,
        progress.applied,
        progress.rejected,
        progress.pending
    );
    print_analyses(rollout, step);
    if !rollout.halted_because.is_empty() {
        outln!("because: {}", rollout.halted_because);
    }
}

/// The analyses measured at the current step: how their measurements came
/// out, and the last one's value against its condition.
fn print_analyses(rollout: &proto::Rollout, step: Option<&proto::RolloutStep>) {
    let step_analyses = step.map_or(&[][..], |step| &step.analyses);
    for analysis in rollout.analyses.iter().chain(step_analyses) {
        let measured: Vec<_> = rollout
            .measurements
            .iter()
            .filter(|measurement| {
                measurement.analysis == analysis.name && measurement.step == rollout.step
            })
            .collect();
        let count = |phase| {
            measured
                .iter()
                .filter(|measurement| measurement.phase() == phase)
                .count()
        };
        let last = measured.last().map_or(String::new(), |last| {
            let value = last.value.map_or_else(
                || format!("no value ({})", last.message),
                |value| value.to_string(),
            );
            format!("; last {value} at {}", time_text(last.taken_at))
        });
        outln!(
            "analysis {} ({}): {} successful, {} failed, {} inconclusive, {} errors{last}",
            analysis.name,
            analysis.success_condition,
            count(proto::MeasurementPhase::Successful),
            count(proto::MeasurementPhase::Failed),
            count(proto::MeasurementPhase::Inconclusive),
            count(proto::MeasurementPhase::Error),
        );
    }
}

fn print_list(output: Output, rollouts: &[proto::Rollout]) {
    if output == Output::Json {
        print_message(&proto::ListRolloutsResponse {
            rollouts: rollouts.to_vec(),
            next_page_token: String::new(),
        });
        return;
    }
    let mut table = Table::new(&["ROLLOUT", "STATE", "STEP", "TARGETS", "CREATED"]);
    for rollout in rollouts {
        let targets: Vec<String> = rollout
            .targets
            .iter()
            .map(|target| format!("{}@{}", target.name, target.version))
            .collect();
        table.row(vec![
            rollout.id.clone(),
            state_name(rollout.state()).to_lowercase(),
            format!("{}/{}", rollout.step + 1, rollout.steps.len()),
            targets.join(", "),
            time_text(rollout.created_at),
        ]);
    }
    out!("{table}");
}
