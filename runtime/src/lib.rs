//! policyhub-runtime: what a runtime needs to follow policyhub safely.
//!
//! One call subscribes to a namespace and hands the application verified,
//! whole states — "the complete active set at revision R" — and never half
//! of an atomic release. The library resumes after any failure from the
//! last revision it decided on, verifies every bundle against the JWKS,
//! keeps a last-known-good cache on disk, never goes backwards, and reports
//! what the application applied or rejected.
//!
//! A runtime takes a [`Subscription`] as a stream of [`Event`]s, as a
//! [`Reader`] of the state in force, or with a callback:
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use policyhub_runtime::{Event, Subscription};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), policyhub_runtime::WatchError> {
//!     let subscription = Subscription::new("http://127.0.0.1:50051", "payments")
//!         .names(["card-limits"])
//!         .runtime("enforcer-1", [("region".to_string(), "eu".to_string())])
//!         .token(policyhub_runtime::token_file("runtime.token"))
//!         .cache_dir("cache");
//!     // The application's own check: a refused state is reported REJECTED
//!     // and the previous one stays in force.
//!     let events = subscription.events_validated(|state| {
//!         match state.bundles.get("card-limits") {
//!             Some(limits) if limits.body["maxAmount"].as_u64().is_none() => {
//!                 Err("maxAmount must be a whole number".to_string())
//!             }
//!             _ => Ok(()),
//!         }
//!     });
//!     let mut events = std::pin::pin!(events);
//!     while let Some(event) = events.next().await {
//!         match event? {
//!             Event::Applied(state) | Event::FromCache(state) => {
//!                 let limits = state.bundles.get("card-limits");
//!                 println!("revision {}: {:?}", state.revision, limits.map(|l| &l.body));
//!             }
//!             Event::Rejected { revision, reason } => eprintln!("kept the last state: {revision}: {reason}"),
//!             Event::Disconnected { reason, retry_in, .. } => {
//!                 eprintln!("lost the server ({reason}); retrying in {retry_in:?}")
//!             }
//!             _ => {}
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//!
//! - [`watcher`]: the public face: [`Subscription`], [`Event`], [`Reader`],
//!   the application's asynchronous check ([`Validate`]) and its way to take
//!   a state back after applying it ([`Revoker`]).
//! - [`state`]: whole, verified states.
//! - [`bundle`]: the signed bundle format: claims, JWK(S), offline
//!   verification, canonical JSON and digests.
//! - [`checkpoint`]: signed checkpoints of the server's event log.
//! - private: `event`, `subscription` and `revoke`, where the types
//!   [`watcher`] re-exports live; `session` (connect, resume, verify,
//!   decide, report), `proto` (the generated `policyhub.v1` client: the
//!   transport, no type of which is in the public API), `tls` (the
//!   [`Tls`] settings, as PEM), `cache` (the last-known-good state on disk),
//!   `endpoints` (which of several server addresses, rendezvous-ranked by
//!   the runtime id), `backoff` (full jitter), `token` (a token file read again on every
//!   call, for [`token_file`]). No two modules import each other (the
//!   workspace's layering test checks it).

mod backoff;
pub mod bundle;
mod cache;
pub mod checkpoint;
pub mod cosignature;
mod endpoints;
mod event;
mod revoke;
mod session;
pub mod state;
mod subscription;
mod tls;
mod token;
pub mod tree;
pub mod watcher;

/// The generated protobuf types and the `BundleService` client: the
/// transport, kept out of the public API. The shared `types.proto` holds
/// messages no runtime reads, hence `dead_code`.
mod proto {
    #![allow(missing_docs, clippy::all, dead_code)]
    tonic::include_proto!("policyhub.v1");
}

pub use endpoints::ranking;
pub use state::{Source, State, VerifiedBundle};
pub use tls::Tls;
pub use token::token_file;
pub use watcher::{
    DEFAULT_REBALANCE_INTERVAL, DEFAULT_REPORT_SPREAD, Ended, Event, HEARTBEAT_INTERVAL_HEADER,
    MIN_INTERVAL, Reader, Refusal, RevokeError, Revoker, Subscription, TokenSource, Validate,
    WatchError, report_delay,
};
