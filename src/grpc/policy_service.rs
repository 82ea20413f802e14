//! `policyhub.v1.PolicyService`: each handler extracts the caller, converts
//! the request into a validated command, calls the hub and converts back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Limits;
use super::auth::{Identified, Readable, Rpc, identify};
use super::convert::{self, struct_to_json};
use super::proto::{self, policy_service_server::PolicyService};
use super::quotas::Quotas;
use super::runtimes;
use super::status::to_status;
use crate::domain::{
    ActivateCommand, ActivationOutcome, ActivationTarget, DiscardCommand, DraftCommand, Error,
    EventFilter, IdempotencyKey, Label, Namespace, NamespaceScope, PolicyBody, PolicyName,
    PolicyRef, PolicySchema, PublishCommand, RequestContext, Result, RollbackCommand,
    SetSchemaCommand, VersionSelector,
};
use crate::fleet::Fleet;
use crate::hub::PolicyHub;

/// Serves `PolicyService` on top of the hub.
#[derive(Clone)]
pub struct PolicyApi {
    hub: PolicyHub,
    /// The fleet view, for ListRuntimes and GetPolicyStatus.
    fleet: Fleet,
    limits: Limits,
    quotas: Arc<Quotas>,
}

impl PolicyApi {
    /// The service over `hub`, enforcing `limits` and `quotas`.
    pub fn new(hub: PolicyHub, fleet: Fleet, limits: Limits, quotas: Arc<Quotas>) -> Self {
        PolicyApi {
            hub,
            fleet,
            limits,
            quotas,
        }
    }
}

const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

fn idempotency_key(key: String) -> Result<Option<IdempotencyKey>> {
    super::limits::refuse_nul("idempotency_key", &key)?;
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

/// `0` means "not given" for optional version numbers.
fn optional_version(version: u32) -> Option<u32> {
    (version != 0).then_some(version)
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
fn version_selector(
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

fn draft_command(
    request: proto::DraftRequest,
    limits: &Limits,
) -> Result<(DraftCommand, Option<IdempotencyKey>)> {
    let command = DraftCommand {
        policy: PolicyRef::parse(&request.namespace, &request.name)?,
        body: body("body", request.body, limits)?,
        change_notes: limits.text("change_notes", request.change_notes)?,
    };
    Ok((command, idempotency_key(request.idempotency_key)?))
}

fn publish_command(
    request: proto::PublishRequest,
    limits: &Limits,
) -> Result<(PublishCommand, Option<IdempotencyKey>)> {
    if request.expected_active_version.is_some() && !request.activate {
        return Err(Error::invalid(
            "expected_active_version",
            "only applies together with activate",
        ));
    }
    let command = PublishCommand {
        policy: PolicyRef::parse(&request.namespace, &request.name)?,
        version: optional_version(request.version),
        label: optional_label("label", &request.label)?,
        activate: request.activate,
        expected_active_version: request.expected_active_version,
        reason: limits.text("reason", request.reason)?,
    };
    Ok((command, idempotency_key(request.idempotency_key)?))
}

fn activate_command(
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
            expected_active_version: target.expected_active_version,
        });
    }
    let command = ActivateCommand {
        targets,
        reason: limits.text("reason", request.reason)?,
    };
    Ok((command, idempotency_key(request.idempotency_key)?))
}

fn rollback_command(request: proto::RollbackRequest, limits: &Limits) -> Result<RollbackCommand> {
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
        expected_active_version: request.expected_active_version,
    })
}

fn schema_command(request: proto::SetSchemaRequest, limits: &Limits) -> Result<SetSchemaCommand> {
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
    })
}

fn activate_response(outcome: &ActivationOutcome) -> proto::ActivateResponse {
    proto::ActivateResponse {
        revision: outcome.revision,
        activations: outcome
            .activations
            .iter()
            .map(|activation| proto::Activation {
                namespace: activation.policy.namespace.to_string(),
                name: activation.policy.name.to_string(),
                version: activation.version,
                previous_version: activation.previous_version.unwrap_or(0),
            })
            .collect(),
    }
}

/// Checks `rpc` in every namespace of `namespaces` and returns the context.
fn authorize_all<'a>(
    who: &Identified,
    rpc: Rpc,
    mut namespaces: impl Iterator<Item = &'a Namespace>,
) -> Result<RequestContext, Status> {
    let first = namespaces
        .next()
        .ok_or_else(|| Status::invalid_argument("no namespace"))?;
    let context = who.authorize(rpc, first)?;
    for namespace in namespaces {
        who.authorize(rpc, namespace)?;
    }
    Ok(context)
}

