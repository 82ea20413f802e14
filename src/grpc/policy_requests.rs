//! `policyhub.v1.PolicyService` requests as validated domain commands, and
//! replies back as protobuf: the conversions its handlers call.

use super::auth::Rpc;
use super::convert::{self, struct_to_json};
use super::proto;
use crate::config::Limits;
use crate::domain::{
    ActivateCommand, ActivationTarget, DiscardCommand, DraftCommand, Error, EventFilter,
    ExpectedActive, IdempotencyKey, Label, MAX_ACTOR_BYTES, Namespace, NamespaceScope, PolicyBody,
    PolicyName, PolicyRef, PolicySchema, PublishCommand, Requirement, Result, RollbackCommand,
    SetSchemaCommand, VersionSelector, log::TreeSize,
};

const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

pub(super) fn idempotency_key(key: String) -> Result<Option<IdempotencyKey>> {
    crate::domain::refuse_nul("idempotency_key", &key)?;
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Error::invalid(
            "idempotency_key",
            format!(
                "is {} bytes, at most {MAX_IDEMPOTENCY_KEY_LEN} are allowed",
                key.len()
            ),
        ));
    }
    Ok((!key.is_empty()).then_some(IdempotencyKey(key)))
}

/// The draft a request names; unset names the open draft. The field is
/// `optional`, so unset is told apart from 0, which names no version and is
/// refused.
pub(super) fn draft_version(version: Option<u32>) -> Result<Option<u32>> {
    match version {
        Some(0) => Err(Error::invalid(
            "version",
            "versions start at 1; leave version unset for the open draft",
        )),
        other => Ok(other),
    }
}

fn optional_label(field: &str, label: &str) -> Result<Option<Label>> {
    (!label.is_empty())
        .then(|| Label::parse(field, label))
        .transpose()
}

fn body(field: &str, value: Option<prost_types::Struct>, limits: &Limits) -> Result<PolicyBody> {
    let value = value.ok_or_else(|| Error::invalid(field, "is required: a JSON object"))?;
    PolicyBody::parse(field, struct_to_json(field, value)?, limits.max_body_bytes)
}

/// A version named by number or by label, as the `selector` oneofs carry it.
pub(super) fn version_selector(
    field: &str,
    number: Option<u32>,
    label: Option<String>,
) -> Result<VersionSelector> {
    match (number, label) {
        (Some(0), _) | (None, None) => Err(Error::invalid(
            field,
            "give a version number (1 or more) or a label",
        )),
        (Some(number), _) => Ok(VersionSelector::Number(number)),
        (None, Some(label)) => Label::parse(field, &label).map(VersionSelector::Label),
    }
}

pub(super) fn draft_command(
    request: proto::DraftRequest,
    limits: &Limits,
) -> Result<(DraftCommand, Option<IdempotencyKey>)> {
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    let requirements = request
        .requirements
        .into_iter()
        .map(|requirement| (requirement.name, requirement.range));
    let command = DraftCommand {
        requirements: Requirement::parse_all(&policy.namespace, requirements)?,
        body: body("body", request.body, limits)?,
        change_notes: limits.text("change_notes", request.change_notes)?,
        policy,
    };
    Ok((command, idempotency_key(request.idempotency_key)?))
}

pub(super) fn publish_command(
    request: proto::PublishRequest,
    limits: &Limits,
) -> Result<(PublishCommand, Option<IdempotencyKey>)> {
    for (field, given) in [
        (
            "expected_active_version",
            request.expected_active_version.is_some(),
        ),
        (
            "expected_active_revision",
            request.expected_active_revision.is_some(),
        ),
    ] {
        if given && !request.activate {
            return Err(Error::invalid(field, "only applies together with activate"));
        }
    }
    let command = PublishCommand {
        policy: PolicyRef::parse(&request.namespace, &request.name)?,
        version: draft_version(request.version)?,
        label: optional_label("label", &request.label)?,
        activate: request.activate,
        expected_active_version: ExpectedActive::from_wire(
            request.expected_active_version,
            request.expected_active_revision,
        ),
        reason: limits.text("reason", request.reason)?,
    };
    Ok((command, idempotency_key(request.idempotency_key)?))
}

