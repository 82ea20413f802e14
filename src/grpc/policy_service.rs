//! `policyhub.v1.PolicyService`: each handler identifies the caller,
//! converts the request into a validated command, admits the caller (role
//! and quota), calls the hub and converts the answer back.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::alerts;
use super::archive;
use super::auth::{Rpc, identify};
use super::backup;
use super::decisions::{decision_filter, decisions, impact, impact_wanted};
use super::policy_replies as reply;
use super::policy_requests::{
    access_question, activate_command, diff_wanted, discard_command, draft_command, event_filter,
    export_scope, optional_namespace, publish_command, rollback_command, schema_command,
    tree_wanted, version_wanted,
};
use super::proto::{self, policy_service_server::PolicyService};
use super::quotas::Quotas;
use super::rollouts::{self, control_wanted};
use super::runtimes;
use super::schedules;
use crate::config::Limits;
use crate::domain::{EventRecord, Namespace};
use crate::hub::{Control, PolicyHub, ScheduleControl};

type Reply<T> = Result<Response<T>, Status>;

/// Serves `PolicyService` through the hub.
#[derive(Clone)]
pub struct PolicyApi {
    hub: PolicyHub,
    limits: Limits,
    quotas: Arc<Quotas>,
    /// Where backups are staged: the data directory.
    staging: PathBuf,
}

