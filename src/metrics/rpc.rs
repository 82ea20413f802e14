//! Counts and times every RPC by the status it ended with.
//!
//! A gRPC status travels in the trailers, after the last message, unless
//! the call failed before any message ("trailers only", in the headers). So
//! the response body is watched until its trailers pass: a stream that fails
//! after its first message counts with its real code, and a stream's
//! duration runs to its end. A body dropped before its trailers (the client
//! went away) counts as CANCELLED. The method label is the served method, or
//! `_OTHER` for a path no service serves, so made-up paths add no series.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use prost::bytes::Bytes;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::{MethodLabel, RpcLabels, global};
use crate::grpc::methods;

/// Layer that counts and times every RPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, RequestBody> Service<http::Request<RequestBody>> for RpcMetrics<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let method = match methods::classify(request.uri().path()) {
            (methods::OTHER, _) => methods::OTHER.to_owned(),
            _ => request.uri().path().to_owned(),
        };
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            // tonic polls this future inside the RPC's span (see
            // `telemetry::rpc_span`), so it is current here.
            let span = tracing::Span::current();
            let response = response.await?;
            let (parts, body) = response.into_parts();
            // "Trailers only": the status is already in the headers.
            let status = parts
                .headers
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let observed = ObservedBody {
                inner: body,
                call: Some(Call {
                    method,
                    started,
                    span,
                }),
                status,
            };
            Ok(http::Response::from_parts(parts, Body::new(observed)))
        })
    }
}

/// A call answered without passing this layer (the HTTP port's OPA
/// polls, which call the bundle service's handler directly), recorded as
/// this layer records one: with the code it ends with, or CANCELLED when
/// it is dropped first (the client went away from a held poll).
///
/// Its series are found when it starts: a held poll ends when the bundle
/// changes, together with every other OPA's of the fleet, and then finds
/// no label set and takes no lock of the families.
pub struct DirectCall {
    /// Taken when recorded.
    call: Option<Call>,
    duration: Histogram,
    /// The count of calls that end OK.
    ok: Counter,
}

impl DirectCall {
    /// A call of `method` (its gRPC path) starting now, within `span`.
    pub fn start(method: &str, span: tracing::Span) -> Self {
        let metrics = global();
        let duration = metrics
            .rpc_duration
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .clone();
        let ok = metrics
            .rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: OK.to_owned(),
            })
            .clone();
        DirectCall {
            call: Some(Call {
                method: method.to_owned(),
                started: Instant::now(),
                span,
            }),
            duration,
            ok,
        }
    }

    /// The call ended with `code`.
    pub fn end(mut self, code: tonic::Code) {
        if let Some(call) = self.call.take() {
            if code == tonic::Code::Ok {
                call.record(&self.duration, &self.ok, OK);
            } else {
                call.end(&(code as i32).to_string());
            }
        }
    }
}

impl Drop for DirectCall {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.end(CANCELLED);
        }
    }
}

/// What to record once the call ends.
struct Call {
    method: String,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    fn end(self, code: &str) {
        let metrics = global();
        let duration = metrics.rpc_duration.get_or_create(&MethodLabel {
            method: self.method.clone(),
        });
        let requests = metrics.rpc_requests.get_or_create(&RpcLabels {
            method: self.method.clone(),
            code: code.to_owned(),
        });
        self.record(&duration, &requests, code);
    }

    /// Records the call in its series, `duration` and `requests` (those of
    /// its method and `code`).
    fn record(self, duration: &Histogram, requests: &Counter, code: &str) {
        duration.observe(self.started.elapsed().as_secs_f64());
        requests.inc();
        if let Ok(code) = code.parse::<i64>() {
            self.span.record("rpc.grpc.status_code", code);
        }
    }
}

/// A response body that records its call when the status passes.
struct ObservedBody {
    inner: Body,
    /// Taken when recorded.
    call: Option<Call>,
    /// The status from the headers, when the call failed before any message.
    status: Option<String>,
}

/// OK: the call succeeded.
const OK: &str = "0";
/// CANCELLED: the client went away before the call ended.
const CANCELLED: &str = "1";
/// UNKNOWN: the body ended without a status.
const UNKNOWN: &str = "2";

impl ObservedBody {
    fn end(&mut self, code: Option<&str>) {
        if let Some(call) = self.call.take() {
            call.end(code.or(self.status.as_deref()).unwrap_or(UNKNOWN));
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned);
                    self.end(code.as_deref());
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Some(UNKNOWN)),
            Poll::Ready(None) => self.end(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if self.call.is_some() {
            let code = if self.status.is_some() || self.inner.is_end_stream() {
                None
            } else {
                Some(CANCELLED)
            };
            self.end(code);
        }
    }
}
