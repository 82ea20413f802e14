//! Conversions between protobuf messages and domain values.

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value as ProtoValue, value::Kind};
use serde_json::{Map, Number, Value};

use prost::{Message, bytes::Bytes};

use super::proto;
use crate::domain::chain::Checkpoint;
use crate::domain::log::{ConsistencyProof, Hash};
use crate::domain::{
    ActiveBundle, Error, EventKind, EventRecord, PolicySummary, Requirement, Result, VersionRecord,
    VersionState,
};
use crate::signing::{Jwk, Jwks};

/// A `google.protobuf.Struct` as a JSON object. Numbers are doubles on the
/// wire; integral ones within ±2^53 become JSON integers.
pub fn struct_to_json(field: &str, value: Struct) -> Result<Value> {
    let mut object = Map::new();
    for (key, value) in value.fields {
        object.insert(
            key.clone(),
            value_to_json(&format!("{field}.{key}"), value)?,
        );
    }
    Ok(Value::Object(object))
}

/// A `google.protobuf.Value` as JSON (see [`struct_to_json`]).
pub fn value_to_json(field: &str, value: ProtoValue) -> Result<Value> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(boolean)) => Value::Bool(boolean),
        Some(Kind::StringValue(text)) => Value::String(text),
        Some(Kind::NumberValue(number)) => number_to_json(field, number)?,
        Some(Kind::StructValue(object)) => struct_to_json(field, object)?,
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .enumerate()
                .map(|(index, item)| value_to_json(&format!("{field}[{index}]"), item))
                .collect::<Result<_>>()?,
        ),
    })
}

fn number_to_json(field: &str, number: f64) -> Result<Value> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if number.fract() == 0.0 && number.abs() <= EXACT {
        return Ok(Value::Number(Number::from(number as i64)));
    }
    Number::from_f64(number)
        .map(Value::Number)
        .ok_or_else(|| Error::invalid(field, format!("{number} is not a JSON number")))
}

/// `google.protobuf.Value` numbers are doubles: print the integral ones
/// (within ±2^53) without a fraction, as grpcurl and every protobuf JSON
/// printer do (`2`, not `2.0`).
pub fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
                && float.abs() <= 9_007_199_254_740_992.0
            {
                *number = serde_json::Number::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(members) => members.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_to_struct(value: &Value) -> Struct {
    match json_to_value(value).kind {
        Some(Kind::StructValue(object)) => object,
        _ => Struct::default(),
    }
}

/// Any JSON value as a `google.protobuf.Value`.
pub fn json_to_value(value: &Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(boolean) => Kind::BoolValue(*boolean),
        Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        Value::String(text) => Kind::StringValue(text.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(object) => Kind::StructValue(Struct {
            fields: object
                .iter()
                .map(|(key, value)| (key.clone(), json_to_value(value)))
                .collect(),
        }),
    };
    ProtoValue { kind: Some(kind) }
}

/// A timestamp as protobuf.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as a time.
pub fn from_timestamp(field: &str, at: Timestamp) -> Result<DateTime<Utc>> {
    u32::try_from(at.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(at.seconds, nanos))
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))
}

/// A version's state as protobuf.
pub fn state(state: VersionState) -> proto::VersionState {
    match state {
        VersionState::Draft => proto::VersionState::Draft,
        VersionState::Published => proto::VersionState::Published,
        VersionState::Superseded => proto::VersionState::Superseded,
        VersionState::Discarded => proto::VersionState::Discarded,
    }
}

