//! `policyhub.v1.PolicyService`: each handler extracts the caller, converts
//! the request into a validated command, calls the hub and converts back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Identified, Readable, Rpc, identify};
use super::convert::{self};
use super::policy_requests::{
    activate_command, activate_response, draft_command, draft_version, event_filter,
    patch_operation, publish_command, rollback_command, schema_command, version_selector,
};
use super::proto::{self, policy_service_server::PolicyService};
use super::quotas::Quotas;
use super::rollouts;
use super::runtimes;
use crate::config::Limits;
use crate::domain::rollout::{Rollout, progress};
use crate::domain::runtime::{RuntimeRecord, RuntimeState};
use crate::domain::{
    ActivationOutcome, DiscardCommand, Error, Namespace, NamespaceScope, PolicyRef, RequestContext,
    Result,
};
use crate::fleet::Fleet;
use crate::hub::{Control, PolicyHub};
use crate::storage::Repository;

/// Serves `PolicyService`: mutations through the hub, plain reads straight
/// from the store.
#[derive(Clone)]
pub struct PolicyApi {
    hub: PolicyHub,
    store: Repository,
    /// The fleet view, for ListRuntimes and GetPolicyStatus.
    fleet: Fleet,
    limits: Limits,
    quotas: Arc<Quotas>,
}

impl PolicyApi {
    /// The service over `hub` and `store`, enforcing `limits` and `quotas`.
    pub fn new(
        hub: PolicyHub,
        store: Repository,
        fleet: Fleet,
        limits: Limits,
        quotas: Arc<Quotas>,
    ) -> Self {
        PolicyApi {
            hub,
            store,
            fleet,
            limits,
            quotas,
        }
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
        .ok_or_else(|| Error::invalid("targets", "names no policy"))?;
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
        let (command, key) = draft_command(request.into_inner(), &self.limits)?;
        let context = who.authorize(Rpc::Draft, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self.hub.draft(command, &context, key).await?;
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
        let command = PolicyRef::parse(&request.namespace, &request.name).and_then(|policy| {
            Ok(DiscardCommand {
                policy,
                version: draft_version(request.version)?,
                reason: self.limits.text("reason", request.reason)?,
            })
        })?;
        let context = who.authorize(Rpc::DiscardDraft, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let record = self.hub.discard_draft(command, &context).await?;
        Ok(Response::new(proto::DiscardDraftResponse {
            version: Some(convert::version(&record)),
        }))
    }

    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let who = identify(&request)?;
        let (command, key) = publish_command(request.into_inner(), &self.limits)?;
        let context = who.authorize(Rpc::Publish, &command.policy.namespace)?;
        if command.activate {
            who.authorize(Rpc::Activate, &command.policy.namespace)?;
        }
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self.hub.publish(command, &context, key).await?;
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
        let (command, key) = activate_command(request.into_inner(), &self.limits)?;
        let context = authorize_all(
            &who,
            Rpc::Activate,
            command
                .targets
                .iter()
                .map(|target| &target.policy.namespace),
        )?;
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self.hub.activate(command, &context, key).await?;
        Ok(Response::new(activate_response(&outcome)))
    }

    async fn rollback(
        &self,
        request: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::RollbackResponse>, Status> {
        let who = identify(&request)?;
        let command = rollback_command(request.into_inner(), &self.limits)?;
        let context = who.authorize(Rpc::Rollback, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let outcome = self.hub.rollback(command, &context).await?;
        let activation = outcome
            .activations
            .first()
            .ok_or_else(|| Error::Internal("a rollback moved no pointer".into()))?;
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
            .and_then(|policy| Ok((policy, version_selector("version", number, label)?)))?;
        who.authorize(Rpc::GetVersion, &policy.namespace)?;
        let record = self.store.get_version(&policy, &selector).await?;
        Ok(Response::new(convert::version(&record)))
    }

    async fn list_versions(
        &self,
        request: Request<proto::ListVersionsRequest>,
    ) -> Result<Response<proto::ListVersionsResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let policy = PolicyRef::parse(&request.namespace, &request.name)?;
        who.authorize(Rpc::ListVersions, &policy.namespace)?;
        let page = self
            .store
            .list_versions(
                &policy,
                self.limits.page_size(request.page_size),
                &request.page_token,
            )
            .await?;
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
            .transpose()?;
        let scope = listing_scope(&who, Rpc::ListPolicies, namespace)?;
        let page = self
            .store
            .list_policies(
                &scope,
                self.limits.page_size(request.page_size),
                &request.page_token,
            )
            .await?;
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
        let (namespace, mut filter) = event_filter(&request)?;
        filter.scope = listing_scope(&who, Rpc::ListEvents, namespace)?;
        let page = self
            .store
            .list_events(
                &filter,
                self.limits.page_size(request.page_size),
                &request.page_token,
            )
            .await?;
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
        let policy = PolicyRef::parse(&request.namespace, &request.name)?;
        for (field, version) in [
            ("from_version", request.from_version),
            ("to_version", request.to_version),
        ] {
            if version == 0 {
                return Err(Status::from(Error::invalid(
                    field,
                    "version numbers start at 1",
                )));
            }
        }
        who.authorize(Rpc::DiffVersions, &policy.namespace)?;
        let (from, to, patch) = self
            .hub
            .diff(&policy, request.from_version, request.to_version)
            .await?;
        Ok(Response::new(proto::DiffVersionsResponse {
            operations: patch.0.iter().map(patch_operation).collect(),
            from_digest: from.digest().to_string(),
            to_digest: to.digest().to_string(),
            from_requirements: convert::requirements(&from.requirements),
            to_requirements: convert::requirements(&to.requirements),
        }))
    }

    async fn set_schema(
        &self,
        request: Request<proto::SetSchemaRequest>,
    ) -> Result<Response<proto::SetSchemaResponse>, Status> {
        let who = identify(&request)?;
        let command = schema_command(request.into_inner(), &self.limits)?;
        let context = who.authorize(Rpc::SetSchema, &command.policy.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let (summary, violations) = self.hub.set_schema(command, &context).await?;
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
        let reason = self.limits.text("reason", request.into_inner().reason)?;
        let (previous_key_id, signing_key_id) =
            self.hub.rotate_signing_key(&context, &reason).await?;
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
        let (namespace, filter) = runtimes::runtime_filter(&request)?;
        who.authorize(Rpc::ListRuntimes, &namespace)?;
        let fleet = self.fleet.runtimes(&namespace).await?;
        let page = crate::domain::runtime::runtimes_page(
            fleet,
            &filter,
            self.limits.page_size(request.page_size),
            &request.page_token,
        )?;
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
        let policy = PolicyRef::parse(&request.namespace, &request.name)?;
        who.authorize(Rpc::GetPolicyStatus, &policy.namespace)?;
        let active = self
            .hub
            .index()
            .snapshot()
            .get(&policy)
            .map(|indexed| (indexed.bundle.version, indexed.bundle.revision));
        let fleet = self.fleet.runtimes(&policy.namespace).await?;
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

    async fn start_rollout(
        &self,
        request: Request<proto::StartRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let who = identify(&request)?;
        let (command, key) = rollouts::start_command(request.into_inner(), &self.limits)?;
        let context = who.authorize(Rpc::StartRollout, &command.namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let started = self.hub.start_rollout(command, &context, key).await?;
        self.reply(&started).await
    }

    async fn get_rollout(
        &self,
        request: Request<proto::GetRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let who = identify(&request)?;
        let (namespace, id) = rollouts::named(&request.get_ref().namespace, &request.get_ref().id)?;
        who.authorize(Rpc::GetRollout, &namespace)?;
        let found = self.store.get_rollout(&namespace, &id).await?;
        self.reply(&found).await
    }

    async fn list_rollouts(
        &self,
        request: Request<proto::ListRolloutsRequest>,
    ) -> Result<Response<proto::ListRolloutsResponse>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        who.authorize(Rpc::ListRollouts, &namespace)?;
        let page = self
            .store
            .list_rollouts(
                &namespace,
                self.limits.page_size(request.page_size),
                &request.page_token,
            )
            .await?;
        let fleet = self.cohorts(&namespace).await?;
        Ok(Response::new(proto::ListRolloutsResponse {
            rollouts: page
                .items
                .iter()
                .map(|item| rollouts::rollout(item, progress(item, &fleet)))
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn pause_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, Rpc::PauseRollout, Control::Pause)
            .await
    }

    async fn resume_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, Rpc::ResumeRollout, Control::Resume)
            .await
    }

    async fn promote_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, Rpc::PromoteRollout, Control::Promote)
            .await
    }

    async fn abort_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, Rpc::AbortRollout, Control::Abort)
            .await
    }

