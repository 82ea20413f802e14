//! What HTTP's own headers mean here (DESIGN §11): `ETag` is the version,
//! revision and digest of the bundle read, `If-None-Match` answers 304 when
//! it has not changed, `Prefer: wait=N` holds the read until it changes,
//! `If-Match` is the compare-and-swap of a rollback or a one-policy
//! activation, and `Idempotency-Key` is the request's idempotency key.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use tonic::Status;

/// The longest `Prefer: wait` honoured, as Kubernetes caps its watches.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The entity tag of a bundle: `"<version>-<revision>-<digest hex>"`.
pub fn etag(bundle: &DynamicMessage) -> Option<HeaderValue> {
    let field = |name: &str| {
        bundle
            .get_field_by_name(name)
            .map(|value| value.into_owned())
    };
    let version = field("version")?.as_u32()?;
    let revision = field("revision")?.as_u64()?;
    let digest = field("digest")?;
    let digest = digest.as_str()?.trim_start_matches("sha256:").to_owned();
    HeaderValue::from_str(&format!("\"{version}-{revision}-{digest}\"")).ok()
}

/// Whether `If-None-Match` names `etag` (or `*`).
pub fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag.to_str().unwrap_or_default())
}

/// How long `Prefer: wait=N` asks to hold a read, at most [`MAX_WAIT`].
pub fn wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|preference| preference.trim().strip_prefix("wait="))
        .and_then(|seconds| seconds.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds).min(MAX_WAIT))
}

/// Fills the request fields that headers carry: `Idempotency-Key`, and
/// `If-Match` (an ETag of the active bundle) as `expected_active_version`.
/// Whether `If-Match` was used, so a mismatch answers 412.
pub fn apply_headers(message: &mut DynamicMessage, headers: &HeaderMap) -> Result<bool, Status> {
    let descriptor = message.descriptor();
    if let Some(key) = headers.get("idempotency-key")
        && let Some(field) = descriptor.get_field_by_name("idempotency_key")
    {
        let key = key
            .to_str()
            .map_err(|_| Status::invalid_argument("Idempotency-Key: not text"))?;
        message.set_field(&field, Value::String(key.to_owned()));
    }
    let Some(if_match) = headers.get(header::IF_MATCH) else {
        return Ok(false);
    };
    let version = if_match
        .to_str()
        .ok()
        .map(|tag| tag.trim().trim_matches('"'))
        .and_then(|tag| tag.split('-').next())
        .and_then(|version| version.parse::<u32>().ok())
        .ok_or_else(|| {
            Status::invalid_argument(
                "If-Match: not an ETag of this API (\"<version>-<revision>-<digest>\")",
            )
        })?;
    if let Some(field) = descriptor.get_field_by_name("expected_active_version") {
        message.set_field(&field, Value::U32(version));
        return Ok(true);
    }
    // An activation: the compare-and-swap of its one target.
    let targets = descriptor.get_field_by_name("targets");
    let Some(Value::List(mut list)) = targets
        .as_ref()
        .map(|field| message.get_field(field).into_owned())
    else {
        return Err(Status::invalid_argument(
            "If-Match: this request takes none",
        ));
    };
    let [Value::Message(target)] = list.as_mut_slice() else {
        return Err(Status::invalid_argument(
            "If-Match: only an activation of one policy takes it; give each target its \
             expectedActiveVersion instead",
        ));
    };
    let expected = target
        .descriptor()
        .get_field_by_name("expected_active_version")
        .ok_or_else(|| Status::internal("a target has no expected_active_version"))?;
    target.set_field(&expected, Value::U32(version));
    message.set_field(&targets.expect("checked above"), Value::List(list));
    Ok(true)
}
