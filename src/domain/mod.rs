//! The policy domain: names, versions, lifecycle rules and errors. Nothing
//! here knows about gRPC or SQL; `storage` enforces these rules inside its
//! transactions and `grpc` converts to and from the wire.

pub mod archive;
pub(crate) mod body;
pub mod chain;
mod commands;
pub mod decision;
mod error;
mod event;
pub mod impact;
mod labels;
pub mod lifecycle;
pub mod log;
mod names;
pub mod rego;
mod requirements;
pub mod rollout;
pub mod runtime;
pub mod schedule;
mod schema;
pub mod subscription;
mod text;
mod version;

pub use body::{Digest, MAX_JSON_DEPTH, PolicyBody, canonical_json};
pub use commands::*;
pub use error::{Error, FieldViolation, Precondition, Result, SchemaViolation, quoted};
pub use event::{EventKind, EventRecord, MAX_ACTOR_BYTES};
pub use lifecycle::{ActivationPlan, ActivePointer, PointerChange, PolicyState, PublishPlan};
pub use names::{EntryName, Namespace, PolicyName, PolicyRef, ScheduleName};
pub use requirements::{
    ActiveRelease, MAX_REQUIREMENTS, Requirement, ensure_acyclic, ensure_met_after,
    ensure_satisfiable,
};
pub use schema::PolicySchema;
pub use text::refuse_nul;
pub use version::{Label, Publication, VersionRecord, VersionSelector, VersionState};