/// A version as protobuf.
pub fn version(record: &VersionRecord) -> proto::Version {
    let publication = record.publication.as_ref();
    proto::Version {
        namespace: record.policy.namespace.to_string(),
        name: record.policy.name.to_string(),
        version: record.version,
        state: state(record.state) as i32,
        body: Some(json_to_struct(record.body.value())),
        digest: record.digest().to_string(),
        label: record
            .label
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        change_notes: record.change_notes.clone(),
        created_by: record.created_by.clone(),
        created_at: Some(timestamp(record.created_at)),
        published_by: publication
            .map(|p| p.published_by.clone())
            .unwrap_or_default(),
        published_at: publication.map(|p| timestamp(p.published_at)),
        jws: publication.map(|p| p.jws.clone()).unwrap_or_default(),
        key_id: publication.map(|p| p.key_id.clone()).unwrap_or_default(),
        active: record.active,
        requirements: requirements(&record.requirements),
    }
}

/// Requirements as protobuf.
pub fn requirements(requirements: &[Requirement]) -> Vec<proto::Requirement> {
    requirements
        .iter()
        .map(|requirement| proto::Requirement {
            name: requirement.name.to_string(),
            range: requirement.range.to_string(),
        })
        .collect()
}

/// A public key as protobuf.
pub fn jwk(key: &Jwk) -> proto::Jwk {
    proto::Jwk {
        kty: key.kty.clone(),
        crv: key.crv.clone(),
        x: key.x.clone(),
        kid: key.kid.clone(),
        alg: key.alg.clone(),
        r#use: key.use_.clone(),
    }
}

/// The keys of a `GetSigningKeys` reply as an RFC 7517 JWKS, the form the
/// verifier reads.
pub fn jwks(response: &proto::GetSigningKeysResponse) -> Jwks {
    Jwks {
        keys: response
            .keys
            .iter()
            .map(|key| Jwk {
                kty: key.kty.clone(),
                crv: key.crv.clone(),
                x: key.x.clone(),
                kid: key.kid.clone(),
                alg: key.alg.clone(),
                use_: key.r#use.clone(),
            })
            .collect(),
    }
}

/// An active bundle as encoded protobuf, made once per version for every
/// watch stream.
pub fn encoded_bundle(active: &ActiveBundle) -> Bytes {
    Bytes::from(bundle(active).encode_to_vec())
}

/// A checkpoint as protobuf.
pub fn checkpoint(checkpoint: &Checkpoint) -> proto::Checkpoint {
    proto::Checkpoint {
        jws: checkpoint.jws.clone(),
        revision: checkpoint.revision,
        last_event_id: checkpoint.last_event_id,
        chain_head: checkpoint.chain_head.clone(),
        time: Some(timestamp(checkpoint.at)),
        key_id: checkpoint.key_id.clone(),
        note: checkpoint.note.clone().unwrap_or_default(),
        consistency_proof: None,
    }
}

/// A Merkle proof's hashes as protobuf.
pub fn proof_hashes(hashes: &[Hash]) -> Vec<Vec<u8>> {
    hashes.iter().map(|hash| hash.0.to_vec()).collect()
}

/// A checkpoint as encoded protobuf, as every watch message carries it:
/// with the proof that its tree extends the one carried before it.
pub fn encoded_checkpoint(value: &Checkpoint, extends: Option<&ConsistencyProof>) -> Bytes {
    let carried = proto::Checkpoint {
        consistency_proof: extends.map(|proof| proto::ConsistencyProof {
            old_size: proof.old_size.get(),
            new_size: proof.new_size.get(),
            hashes: proof_hashes(&proof.hashes),
        }),
        ..checkpoint(value)
    };
    Bytes::from(carried.encode_to_vec())
}

/// An active bundle as protobuf.
pub fn bundle(bundle: &ActiveBundle) -> proto::Bundle {
    proto::Bundle {
        namespace: bundle.policy.namespace.to_string(),
        name: bundle.policy.name.to_string(),
        version: bundle.version,
        label: bundle
            .label
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        digest: bundle.digest.to_string(),
        jws: bundle.jws.to_string(),
        key_id: bundle.key_id.clone(),
        revision: bundle.revision,
        draft: false,
        body: None,
        checkpoint: None,
    }
}

