//! policyhub-runtime: what a runtime needs to follow policyhub safely.
//!
//! One call subscribes to a namespace and hands the application verified,
//! whole states — "the complete active set at revision R" — and never half
//! of an atomic release. The library resumes after any failure from the
//! last revision it decided on, verifies every bundle against the JWKS,
//! keeps a last-known-good cache on disk, never goes backwards, and reports
//! what the application applied or rejected.
//!
//! # Layout
//!
//! - [`bundle`]: the signed bundle format: claims, JWK(S), offline
//!   verification, canonical JSON and digests.
//! - [`state`]: whole states and how the watch messages build them.
//! - [`cache`]: the last-known-good state on disk.
//! - [`watcher`]: the subscription: connect, resume, verify, apply, report.
//! - [`backoff`]: capped exponential backoff with full jitter.
//! - [`proto`]: the generated `policyhub.v1` client.

pub mod backoff;
pub mod bundle;
pub mod cache;
pub mod state;
pub mod watcher;

/// The generated protobuf types and the `BundleService` client.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("policyhub.v1");
}

pub use state::{Source, State, VerifiedBundle};
pub use watcher::{HEARTBEAT_INTERVAL_HEADER, Subscription, TokenSource, WatchError};