pub(super) fn activate_command(
    request: proto::ActivateRequest,
    limits: &Limits,
) -> Result<(ActivateCommand, Option<IdempotencyKey>)> {
    if request.targets.is_empty() {
        return Err(Error::invalid(
            "targets",
            "name at least one policy to activate",
        ));
    }
    if request.targets.len() > limits.max_activation_targets {
        return Err(Error::invalid(
            "targets",
            format!(
                "{} targets, at most {} are allowed in one activation",
                request.targets.len(),
                limits.max_activation_targets
            ),
        ));
    }
    let mut targets: Vec<ActivationTarget> = Vec::with_capacity(request.targets.len());
    for (index, target) in request.targets.into_iter().enumerate() {
        let prefix = format!("targets[{index}]");
        let policy = PolicyRef::parse(&target.namespace, &target.name)
            .map_err(|error| error.within(&prefix))?;
        if let Some(first) = targets.iter().position(|seen| seen.policy == policy) {
            return Err(Error::invalid(
                prefix,
                format!("{policy} is already targeted by targets[{first}]"),
            ));
        }
        use proto::activation_target::Selector;
        let (number, label) = match target.selector {
            Some(Selector::Version(number)) => (Some(number), None),
            Some(Selector::Label(label)) => (None, Some(label)),
            None => (None, None),
        };
        targets.push(ActivationTarget {
            policy,
            version: version_selector(&format!("{prefix}.version"), number, label)?,
            expected_active_version: ExpectedActive::from_wire(
                target.expected_active_version,
                target.expected_active_revision,
            ),
        });
    }
    let command = ActivateCommand {
        targets,
        reason: limits.text("reason", request.reason)?,
    };
    Ok((command, idempotency_key(request.idempotency_key)?))
}

pub(super) fn rollback_command(
    request: proto::RollbackRequest,
    limits: &Limits,
) -> Result<RollbackCommand> {
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    if request.reason.trim().is_empty() {
        return Err(Error::invalid(
            "reason",
            "is required: say why you roll back",
        ));
    }
    if request.to_version == Some(0) {
        return Err(Error::invalid("to_version", "version numbers start at 1"));
    }
    Ok(RollbackCommand {
        policy,
        to_version: request.to_version,
        reason: limits.text("reason", request.reason)?,
        expected_active_version: ExpectedActive::from_wire(
            request.expected_active_version,
            request.expected_active_revision,
        ),
        restore: request.restore,
    })
}

pub(super) fn schema_command(
    request: proto::SetSchemaRequest,
    limits: &Limits,
) -> Result<SetSchemaCommand> {
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    let schema = match request.schema {
        Some(schema) => {
            let value = struct_to_json("schema", schema)?;
            // Reuse the body's size rule: a schema is a document of the same kind.
            PolicyBody::parse("schema", value.clone(), limits.max_body_bytes)?;
            Some(PolicySchema::parse("schema", value)?)
        }
        None => None,
    };
    Ok(SetSchemaCommand {
        policy,
        schema,
        reason: limits.text("reason", request.reason)?,
        dry_run: request.dry_run,
    })
}

pub(super) fn discard_command(
    request: proto::DiscardDraftRequest,
    limits: &Limits,
) -> Result<DiscardCommand> {
    Ok(DiscardCommand {
        policy: PolicyRef::parse(&request.namespace, &request.name)?,
        version: draft_version(request.version)?,
        reason: limits.text("reason", request.reason)?,
    })
}

/// The policy and the version a GetVersion names.
pub(super) fn version_wanted(
    request: proto::GetVersionRequest,
) -> Result<(PolicyRef, VersionSelector)> {
    use proto::get_version_request::Selector;
    let (number, label) = match request.selector {
        Some(Selector::Version(number)) => (Some(number), None),
        Some(Selector::Label(label)) => (None, Some(label)),
        None => (None, None),
    };
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    Ok((policy, version_selector("version", number, label)?))
}

