//! JSON pieces the commands show besides the replies themselves (which
//! `output::print_message` prints in the protobuf JSON mapping): bodies as
//! JSON objects, short enum names for tables, and the pointer moves of the
//! `sync` report.

use anyhow::Context;
use prost_types::Struct;
use serde_json::{Value, json};

use super::failure::{Unusable, What};
use crate::grpc::{convert::struct_to_json, proto};

/// A body as a JSON object; null when unset.
pub fn body(body: Option<Struct>) -> anyhow::Result<Value> {
    body.map(|body| {
        struct_to_json("body", body).context(Unusable::new(
            What::Reply,
            "the server sent a body that is not JSON",
        ))
    })
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

/// How one pointer moved.
pub fn activation(activation: &proto::Activation) -> Value {
    json!({
        "namespace": activation.namespace,
        "name": activation.name,
        "version": activation.version,
        "previous_version": activation.previous_version,
    })
}
