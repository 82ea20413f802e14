//! `policyhub.v1.PolicyService` replies: what the hub answered, as
//! protobuf.

use super::auth::{Caller, Rpc};
use super::convert;
use super::policy_requests::patch_operation;
use super::proto;
use super::rollouts::rollout;
use super::runtimes::{fleet_summary, runtime};
use crate::domain::chain::Checkpoint;
use crate::domain::log::InclusionProof;
use crate::domain::rollout::{Progress, Rollout};
use crate::domain::runtime::{PolicyStatus, RuntimeRecord, RuntimeState};
use crate::domain::{
    ActivationOutcome, DraftOutcome, Error, EventRecord, Namespace, Page, PolicySummary,
    PublishOutcome, Result, SchemaViolation, VersionRecord,
};
use crate::hub::RevokedKey;

pub(super) fn who_am_i(caller: &Caller, namespace: Option<&Namespace>) -> proto::WhoAmIResponse {
    proto::WhoAmIResponse {
        subject: caller.subject.clone(),
        grants: caller.grants().map(ToString::to_string).collect(),
        allowed_methods: namespace
            .map(|namespace| {
                caller
                    .allowed_in(namespace)
                    .iter()
                    .map(|rpc| format!("{rpc:?}"))
                    .collect()
            })
            .unwrap_or_default(),
        issuer: caller.issuer.clone(),
        held_grants: caller
            .grants
            .iter()
            .map(|held| proto::HeldGrant {
                grant: held.grant.to_string(),
                granted_by: held.by.clone(),
            })
            .collect(),
    }
}

pub(super) fn check_access(
    caller: &Caller,
    rpc: Rpc,
    namespace: Option<&Namespace>,
) -> proto::CheckAccessResponse {
    match caller.check(rpc, namespace) {
        Ok(held) => proto::CheckAccessResponse {
            allowed: true,
            reason: format!(
                "{} holds {} (from {}), which includes the {} role {rpc:?} needs",
                caller.subject,
                held.grant,
                held.by,
                rpc.role()
            ),
        },
        Err(error) => proto::CheckAccessResponse {
            allowed: false,
            reason: match error {
                Error::PermissionDenied(reason) => reason,
                other => other.to_string(),
            },
        },
    }
}

pub(super) fn draft(outcome: &DraftOutcome) -> proto::DraftResponse {
    proto::DraftResponse {
        version: Some(convert::version(&outcome.version)),
        superseded_version: outcome.superseded_version.unwrap_or(0),
    }
}

pub(super) fn discard_draft(record: &VersionRecord) -> proto::DiscardDraftResponse {
    proto::DiscardDraftResponse {
        version: Some(convert::version(record)),
    }
}

pub(super) fn publish(outcome: PublishOutcome) -> proto::PublishResponse {
    proto::PublishResponse {
        version: Some(convert::version(&outcome.version)),
        already_published: outcome.already_published,
        revision: outcome
            .activation
            .filter(ActivationOutcome::moved)
            .map_or(0, |activation| activation.revision),
    }
}