    async fn approve_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        self.control(request, Rpc::ApproveRollout, Control::Approve)
            .await
    }
}

impl PolicyApi {
    /// The namespace's runtimes that count for cohorts: every one not stale.
    async fn cohorts(&self, namespace: &Namespace) -> crate::domain::Result<Vec<RuntimeRecord>> {
        Ok(self
            .fleet
            .runtimes(namespace)
            .await?
            .into_iter()
            .filter(|(_, state)| *state != RuntimeState::Stale)
            .map(|(record, _)| record)
            .collect())
    }

    /// A rollout with its current step's progress.
    async fn reply(&self, found: &Rollout) -> Result<Response<proto::Rollout>, Status> {
        let fleet = self.cohorts(&found.namespace).await?;
        Ok(Response::new(rollouts::rollout(
            found,
            progress(found, &fleet),
        )))
    }

    /// Pause, resume, promote or abort.
    async fn control(
        &self,
        request: Request<proto::RolloutControlRequest>,
        rpc: Rpc,
        control: Control,
    ) -> Result<Response<proto::Rollout>, Status> {
        let who = identify(&request)?;
        let request = request.into_inner();
        let (namespace, id) = rollouts::named(&request.namespace, &request.id)?;
        let reason = self.limits.text("reason", request.reason)?;
        let context = who.authorize(rpc, &namespace)?;
        self.quotas.admit_mutation(&context.actor)?;
        let controlled = self
            .hub
            .control_rollout(&namespace, &id, control, &reason, &context)
            .await?;
        self.reply(&controlled).await
    }
}