impl PolicyApi {
    /// The service over `hub`, enforcing `limits` and `quotas`, staging
    /// backups in `staging`.
    pub fn new(hub: PolicyHub, limits: Limits, quotas: Arc<Quotas>, staging: PathBuf) -> Self {
        PolicyApi {
            hub,
            limits,
            quotas,
            staging,
        }
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    type BackupStream = backup::Chunks;

    async fn backup(&self, request: Request<proto::BackupRequest>) -> Reply<Self::BackupStream> {
        identify(&request)?.authorize_everywhere(Rpc::Backup)?;
        let (file, revision) = self.hub.backup(&self.staging).await?;
        Ok(Response::new(backup::chunks(file, revision).await?))
    }

    type ExportStream = archive::Chunks;

    async fn export(&self, request: Request<proto::ExportRequest>) -> Reply<Self::ExportStream> {
        let caller = identify(&request)?;
        let scope = export_scope(request.get_ref())?;
        caller.authorize_scope(Rpc::Export, &scope)?;
        let archive = self.hub.export(&scope).await?;
        Ok(Response::new(archive::chunks(archive::encode(&archive))))
    }

    async fn import(
        &self,
        request: Request<tonic::Streaming<proto::ImportChunk>>,
    ) -> Reply<proto::ImportResponse> {
        let context = identify(&request)?.authorize_everywhere(Rpc::Import)?;
        let bytes = archive::receive(request.into_inner()).await?;
        let (archive, sha256) = archive::decode(&bytes)?;
        let source = archive::source(&archive, &sha256);
        let imported = self.hub.import(&context, &archive, &source).await?;
        Ok(Response::new(proto::ImportResponse {
            namespaces: archive
                .namespaces()
                .iter()
                .map(ToString::to_string)
                .collect(),
            policies: imported.policies as u32,
            versions: imported.versions as u32,
            events: imported.events as u32,
            revision: imported.revision,
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Reply<proto::WhoAmIResponse> {
        let caller = identify(&request)?;
        let namespace = optional_namespace(&request.get_ref().namespace)?;
        Ok(Response::new(reply::who_am_i(
            caller.caller(),
            namespace.as_ref(),
        )))
    }

    async fn check_access(
        &self,
        request: Request<proto::CheckAccessRequest>,
    ) -> Reply<proto::CheckAccessResponse> {
        let caller = identify(&request)?;
        let (rpc, namespace) = access_question(request.get_ref())?;
        Ok(Response::new(reply::check_access(
            caller.caller(),
            rpc,
            namespace.as_ref(),
        )))
    }

    async fn draft(&self, request: Request<proto::DraftRequest>) -> Reply<proto::DraftResponse> {
        let caller = identify(&request)?;
        let (command, key) = draft_command(request.into_inner(), &self.limits)?;
        let context = caller.admit(Rpc::Draft, [&command.policy.namespace], &self.quotas)?;
        let outcome = self.hub.draft(command, &context, key).await?;
        Ok(Response::new(reply::draft(&outcome)))
    }

    async fn discard_draft(
        &self,
        request: Request<proto::DiscardDraftRequest>,
    ) -> Reply<proto::DiscardDraftResponse> {
        let caller = identify(&request)?;
        let command = discard_command(request.into_inner(), &self.limits)?;
        let context = caller.admit(Rpc::DiscardDraft, [&command.policy.namespace], &self.quotas)?;
        let record = self.hub.discard_draft(command, &context).await?;
        Ok(Response::new(reply::discard_draft(&record)))
    }

    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Reply<proto::PublishResponse> {
        let caller = identify(&request)?;
        let (command, key) = publish_command(request.into_inner(), &self.limits)?;
        if command.activate {
            caller.authorize(Rpc::Activate, &command.policy.namespace)?;
        }
        let context = caller.admit(Rpc::Publish, [&command.policy.namespace], &self.quotas)?;
        let outcome = self.hub.publish(command, &context, key).await?;
        Ok(Response::new(reply::publish(outcome)))
    }

    async fn activate(
        &self,
        request: Request<proto::ActivateRequest>,
    ) -> Reply<proto::ActivateResponse> {
        let caller = identify(&request)?;
        let (command, key) = activate_command(request.into_inner(), &self.limits)?;
        let namespaces = command
            .targets
            .iter()
            .map(|target| &target.policy.namespace);
        let context = caller.admit(Rpc::Activate, namespaces, &self.quotas)?;
        let outcome = self.hub.activate(command, &context, key).await?;
        Ok(Response::new(reply::activate(&outcome)))
    }

    async fn rollback(
        &self,
        request: Request<proto::RollbackRequest>,
    ) -> Reply<proto::RollbackResponse> {
        let caller = identify(&request)?;
        let command = rollback_command(request.into_inner(), &self.limits)?;
        let context = caller.admit(Rpc::Rollback, [&command.policy.namespace], &self.quotas)?;
        let outcome = self.hub.rollback(command, &context).await?;
        Ok(Response::new(reply::rollback(&outcome)?))
    }

    async fn get_version(
        &self,
        request: Request<proto::GetVersionRequest>,
    ) -> Reply<proto::Version> {
        let caller = identify(&request)?;
        let (policy, selector) = version_wanted(request.into_inner())?;
        caller.admit(Rpc::GetVersion, [&policy.namespace], &self.quotas)?;
        let record = self.hub.get_version(&policy, &selector).await?;
        Ok(Response::new(super::convert::version(&record)))
    }

    async fn list_versions(
        &self,
        request: Request<proto::ListVersionsRequest>,
    ) -> Reply<proto::ListVersionsResponse> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let policy = crate::domain::PolicyRef::parse(&request.namespace, &request.name)?;
        caller.admit(Rpc::ListVersions, [&policy.namespace], &self.quotas)?;
        let size = self.limits.page_size(request.page_size);
        let page = self
            .hub
            .list_versions(&policy, size, &request.page_token)
            .await?;
        Ok(Response::new(reply::versions(&page)))
    }

    async fn get_policy(&self, request: Request<proto::GetPolicyRequest>) -> Reply<proto::Policy> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let policy = crate::domain::PolicyRef::parse(&request.namespace, &request.name)?;
        caller.admit(Rpc::GetPolicy, [&policy.namespace], &self.quotas)?;
        let (summary, status) = self.hub.get_policy(&policy).await?;
        Ok(Response::new(reply::policy(&summary, &status)))
    }

    async fn list_policies(
        &self,
        request: Request<proto::ListPoliciesRequest>,
    ) -> Reply<proto::ListPoliciesResponse> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let namespace = optional_namespace(&request.namespace)?;
        let scope = caller.admit_listing(Rpc::ListPolicies, namespace)?;
        let size = self.limits.page_size(request.page_size);
        let page = self
            .hub
            .list_policies(&scope, size, &request.page_token)
            .await?;
        Ok(Response::new(reply::policies(&page)))
    }

    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Reply<proto::ListEventsResponse> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let (namespace, mut filter) = event_filter(&request)?;
        filter.scope = caller.admit_listing(Rpc::ListEvents, namespace)?;
        let size = self.limits.page_size(request.page_size);
        let page = self
            .hub
            .list_events(&filter, size, &request.page_token)
            .await?;
        Ok(Response::new(reply::events(&page)))
    }

    async fn list_checkpoints(
        &self,
        request: Request<proto::ListCheckpointsRequest>,
    ) -> Reply<proto::ListCheckpointsResponse> {
        let caller = identify(&request)?;
        caller.authorize_everywhere(Rpc::ListCheckpoints)?;
        let request = request.into_inner();
        let size = self.limits.page_size(request.page_size);
        let page = self.hub.list_checkpoints(size, &request.page_token).await?;
        Ok(Response::new(reply::checkpoints(&page)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<proto::GetInclusionProofRequest>,
    ) -> Reply<proto::GetInclusionProofResponse> {
        let identified = identify(&request)?;
        let access = identified.admit_event(Rpc::GetInclusionProof)?;
        let request = request.into_inner();
        let readable = |event: &EventRecord| access.may_read(event);
        let proof = self
            .hub
            .inclusion_proof(request.event_id, tree_wanted(request.tree_size), readable)
            .await;
        let proof = access.answer(request.event_id, proof)?;
        Ok(Response::new(reply::inclusion_proof(&proof)))
    }

    async fn diff_versions(
        &self,
        request: Request<proto::DiffVersionsRequest>,
    ) -> Reply<proto::DiffVersionsResponse> {
        let caller = identify(&request)?;
        let (policy, from, to) = diff_wanted(request.get_ref())?;
        caller.admit(Rpc::DiffVersions, [&policy.namespace], &self.quotas)?;
        let diff = self.hub.diff(&policy, from, to).await?;
        Ok(Response::new(reply::diff(&diff)))
    }

    async fn set_schema(
        &self,
        request: Request<proto::SetSchemaRequest>,
    ) -> Reply<proto::SetSchemaResponse> {
        let caller = identify(&request)?;
        let command = schema_command(request.into_inner(), &self.limits)?;
        let context = caller.admit(Rpc::SetSchema, [&command.policy.namespace], &self.quotas)?;
        if command.dry_run {
            let rejected = self
                .hub
                .schema_rejections(&command.policy, command.schema.as_ref())
                .await?;
            return Ok(Response::new(reply::schema_dry_run(&rejected)));
        }
        let outcome = self.hub.set_schema(command, &context).await?;
        Ok(Response::new(reply::set_schema(&outcome)))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<proto::RotateSigningKeyRequest>,
    ) -> Reply<proto::RotateSigningKeyResponse> {
        let context = identify(&request)?.authorize_everywhere(Rpc::RotateSigningKey)?;
        let reason = self.limits.text("reason", request.into_inner().reason)?;
        let (previous_key_id, signing_key_id) =
            self.hub.rotate_signing_key(&context, &reason).await?;
        Ok(Response::new(proto::RotateSigningKeyResponse {
            signing_key_id,
            previous_key_id,
        }))
    }

    async fn revoke_signing_key(
        &self,
        request: Request<proto::RevokeSigningKeyRequest>,
    ) -> Reply<proto::RevokeSigningKeyResponse> {
        let context = identify(&request)?.authorize_everywhere(Rpc::RevokeSigningKey)?;
        let request = request.into_inner();
        let key_id = self.limits.text("key_id", request.key_id)?;
        let reason = self.limits.text("reason", request.reason)?;
        let revoked = self
            .hub
            .revoke_signing_key(&context, &key_id, &reason)
            .await?;
        Ok(Response::new(reply::revoked_key(revoked)))
    }

    async fn record_restore(
        &self,
        request: Request<proto::RecordRestoreRequest>,
    ) -> Reply<proto::RecordRestoreResponse> {
        let context = identify(&request)?.authorize_everywhere(Rpc::RecordRestore)?;
        let reason = self.limits.text("reason", request.into_inner().reason)?;
        let (event, checkpoint) = self.hub.record_restore(&context, &reason).await?;
        Ok(Response::new(reply::restore(&event, &checkpoint)))
    }

    async fn list_runtimes(
        &self,
        request: Request<proto::ListRuntimesRequest>,
    ) -> Reply<proto::ListRuntimesResponse> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let (namespace, filter) = runtimes::runtime_filter(&request)?;
        caller.admit(Rpc::ListRuntimes, [&namespace], &self.quotas)?;
        let (size, token) = (
            self.limits.page_size(request.page_size),
            &request.page_token,
        );
        let page = self
            .hub
            .list_runtimes(&namespace, &filter, size, token)
            .await?;
        Ok(Response::new(reply::runtimes(&page)))
    }

    async fn list_decisions(
        &self,
        request: Request<proto::ListDecisionsRequest>,
    ) -> Reply<proto::ListDecisionsResponse> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let (namespace, filter) = decision_filter(&request)?;
        caller.admit(Rpc::ListDecisions, [&namespace], &self.quotas)?;
        let size = self.limits.page_size(request.page_size);
        let page = self
            .hub
            .list_decisions(&namespace, &filter, size, &request.page_token)
            .await?;
        Ok(Response::new(decisions(page)))
    }

    async fn analyze_impact(
        &self,
        request: Request<proto::AnalyzeImpactRequest>,
    ) -> Reply<proto::AnalyzeImpactResponse> {
        let caller = identify(&request)?;
        let (policy, version, filter, limit) = impact_wanted(request.get_ref())?;
        caller.admit(Rpc::AnalyzeImpact, [&policy.namespace], &self.quotas)?;
        let report = self
            .hub
            .analyze_impact(&policy, version, &filter, limit)
            .await?;
        Ok(Response::new(impact(report)))
    }

    async fn get_policy_status(
        &self,
        request: Request<proto::GetPolicyStatusRequest>,
    ) -> Reply<proto::GetPolicyStatusResponse> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let policy = crate::domain::PolicyRef::parse(&request.namespace, &request.name)?;
        caller.admit(Rpc::GetPolicyStatus, [&policy.namespace], &self.quotas)?;
        let (active, status) = self.hub.policy_status(&policy).await?;
        let status = runtimes::policy_status(&policy.namespace, &policy.name, active, status);
        Ok(Response::new(status))
    }