/// The tree a proof request names by its size: none, for 0, asks for the
/// newest checkpoint's (proto3 sends no field as 0).
pub(super) fn tree_wanted(size: u64) -> Option<TreeSize> {
    TreeSize::new(size)
}

/// The policy and the two versions a DiffVersions compares.
pub(super) fn diff_wanted(request: &proto::DiffVersionsRequest) -> Result<(PolicyRef, u32, u32)> {
    let policy = PolicyRef::parse(&request.namespace, &request.name)?;
    for (field, version) in [
        ("from_version", request.from_version),
        ("to_version", request.to_version),
    ] {
        if version == 0 {
            return Err(Error::invalid(field, "version numbers start at 1"));
        }
    }
    Ok((policy, request.from_version, request.to_version))
}

/// A namespace a listing may leave empty.
/// The method and namespace a `CheckAccess` asks about: a namespaced
/// method needs its namespace, a deployment-wide one none.
pub(super) fn access_question(
    request: &proto::CheckAccessRequest,
) -> Result<(Rpc, Option<Namespace>)> {
    let rpc: Rpc = request
        .method
        .parse()
        .map_err(|error: String| Error::invalid("method", error))?;
    let namespace = optional_namespace(&request.namespace)?;
    match (rpc.is_namespaced(), &namespace) {
        (true, None) => Err(Error::invalid(
            "namespace",
            format!("{rpc:?} acts in a namespace: name it"),
        )),
        (false, Some(_)) => Err(Error::invalid(
            "namespace",
            format!("{rpc:?} acts on the whole deployment: name no namespace"),
        )),
        _ => Ok((rpc, namespace)),
    }
}

pub(super) fn optional_namespace(namespace: &str) -> Result<Option<Namespace>> {
    (!namespace.is_empty())
        .then(|| Namespace::parse("namespace", namespace))
        .transpose()
}

/// The requested namespace (checked by the caller) and the rest of the filter.
pub(super) fn event_filter(
    request: &proto::ListEventsRequest,
) -> Result<(Option<Namespace>, EventFilter)> {
    let namespace = optional_namespace(&request.namespace)?;
    let name = (!request.name.is_empty())
        .then(|| PolicyName::parse("name", &request.name))
        .transpose()?;
    if name.is_some() && namespace.is_none() {
        return Err(Error::invalid(
            "name",
            "filtering by name needs a namespace too",
        ));
    }
    let kinds = request
        .kinds
        .iter()
        .enumerate()
        .map(|(index, kind)| convert::event_kind_from(&format!("kinds[{index}]"), *kind))
        .collect::<Result<_>>()?;
    let actor = event_actor(&request.actor)?;
    let (since, until) = time_window(request.since, request.until)?;
    let filter = EventFilter {
        scope: NamespaceScope::All,
        name,
        kinds,
        actor,
        since,
        until,
    };
    Ok((namespace, filter))
}

/// The actor to filter by; `None` for every actor.
fn event_actor(actor: &str) -> Result<Option<String>> {
    crate::domain::refuse_nul("actor", actor)?;
    if actor.len() > MAX_ACTOR_BYTES {
        return Err(Error::invalid(
            "actor",
            format!(
                "is {} bytes, no actor is longer than {MAX_ACTOR_BYTES}",
                actor.len()
            ),
        ));
    }
    Ok((!actor.is_empty()).then(|| actor.to_owned()))
}

