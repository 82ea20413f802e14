//! OPA's discovery bundle (docs/src/guides/opa.md#discovery): the
//! configuration an OPA takes from policyhub when its own holds only the
//! service and a discovery resource.

use serde_json::{Map, Value, json};

use super::{File, OpaBundle, digest, etag, tarball};
use crate::domain::runtime::{RuntimeId, RuntimeLabels};
use crate::domain::{Error, Namespace, Result};
use crate::signing::{OPA_ALGORITHM, OpaSigningKey};

/// The label every OPA has in the fleet, which the server adds itself.
pub const ENGINE_LABEL: (&str, &str) = ("engine", "opa");

/// The configuration an OPA following `namespace` is given: the
/// namespace's bundle (named after it, from the first service, which is
/// the one that served the discovery bundle), long polling, and every key
/// in `keys`; for an OPA named `runtime`, a resource that names it, its
/// status reports and its decision logs, sent every 5 to 10 seconds for
/// impact analysis to judge changes on. Unsigned: it comes over the
/// connection OPA trusts for its token.
pub fn discovery(
    namespace: &Namespace,
    runtime: Option<(&RuntimeId, &RuntimeLabels)>,
    keys: &[OpaSigningKey],
) -> Result<OpaBundle> {
    let mut resource = format!("bundles/{namespace}");
    if let Some((id, labels)) = runtime {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("runtime.id", id.as_str());
        for (key, value) in labels.iter().filter(|(key, _)| *key != ENGINE_LABEL.0) {
            query.append_pair(&format!("runtime.labels[{key}]"), value);
        }
        resource = format!("{resource}?{}", query.finish());
    }
    let signer = keys
        .first()
        .ok_or_else(|| Error::Internal("no key signs OPA bundles".into()))?;
    let mut config = json!({
        "bundles": {namespace.as_str(): {
            "resource": resource,
            "polling": {
                "min_delay_seconds": 60,
                "max_delay_seconds": 120,
                "long_polling_timeout_seconds": 30,
            },
            "signing": {"keyid": signer.key_id()},
        }},
        "keys": keys
            .iter()
            .map(|key| {
                (
                    key.key_id().to_owned(),
                    json!({"algorithm": OPA_ALGORITHM, "key": key.public_pem()}),
                )
            })
            .collect::<Map<String, Value>>(),
    });
    if let Some((id, _)) = runtime {
        config["status"] = json!({"partition_name": format!("{namespace}/{id}")});
        config["decision_logs"] = json!({
            "resource": format!("logs/{namespace}/{id}"),
            "reporting": {"min_delay_seconds": 5, "max_delay_seconds": 10},
        });
    }
    let files = [File {
        name: "data.json".into(),
        bytes: serde_json::to_vec(&config).expect("a JSON value serializes"),
        digest: digest::structured(&config),
    }];
    Ok(OpaBundle {
        revision: 0,
        etag: etag(&files),
        tarball: tarball(&files).map_err(|error| {
            Error::Internal(format!(
                "writing the discovery bundle of {namespace}: {error}"
            ))
        })?,
    })
}
