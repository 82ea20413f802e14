//! Protobuf ⇄ domain for runtimes: identities on `WatchActive`, reports,
//! the fleet listing and a policy's status.

use super::convert::timestamp;
use super::proto;
use crate::domain::{
    Error, Namespace, PolicyName, Result,
    runtime::{
        ApplyState, LabelSelector, MAX_REJECTION_ERROR_BYTES, PolicyOutcome, PolicyStatus,
        RuntimeFilter, RuntimeId, RuntimeLabels, RuntimeRecord, RuntimeState, StatusReport,
    },
};
use crate::fleet::Arrival;
use crate::watch::Watcher;

/// Most policies one report may name, as many as one watch may select.
const MAX_REPORTED_POLICIES: usize = 1000;

/// The runtime opening a watch stream, when it named itself.
pub fn arrival(
    runtime: &proto::RuntimeIdentity,
    namespace: &Namespace,
    names: &[PolicyName],
    subject: &str,
) -> Result<Arrival> {
    let Watcher { id, labels } = watcher(runtime)?;
    Ok(Arrival {
        namespace: namespace.clone(),
        id,
        labels,
        names: names.to_vec(),
        subject: subject.to_owned(),
    })
}

/// A runtime's identity, validated.
pub fn watcher(runtime: &proto::RuntimeIdentity) -> Result<Watcher> {
    Ok(Watcher {
        id: RuntimeId::parse("runtime.id", &runtime.id)?,
        labels: RuntimeLabels::parse(
            "runtime.labels",
            runtime
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone())),
        )?,
    })
}

fn apply_state_from(field: &str, raw: i32) -> Result<ApplyState> {
    match proto::ApplyState::try_from(raw) {
        Ok(proto::ApplyState::Applied) => Ok(ApplyState::Applied),
        Ok(proto::ApplyState::Rejected) => Ok(ApplyState::Rejected),
        _ => Err(Error::invalid(field, "state must be APPLIED or REJECTED")),
    }
}

fn apply_state(state: ApplyState) -> proto::ApplyState {
    match state {
        ApplyState::Applied => proto::ApplyState::Applied,
        ApplyState::Rejected => proto::ApplyState::Rejected,
    }
}

fn outcome(
    field: &str,
    status: &proto::PolicyApplyStatus,
    revision: u64,
) -> Result<(PolicyName, PolicyOutcome)> {
    let name = PolicyName::parse(&format!("{field}.name"), &status.name)?;
    let state = apply_state_from(&format!("{field}.state"), status.state)?;
    if status.version == 0 {
        return Err(Error::invalid(
            format!("{field}.version"),
            "name the version the outcome is about",
        ));
    }
    if status.error.len() > MAX_REJECTION_ERROR_BYTES {
        return Err(Error::invalid(
            format!("{field}.error"),
            format!(
                "is {} bytes, at most {MAX_REJECTION_ERROR_BYTES} are allowed",
                status.error.len()
            ),
        ));
    }
    match state {
        ApplyState::Applied if !status.error.is_empty() => {
            return Err(Error::invalid(
                format!("{field}.error"),
                "an applied version carries no error",
            ));
        }
        ApplyState::Rejected if status.error.trim().is_empty() => {
            return Err(Error::invalid(
                format!("{field}.error"),
                "say why the version was rejected",
            ));
        }
        _ => {}
    }
    Ok((
        name,
        PolicyOutcome {
            version: status.version,
            state,
            error: status.error.clone(),
            revision,
            reported_at: None,
        },
    ))
}

/// A report, validated.
pub fn status_report(request: &proto::ReportStatusRequest) -> Result<StatusReport> {
    let namespace = Namespace::parse("namespace", &request.namespace)?;
    let runtime = RuntimeId::parse("runtime_id", &request.runtime_id)?;
    if request.revision == 0 {
        return Err(Error::invalid(
            "revision",
            "name the revision of the state the runtime decided on",
        ));
    }
    if request.policies.len() > MAX_REPORTED_POLICIES {
        return Err(Error::invalid(
            "policies",
            format!(
                "{} entries, at most {MAX_REPORTED_POLICIES} are allowed",
                request.policies.len()
            ),
        ));
    }
    let mut outcomes: Vec<(PolicyName, PolicyOutcome)> = request
        .policies
        .iter()
        .enumerate()
        .map(|(index, status)| outcome(&format!("policies[{index}]"), status, request.revision))
        .collect::<Result<_>>()?;
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = outcomes.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(Error::invalid(
            "policies",
            format!("{} is reported twice", pair[0].0.as_str()),
        ));
    }
    Ok(StatusReport {
        namespace,
        runtime,
        revision: request.revision,
        outcomes,
    })
}