/// One JSON Patch operation as protobuf, read from its RFC 6902 JSON form.
pub(super) fn patch_operation(operation: &json_patch::PatchOperation) -> proto::PatchOperation {
    let json = serde_json::to_value(operation).unwrap_or_default();
    let text = |key: &str| {
        json.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    proto::PatchOperation {
        op: text("op"),
        path: text("path"),
        from: text("from"),
        value: json.get("value").map(convert::json_to_value),
    }
}

/// The namespaces an export covers: those named, or every one.
pub(super) fn export_scope(request: &proto::ExportRequest) -> Result<NamespaceScope> {
    let namespaces = request
        .namespaces
        .iter()
        .enumerate()
        .map(|(index, namespace)| Namespace::parse(&format!("namespaces[{index}]"), namespace))
        .collect::<Result<Vec<_>>>()?;
    Ok(if namespaces.is_empty() {
        NamespaceScope::All
    } else {
        NamespaceScope::Among(namespaces)
    })
}

/// An instant of a listing's window.
type Instant = chrono::DateTime<chrono::Utc>;

/// The instants of a listing's `since` and `until`, the second not before
/// the first.
pub(super) fn time_window(
    since: Option<prost_types::Timestamp>,
    until: Option<prost_types::Timestamp>,
) -> Result<(Option<Instant>, Option<Instant>)> {
    let since = since
        .map(|at| convert::from_timestamp("since", at))
        .transpose()?;
    let until = until
        .map(|at| convert::from_timestamp("until", at))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && until < since
    {
        return Err(Error::invalid(
            "until",
            format!(
                "{} is before since ({})",
                until.to_rfc3339(),
                since.to_rfc3339()
            ),
        ));
    }
    Ok((since, until))
}

#[cfg(test)]
mod tests {
    //! Arbitrary bytes and values through decoding, conversion, body
    //! canonicalisation and name parsing: no panic, and every refusal is the
    //! caller's (never INTERNAL). A fixed seed and a bounded number of cases
    //! keep the run short and repeatable.

    use proptest::{
        prelude::*,
        test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
    };
    use prost::Message;
    use serde_json::Value;

    use super::*;

    fn runner() -> TestRunner {
        TestRunner::new_with_rng(
            Config {
                cases: 512,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
        )
    }

    fn callers_fault(result: Result<impl Sized>) -> bool {
        !matches!(result, Err(Error::Internal(_)))
    }

    /// Any JSON value, a few levels deep.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_blame_the_server() {
        runner()
            .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
                if let Ok(request) = proto::DraftRequest::decode(bytes.as_slice()) {
                    prop_assert!(callers_fault(draft_command(request, &Limits::default())));
                }
                if let Ok(request) = proto::ActivateRequest::decode(bytes.as_slice()) {
                    prop_assert!(callers_fault(activate_command(request, &Limits::default())));
                }
                if let Ok(request) = proto::ListEventsRequest::decode(bytes.as_slice()) {
                    prop_assert!(callers_fault(event_filter(&request)));
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arbitrary_bodies_canonicalise_or_are_refused() {
        runner()
            .run(&json(), |value| {
                let request = proto::DraftRequest {
                    namespace: "team".into(),
                    name: "limits".into(),
                    body: Some(convert::json_to_struct(&value)),
                    ..Default::default()
                };
                match draft_command(request, &Limits::default()) {
                    Ok((command, _)) => {
                        // The canonical form parses back to the same digest.
                        let again = PolicyBody::from_canonical(command.body.canonical().to_owned())
                            .unwrap();
                        prop_assert_eq!(again.digest(), command.body.digest());
                    }
                    Err(error) => prop_assert!(!matches!(error, Error::Internal(_))),
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arbitrary_names_parse_or_are_invalid_arguments() {
        runner()
            .run(&(".{0,80}", ".{0,300}"), |(namespace, name)| {
                match PolicyRef::parse(&namespace, &name) {
                    Ok(policy) => {
                        prop_assert_eq!(policy.namespace.as_str(), namespace.as_str());
                        prop_assert_eq!(policy.name.as_str(), name.as_str());
                    }
                    Err(error) => prop_assert!(matches!(error, Error::InvalidArgument(_))),
                }
                Ok(())
            })
            .unwrap();
    }
}