    async fn start_rollout(
        &self,
        request: Request<proto::StartRolloutRequest>,
    ) -> Reply<proto::Rollout> {
        let caller = identify(&request)?;
        let (command, key) = rollouts::start_command(request.into_inner(), &self.limits)?;
        let context = caller.admit(Rpc::StartRollout, [&command.namespace], &self.quotas)?;
        let started = self.hub.start_rollout(command, &context, key).await?;
        let (started, progress) = self.hub.with_progress(started).await?;
        Ok(Response::new(rollouts::rollout(&started, progress)))
    }

    async fn receive_alerts(
        &self,
        request: Request<proto::ReceiveAlertsRequest>,
    ) -> Reply<proto::ReceiveAlertsResponse> {
        let caller = identify(&request)?;
        let alerts = alerts::received(request.into_inner(), &self.limits)?;
        let namespaces = alerts.iter().map(|alert| &alert.namespace);
        let context = caller.admit(Rpc::ReceiveAlerts, namespaces, &self.quotas)?;
        let acted = self.hub.receive_alerts(&alerts, &context).await?;
        Ok(Response::new(alerts::outcomes(&alerts, &acted)))
    }

    async fn get_rollout(
        &self,
        request: Request<proto::GetRolloutRequest>,
    ) -> Reply<proto::Rollout> {
        let caller = identify(&request)?;
        let (namespace, id) = rollouts::named(&request.get_ref().namespace, &request.get_ref().id)?;
        caller.admit(Rpc::GetRollout, [&namespace], &self.quotas)?;
        let (found, progress) = self.hub.get_rollout(&namespace, &id).await?;
        let measured = self.hub.rollout_measurements(&found).await?;
        let mut reply = rollouts::rollout(&found, progress);
        reply.measurements = rollouts::measurements(&measured);
        Ok(Response::new(reply))
    }

