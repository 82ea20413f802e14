//! Logs and traces.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or
//! JSON lines. When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also
//! exported over OTLP/gRPC (the standard `OTEL_*` variables configure the
//! exporter), and each RPC's span continues the caller's trace from the W3C
//! `traceparent` metadata.

use std::io::IsTerminal;

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// Flushes exported spans when dropped (at the end of `main`).
#[must_use = "dropping the guard flushes and stops span export"]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("error: flushing spans: {error}");
        }
    }
}

/// Installs the global subscriber. Must run inside the Tokio runtime (the
/// OTLP exporter uses it). A second call is a no-op, which lets tests start
/// several servers in one process.
pub fn init(format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal, and never with NO_COLOR (no-color.org).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = match std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(_) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the
            // resource builder; without them the service is "policyhub".
            let resource = opentelemetry_sdk::Resource::builder();
            let resource = match std::env::var_os("OTEL_SERVICE_NAME") {
                Some(_) => resource,
                None => resource.with_service_name("policyhub"),
            };
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build(),
            )
        }
        None => None,
    };
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("policyhub")));
    let _already_set = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    Ok(TelemetryGuard(provider))
}

/// Reads W3C trace context from HTTP/2 headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one RPC, a child of the caller's trace when the request
/// carries `traceparent`.
pub fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let (service, method) = crate::grpc::methods::classify(request.uri().path());
    // OpenTelemetry's RPC conventions: the span is named
    // `$rpc.service/$rpc.method`; the status code is recorded at the end
    // (see `metrics::rpc`).
    let span = tracing::info_span!(
        "rpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    // Without an exporter there is no OpenTelemetry layer to attach to.
    let _ = span.set_parent(parent);
    span
}
