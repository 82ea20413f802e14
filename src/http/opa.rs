//! An OPA bundle over HTTP as OPA's bundle plugin downloads it
//! (docs/src/guides/opa.md#the-bundle-service): the tarball itself, its
//! `ETag`, 304 for an `If-None-Match` that names it, and long polling.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use prost::bytes::Bytes;
use prost_reflect::DynamicMessage;
use tonic::Status;

use super::routes::Route;
use super::status::Failure;
use super::{Gateway, HttpBody, boxed, semantics};

/// The content type OPA's bundle plugin reads as "this server long-polls":
/// it sends `Prefer: wait=N` from then on.
const LONG_POLLING: &str = "application/vnd.openpolicyagent.bundles";

impl Gateway {
    /// A namespace's OPA bundle: 304 when `If-None-Match` names it, after
    /// holding the read until the namespace changes when `Prefer: wait=N`
    /// asks.
    pub(super) async fn opa_bundle(
        &self,
        route: &Route,
        headers: &HeaderMap,
        message: DynamicMessage,
    ) -> Result<Response<HttpBody>, Failure> {
        let wait = semantics::wait(headers)?;
        let mut bundle = self.call(route, headers, message.clone()).await?;
        if let Some(wait) = wait
            && semantics::not_modified(headers, &etag(&bundle)?)
        {
            let namespace = message
                .get_field_by_name("namespace")
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default();
            let revision = bundle
                .get_field_by_name("revision")
                .and_then(|value| value.as_u64())
                .unwrap_or_default();
            if self
                .changed_within(&namespace, None, headers, revision, wait)
                .await?
            {
                bundle = self.call(route, headers, message).await?;
            }
        }
        let etag = etag(&bundle)?;
        let mut response = if semantics::not_modified(headers, &etag) {
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

/// The bundle's entity tag, quoted.
fn etag(bundle: &DynamicMessage) -> Result<HeaderValue, Status> {
    bundle
        .get_field_by_name("etag")
        .and_then(|value| HeaderValue::from_str(&format!("\"{}\"", value.as_str()?)).ok())
        .ok_or_else(|| Status::internal("an OPA bundle carries its entity tag"))
}