    async fn list_rollouts(
        &self,
        request: Request<proto::ListRolloutsRequest>,
    ) -> Reply<proto::ListRolloutsResponse> {
        let caller = identify(&request)?;
        let request = request.into_inner();
        let namespace = Namespace::parse("namespace", &request.namespace)?;
        caller.admit(Rpc::ListRollouts, [&namespace], &self.quotas)?;
        let size = self.limits.page_size(request.page_size);
        let page = self
            .hub
            .list_rollouts(&namespace, size, &request.page_token)
            .await?;
        Ok(Response::new(reply::rollouts(&page)))
    }

    async fn pause_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Reply<proto::Rollout> {
        self.control(request, Rpc::PauseRollout, Control::Pause)
            .await
    }

    async fn resume_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Reply<proto::Rollout> {
        self.control(request, Rpc::ResumeRollout, Control::Resume)
            .await
    }

    async fn promote_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Reply<proto::Rollout> {
        self.control(request, Rpc::PromoteRollout, Control::Promote)
            .await
    }

    async fn abort_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Reply<proto::Rollout> {
        self.control(request, Rpc::AbortRollout, Control::Abort)
            .await
    }

    async fn approve_rollout(
        &self,
        request: Request<proto::RolloutControlRequest>,
    ) -> Reply<proto::Rollout> {
        self.control(request, Rpc::ApproveRollout, Control::Approve)
            .await
    }

