//! The `--output json` form of each reply: field names as in the proto,
//! enums by their short name (`PUBLISHED`, `ACTIVATED`), times as RFC 3339,
//! bodies as JSON objects.

use anyhow::Context;
use prost_types::Struct;
use serde_json::{Value, json};

use super::output::time_json;
use crate::grpc::{
    convert::{self, struct_to_json},
    proto,
};

/// A body as a JSON object; null when unset.
pub fn body(body: Option<Struct>) -> anyhow::Result<Value> {
    body.map(|body| struct_to_json("body", body).context("the server sent a body that is not JSON"))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// `PUBLISHED` for `VERSION_STATE_PUBLISHED`.
pub fn state_name(state: proto::VersionState) -> &'static str {
    state.as_str_name().trim_start_matches("VERSION_STATE_")
}

/// `ROLLED_BACK` for `EVENT_KIND_ROLLED_BACK`.
pub fn event_kind_name(kind: proto::EventKind) -> &'static str {
    kind.as_str_name().trim_start_matches("EVENT_KIND_")
}

/// A version with its body and signature.
pub fn version(version: &proto::Version) -> anyhow::Result<Value> {
    Ok(json!({
        "namespace": version.namespace,
        "name": version.name,
        "version": version.version,
        "state": state_name(version.state()),
        "label": version.label,
        "digest": version.digest,
        "active": version.active,
        "change_notes": version.change_notes,
        "requirements": requirements(&version.requirements),
        "created_by": version.created_by,
        "created_at": time_json(version.created_at),
        "published_by": version.published_by,
        "published_at": time_json(version.published_at),
        "key_id": version.key_id,
        "jws": version.jws,
        "body": body(version.body.clone())?,
    }))
}

/// Requirements as `[{name, range}]`.
pub fn requirements(requirements: &[proto::Requirement]) -> Value {
    requirements
        .iter()
        .map(|requirement| json!({"name": requirement.name, "range": requirement.range}))
        .collect()
}

/// A bundle, with the body it carries (from its verified JWS, or in the
/// clear for an unsigned draft).
pub fn bundle(bundle: &proto::Bundle, body: &Value) -> Value {
    json!({
        "namespace": bundle.namespace,
        "name": bundle.name,
        "version": bundle.version,
        "label": bundle.label,
        "digest": bundle.digest,
        "revision": bundle.revision,
        "draft": bundle.draft,
        "key_id": bundle.key_id,
        "jws": bundle.jws,
        "body": body,
    })
}

/// A policy and its pointers.
pub fn policy(policy: &proto::Policy) -> anyhow::Result<Value> {
    Ok(json!({
        "namespace": policy.namespace,
        "name": policy.name,
        "active_version": policy.active_version,
        "active_revision": policy.active_revision,
        "draft_version": policy.draft_version,
        "latest_version": policy.latest_version,
        "schema": body(policy.schema.clone())?,
    }))
}

/// An entry of the event log.
pub fn event(event: &proto::Event) -> Value {
    json!({
        "id": event.id,
        "kind": event_kind_name(event.kind()),
        "namespace": event.namespace,
        "name": event.name,
        "actor": event.actor,
        "at": time_json(event.at),
        "reason": event.reason,
        "request_id": event.request_id,
        "previous_version": event.previous_version,
        "new_version": event.new_version,
        "revision": event.revision,
        "key_id": event.key_id,
    })
}

/// How one pointer moved.
pub fn activation(activation: &proto::Activation) -> Value {
    json!({
        "namespace": activation.namespace,
        "name": activation.name,
        "version": activation.version,
        "previous_version": activation.previous_version,
    })
}

/// The signing keys as an RFC 7517 JWKS, plus which key signs new versions.
pub fn jwks(signing_keys: &proto::GetSigningKeysResponse) -> Value {
    let mut jwks = serde_json::to_value(convert::jwks(signing_keys))
        .expect("a JWKS serializes: its members are strings");
    jwks["signing_key_id"] = signing_keys.signing_key_id.clone().into();
    jwks
}
