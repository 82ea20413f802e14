//! An OPA bundle over HTTP as OPA's bundle plugin downloads it
//! (docs/src/guides/opa.md#the-bundle-service): the tarball itself, its
//! `ETag`, 304 for an `If-None-Match` that names it, and long polling,
//! held by the bundle service itself (`Prefer: wait=N` is its
//! `wait_seconds`).
//!
//! Every OPA of a fleet asks again after each change, so these polls call
//! the bundle service's handler directly rather than through gRPC framing
//! (docs/src/contributing/design.md#transports): the caller found as the
//! gRPC port's authentication layer finds it, the same span and the same
//! RPC metrics, and the reply taken as the type it is.

use http::{HeaderValue, Response, StatusCode, header, request::Parts};
use http_body_util::Full;
use prost::bytes::Bytes;
use prost_reflect::{DynamicMessage, Value};
use tonic::Status;
use tracing::Instrument;

use super::routes::Route;
use super::semantics::{self, NoneMatch};
use super::status::Failure;
use super::{Gateway, HttpBody, boxed, rpc_span};
use crate::grpc::auth::Identified;
use crate::grpc::proto;
use crate::metrics::DirectCall;

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
        request: Parts,
        mut message: DynamicMessage,
    ) -> Result<Response<HttpBody>, Failure> {
        let wait = semantics::wait(&request.headers)?;
        // The handler compares the tag held; the others, if any, are
        // compared with the answer's.
        let mut none_match = NoneMatch::of(&request.headers);
        if let Some(held) = none_match.take_held() {
            message.set_field_by_name("if_none_match", Value::String(held));
            let seconds = wait.map_or(0, |wait| wait.as_secs());
            message.set_field_by_name("wait_seconds", Value::U32(seconds as u32));
        }
        let span = rpc_span(route);
        let call = DirectCall::start(&route.grpc_path, span.clone());
        let bundle = self.poll(route, request, message).instrument(span).await;
        call.end(
            bundle
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok),
        );
        let bundle = bundle?;
        let etag = HeaderValue::try_from(["\"", &bundle.etag, "\""].concat())
            .map_err(|_| Status::internal("an OPA bundle's entity tag is header text"))?;
        let mut response = if bundle.not_modified || none_match.names(&etag) {
            let mut response = Response::new(boxed(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let mut response = Response::new(boxed(Full::new(bundle.tarball)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(LONG_POLLING));
            response
        };
        response.headers_mut().insert(header::ETAG, etag);
        Ok(response)
    }

    /// `GetOpaBundle` or `GetOpaDiscovery` answered by the bundle service's
    /// handler, after the authentication the gRPC port's layer does. The
    /// request and its message are let go before the handler holds the
    /// poll: when it is answered, they would be read from memory long out
    /// of the caches only to be freed.
    async fn poll(
        &self,
        route: &Route,
        request: Parts,
        message: DynamicMessage,
    ) -> Result<proto::OpaBundle, Status> {
        let caller = self
            .inner
            .authentication
            .caller(&request.headers, None)
            .await
            .map_err(Status::from)?;
        let caller = Identified::direct(caller, &request.headers);
        drop(request);
        let api = &self.inner.bundles;
        if route.method.name() == "GetOpaDiscovery" {
            let request = transcoded(message)?;
            api.opa_discovery(caller, &request).await
        } else {
            let request = transcoded(message)?;
            api.opa_bundle(caller, &request).await
        }
    }
}

/// The request as the handler's type.
fn transcoded<T: prost::Message + Default>(message: DynamicMessage) -> Result<T, Status> {
    message
        .transcode_to()
        .map_err(|error| Status::internal(format!("the request does not transcode: {error}")))
}