/// An unsigned draft as a bundle, clearly marked.
pub fn draft_bundle(record: &VersionRecord) -> proto::Bundle {
    proto::Bundle {
        namespace: record.policy.namespace.to_string(),
        name: record.policy.name.to_string(),
        version: record.version,
        label: String::new(),
        digest: record.digest().to_string(),
        jws: String::new(),
        key_id: String::new(),
        revision: 0,
        draft: true,
        body: Some(json_to_struct(record.body.value())),
        checkpoint: None,
    }
}

/// A policy summary as protobuf.
pub fn policy(summary: &PolicySummary) -> proto::Policy {
    proto::Policy {
        namespace: summary.policy.namespace.to_string(),
        name: summary.policy.name.to_string(),
        active_version: summary.active.map_or(0, |(version, _)| version),
        active_revision: summary.active.map_or(0, |(_, revision)| revision),
        active_label: summary.active_label.clone().unwrap_or_default(),
        draft_version: summary.draft_version.unwrap_or(0),
        latest_version: summary.latest_version,
        schema: summary.schema.as_ref().map(json_to_struct),
        fleet: None,
    }
}

/// An event kind as protobuf: the same name, prefixed as protobuf enums are.
pub fn event_kind(kind: EventKind) -> proto::EventKind {
    proto::EventKind::from_str_name(&format!("EVENT_KIND_{}", kind.as_str()))
        .expect("every event kind is in the protobuf enum")
}

/// A protobuf event kind as the domain's.
pub fn event_kind_from(field: &str, raw: i32) -> Result<EventKind> {
    let kind = proto::EventKind::try_from(raw)
        .map_err(|_| Error::invalid(field, format!("{raw} is not an event kind")))?;
    EventKind::ALL
        .into_iter()
        .find(|candidate| event_kind(*candidate) == kind)
        .ok_or_else(|| Error::invalid(field, "EVENT_KIND_UNSPECIFIED is not an event kind"))
}

/// An event as protobuf.
pub fn event(record: &EventRecord) -> proto::Event {
    let (namespace, name) = record.policy.clone().unwrap_or_default();
    proto::Event {
        id: record.id,
        kind: event_kind(record.kind) as i32,
        namespace,
        name,
        actor: record.actor.clone(),
        at: Some(timestamp(record.at)),
        reason: record.reason.clone(),
        request_id: record.request_id.clone(),
        previous_version: record.previous_version.unwrap_or(0),
        new_version: record.new_version.unwrap_or(0),
        revision: record.revision.unwrap_or(0),
        key_id: record.key_id.clone().unwrap_or_default(),
        rollout_id: record.rollout_id.clone().unwrap_or_default(),
        hash: record.hash.clone(),
    }
}

/// An event as read from the API, for verifying the chain client-side.
pub fn event_record(event: &proto::Event) -> Result<EventRecord> {
    let policy =
        (!event.namespace.is_empty()).then(|| (event.namespace.clone(), event.name.clone()));
    let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    Ok(EventRecord {
        id: event.id,
        kind: event_kind_from("kind", event.kind)?,
        policy,
        actor: event.actor.clone(),
        at: from_timestamp("at", event.at.unwrap_or_default())?,
        reason: event.reason.clone(),
        request_id: event.request_id.clone(),
        previous_version: (event.previous_version > 0).then_some(event.previous_version),
        new_version: (event.new_version > 0).then_some(event.new_version),
        revision: (event.revision > 0).then_some(event.revision),
        key_id: text(&event.key_id),
        rollout_id: text(&event.rollout_id),
        hash: event.hash.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_round_trips_through_struct() {
        let body = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -3}});
        let back = struct_to_json("body", json_to_struct(&body)).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let value = ProtoValue {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        let object = Struct {
            fields: [("x".to_owned(), value)].into(),
        };
        assert!(matches!(
            struct_to_json("body", object),
            Err(Error::InvalidArgument(_))
        ));
    }
}
