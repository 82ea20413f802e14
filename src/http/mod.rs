//! The HTTP/JSON front door (docs/src/contributing/design.md#transports):
//! every unary RPC at the path its `google.api.http` option declares, in the
//! protobuf JSON mapping that `-o json` and grpcurl print.
//!
//! It is a transcoder, as grpc-gateway and Envoy's are, but in process: a
//! request becomes the RPC's protobuf message (path variables, then the JSON
//! body or the query string) and is handed to the same gRPC services, behind
//! the same authentication, metrics, span and message limit, that the gRPC
//! port serves. So there is one handler per RPC, and the auth, roles,
//! quotas, limits and errors of HTTP are gRPC's by construction. The reply,
//! or the status as a JSON `google.rpc.Status` under the standard gRPC →
//! HTTP code table, goes back as JSON.
//!
//! OPA's bundle and discovery polls, which every OPA of a fleet sends again
//! after each change, skip the gRPC framing: they call the same handler of
//! the bundle service with the same authentication, span and metrics, and
//! take its reply as the type it is (`opa.rs`).

mod body;
mod console;
mod events;
mod opa;
mod routes;
pub mod semantics;
mod status;

use std::{convert::Infallible, sync::Arc};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tower_service::Service;

use self::body::Body;
use self::routes::{Route, routes, set_from_text};
use self::status::{Failure, error_response, json_response};
pub use self::status::{http_status, refusal_status, status_json};
use crate::connections::Listener;
use crate::grpc::watch_message::{GRPC_PREFIX_LEN, put_grpc_prefix};
use crate::grpc::{BundleApi, auth::Authentication};

/// A response body: a whole JSON document, or a stream of events.
type HttpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn boxed(body: Full<Bytes>) -> HttpBody {
    body.boxed_unsync()
}

/// The gRPC services HTTP requests are handed to, with the gRPC port's
/// layers.
pub type GrpcService = tower::util::BoxCloneSyncService<
    Request<tonic::body::Body>,
    Response<tonic::body::Body>,
    Infallible,
>;

/// The OpenAPI 3.1 document of this port, which `build.rs` generates from
/// the same descriptors the routes are read from.
pub const OPENAPI: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// Request headers passed on to the RPC as metadata.
const FORWARDED: [&str; 4] = ["authorization", "x-request-id", "traceparent", "tracestate"];

/// The HTTP front door.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Vec<Route>,
    grpc: GrpcService,
    /// The handler OPA's polls call directly.
    bundles: BundleApi,
    /// Who a directly handled request comes from, as the gRPC port's layer
    /// finds it.
    authentication: Authentication,
    /// Largest request body accepted.
    max_body_bytes: usize,
    /// The console's Content-Security-Policy.
    console_policy: HeaderValue,
}

