//! Traces reach an OTLP collector with the caller's trace id; metrics count
//! what happened.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use policyhub::grpc::{convert::json_to_struct, proto};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::TcpListenerStream;

use crate::helpers::{Backend, TestDatabase, spawn_binary_server, spawn_on, terminate};

/// An OTLP trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    /// `(trace id as hex, span name)` of every span received.
    spans: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let trace_id: String = span
                        .trace_id
                        .iter()
                        .map(|byte| format!("{byte:02x}"))
                        .collect();
                    spans.push((trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_the_callers_trace_id() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let (server, channel) = spawn_binary_server(
        dir.path(),
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{collector_address}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(proto::DraftRequest {
        namespace: "team".into(),
        name: "traced".into(),
        body: Some(json_to_struct(&json!({"v": 1}))),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    proto::policy_service_client::PolicyServiceClient::new(channel)
        .draft(request)
        .await
        .unwrap();

    // SIGTERM flushes whatever is still batched.
    terminate(server).await;
    let mut names = Vec::new();
    for _ in 0..50 {
        names = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(trace, _)| trace == trace_id)
            .map(|(_, name)| name.clone())
            .collect();
        if names.iter().any(|name| name == "storage.draft") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        names
            .iter()
            .any(|name| name == "/policyhub.v1.PolicyService/Draft"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|name| name == "storage.draft"),
        "{names:?}"
    );
}

async fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: policyhub\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn value_of(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_rpcs_activations_and_streams() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let address = app.metrics_address.expect("a metrics port");
    app.release("team", "measured", json!({"v": 1}), true).await;
    app.get_active("team", "missing").await.unwrap_err();
    let _stream = app.watch("team", &[], 0).await;
    let metrics = scrape(address).await;
    let draft =
        r#"policyhub_rpc_requests_total{method="/policyhub.v1.PolicyService/Draft",code="0"}"#;
    let not_found =
        r#"policyhub_rpc_requests_total{method="/policyhub.v1.BundleService/GetActive",code="5"}"#;
    assert!(value_of(&metrics, draft) >= 1.0);
    assert!(value_of(&metrics, not_found) >= 1.0);
    assert!(value_of(&metrics, "policyhub_activations_total") >= 1.0);
    assert_eq!(value_of(&metrics, "policyhub_revision"), 1.0);
    assert_eq!(value_of(&metrics, "policyhub_watch_streams"), 1.0);
    assert!(
        metrics.contains("policyhub_rpc_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("policyhub_watch_delivery_seconds_count"),
        "{metrics}"
    );
}
