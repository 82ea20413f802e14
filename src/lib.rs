//! policyhub: a gRPC control plane for signed, versioned policy documents.
//!
//! Teams write a policy (a JSON object) as a draft, publish it as an
//! immutable version signed as a JWS, activate it (one or several policies
//! atomically, under one deployment-wide revision) and roll back when
//! something breaks. Runtimes follow the active signed bundles, verify them
//! offline against the JWKS (the `policyhub-runtime` crate does it for
//! them), and report what they applied.
//!
//! # Layout
//!
//! The domain decides, storage executes, the hub orchestrates, transport
//! adapts; `ARCHITECTURE.md` walks one publish-and-activate through every
//! file, and `layers.rs` (a test) holds the layering.
//!
//! - [`domain`]: names, versions, labels, runtimes, errors, and the
//!   lifecycle decisions (`domain::lifecycle`: publish and activation plans
//!   over loaded state); no gRPC, no SQL.
//! - [`storage`]: SeaORM, one file per concern: `transaction` (the writer
//!   lock, `write` and `write_once`), `idempotency`, `policies`, `versions`,
//!   `events`, `pointers` (revisions, NOTIFY, index loading), `keys`,
//!   `reads` and `paging`, `rows` (row mapping), `errors` (what a database
//!   error means), `runtimes`, `statement_runner` and `sqlite_direct` (an activation's
//!   statements on SQLite in the caller's thread), `leadership` (the
//!   session advisory locks that make one replica lead each role);
//!   migrations live in
//!   `policyhub-migrations`.
//! - [`signing`]: Ed25519 keys and the signing of bundles; the only module
//!   that touches private key material (the bundle format and its
//!   verification are the `policyhub-runtime` crate's).
//! - [`hub`]: the application: `lifecycle` runs each mutation as load,
//!   decide, sign, write, apply to the index; `reads` answers queries.
//! - [`opa`]: OPA's bundle format: the signed tarball a namespace served
//!   to OPA is sent as.
//! - [`watch`]: the in-memory index of active bundles (`mod`) and the
//!   subscribers that fan it out (`subscriber`).
//! - [`fleet`]: the fleet view of identified runtimes, kept in memory by the
//!   replica holding each stream and persisted in batches.
//! - [`controller`]: the rollout controller, advancing, completing or
//!   rolling back running rollouts from the fleet view.
//! - [`prometheus`]: the Prometheus servers rollouts' analyses query, as
//!   the domain's `MetricsSource`.
//! - [`notifications`]: the webhook delivery worker, telling each
//!   subscription's endpoint of the events it wants, from the outbox.
//! - [`witnessing`]: the submission of checkpoints to the witnesses of
//!   `audit.witnesses`, whose verified cosignatures the checkpoints served
//!   carry.
//! - [`replication`]: how a replica follows the others' activations (PostgreSQL).
//! - [`http`]: the HTTP/JSON port: each unary RPC at the path its
//!   `google.api.http` option declares, transcoded to the same gRPC services.
//! - [`grpc`]: thin adapters per service, protobuf conversions, the single
//!   error-to-status mapping (`status`), authentication and authorization
//!   (`auth`), quotas and the message-size limit.
//! - [`connections`]: the accept loop every port shares, with its bounds on
//!   connections that ask for nothing, its backoff when accepts fail, and
//!   its drain at shutdown.
//! - [`config`] (settings and request limits), [`telemetry`], [`metrics`],
//!   [`startup`] (which wires the layers together, supervises the
//!   background tasks and stops the ports and tasks within a grace period),
//!   [`shutdown`]: running the server.
//! - [`agent`]: `policyhub agent`, which follows namespaces through the
//!   runtime library and hands verified policy to local processes over a
//!   localhost HTTP API and as files.
//! - [`cli`]: the `policyhub` binary's subcommands.

pub mod agent;
pub mod cli;
pub mod config;
pub mod connections;
pub mod controller;
pub mod domain;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod hub;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod notifications;
pub mod opa;
pub mod prometheus;
pub mod replication;
pub mod shutdown;
pub mod signing;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod watch;
pub mod witness;
pub mod witnessing;
