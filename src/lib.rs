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
//! - [`domain`]: names, versions, lifecycle rules, runtimes, labels and
//!   errors; no gRPC, no SQL.
//! - [`storage`]: SeaORM entities and the transactions that enforce the
//!   lifecycle; migrations live in the `policyhub-migrations` crate.
//! - [`signing`]: Ed25519 keys and the signing of bundles; the only module
//!   that touches private key material (the bundle format and its
//!   verification are the `policyhub-runtime` crate's).
//! - [`watch`]: the in-memory index of active bundles and the watch
//!   subscribers that fan it out.
//! - [`fleet`]: the fleet view of identified runtimes, kept in memory by the
//!   replica holding each stream and persisted in batches.
//! - [`hub`]: the application, tying storage, signing and the index together.
//! - [`replication`]: how a replica follows the others' activations (PostgreSQL).
//! - [`grpc`]: thin adapters per service, protobuf conversions, the single
//!   error-to-status mapping and the caller seam for authentication.
//! - [`config`], [`telemetry`], [`metrics`], [`startup`], [`shutdown`]:
//!   running the server.
//! - [`cli`]: the `policyhub` binary's subcommands.

pub mod cli;
pub mod config;
pub mod domain;
pub mod fleet;
pub mod grpc;
pub mod hub;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod replication;
pub mod shutdown;
pub mod signing;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod watch;
