//! The gRPC adapters: protobuf in, domain call, protobuf out.

mod alerts;
pub mod archive;
pub mod auth;
mod backup;
mod bundle_route;
mod bundle_service;
pub mod codec;
pub mod convert;
mod decisions;
pub use decisions::DecisionInstruments;
pub mod message_limit;
pub mod methods;
mod opa;
mod policy_replies;
mod policy_requests;
mod policy_service;
pub mod quotas;
mod rollouts;
mod runtimes;
mod schedules;
mod sign_in_service;
pub mod status;
mod subscription_service;
mod subscriptions;
pub mod watch_message;

pub use bundle_route::BundleRoute;
pub use bundle_service::BundleApi;
pub use policy_service::PolicyApi;
pub use sign_in_service::SignInApi;
pub use subscription_service::SubscriptionApi;

/// The generated protobuf types, clients and servers of `policyhub.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("policyhub.v1");

    /// Encoded descriptors of every file, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/policyhub_descriptor.bin"));
}