impl Gateway {
    /// The routes the descriptors declare, served by `grpc`, OPA's polls by
    /// `bundles` after `authentication`; the console may reach the issuers
    /// of `sign_in_issuers`.
    pub fn new<'a>(
        grpc: GrpcService,
        bundles: BundleApi,
        authentication: Authentication,
        max_body_bytes: usize,
        sign_in_issuers: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let pool = DescriptorPool::decode(crate::grpc::proto::FILE_DESCRIPTOR_SET)
            .expect("the build wrote a valid descriptor set");
        Gateway {
            inner: Arc::new(Inner {
                routes: routes(&pool),
                grpc,
                bundles,
                authentication,
                max_body_bytes,
                console_policy: console::content_security_policy(sign_in_issuers),
            }),
        }
    }

    /// Serves HTTP/1.1 on `listener` until `stop` is cancelled and the
    /// requests under way are answered: a long poll or an event stream
    /// ends first, as the index closes its watches.
    pub async fn serve(self, listener: Listener, stop: CancellationToken) {
        listener
            .serve_http(stop, move |request| {
                let gateway = self.clone();
                async move { gateway.handle(request).await }
            })
            .await
    }

    /// One request: route, transcode, call, transcode back.
    pub async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<HttpBody> {
        match self.answer(request).await {
            Ok(response) => response,
            Err(failure) => error_response(&failure).map(boxed),
        }
    }

    async fn answer(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> Result<Response<HttpBody>, Failure> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        if matches!(parts.method, Method::GET | Method::HEAD)
            && let Some(response) =
                console::response(path, &parts.headers, &self.inner.console_policy)
        {
            return Ok(response.map(boxed));
        }
        if matches!(parts.method, Method::GET | Method::HEAD) && path == "/openapi.json" {
            let mut response =
                Response::new(boxed(Full::new(Bytes::from_static(OPENAPI.as_bytes()))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        // HEAD is GET without the body (RFC 9110 §9.3.2), which hyper
        // leaves out of the response.
        let verb = if parts.method == Method::HEAD {
            &Method::GET
        } else {
            &parts.method
        };
        let (route, bindings) = self
            .inner
            .routes
            .iter()
            .find_map(|route| route.matches(verb, path).map(|found| (route, found)))
            .ok_or_else(|| {
                let failure = not_routed(&parts.method, path, &self.inner.routes);
                if has_body(&parts.headers) {
                    failure.body_unread()
                } else {
                    failure
                }
            })?;
        let limit = self.inner.max_body_bytes;
        // A declared length over the limit is refused before any byte of
        // the body is read (and before `100 Continue` invites it).
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(body_too_large(limit).body_unread());
        }
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|_| body_too_large(limit).body_unread())?
            .to_bytes();
        let body = body::decoded(&parts.headers, body, limit)?;
        let mut message = input(route, &bindings, parts.uri.query(), &parts.headers, &body)?;
        let if_match = semantics::apply_headers(&mut message, &parts.headers)?;
        if let Some(if_match) = &if_match {
            self.ensure_current(if_match, &message, &parts.headers)
                .await?;
        }
        if route.method.is_server_streaming() {
            // An EventSource resumes after the last event it received.
            if let Some(last) = parts.headers.get("last-event-id") {
                let last = last.to_str().unwrap_or_default();
                set_from_text(&mut message, "since_revision", last)
                    .map_err(|error| Status::invalid_argument(format!("Last-Event-ID: {error}")))?;
            }
            let body = self.dispatch(route, &parts.headers, message).await?;
            let events = events::stream(
                body,
                route
                    .method
                    .output()
                    .get_field_by_name("bundles")
                    .and_then(|field| field.kind().as_message().cloned())
                    .ok_or_else(|| Status::internal("watch messages carry bundles"))?,
            );
            let mut response =
                Response::new(http_body_util::StreamBody::new(events).boxed_unsync());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return Ok(response);
        }
        if route.method.name() == "GetActive" {
            return self.get_active(route, &parts.headers, message).await;
        }
        if matches!(route.method.name(), "GetOpaBundle" | "GetOpaDiscovery") {
            // A poll may be held for a minute: it keeps nothing of its
            // request but what it reads (see `opa.rs`).
            drop((bindings, body));
            return self.opa_bundle(route, parts, message).await;
        }
        let reply = match self.call(route, &parts.headers, message).await {
            // The compare-and-swap of If-Match failed: 412, as HTTP says.
            Err(status) if if_match.is_some() && status.code() == tonic::Code::Aborted => {
                return Err(Failure::http(StatusCode::PRECONDITION_FAILED, status));
            }
            reply => reply?,
        };
        if route.method.name() == "GetVersion"
            && let Some(etag) = semantics::version_etag(&reply)
        {
            let mut response = if semantics::not_modified(&parts.headers, &etag) {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                response
            } else {
                json_response(StatusCode::OK, &reply)
            };
            response.headers_mut().insert(header::ETAG, etag);
            return Ok(response.map(boxed));
        }
        if route.method.name() != "Draft" {
            return Ok(json_response(StatusCode::OK, &reply).map(boxed));
        }
        // A new draft is a new resource: 201 and where it is.
        let mut response = json_response(StatusCode::CREATED, &reply);
        if let Some(location) = draft_location(path, &reply) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response.map(boxed))
    }

    /// The active bundle with its `ETag`: 304 when `If-None-Match` names
    /// it, after holding the read until it changes when `Prefer: wait=N`
    /// asks (long polling).
    async fn get_active(
        &self,
        route: &Route,
        headers: &HeaderMap,
        message: DynamicMessage,
    ) -> Result<Response<HttpBody>, Failure> {
        let wait = semantics::wait(headers)?;
        let mut bundle = self.call(route, headers, message.clone()).await?;
        let mut etag = semantics::etag(&bundle);
        let unchanged = |etag: &Option<HeaderValue>| {
            etag.as_ref()
                .is_some_and(|etag| semantics::not_modified(headers, etag))
        };
        if unchanged(&etag)
            && let Some(wait) = wait
        {
            let revision = bundle
                .get_field_by_name("revision")
                .and_then(|value| value.as_u64())
                .unwrap_or_default();
            let text = |field: &str| {
                message
                    .get_field_by_name(field)
                    .and_then(|value| value.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            let name = text("name");
            if self
                .changed_within(&text("namespace"), &name, headers, revision, wait)
                .await?
            {
                bundle = self.call(route, headers, message).await?;
                etag = semantics::etag(&bundle);
            }
        }
        let mut response = if unchanged(&etag) {
            let mut response = Response::new(boxed(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            json_response(StatusCode::OK, &bundle).map(boxed)
        };
        if let Some(etag) = etag {
            response.headers_mut().insert(header::ETAG, etag);
        }
        Ok(response)
    }

    /// `If-Match` compares the whole tag (RFC 9110 §13.1.1): the digest
    /// here, against the active bundle read now; the version and revision
    /// again in the call's compare-and-swap, which closes the race with a
    /// move after this read (they name one bundle, so its digest cannot
    /// change unseen).
    async fn ensure_current(
        &self,
        if_match: &semantics::IfMatch,
        message: &DynamicMessage,
        headers: &HeaderMap,
    ) -> Result<(), Failure> {
        let stale = |detail: String| {
            Failure::http(
                StatusCode::PRECONDITION_FAILED,
                Status::aborted(format!("If-Match: {detail}")),
            )
        };
        let (Some((namespace, name)), Some(route)) = (
            semantics::moved_policy(message),
            self.inner
                .routes
                .iter()
                .find(|route| route.method.name() == "GetActive"),
        ) else {
            return Err(Status::internal("If-Match names no policy to compare").into());
        };
        let mut read = DynamicMessage::new(route.input());
        for (field, value) in [("namespace", &namespace), ("name", &name)] {
            set_from_text(&mut read, field, value).map_err(Status::internal)?;
        }
        let current = match self.call(route, headers, read).await {
            Ok(bundle) => semantics::etag(&bundle),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => return Err(status.into()),
        };
        match current {
            Some(current) if current.as_bytes() == if_match.tag.as_bytes() => Ok(()),
            Some(current) => Err(stale(format!(
                "{namespace}/{name} is now {}, not {}",
                current.to_str().unwrap_or_default(),
                if_match.tag
            ))),
            None => Err(stale(format!(
                "nothing of {namespace}/{name} is active, so {} is not current",
                if_match.tag
            ))),
        }
    }

    /// Whether policy `name` of `namespace` moves after `revision` within
    /// `wait`: an in-process WatchActive.
    async fn changed_within(
        &self,
        namespace: &str,
        name: &str,
        headers: &HeaderMap,
        revision: u64,
        wait: std::time::Duration,
    ) -> Result<bool, Failure> {
        let Some(watch) = self
            .inner
            .routes
            .iter()
            .find(|route| route.method.name() == "WatchActive")
        else {
            return Ok(false);
        };
        let mut request = DynamicMessage::new(watch.input());
        set_from_text(&mut request, "namespace", namespace).map_err(Status::internal)?;
        set_from_text(&mut request, "names", name).map_err(Status::internal)?;
        set_from_text(&mut request, "since_revision", &revision.to_string())
            .map_err(Status::internal)?;
        let body = self.dispatch(watch, headers, request).await?;
        let mut revisions = events::Revisions::new(body);
        let moved = async {
            while let Some(Ok(whole)) = revisions.next().await {
                if !whole.bundles.is_empty() {
                    return true;
                }
            }
            false
        };
        Ok(tokio::time::timeout(wait, moved).await.unwrap_or(false))
    }

    /// Calls a unary RPC in process and decodes its reply.
    async fn call(
        &self,
        route: &Route,
        headers: &HeaderMap,
        message: DynamicMessage,
    ) -> Result<DynamicMessage, Status> {
        let body = self.dispatch(route, headers, message).await?;
        let collected = body
            .collect()
            .await
            .map_err(|error| Status::internal(format!("the reply did not arrive: {error}")))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        if let Some(status) = Status::from_header_map(&trailers)
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        let mut data = collected.to_bytes();
        if data.len() < 5 {
            return Err(Status::internal("the reply holds no message"));
        }
        data.advance(5);
        DynamicMessage::decode(route.method.output(), data)
            .map_err(|error| Status::internal(format!("the reply does not decode: {error}")))
    }

    /// Calls the RPC in process, as a gRPC client would over the wire; the
    /// reply's body, unless the call was refused at once.
    async fn dispatch(
        &self,
        route: &Route,
        headers: &HeaderMap,
        message: DynamicMessage,
    ) -> Result<tonic::body::Body, Status> {
        let encoded = prost::Message::encode_to_vec(&message);
        let mut frame = BytesMut::with_capacity(GRPC_PREFIX_LEN + encoded.len());
        put_grpc_prefix(
            &mut frame,
            u32::try_from(encoded.len())
                .map_err(|_| crate::grpc::status::too_large("the request is too large"))?,
        );
        frame.put_slice(&encoded);
        let mut grpc_request = Request::builder()
            .method(Method::POST)
            .uri(route.grpc_path.as_str())
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(tonic::body::Body::new(Full::new(frame.freeze())))
            .map_err(|error| Status::internal(format!("cannot form the call: {error}")))?;
        forward(headers, grpc_request.headers_mut());
        let span = rpc_span(route);
        let mut grpc = self.inner.grpc.clone();
        let response = tracing::Instrument::instrument(grpc.call(grpc_request), span)
            .await
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        // "Trailers only": refused before any message.
        if let Some(status) = Status::from_header_map(&parts.headers)
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        Ok(body)
    }
}

/// Copies the headers of `request` that an RPC takes as metadata into
/// `call`.
fn forward(request: &HeaderMap, call: &mut HeaderMap) {
    for name in FORWARDED {
        if let Some(value) = request.get(name) {
            call.insert(name, value.clone());
        }
    }
}

/// The span of the RPC a request is handed to.
fn rpc_span(route: &Route) -> tracing::Span {
    crate::telemetry::rpc_span(
        &Request::builder()
            .uri(route.grpc_path.as_str())
            .body(())
            .unwrap_or_default(),
    )
}

/// `…/policies/{name}/versions/{version}` of the draft a reply holds.
fn draft_location(drafts_path: &str, reply: &DynamicMessage) -> Option<http::HeaderValue> {
    let version = reply.get_field_by_name("version")?;
    let number = version
        .as_message()?
        .get_field_by_name("version")?
        .as_u32()?;
    let policy = drafts_path.strip_suffix("/drafts")?;
    http::HeaderValue::from_str(&format!("{policy}/versions/{number}")).ok()
}

/// 413: the body is over the port's limit.
fn body_too_large(limit: usize) -> Failure {
    crate::grpc::status::too_large(format!("the request body exceeds {limit} bytes")).into()
}

/// Whether a request comes with a body, which is read only once routed.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// The RPC's input: path variables, then the JSON body or the query.
fn input(
    route: &Route,
    bindings: &[(String, String)],
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<DynamicMessage, Failure> {
    let mut message = DynamicMessage::new(route.input());
    if matches!(route.body, Body::None) {
        // `runtime.labels%5Bregion%5D` is `runtime.labels[region]`.
        let pairs =
            routes::decode_query(query.unwrap_or_default()).map_err(Status::invalid_argument)?;
        for (field, value) in &pairs {
            set_from_text(&mut message, field, value).map_err(Status::invalid_argument)?;
        }
    } else if !body.is_empty() {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            // Media types are case-insensitive (RFC 9110 §8.3.1).
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Failure::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Status::invalid_argument(
                    "the body must be JSON: send Content-Type: application/json",
                ),
            ));
        }
        // What OPA sends is OPA's to extend: fields of its status reports
        // and decision logs beyond those the request declares are ignored,
        // as OPA adds them.
        let strict = !matches!(
            route.method.name(),
            "ReportOpaStatus" | "UploadOpaDecisions"
        );
        route.body.fill(&mut message, body, strict)?;
    }
    for (field, segment) in bindings {
        let value = routes::decode_path_segment(segment).map_err(Status::invalid_argument)?;
        set_from_text(&mut message, field, &value).map_err(Status::invalid_argument)?;
    }
    Ok(message)
}

/// No route: 404 for an unknown path, 405 with the verbs it takes for a
/// known path and another verb.
fn not_routed(method: &Method, path: &str, routes: &[Route]) -> Failure {
    let verbs = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let mut allowed: Vec<&str> = verbs
        .iter()
        .filter(|verb| {
            routes
                .iter()
                .any(|route| route.matches(verb, path).is_some())
        })
        .map(Method::as_str)
        .collect();
    if allowed.is_empty() {
        return Status::not_found(format!("no route for {method} {path}")).into();
    }
    if allowed.contains(&"GET") {
        allowed.push("HEAD");
    }
    let allow = allowed.join(", ");
    let status = Status::unimplemented(format!("{path} takes {allow}, not {method}"));
    Failure::method_not_allowed(
        status,
        HeaderValue::from_str(&allow).expect("method names are header text"),
    )
}