fn runtime_state(state: RuntimeState) -> proto::RuntimeState {
    match state {
        RuntimeState::Connected => proto::RuntimeState::Connected,
        RuntimeState::Disconnected => proto::RuntimeState::Disconnected,
        RuntimeState::Stale => proto::RuntimeState::Stale,
    }
}

/// The filter of a `ListRuntimes` request, and its namespace.
pub fn runtime_filter(request: &proto::ListRuntimesRequest) -> Result<(Namespace, RuntimeFilter)> {
    let namespace = Namespace::parse("namespace", &request.namespace)?;
    let name = (!request.name.is_empty())
        .then(|| PolicyName::parse("name", &request.name))
        .transpose()?;
    let labels = LabelSelector::parse("label_selector", &request.label_selector)?;
    let states = request
        .states
        .iter()
        .enumerate()
        .map(|(index, raw)| match proto::RuntimeState::try_from(*raw) {
            Ok(proto::RuntimeState::Connected) => Ok(RuntimeState::Connected),
            Ok(proto::RuntimeState::Disconnected) => Ok(RuntimeState::Disconnected),
            Ok(proto::RuntimeState::Stale) => Ok(RuntimeState::Stale),
            _ => Err(Error::invalid(
                format!("states[{index}]"),
                "state must be CONNECTED, DISCONNECTED or STALE",
            )),
        })
        .collect::<Result<_>>()?;
    Ok((
        namespace,
        RuntimeFilter {
            name,
            labels,
            states,
        },
    ))
}

/// One runtime of the fleet view.
pub fn runtime(record: &RuntimeRecord, state: RuntimeState) -> proto::Runtime {
    proto::Runtime {
        namespace: record.namespace.as_str().to_owned(),
        id: record.id.as_str().to_owned(),
        labels: record
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        state: runtime_state(state) as i32,
        subject: record.subject.clone(),
        last_seen: Some(timestamp(record.last_seen)),
        applied_revision: record.applied_revision,
        policies: record
            .policies
            .iter()
            .map(|(name, outcome)| proto::PolicyApplyStatus {
                name: name.as_str().to_owned(),
                version: outcome.version,
                state: apply_state(outcome.state) as i32,
                error: outcome.error.clone(),
                revision: outcome.revision,
            })
            .collect(),
        names: record
            .names
            .iter()
            .map(|name| name.as_str().to_owned())
            .collect(),
    }
}

/// The counts of a policy's status across the fleet.
pub fn fleet_summary(status: &PolicyStatus) -> proto::FleetSummary {
    proto::FleetSummary {
        runtimes: status.runtimes,
        applied: status.applied,
        rejected: status.rejected,
        pending: status.pending,
        stale: status.stale,
    }
}

/// A policy's status across the fleet.
pub fn policy_status(
    namespace: &Namespace,
    name: &PolicyName,
    active: Option<(u32, u64)>,
    status: PolicyStatus,
) -> proto::GetPolicyStatusResponse {
    let (active_version, active_revision) = active.unwrap_or_default();
    proto::GetPolicyStatusResponse {
        namespace: namespace.as_str().to_owned(),
        name: name.as_str().to_owned(),
        active_version,
        active_revision,
        runtimes: status.runtimes,
        applied: status.applied,
        rejected: status.rejected,
        pending: status.pending,
        stale: status.stale,
        versions: status
            .versions
            .into_iter()
            .map(|version| proto::VersionApplyStatus {
                version: version.version,
                applied: version.applied,
                rejected: version.rejected,
                rejections: version
                    .rejections
                    .into_iter()
                    .map(|group| proto::RejectionGroup {
                        error: group.error,
                        runtimes: group.runtimes,
                        runtime_ids: group
                            .runtime_ids
                            .iter()
                            .map(|id| id.as_str().to_owned())
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
