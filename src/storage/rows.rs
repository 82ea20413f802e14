//! Rows to domain values and back: the only place that converts between
//! the database's signed integers and the domain's numbers.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::FromQueryResult;

use super::entities::{policies, versions};
use crate::domain::{
    ActiveBundle, ActivePointer, Digest, Error, Label, PolicyBody, PolicyRef, PolicySchema,
    PolicyState, Publication, Requirement, Result, VersionRecord,
};

/// Timestamps are kept to the microsecond, which is what PostgreSQL stores,
/// so a value read back equals the value written.
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A stored version number.
pub(super) fn version(value: i32) -> u32 {
    u32::try_from(value).expect("version numbers are positive")
}

/// A version number to store; the database refuses what the domain never
/// makes (numbers above `i32::MAX`).
pub(super) fn db_version(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// A stored revision or event id.
pub(super) fn revision(value: i64) -> u64 {
    u64::try_from(value).expect("revisions are positive")
}

/// A revision to store.
pub(super) fn db_revision(value: u64) -> i64 {
    i64::try_from(value).expect("revisions fit in 63 bits")
}

pub(super) fn policy_ref(model: &policies::Model) -> Result<PolicyRef> {
    PolicyRef::parse(&model.namespace, &model.name)
        .map_err(|error| Error::Internal(format!("stored policy name is invalid: {error}")))
}

pub(super) fn policy_state(model: &policies::Model) -> Result<PolicyState> {
    Ok(PolicyState {
        policy: policy_ref(model)?,
        schema: model
            .schema
            .as_deref()
            .map(PolicySchema::from_stored)
            .transpose()?,
        active: model
            .active_version
            .zip(model.active_revision)
            .map(|(active, at)| ActivePointer {
                version: version(active),
                revision: revision(at),
            }),
        rollout: model.rollout_id.clone(),
    })
}

pub(super) fn label(stored: Option<&str>) -> Result<Option<Label>> {
    stored.map(|label| Label::parse("label", label)).transpose()
}

pub(super) fn version_record(
    policy: &PolicyRef,
    active: Option<u32>,
    model: versions::Model,
) -> Result<VersionRecord> {
    let publication = match (
        model.published_by,
        model.published_at,
        model.jws,
        model.key_id,
    ) {
        (Some(published_by), Some(published_at), Some(jws), Some(key_id)) => Some(Publication {
            published_by,
            published_at,
            jws,
            key_id,
        }),
        _ => None,
    };
    let body = PolicyBody::from_canonical(model.body)?;
    if let Some(publication) = &publication {
        let signed = crate::signing::signed_digest(&publication.jws)?;
        if body.digest().as_str() != signed {
            return Err(Error::DataLoss(format!(
                "{policy} version {}: the stored body's digest is {}, its signature covers {signed}: \
                 the database was changed behind the service",
                model.version,
                body.digest()
            )));
        }
    }
    Ok(VersionRecord {
        policy: policy.clone(),
        version: version(model.version),
        state: model.state.parse()?,
        body,
        label: label(model.label.as_deref())?,
        change_notes: model.change_notes,
        created_by: model.created_by,
        created_at: model.created_at,
        publication,
        active: active == Some(version(model.version)),
        requirements: requirements(&model.requirements)?,
    })
}

/// A version's requirements as stored.
pub(super) fn requirements(text: &str) -> Result<Vec<Requirement>> {
    serde_json::from_str(text)
        .map_err(|error| Error::Internal(format!("stored requirements are unreadable: {error}")))
}

/// Requirements as they are stored.
pub(super) fn requirements_text(requirements: &[Requirement]) -> String {
    serde_json::to_string(requirements).expect("requirements serialize")
}

/// The bundle of a published version, active since `revision`.
pub(super) fn active_bundle(record: &VersionRecord, revision: u64) -> Result<ActiveBundle> {
    let Some(publication) = &record.publication else {
        return Err(unsigned(record.version, &record.policy));
    };
    Ok(ActiveBundle {
        policy: record.policy.clone(),
        version: record.version,
        label: record.label.clone(),
        digest: record.digest().clone(),
        jws: Arc::from(publication.jws.as_str()),
        key_id: publication.key_id.clone(),
        revision,
    })
}

fn unsigned(version: u32, policy: &PolicyRef) -> Error {
    Error::Internal(format!(
        "active version {version} of {policy} has no signature"
    ))
}

/// An active bundle as the index queries return it: without the body,
/// which the index does not hold.
#[derive(FromQueryResult)]
pub(super) struct BundleRow {
    revision: i64,
    namespace: String,
    name: String,
    version: i32,
    label: Option<String>,
    digest: String,
    jws: Option<String>,
    key_id: Option<String>,
}

impl BundleRow {
    pub(super) fn into_bundle(self) -> Result<ActiveBundle> {
        let policy = PolicyRef::parse(&self.namespace, &self.name)?;
        let (Some(jws), Some(key_id)) = (self.jws, self.key_id) else {
            return Err(unsigned(version(self.version), &policy));
        };
        Ok(ActiveBundle {
            version: version(self.version),
            label: label(self.label.as_deref())?,
            digest: Digest::from_stored(self.digest),
            jws: Arc::from(jws),
            key_id,
            revision: revision(self.revision),
            policy,
        })
    }
}