/// What a caller may list: the namespace it asked for (when allowed), or
/// every namespace it may read.
fn listing_scope(
    who: &Identified,
    rpc: Rpc,
    namespace: Option<Namespace>,
) -> Result<NamespaceScope, Status> {
    if let Some(namespace) = namespace {
        who.authorize(rpc, &namespace)?;
        return Ok(NamespaceScope::One(namespace));
    }
    Ok(match who.caller().readable() {
        Readable::All => NamespaceScope::All,
        Readable::Only(namespaces) => NamespaceScope::Among(namespaces),
    })
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn draft(
        &self,
        request: Request<proto::DraftRequest>,
    ) -> Result<Response<proto::DraftResponse>, Status> {
        let who = identify(&request)?;
        let (command, key) =
            draft_command(request.into_inner(), &self.limits).map_err(to_status)?;
        let context = who.authorize(Rpc::Draft, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self
            .hub
            .draft(command, &context, key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::DraftResponse {
            version: Some(convert::version(&outcome.version)),
            superseded_version: outcome.superseded_version.unwrap_or(0),
        }))
    }

    async fn discard_draft(
        &self,
        request: Request<proto::DiscardDraftRequest>,
    ) -> Result<Response<proto::DiscardDraftResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let command = PolicyRef::parse(&request.namespace, &request.name)
            .and_then(|policy| {
                Ok(DiscardCommand {
                    policy,
                    version: optional_version(request.version),
                    reason: self.limits.text("reason", request.reason)?,
                })
            })
            .map_err(to_status)?;
        let context = who.authorize(Rpc::DiscardDraft, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let record = self
            .hub
            .discard_draft(command, &context)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::DiscardDraftResponse {
            version: Some(convert::version(&record)),
        }))
    }

    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let who = identify(&request)?;
        let (command, key) =
            publish_command(request.into_inner(), &self.limits).map_err(to_status)?;
        let context = who.authorize(Rpc::Publish, &command.policy.namespace)?;
        if command.activate {
            who.authorize(Rpc::Activate, &command.policy.namespace)?;
        }
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self
            .hub
            .publish(command, &context, key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::PublishResponse {
            version: Some(convert::version(&outcome.version)),
            already_published: outcome.already_published,
            revision: outcome
                .activation
                .filter(ActivationOutcome::moved)
                .map_or(0, |activation| activation.revision),
        }))
    }

    async fn activate(
        &self,
        request: Request<proto::ActivateRequest>,
    ) -> Result<Response<proto::ActivateResponse>, Status> {
        let who = identify(&request)?;
        let (command, key) =
            activate_command(request.into_inner(), &self.limits).map_err(to_status)?;
        let context = authorize_all(
            &who,
            Rpc::Activate,
            command
                .targets
                .iter()
                .map(|target| &target.policy.namespace),
        )?;
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self
            .hub
            .activate(command, &context, key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(activate_response(&outcome)))
    }

    async fn rollback(
        &self,
        request: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::RollbackResponse>, Status> {
        let who = identify(&request)?;
        let command = rollback_command(request.into_inner(), &self.limits).map_err(to_status)?;
        let context = who.authorize(Rpc::Rollback, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self
            .hub
            .rollback(command, &context)
            .await
            .map_err(to_status)?;
        let activation = outcome
            .activations
            .first()
            .ok_or_else(|| Status::internal("a rollback moved no pointer"))?;
        Ok(Response::new(proto::RollbackResponse {
            revision: outcome.revision,
            version: activation.version,
            previous_version: activation.previous_version.unwrap_or(0),
        }))
    }

    async fn get_version(
        &self,
        request: Request<proto::GetVersionRequest>,
    ) -> Result<Response<proto::Version>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        use proto::get_version_request::Selector;
        let (number, label) = match request.selector {
            Some(Selector::Version(number)) => (Some(number), None),
            Some(Selector::Label(label)) => (None, Some(label)),
            None => (None, None),
        };
        let (policy, selector) = PolicyRef::parse(&request.namespace, &request.name)
            .and_then(|policy| Ok((policy, version_selector("version", number, label)?)))
            .map_err(to_status)?;
        who.authorize(Rpc::GetVersion, &policy.namespace)?;
        let record = self
            .hub
            .get_version(&policy, &selector)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::version(&record)))
    }

    async fn list_versions(
        &self,
        request: Request<proto::ListVersionsRequest>,
    ) -> Result<Response<proto::ListVersionsResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let policy = PolicyRef::parse(&request.namespace, &request.name).map_err(to_status)?;
        who.authorize(Rpc::ListVersions, &policy.namespace)?;
        let page = self
            .hub
            .list_versions(
                &policy,
                self.limits.page_size(request.page_size),
                &request.page_token,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListVersionsResponse {
            versions: page.items.iter().map(convert::version).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<proto::ListPoliciesRequest>,
    ) -> Result<Response<proto::ListPoliciesResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let namespace = (!request.namespace.is_empty())
            .then(|| Namespace::parse("namespace", &request.namespace))
            .transpose()
            .map_err(to_status)?;
        let scope = listing_scope(&who, Rpc::ListPolicies, namespace)?;
        let page = self
            .hub
            .list_policies(
                &scope,
                self.limits.page_size(request.page_size),
                &request.page_token,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListPoliciesResponse {
            policies: page.items.iter().map(convert::policy).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Result<Response<proto::ListEventsResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let (namespace, mut filter) = event_filter(&request).map_err(to_status)?;
        filter.scope = listing_scope(&who, Rpc::ListEvents, namespace)?;
        let page = self
            .hub
            .list_events(
                &filter,
                self.limits.page_size(request.page_size),
                &request.page_token,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListEventsResponse {
            events: page.items.iter().map(convert::event).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn diff_versions(
        &self,
        request: Request<proto::DiffVersionsRequest>,
    ) -> Result<Response<proto::DiffVersionsResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let policy = PolicyRef::parse(&request.namespace, &request.name).map_err(to_status)?;
        for (field, version) in [
            ("from_version", request.from_version),
            ("to_version", request.to_version),
        ] {
            if version == 0 {
                return Err(to_status(Error::invalid(
                    field,
                    "version numbers start at 1",
                )));
            }
        }
        who.authorize(Rpc::DiffVersions, &policy.namespace)?;
        let (from, to, patch) = self
            .hub
            .diff(&policy, request.from_version, request.to_version)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::DiffVersionsResponse {
            operations: patch.0.iter().map(patch_operation).collect(),
            from_digest: from.digest().to_string(),
            to_digest: to.digest().to_string(),
        }))
    }

    async fn set_schema(
        &self,
        request: Request<proto::SetSchemaRequest>,
    ) -> Result<Response<proto::SetSchemaResponse>, Status> {
        let who = identify(&request)?;
        let command = schema_command(request.into_inner(), &self.limits).map_err(to_status)?;
        let context = who.authorize(Rpc::SetSchema, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let (summary, violations) = self
            .hub
            .set_schema(command, &context)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::SetSchemaResponse {
            policy: Some(convert::policy(&summary)),
            active_version_violations: violations.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<proto::RotateSigningKeyRequest>,
    ) -> Result<Response<proto::RotateSigningKeyResponse>, Status> {
        let context = identify(&request)?.authorize_everywhere(Rpc::RotateSigningKey)?;
        let reason = self
            .limits
            .text("reason", request.into_inner().reason)
            .map_err(to_status)?;
        let (previous_key_id, signing_key_id) = self
            .hub
            .rotate_signing_key(&context, &reason)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::RotateSigningKeyResponse {
            signing_key_id,
            previous_key_id,
        }))
    }

    async fn list_runtimes(
        &self,
        request: Request<proto::ListRuntimesRequest>,
    ) -> Result<Response<proto::ListRuntimesResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let (namespace, filter) = runtimes::runtime_filter(&request).map_err(to_status)?;
        who.authorize(Rpc::ListRuntimes, &namespace)?;
        let fleet = self.fleet.runtimes(&namespace).await.map_err(to_status)?;
        let page = crate::domain::runtime::runtimes_page(
            fleet,
            &filter,
            self.limits.page_size(request.page_size),
            &request.page_token,
        )
        .map_err(to_status)?;
        Ok(Response::new(proto::ListRuntimesResponse {
            runtimes: page
                .items
                .iter()
                .map(|(record, state)| runtimes::runtime(record, *state))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_policy_status(
        &self,
        request: Request<proto::GetPolicyStatusRequest>,
    ) -> Result<Response<proto::GetPolicyStatusResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let policy = PolicyRef::parse(&request.namespace, &request.name).map_err(to_status)?;
        who.authorize(Rpc::GetPolicyStatus, &policy.namespace)?;
        let active = self
            .hub
            .index()
            .snapshot()
            .get(&policy)
            .map(|indexed| (indexed.bundle.version, indexed.bundle.revision));
        let fleet = self
            .fleet
            .runtimes(&policy.namespace)
            .await
            .map_err(to_status)?;
        let status = crate::domain::runtime::policy_status(
            &policy.name,
            active.map_or(0, |(version, _)| version),
            &fleet,
        );
        Ok(Response::new(runtimes::policy_status(
            &policy.namespace,
            &policy.name,
            active,
            status,
        )))
    }
}

/// The requested namespace (checked by the caller) and the rest of the filter.
fn event_filter(request: &proto::ListEventsRequest) -> Result<(Option<Namespace>, EventFilter)> {
    let namespace = (!request.namespace.is_empty())
        .then(|| Namespace::parse("namespace", &request.namespace))
        .transpose()?;
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
    let filter = EventFilter {
        scope: NamespaceScope::All,
        name,
        kinds,
    };
    Ok((namespace, filter))
}

/// One JSON Patch operation as protobuf, read from its RFC 6902 JSON form.
fn patch_operation(operation: &json_patch::PatchOperation) -> proto::PatchOperation {
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
