//! Protobuf ⇄ domain for OPA (docs/src/guides/opa.md): bundle requests
//! and status reports, as OPA's bundle and status plugins send them.

use std::sync::Arc;
use std::time::Duration;

use super::proto;
use super::runtimes::watcher;
use crate::domain::runtime::RuntimeId;
use crate::domain::runtime::opa::{OpaBundleReport, OpaDue, rejection_text};
use crate::domain::{Error, Namespace, Result};
use crate::hub::OpaBundle;
use crate::watch::Watcher;

/// The longest a bundle request is held for a change (OPA's long polling).
pub const MAX_OPA_WAIT: Duration = Duration::from_secs(60);

/// Most bundles one status report may name.
const MAX_REPORTED_BUNDLES: usize = 64;

/// Most errors of one bundle read from a status report.
const MAX_READ_ERRORS: usize = 16;

/// A bundle request: the namespace, the OPA when it names itself, and how
/// long to hold the request for a change of the bundle it holds.
pub fn opa_bundle_wanted(
    request: &proto::GetOpaBundleRequest,
) -> Result<(Namespace, Option<Watcher>, Duration)> {
    wanted(
        &request.namespace,
        request.runtime.as_ref(),
        request.wait_seconds,
    )
}

/// A discovery request, as [`opa_bundle_wanted`].
pub fn opa_discovery_wanted(
    request: &proto::GetOpaDiscoveryRequest,
) -> Result<(Namespace, Option<Watcher>, Duration)> {
    wanted(
        &request.namespace,
        request.runtime.as_ref(),
        request.wait_seconds,
    )
}

fn wanted(
    namespace: &str,
    runtime: Option<&proto::RuntimeIdentity>,
    wait_seconds: u32,
) -> Result<(Namespace, Option<Watcher>, Duration)> {
    let namespace = Namespace::parse("namespace", namespace)?;
    let watcher = runtime
        .filter(|runtime| !runtime.id.is_empty() || !runtime.labels.is_empty())
        .map(watcher)
        .transpose()?;
    let wait = Duration::from_secs(wait_seconds.into());
    if wait > MAX_OPA_WAIT {
        return Err(Error::invalid(
            "wait_seconds",
            format!(
                "{wait_seconds} seconds is not a wait this server holds: at most {}",
                MAX_OPA_WAIT.as_secs()
            ),
        ));
    }
    Ok((namespace, watcher, wait))
}

/// The reply of a bundle or discovery request: the bundle, or that the
/// one tagged `held` is still current.
pub fn opa_reply(bundle: Option<Arc<OpaBundle>>, held: &str) -> proto::OpaBundle {
    match bundle {
        Some(bundle) => proto::OpaBundle {
            revision: bundle.revision,
            etag: bundle.etag.clone(),
            tarball: bundle.tarball.clone(),
            not_modified: false,
        },
        None => proto::OpaBundle {
            etag: held.to_owned(),
            not_modified: true,
            ..Default::default()
        },
    }
}

/// An OPA's status report: what it says of the bundle named after the
/// namespace. A failure counts as a failed activation when OPA downloaded
/// a bundle in its last request (`last_successful_download` is its
/// `last_request`); any other failure is the download's.
pub fn opa_status_report(
    request: &proto::ReportOpaStatusRequest,
) -> Result<(Namespace, RuntimeId, OpaBundleReport)> {
    let namespace = Namespace::parse("namespace", &request.namespace)?;
    let runtime = RuntimeId::parse("runtime_id", &request.runtime_id)?;
    if request.bundles.len() > MAX_REPORTED_BUNDLES {
        return Err(Error::invalid(
            "bundles",
            format!(
                "{} bundles, at most {MAX_REPORTED_BUNDLES} are allowed",
                request.bundles.len()
            ),
        ));
    }
    let report = match request.bundles.get(namespace.as_str()) {
        None => OpaBundleReport {
            active: None,
            activation_error: None,
        },
        Some(status) => {
            let downloaded_last = status.last_request.is_some()
                && status.last_request == status.last_successful_download;
            let activation_error = (!status.code.is_empty() && downloaded_last).then(|| {
                let errors: Vec<String> = status
                    .errors
                    .iter()
                    .take(MAX_READ_ERRORS)
                    .map(error_text)
                    .collect();
                rejection_text(&status.message, &errors)
            });
            OpaBundleReport {
                active: OpaDue::from_manifest_revision(&status.active_revision),
                activation_error,
            }
        }
    };
    Ok((namespace, runtime, report))
}

/// One of OPA's errors as text: `file:row:col: code: message` for a Rego
/// error with its location, else as JSON.
fn error_text(error: &prost_types::Value) -> String {
    let json = super::convert::value_to_json("errors", error.clone()).unwrap_or_default();
    let field = |name: &str| json.get(name).and_then(serde_json::Value::as_str);
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => {
            let location = &json["location"];
            match (location["file"].as_str(), location["row"].as_u64()) {
                (Some(file), Some(row)) => {
                    let col = location["col"].as_u64().unwrap_or(0);
                    format!("{file}:{row}:{col}: {code}: {message}")
                }
                _ => format!("{code}: {message}"),
            }
        }
        _ => json.to_string(),
    }
}
