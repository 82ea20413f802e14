//! Protobuf ⇄ domain for decisions (docs/src/guides/decisions.md): OPA's
//! decision log uploads, and their listing.

use prometheus_client::metrics::counter::Counter;

use super::convert::{from_timestamp, json_to_value, timestamp, value_to_json};
use super::policy_requests::time_window;
use super::proto;
use crate::domain::decision::{Decision, DecisionFilter, Kept, ResultMatch, StoredDecision};
use crate::domain::impact::{DEFAULT_REPLAYED, Example, ImpactReport, MAX_REPLAYED};
use crate::domain::runtime::RuntimeId;
use crate::domain::runtime::opa::OpaDue;
use crate::domain::{Error, Namespace, Page, PolicyRef, Result};

/// What uploads of decisions count: the metrics'
/// `policyhub_decisions_kept_total` and
/// `policyhub_decisions_dropped_total{reason}`.
#[derive(Clone, Default)]
pub struct DecisionInstruments {
    pub kept: Counter,
    pub dropped_by_count: Counter,
    pub dropped_by_age: Counter,
}

impl DecisionInstruments {
    /// Counts what keeping an upload did.
    pub fn count(&self, kept: &Kept) {
        self.kept.inc_by(kept.kept);
        self.dropped_by_count.inc_by(kept.dropped_by_count);
        self.dropped_by_age.inc_by(kept.dropped_by_age);
    }
}

/// An upload: the namespace, the OPA, and its decisions, each checked. A
/// decision names the revision of the bundle named after the namespace
/// when that bundle's manifest revision is one of this server's.
pub fn opa_decision_upload(
    request: proto::UploadOpaDecisionsRequest,
) -> Result<(Namespace, RuntimeId, Vec<Decision>)> {
    let namespace = Namespace::parse("namespace", &request.namespace)?;
    let runtime = RuntimeId::parse("runtime_id", &request.runtime_id)?;
    let decisions = request
        .decisions
        .into_iter()
        .enumerate()
        .map(|(index, uploaded)| {
            let field = format!("decisions[{index}]");
            let json = |name: &str, value: Option<prost_types::Value>| {
                value
                    .map(|value| value_to_json(&format!("{field}.{name}"), value))
                    .transpose()
            };
            let decided_at = match uploaded.timestamp {
                Some(at) => from_timestamp(&format!("{field}.timestamp"), at)?,
                None => return Err(Error::invalid(format!("{field}.timestamp"), "is required")),
            };
            let revision = uploaded
                .bundles
                .get(namespace.as_str())
                .and_then(|bundle| OpaDue::from_manifest_revision(&bundle.revision))
                .map(|due| due.revision);
            Decision {
                id: uploaded.decision_id,
                runtime: runtime.clone(),
                path: uploaded.path,
                input: json("input", uploaded.input)?
                    .map(|input| crate::domain::canonical_json(&input)),
                result: json("result", uploaded.result)?
                    .map(|result| crate::domain::canonical_json(&result)),
                revision,
                decided_at,
            }
            .checked(&field)
        })
        .collect::<Result<_>>()?;
    Ok((namespace, runtime, decisions))
}

/// A listing request: the namespace and the filter.
pub fn decision_filter(
    request: &proto::ListDecisionsRequest,
) -> Result<(Namespace, DecisionFilter)> {
    let namespace = Namespace::parse("namespace", &request.namespace)?;
    let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    let (since, until) = time_window(request.since, request.until)?;
    let filter = DecisionFilter {
        path: text(request.path.trim_matches('/')),
        result: text(&request.result)
            .map(|result| ResultMatch::parse("result", &result))
            .transpose()?,
        runtime: text(&request.runtime_id)
            .map(|runtime| RuntimeId::parse("runtime_id", &runtime))
            .transpose()?,
        revision: (request.revision != 0).then_some(request.revision),
        since,
        until,
    };
    Ok((namespace, filter))
}

/// A page of decisions as protobuf.
pub fn decisions(page: Page<StoredDecision>) -> proto::ListDecisionsResponse {
    proto::ListDecisionsResponse {
        decisions: page.items.into_iter().map(decision).collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    }
}

fn decision(stored: StoredDecision) -> proto::Decision {
    let decision = stored.decision;
    proto::Decision {
        decision_id: decision.id,
        runtime_id: decision.runtime.as_str().to_owned(),
        path: decision.path,
        input: json_value(decision.input),
        result: json_value(decision.result),
        revision: decision.revision.unwrap_or_default(),
        decide_time: Some(timestamp(decision.decided_at)),
        receive_time: Some(timestamp(stored.received_at)),
    }
}

/// An impact analysis request: the policy, its version, the decisions'
/// filter and how many to replay.
pub fn impact_wanted(
    request: &proto::AnalyzeImpactRequest,
) -> Result<(PolicyRef, u32, DecisionFilter, u32)> {
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    if request.version == 0 {
        return Err(Error::invalid(
            "version",
            "is required: the number of the draft or published version to judge",
        ));
    }
    let limit = match request.limit {
        0 => DEFAULT_REPLAYED,
        limit if limit > MAX_REPLAYED => {
            return Err(Error::invalid(
                "limit",
                format!("{limit} decisions, at most {MAX_REPLAYED} are replayed at once"),
            ));
        }
        limit => limit,
    };
    let (since, until) = time_window(request.since, request.until)?;
    let path = request.path.trim_matches('/');
    let filter = DecisionFilter {
        path: (!path.is_empty()).then(|| path.to_owned()),
        since,
        until,
        ..DecisionFilter::default()
    };
    Ok((policy, request.version, filter, limit))
}

/// An impact report as protobuf.
pub fn impact(report: ImpactReport) -> proto::AnalyzeImpactResponse {
    let result = |value: Option<String>| value.unwrap_or_else(|| "undefined".to_owned());
    let examples = |examples: Vec<Example>| {
        examples
            .into_iter()
            .map(|example| proto::ImpactExample {
                decision_id: example.decision_id,
                input: json_value(example.input),
            })
            .collect()
    };
    proto::AnalyzeImpactResponse {
        replayed: report.replayed,
        changed: report.changed,
        unknown: report.unknown,
        paths: report
            .paths
            .into_iter()
            .map(|path| proto::ImpactPath {
                path: path.path,
                replayed: path.replayed,
                changed: path.changed,
                unknown: path.unknown,
            })
            .collect(),
        changes: report
            .changes
            .into_iter()
            .map(|change| proto::ImpactChange {
                path: change.path,
                before: result(change.before),
                after: result(change.after),
                count: change.count,
                examples: examples(change.examples),
            })
            .collect(),
        unknowns: report
            .unknowns
            .into_iter()
            .map(|unknown| proto::ImpactUnknown {
                path: unknown.path,
                reason: unknown.reason,
                count: unknown.count,
                examples: examples(unknown.examples),
            })
            .collect(),
        active_revision: report.active_revision,
    }
}

/// Canonical JSON this server stored, as a protobuf value.
fn json_value(text: Option<String>) -> Option<prost_types::Value> {
    text.and_then(|text| serde_json::from_str(&text).ok())
        .map(|json| json_to_value(&json))
}
