//! The RPC methods this server serves, read from the descriptors it serves
//! by reflection, so that metrics and spans name known methods only: a
//! caller inventing paths (`/attacker.Svc/M<random>`) adds no metric series
//! and no span names, whether or not it holds a token.

use std::{collections::HashSet, sync::LazyLock};

use prost::Message;
use prost_types::FileDescriptorSet;

/// What metrics and spans call a method that is not served.
pub const OTHER: &str = "_OTHER";

/// `/package.Service/Method` of every method served.
static SERVED: LazyLock<HashSet<String>> = LazyLock::new(|| {
    [
        super::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(|encoded| {
        FileDescriptorSet::decode(encoded)
            .expect("the served descriptors decode")
            .file
    })
    .flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |service| {
            let service_name = format!("{package}.{}", service.name());
            service
                .method
                .into_iter()
                .map(move |method| format!("/{service_name}/{}", method.name()))
        })
    })
    .collect()
});

/// The service and method of a request path, as OpenTelemetry's RPC
/// conventions name them (`rpc.service`, `rpc.method`); [`OTHER`] for both
/// when the path is not a method this server serves.
pub fn classify(path: &str) -> (&str, &str) {
    match SERVED
        .get(path)
        .and_then(|known| known[1..].split_once('/'))
    {
        Some((service, method)) => (service, method),
        None => (OTHER, OTHER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_named_and_others_collapse() {
        assert_eq!(
            classify("/policyhub.v1.PolicyService/Draft"),
            ("policyhub.v1.PolicyService", "Draft")
        );
        assert_eq!(
            classify("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(
            classify("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo").1,
            "ServerReflectionInfo"
        );
        for made_up in [
            "/attacker.Svc/M123",
            "/policyhub.v1.PolicyService/Nope",
            "",
            "/",
        ] {
            assert_eq!(classify(made_up), (OTHER, OTHER), "{made_up:?}");
        }
    }
}
