//! An OPA bundle over HTTP as OPA's bundle plugin downloads it
//! (docs/src/guides/opa.md#the-bundle-service): the tarball itself, its
//! `ETag`, 304 for an `If-None-Match` that names it, and long polling,
//! held by the bundle service itself (`Prefer: wait=N` is its
//! `wait_seconds`).

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use prost::bytes::Bytes;
use prost_reflect::{DynamicMessage, Value};
use tonic::Status;

use super::routes::Route;
use super::status::Failure;
use super::{Gateway, HttpBody, boxed, semantics};

/// The content type OPA's bundle plugin reads as "this server long-polls":
/// it sends `Prefer: wait=N` from then on.
const LONG_POLLING: &str = "application/vnd.openpolicyagent.bundles";

impl Gateway {
    /// A namespace's OPA bundle: 304 when `If-None-Match` names it, after
    /// holding the request until the bundle changes when `Prefer: wait=N`
    /// asks.
    pub(super) async fn opa_bundle(
        &self,
        route: &Route,
        headers: &HeaderMap,
        mut message: DynamicMessage,
    ) -> Result<Response<HttpBody>, Failure> {
        let wait = semantics::wait(headers)?;
        if let Some(held) = held_tag(headers) {
            message.set_field_by_name("if_none_match", Value::String(held));
            let seconds = wait.map_or(0, |wait| wait.as_secs());
            message.set_field_by_name("wait_seconds", Value::U32(seconds as u32));
        }
        let bundle = self.call(route, headers, message).await?;
        let etag = etag(&bundle)?;
        let not_modified = bundle
            .get_field_by_name("not_modified")
            .and_then(|value| value.as_bool())
            .unwrap_or_default();
        let mut response = if not_modified || semantics::not_modified(headers, &etag) {
            let mut response = Response::new(boxed(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let tarball = bundle
                .get_field_by_name("tarball")
                .and_then(|value| value.as_bytes().cloned())
                .unwrap_or_default();
            let mut response = Response::new(boxed(Full::new(tarball)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(LONG_POLLING));
            response
        };
        response.headers_mut().insert(header::ETAG, etag);
        Ok(response)
    }
}

/// The entity tag `If-None-Match` names first, unquoted: the one OPA
/// holds (it sends back the `ETag` it was given).
fn held_tag(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    let tag = first.strip_prefix("W/").unwrap_or(first);
    let tag = tag.strip_prefix('"')?.strip_suffix('"')?;
    (!tag.is_empty()).then(|| tag.to_owned())
}

/// The bundle's entity tag, quoted.
fn etag(bundle: &DynamicMessage) -> Result<HeaderValue, Status> {
    bundle
        .get_field_by_name("etag")
        .and_then(|value| HeaderValue::from_str(&format!("\"{}\"", value.as_str()?)).ok())
        .ok_or_else(|| Status::internal("an OPA bundle carries its entity tag"))
}
