//! Prometheus metrics, served on their own HTTP port (`metrics_listen`).
//!
//! - `policyhub_rpc_requests_total{method,code}` and
//!   `policyhub_rpc_duration_seconds{method}`: every RPC, by gRPC status code;
//! - `policyhub_activations_total`: pointer moves applied to the index;
//! - `policyhub_revision`: the revision this replica serves;
//! - `policyhub_watch_streams`: open watch streams;
//! - `policyhub_watch_delivery_seconds`: from the moment a revision is
//!   applied to the index to the moment a stream hands its update to the
//!   transport; its maximum per revision is the time to the last delivery;
//! - `policyhub_runtime_reports_total`: ReportStatus calls accepted;
//! - `policyhub_runtime_flushes_total`: batches of the fleet view written
//!   (at most one per `runtimes.flush_interval_ms`).

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use http_body_util::Full;
use hyper::{Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tower_layer::Layer;
use tower_service::Service;

use crate::watch::ActiveIndex;

/// Labels of an RPC count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/package.Service/Method`.
    pub method: String,
    /// The gRPC status code, as a number.
    pub code: String,
}

/// Labels of an RPC duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `/package.Service/Method`.
    pub method: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabel, Histogram>,
    /// Pointer moves applied to the index.
    pub activations: Counter,
    revision: Gauge,
    watch_streams: Gauge,
    /// Apply-to-send time of watch updates.
    pub watch_delivery: Histogram,
    /// Runtime reports accepted.
    pub runtime_reports: Counter,
    /// Fleet-view batches written.
    pub runtime_flushes: Counter,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("policyhub");
    let rpc_requests = Family::<RpcLabels, Counter>::default();
    let rpc_duration =
        Family::<MethodLabel, Histogram>::new_with_constructor(
            || Histogram::new(latency_buckets()),
        );
    let activations = Counter::default();
    let revision = Gauge::default();
    let watch_streams = Gauge::default();
    let watch_delivery = Histogram::new(latency_buckets());
    let runtime_reports = Counter::default();
    let runtime_flushes = Counter::default();
    registry.register(
        "runtime_reports",
        "Runtime status reports accepted",
        runtime_reports.clone(),
    );
    registry.register(
        "runtime_flushes",
        "Batches of the fleet view written to the database",
        runtime_flushes.clone(),
    );
    registry.register(
        "rpc_requests",
        "RPCs served, by method and gRPC status code",
        rpc_requests.clone(),
    );
    registry.register(
        "rpc_duration_seconds",
        "Time to answer an RPC (to the first response for streams)",
        rpc_duration.clone(),
    );
    registry.register(
        "activations",
        "Active-pointer moves applied to the index",
        activations.clone(),
    );
    registry.register(
        "revision",
        "The revision this replica serves",
        revision.clone(),
    );
    registry.register("watch_streams", "Open watch streams", watch_streams.clone());
    registry.register(
        "watch_delivery_seconds",
        "From applying a revision to handing its update to a watch stream",
        watch_delivery.clone(),
    );
    Metrics {
        registry,
        rpc_requests,
        rpc_duration,
        activations,
        revision,
        watch_streams,
        watch_delivery,
        runtime_reports,
        runtime_flushes,
    }
});

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// The text exposition, with the gauges read from the index now.
    pub fn render(&self, index: &ActiveIndex) -> String {
        self.revision.set(index.revision() as i64);
        self.watch_streams.set(index.subscribers() as i64);
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until aborted.
pub async fn serve(listener: TcpListener, index: ActiveIndex) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics listener failed to accept");
                continue;
            }
        };
        let index = index.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let body = global().render(&index);
                async move {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
}

/// Binds the metrics port.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics port {address}"))
}

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

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RpcMetrics<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // Errors answered before any message carry grpc-status in the
            // headers; a missing header means the call went on to succeed or
            // stream (its status then arrives in the trailers).
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("0")
                .to_owned();
            let metrics = global();
            metrics
                .rpc_duration
                .get_or_create(&MethodLabel {
                    method: method.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .rpc_requests
                .get_or_create(&RpcLabels { method, code })
                .inc();
            Ok(response)
        })
    }
}
