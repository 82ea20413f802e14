//! Rollout requests as validated domain commands, and rollouts back as
//! protobuf.

use std::time::Duration;

use super::convert::{from_timestamp, timestamp};
use super::policy_requests::{idempotency_key, version_selector};
use super::proto;
use crate::config::Limits;
use crate::domain::rollout::{
    Analysis, DEFAULT_CONSECUTIVE_ERROR_LIMIT, DEFAULT_PROMETHEUS, FailureRule, Measurement,
    MeasurementPhase, Progress, Rollout, RolloutState, RolloutStep, StartRolloutCommand,
};
use crate::domain::{
    Error, ExpectedActive, IdempotencyKey, Namespace, PolicyName, Result, refuse_nul,
};

/// A protobuf duration as a std one; negative or out of range is refused.
fn duration(field: &str, value: Option<prost_types::Duration>) -> Result<Duration> {
    let Some(value) = value else {
        return Ok(Duration::ZERO);
    };
    Duration::try_from(value).map_err(|_| Error::invalid(field, "must be a duration of 0 or more"))
}

fn wire_duration(value: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(value).ok()
}

/// Analyses as requested; their rules are the domain's
/// (`rollout::validate_analyses`), checked when the rollout starts.
fn analyses(prefix: &str, requested: Vec<proto::RolloutAnalysis>) -> Result<Vec<Analysis>> {
    requested
        .into_iter()
        .enumerate()
        .map(|(index, analysis)| {
            let field = format!("{prefix}analyses[{index}]");
            for (name, text) in [
                ("name", &analysis.name),
                ("prometheus", &analysis.prometheus),
                ("query", &analysis.query),
                ("success_condition", &analysis.success_condition),
            ] {
                refuse_nul(&format!("{field}.{name}"), text)?;
            }
            let prometheus = match analysis.prometheus.is_empty() {
                true => DEFAULT_PROMETHEUS.to_owned(),
                false => analysis.prometheus,
            };
            Ok(Analysis {
                name: analysis.name,
                prometheus,
                query: analysis.query,
                success_condition: analysis.success_condition,
                interval: duration(&format!("{field}.interval"), analysis.interval)?,
                count: analysis.count,
                failure_limit: analysis.failure_limit,
                inconclusive_limit: analysis.inconclusive_limit,
                consecutive_error_limit: analysis
                    .consecutive_error_limit
                    .unwrap_or(DEFAULT_CONSECUTIVE_ERROR_LIMIT),
            })
        })
        .collect()
}

fn wire_analyses(analyses: &[Analysis]) -> Vec<proto::RolloutAnalysis> {
    analyses
        .iter()
        .map(|analysis| proto::RolloutAnalysis {
            name: analysis.name.clone(),
            prometheus: analysis.prometheus.clone(),
            query: analysis.query.clone(),
            success_condition: analysis.success_condition.clone(),
            interval: wire_duration(analysis.interval),
            count: analysis.count,
            failure_limit: analysis.failure_limit,
            inconclusive_limit: analysis.inconclusive_limit,
            consecutive_error_limit: Some(analysis.consecutive_error_limit),
        })
        .collect()
}

/// Measurements as protobuf.
pub(super) fn measurements(taken: &[Measurement]) -> Vec<proto::AnalysisMeasurement> {
    taken
        .iter()
        .map(|measurement| proto::AnalysisMeasurement {
            analysis: measurement.analysis.clone(),
            step: measurement.step as u32,
            phase: proto::MeasurementPhase::from_str_name(&format!(
                "MEASUREMENT_PHASE_{}",
                measurement.phase.as_str()
            ))
            .expect("every measurement phase is in the protobuf enum") as i32,
            value: measurement.value,
            success_condition: measurement.success_condition.clone(),
            message: measurement.message.clone(),
            taken_at: Some(timestamp(measurement.taken_at)),
        })
        .collect()
}

/// A measurement as protobuf holds it (an archive's), back in the domain's
/// terms; an unknown or unspecified phase is refused.
pub(super) fn measurement_record(wire: proto::AnalysisMeasurement) -> Result<Measurement> {
    let phase = match proto::MeasurementPhase::try_from(wire.phase) {
        Ok(proto::MeasurementPhase::Successful) => MeasurementPhase::Successful,
        Ok(proto::MeasurementPhase::Failed) => MeasurementPhase::Failed,
        Ok(proto::MeasurementPhase::Inconclusive) => MeasurementPhase::Inconclusive,
        Ok(proto::MeasurementPhase::Error) => MeasurementPhase::Error,
        Ok(proto::MeasurementPhase::Unspecified) | Err(_) => {
            return Err(Error::invalid(
                "phase",
                format!("measurement phase {} is none of the known ones", wire.phase),
            ));
        }
    };
    Ok(Measurement {
        analysis: wire.analysis,
        step: wire.step as usize,
        phase,
        value: wire.value,
        success_condition: wire.success_condition,
        message: wire.message,
        taken_at: from_timestamp("taken_at", wire.taken_at.unwrap_or_default())?,
    })
}