    async fn set_schedule(
        &self,
        request: Request<proto::SetScheduleRequest>,
    ) -> Reply<proto::Schedule> {
        let caller = identify(&request)?;
        let command = schedules::set_command(request.into_inner(), &self.limits)?;
        let context = caller.admit(Rpc::SetSchedule, [&command.namespace], &self.quotas)?;
        let saved = self.hub.set_schedule(command, &context).await?;
        Ok(Response::new(schedules::schedule(&saved)))
    }

    async fn get_schedule(
        &self,
        request: Request<proto::GetScheduleRequest>,
    ) -> Reply<proto::Schedule> {
        let caller = identify(&request)?;
        let (namespace, name) =
            schedules::named(&request.get_ref().namespace, &request.get_ref().name)?;
        caller.admit(Rpc::GetSchedule, [&namespace], &self.quotas)?;
        let found = self.hub.get_schedule(&namespace, &name).await?;
        Ok(Response::new(schedules::schedule(&found)))
    }

    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Reply<proto::ListSchedulesResponse> {
        let caller = identify(&request)?;
        let namespace = Namespace::parse("namespace", &request.get_ref().namespace)?;
        caller.admit(Rpc::ListSchedules, [&namespace], &self.quotas)?;
        let found = self.hub.list_schedules(&namespace).await?;
        Ok(Response::new(proto::ListSchedulesResponse {
            schedules: found.iter().map(schedules::schedule).collect(),
        }))
    }

    async fn pause_schedule(
        &self,
        request: Request<proto::ScheduleControlRequest>,
    ) -> Reply<proto::Schedule> {
        let controlled = self
            .control_schedule(request, Rpc::PauseSchedule, ScheduleControl::Pause)
            .await?;
        Ok(Response::new(schedules::schedule(&controlled)))
    }

    async fn resume_schedule(
        &self,
        request: Request<proto::ScheduleControlRequest>,
    ) -> Reply<proto::Schedule> {
        let controlled = self
            .control_schedule(request, Rpc::ResumeSchedule, ScheduleControl::Resume)
            .await?;
        Ok(Response::new(schedules::schedule(&controlled)))
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::ScheduleControlRequest>,
    ) -> Reply<proto::DeleteScheduleResponse> {
        self.control_schedule(request, Rpc::DeleteSchedule, ScheduleControl::Delete)
            .await?;
        Ok(Response::new(proto::DeleteScheduleResponse {}))
    }
}

impl PolicyApi {
    /// Pause, resume, promote, abort or approve.
    async fn control(
        &self,
        request: Request<proto::RolloutControlRequest>,
        rpc: Rpc,
        control: Control,
    ) -> Reply<proto::Rollout> {
        let caller = identify(&request)?;
        let (namespace, id, reason) = control_wanted(request.into_inner(), &self.limits)?;
        let context = caller.admit(rpc, [&namespace], &self.quotas)?;
        let hub = &self.hub;
        let controlled = hub.control_rollout(&namespace, &id, control, &reason, &context);
        let (controlled, progress) = hub.with_progress(controlled.await?).await?;
        Ok(Response::new(rollouts::rollout(&controlled, progress)))
    }

    async fn control_schedule(
        &self,
        request: Request<proto::ScheduleControlRequest>,
        rpc: Rpc,
        control: ScheduleControl,
    ) -> Result<crate::domain::schedule::Schedule, Status> {
        let caller = identify(&request)?;
        let (namespace, name, reason) =
            schedules::control_wanted(request.into_inner(), &self.limits)?;
        let context = caller.admit(rpc, [&namespace], &self.quotas)?;
        let hub = &self.hub;
        Ok(hub
            .control_schedule(&namespace, &name, control, &reason, &context)
            .await?)
    }
}