pub(super) fn activate(outcome: &ActivationOutcome) -> proto::ActivateResponse {
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

pub(super) fn rollback(
    (outcome, restored_from): &(ActivationOutcome, Option<u32>),
) -> Result<proto::RollbackResponse> {
    let activation = outcome
        .activations
        .first()
        .ok_or_else(|| Error::Internal("a rollback moved no pointer".into()))?;
    Ok(proto::RollbackResponse {
        revision: outcome.revision,
        version: activation.version,
        previous_version: activation.previous_version.unwrap_or(0),
        restored_from: restored_from.unwrap_or(0),
    })
}

pub(super) fn versions(page: &Page<VersionRecord>) -> proto::ListVersionsResponse {
    proto::ListVersionsResponse {
        versions: page.items.iter().map(convert::version).collect(),
        next_page_token: page.next_page_token.clone().unwrap_or_default(),
    }
}

/// A policy with what the fleet made of its active version.
pub(super) fn policy(summary: &PolicySummary, status: &PolicyStatus) -> proto::Policy {
    proto::Policy {
        fleet: Some(fleet_summary(status)),
        ..convert::policy(summary)
    }
}

pub(super) fn policies(page: &Page<(PolicySummary, PolicyStatus)>) -> proto::ListPoliciesResponse {
    proto::ListPoliciesResponse {
        policies: page
            .items
            .iter()
            .map(|(summary, status)| policy(summary, status))
            .collect(),
        next_page_token: page.next_page_token.clone().unwrap_or_default(),
    }
}

pub(super) fn checkpoints(page: &Page<Checkpoint>) -> proto::ListCheckpointsResponse {
    proto::ListCheckpointsResponse {
        checkpoints: page.items.iter().map(convert::checkpoint).collect(),
        next_page_token: page.next_page_token.clone().unwrap_or_default(),
    }
}

pub(super) fn events(page: &Page<EventRecord>) -> proto::ListEventsResponse {
    proto::ListEventsResponse {
        events: page.items.iter().map(convert::event).collect(),
        next_page_token: page.next_page_token.clone().unwrap_or_default(),
    }
}

pub(super) fn diff(
    (from, to, patch): &(VersionRecord, VersionRecord, json_patch::Patch),
) -> proto::DiffVersionsResponse {
    proto::DiffVersionsResponse {
        operations: patch.0.iter().map(patch_operation).collect(),
        from_digest: from.digest().to_string(),
        to_digest: to.digest().to_string(),
        from_requirements: convert::requirements(&from.requirements),
        to_requirements: convert::requirements(&to.requirements),
    }
}

pub(super) fn set_schema(
    (summary, violations): &(PolicySummary, Vec<SchemaViolation>),
) -> proto::SetSchemaResponse {
    proto::SetSchemaResponse {
        policy: Some(convert::policy(summary)),
        active_version_violations: violations.iter().map(ToString::to_string).collect(),
        rejected_versions: Vec::new(),
    }
}

/// What a dry run of SetSchema found: the versions the schema would reject.
pub(super) fn schema_dry_run(
    rejected: &[(VersionRecord, Vec<SchemaViolation>)],
) -> proto::SetSchemaResponse {
    let texts =
        |violations: &[SchemaViolation]| violations.iter().map(ToString::to_string).collect();
    proto::SetSchemaResponse {
        policy: None,
        active_version_violations: rejected
            .iter()
            .find(|(version, _)| version.active)
            .map(|(_, violations)| texts(violations))
            .unwrap_or_default(),
        rejected_versions: rejected
            .iter()
            .map(|(version, violations)| proto::RejectedVersion {
                version: version.version,
                label: version
                    .label
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                state: convert::state(version.state) as i32,
                active: version.active,
                violations: texts(violations),
            })
            .collect(),
    }
}

pub(super) fn runtimes(page: &Page<(RuntimeRecord, RuntimeState)>) -> proto::ListRuntimesResponse {
    proto::ListRuntimesResponse {
        runtimes: page
            .items
            .iter()
            .map(|(record, state)| runtime(record, *state))
            .collect(),
        next_page_token: page.next_page_token.clone().unwrap_or_default(),
    }
}

pub(super) fn rollouts(page: &Page<(Rollout, Progress)>) -> proto::ListRolloutsResponse {
    proto::ListRolloutsResponse {
        rollouts: page
            .items
            .iter()
            .map(|(item, progress)| rollout(item, *progress))
            .collect(),
        next_page_token: page.next_page_token.clone().unwrap_or_default(),
    }
}

/// An event's inclusion proof as its reply.
pub(super) fn inclusion_proof(proof: &InclusionProof) -> proto::GetInclusionProofResponse {
    proto::GetInclusionProofResponse {
        event: Some(convert::event(&proof.event)),
        canonical_event: proof.canonical.clone(),
        leaf_index: proof.leaf_index.get(),
        tree_size: proof.tree_size.get(),
        hashes: convert::proof_hashes(&proof.hashes),
        checkpoint: proof.checkpoint.as_ref().map(convert::checkpoint),
    }
}

/// A signing key's revocation as its reply: revision 0 when no active
/// version had to be sent again (or the key was revoked before).
pub(super) fn revoked_key(revoked: RevokedKey) -> proto::RevokeSigningKeyResponse {
    proto::RevokeSigningKeyResponse {
        key_id: revoked.key_id,
        signing_key_id: revoked.signing_key_id,
        re_signed_versions: revoked.re_signed_versions,
        revision: revoked.revision.unwrap_or(0),
        already_revoked: revoked.already_revoked,
    }
}

/// A declared restore as its reply.
pub(super) fn restore(
    event: &EventRecord,
    checkpoint: &Checkpoint,
) -> proto::RecordRestoreResponse {
    proto::RecordRestoreResponse {
        event: Some(convert::event(event)),
        checkpoint: Some(convert::checkpoint(checkpoint)),
    }
}