/// A `StartRollout` request, validated.
pub(super) fn start_command(
    request: proto::StartRolloutRequest,
    limits: &Limits,
) -> Result<(StartRolloutCommand, Option<IdempotencyKey>)> {
    let namespace = Namespace::parse("namespace", &request.namespace)?;
    if request.targets.is_empty() {
        return Err(Error::invalid(
            "targets",
            "name at least one policy to roll out",
        ));
    }
    if request.targets.len() > limits.max_activation_targets {
        return Err(Error::invalid(
            "targets",
            format!(
                "{} targets, at most {} are allowed in one rollout",
                request.targets.len(),
                limits.max_activation_targets
            ),
        ));
    }
    let mut targets = Vec::with_capacity(request.targets.len());
    for (index, target) in request.targets.into_iter().enumerate() {
        let prefix = format!("targets[{index}]");
        let name = PolicyName::parse(&format!("{prefix}.name"), &target.name)?;
        if let Some(first) = targets.iter().position(|(seen, _, _)| *seen == name) {
            return Err(Error::invalid(
                prefix,
                format!("{name} is already targeted by targets[{first}]"),
            ));
        }
        use proto::rollout_target_request::Selector;
        let (number, label) = match target.selector {
            Some(Selector::Version(number)) => (Some(number), None),
            Some(Selector::Label(label)) => (None, Some(label)),
            None => (None, None),
        };
        let selector = version_selector(&format!("{prefix}.version"), number, label)?;
        let expected = ExpectedActive::from_wire(target.expected_active_version, None);
        targets.push((name, selector, expected));
    }
    let steps = request
        .steps
        .into_iter()
        .enumerate()
        .map(|(index, step)| {
            let field = format!("steps[{index}]");
            refuse_nul(&format!("{field}.label_selector"), &step.label_selector)?;
            Ok(RolloutStep {
                percentage: step.percentage,
                label_selector: step.label_selector,
                bake: duration(&format!("{field}.bake"), step.bake)?,
                analyses: analyses(&format!("{field}."), step.analyses)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let rule = request.failure_rule.unwrap_or_default();
    let failure_rule = FailureRule {
        max_rejected: rule.max_rejected,
        max_rejected_fraction: rule.max_rejected_fraction,
        apply_deadline: duration("failure_rule.apply_deadline", rule.apply_deadline)?,
    };
    let command = StartRolloutCommand {
        namespace,
        targets,
        steps,
        failure_rule,
        auto_rollback: request.auto_rollback.unwrap_or(true),
        analyses: analyses("", request.analyses)?,
        reason: limits.text("reason", request.reason)?,
        start_at: request
            .start_at
            .map(|at| from_timestamp("start_at", at))
            .transpose()?,
    };
    Ok((command, idempotency_key(request.idempotency_key)?))
}

/// The rollout a control names, and the reason given.
pub(super) fn control_wanted(
    request: proto::RolloutControlRequest,
    limits: &Limits,
) -> Result<(Namespace, String, String)> {
    let (namespace, id) = named(&request.namespace, &request.id)?;
    Ok((namespace, id, limits.text("reason", request.reason)?))
}

/// The namespace and id a request names.
pub(super) fn named(namespace: &str, id: &str) -> Result<(Namespace, String)> {
    let namespace = Namespace::parse("namespace", namespace)?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(Error::invalid(
            "id",
            format!("{} is not a rollout id (a UUID)", crate::domain::quoted(id)),
        ));
    }
    Ok((namespace, id.to_owned()))
}

pub(super) fn state(state: RolloutState) -> proto::RolloutState {
    proto::RolloutState::from_str_name(&format!("ROLLOUT_STATE_{}", state.as_str()))
        .expect("every rollout state is in the protobuf enum")
}

/// A rollout as protobuf, with its current step's progress.
pub(super) fn rollout(rollout: &Rollout, progress: Progress) -> proto::Rollout {
    proto::Rollout {
        id: rollout.id.clone(),
        namespace: rollout.namespace.to_string(),
        targets: rollout
            .targets
            .iter()
            .map(|target| proto::RolloutTarget {
                name: target.policy.name.to_string(),
                version: target.version,
                digest: target.digest.to_string(),
                stable_version: target.stable_version.unwrap_or(0),
            })
            .collect(),
        steps: rollout
            .steps
            .iter()
            .map(|step| proto::RolloutStep {
                percentage: step.percentage,
                label_selector: step.label_selector.clone(),
                bake: wire_duration(step.bake),
                analyses: wire_analyses(&step.analyses),
            })
            .collect(),
        failure_rule: Some(proto::FailureRule {
            max_rejected: rollout.failure_rule.max_rejected,
            max_rejected_fraction: rollout.failure_rule.max_rejected_fraction,
            apply_deadline: (!rollout.failure_rule.apply_deadline.is_zero())
                .then(|| wire_duration(rollout.failure_rule.apply_deadline))
                .flatten(),
        }),
        auto_rollback: rollout.auto_rollback,
        state: state(rollout.state) as i32,
        step: rollout.step as u32,
        step_revisions: rollout.step_revisions.clone(),
        step_started_at: Some(timestamp(rollout.step_started_at)),
        created_by: rollout.created_by.clone(),
        created_at: Some(timestamp(rollout.created_at)),
        reason: rollout.reason.clone(),
        halted_because: rollout.halted_because.clone(),
        progress: Some(proto::RolloutProgress {
            cohort: progress.cohort,
            applied: progress.applied,
            rejected: progress.rejected,
            pending: progress.pending,
        }),
        start_at: rollout.start_at.map(timestamp),
        required_approvals: rollout.required_approvals,
        approvals: rollout
            .approvals
            .iter()
            .map(|approval| proto::RolloutApproval {
                by: approval.by.clone(),
                at: Some(timestamp(approval.at)),
            })
            .collect(),
        analyses: wire_analyses(&rollout.analyses),
        measurements: Vec::new(),
        impact: rollout.impact.clone().map(super::decisions::impact),
    }
}
