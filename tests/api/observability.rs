//! Traces reach an OTLP collector with the caller's trace id; metrics count
//! what happened; start-up lines read as text.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
};
use policyhub::grpc::{convert::json_to_struct, proto};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::TcpListenerStream;

use crate::helpers::{
    Backend, TestDatabase, policyhub_binary, spawn_binary_server, spawn_on, terminate,
};

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    /// Trace id as hex.
    trace_id: String,
    name: String,
    /// Attributes, values in their protobuf debug form.
    attributes: std::collections::HashMap<String, String>,
    /// The `service.name` of the resource that sent it.
    service: String,
}

/// An OTLP trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn attribute_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .map(|attribute| attribute_text(attribute.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let trace_id: String = span
                        .trace_id
                        .iter()
                        .map(|byte| format!("{byte:02x}"))
                        .collect();
                    spans.push(ReceivedSpan {
                        trace_id,
                        name: span.name,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|attribute| {
                                (
                                    attribute.key.clone(),
                                    attribute_text(attribute.value.as_ref()),
                                )
                            })
                            .collect(),
                        service: service.clone(),
                    });
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
            ("OTEL_SERVICE_NAME", "policyhub-eu".to_owned()),
        ],
    )
    .await;
    let traced = |trace_id: &str| {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        metadata
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let failing_trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let mut request = tonic::Request::new(proto::DraftRequest {
        namespace: "team".into(),
        name: "traced".into(),
        body: Some(json_to_struct(&json!({"v": 1}))),
        ..Default::default()
    });
    *request.metadata_mut() = traced(trace_id);
    proto::policy_service_client::PolicyServiceClient::new(channel.clone())
        .draft(request)
        .await
        .unwrap();
    let mut missing = tonic::Request::new(proto::GetActiveRequest {
        namespace: "team".into(),
        name: "missing".into(),
        ..Default::default()
    });
    *missing.metadata_mut() = traced(failing_trace_id);
    proto::bundle_service_client::BundleServiceClient::new(channel)
        .get_active(missing)
        .await
        .unwrap_err();

    // SIGTERM flushes whatever is still batched.
    terminate(server).await;
    let spans_of = |trace: &str| -> Vec<ReceivedSpan> {
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span.trace_id == trace)
            .cloned()
            .collect()
    };
    for _ in 0..50 {
        if spans_of(trace_id)
            .iter()
            .any(|span| span.name == "storage.draft")
            && !spans_of(failing_trace_id).is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = spans_of(trace_id);
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    assert!(names.contains(&"storage.draft"), "{names:?}");
    // OpenTelemetry's RPC conventions: `$service/$method` and rpc.* attributes.
    let rpc = spans
        .iter()
        .find(|span| span.name == "policyhub.v1.PolicyService/Draft")
        .unwrap_or_else(|| panic!("no RPC span in {names:?}"));
    assert_eq!(rpc.attributes["rpc.system"], "grpc");
    assert_eq!(rpc.attributes["rpc.service"], "policyhub.v1.PolicyService");
    assert_eq!(rpc.attributes["rpc.method"], "Draft");
    assert_eq!(rpc.attributes["rpc.grpc.status_code"], "0");
    assert_eq!(rpc.service, "policyhub-eu", "OTEL_SERVICE_NAME is honoured");
    let failed = spans_of(failing_trace_id);
    let failed = failed
        .iter()
        .find(|span| span.name == "policyhub.v1.BundleService/GetActive")
        .unwrap_or_else(|| panic!("no span of the failing call: {failed:?}"));
    assert_eq!(failed.attributes["rpc.grpc.status_code"], "5", "NOT_FOUND");
}

/// One scrape of `path`: the status line, the content type and the body.
async fn get(address: std::net::SocketAddr, path: &str, accept: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nhost: policyhub\r\naccept: {accept}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

pub(crate) async fn scrape(address: std::net::SocketAddr) -> String {
    let (status, _, body) = get(address, "/metrics", "*/*").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    body
}

/// The value of `series`, if it has one.
fn series_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The value of `series`, 0 while it has none (a counter not yet
/// incremented has no series).
pub(crate) fn count_of(metrics: &str, series: &str) -> f64 {
    series_value(metrics, series).unwrap_or(0.0)
}

pub(crate) fn value_of(metrics: &str, series: &str) -> f64 {
    series_value(metrics, series).unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
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

/// The classic text format by default (what promtool and curl read), with
/// counters declared under their sample names, process and build metrics;
/// OpenMetrics when the scraper asks for it; 404 off `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_speaks_both_exposition_formats_and_promtool_accepts_it() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let address = app.metrics_address.expect("a metrics port");
    app.release("team", "measured", json!({"v": 1}), true).await;

    let (status, content_type, classic) = get(address, "/metrics", "*/*").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!classic.contains("# EOF"), "{classic}");
    assert!(
        classic.contains("# TYPE policyhub_rpc_requests_total counter"),
        "{classic}"
    );
    assert!(value_of(&classic, "process_resident_memory_bytes") > 0.0);
    assert!(value_of(&classic, "process_cpu_seconds_total") > 0.0);
    let version = format!(
        r#"policyhub_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value_of(&classic, &version), 1.0);
    crate::helpers::promtool_accepts(&classic);

    let (_, content_type, openmetrics) = get(
        address,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE policyhub_rpc_requests counter"));

    let (status, _, _) = get(address, "/anything-else", "*/*").await;
    assert!(status.contains("404"), "{status}");
}

/// A made-up method path adds no series (it counts as `_OTHER`), and a
/// stream counts with the status it ended with: a watch the client cancels
/// is CANCELLED, not OK at its first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_metrics_know_the_served_methods_and_the_final_status() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let address = app.metrics_address.expect("a metrics port");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for n in 0..5 {
        grpc.ready().await.unwrap();
        let path = format!("/attacker.Svc/M{n}").parse().unwrap();
        let refused = grpc
            .unary::<proto::GetSigningKeysRequest, proto::GetSigningKeysResponse, _>(
                tonic::Request::new(proto::GetSigningKeysRequest {}),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
    }
    let mut stream = app.watch("team", &[], 0).await;
    crate::helpers::next_message(&mut stream).await;
    drop(stream);
    let cancelled = r#"policyhub_rpc_requests_total{method="/policyhub.v1.BundleService/WatchActive",code="1"}"#;
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = scrape(address).await;
        if metrics.contains(cancelled) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(value_of(&metrics, cancelled) >= 1.0, "{metrics}");
    assert!(!metrics.contains("attacker"), "{metrics}");
    assert!(
        value_of(
            &metrics,
            r#"policyhub_rpc_requests_total{method="_OTHER",code="12"}"#
        ) >= 5.0
    );
}

/// A real Prometheus (Debian's, installed by `./scripts/test` with promtool)
/// scrapes the metrics port and keeps the types and help texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_endpoint_with_types_and_help() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    app.release("team", "scraped", json!({"v": 1}), true).await;
    let target = app.metrics_address.expect("a metrics port");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\n\
             scrape_configs:\n  - job_name: policyhub\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = crate::helpers::free_port();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus is on PATH (./scripts/test installs Debian's prometheus)");
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut metadata = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tokio::net::TcpStream::connect(api).await.is_err() {
            continue;
        }
        // With OpenMetrics, Prometheus files a counter under its family
        // name, without `_total`.
        let (status, _, body) = get(
            api,
            "/api/v1/metadata?metric=policyhub_rpc_requests",
            "application/json",
        )
        .await;
        if status.contains("200") && body.contains("\"counter\"") {
            metadata = body;
            break;
        }
    }
    prometheus.kill().ok();
    prometheus.wait().ok();
    assert!(
        metadata.contains("\"counter\"") && metadata.contains("RPCs served"),
        "Prometheus keeps the type and help: {metadata}"
    );
}

/// The log lines `policyhub serve` writes until it serves every port, in
/// the text format, from its first start over an empty data directory (the
/// generated key and secret have lines of their own).
fn start_up_lines() -> Vec<String> {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new(policyhub_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start policyhub serve");
    let stderr = server.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut read = Vec::new();
    let served = |read: &[String], port: &str| read.iter().any(|line| line.contains(port));
    while !["serving grpc", "serving http", "serving metrics"]
        .iter()
        .all(|port| served(&read, port))
    {
        match received.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => read.push(line),
            Err(_) => {
                server.kill().ok();
                panic!(
                    "policyhub serve did not serve every port:\n{}",
                    read.join("\n")
                );
            }
        }
    }
    server.kill().ok();
    server.wait().ok();
    read
}

/// What the server says at start reads as text, not as Rust's debug forms:
/// `address=127.0.0.1:8080`, not `address=Some(127.0.0.1:8080)`, and
/// string fields unquoted.
#[test]
fn start_up_lines_print_no_debug_forms() {
    let lines = start_up_lines();
    let debug: Vec<&String> = lines
        .iter()
        .filter(|line| {
            ["Some(", "None", "=\""]
                .iter()
                .any(|form| line.contains(form))
        })
        .collect();
    assert!(debug.is_empty(), "{debug:#?}\nin\n{}", lines.join("\n"));
}

/// The gRPC port accepts nothing until the store is open: with a PostgreSQL
/// that takes the connection and never answers, a probe's connection is
/// refused for as long as the server waits on it, rather than accepted by
/// a server that cannot serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_refuses_connections_until_the_store_is_open() {
    // The kernel completes the handshakes into the backlog; nothing answers.
    let silent_database = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let database_url = format!(
        "postgres://postgres@{}/policyhub",
        silent_database.local_addr().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let mut server = std::process::Command::new(policyhub_binary())
        .args(crate::helpers::serve_args(port, dir.path()))
        .args(["--database-url", &database_url])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start policyhub serve");
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let connected = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        assert!(
            connected.is_err(),
            "the port accepted a connection before the store opened"
        );
    }
    let waiting = server.try_wait().unwrap().is_none();
    server.kill().ok();
    server.wait().ok();
    assert!(waiting, "the server was still waiting on the database");
}

/// The families the metrics reference lists under `section` (`## The
/// server`, `## The agent`), in the classic format's names.
fn documented_families(section: &str) -> Vec<String> {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/reference/metrics.md"),
    )
    .unwrap();
    let (_, rest) = page
        .split_once(section)
        .unwrap_or_else(|| panic!("the metrics reference has {section}"));
    let table = rest.split("\n## ").next().unwrap();
    let families: Vec<String> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .collect();
    assert!(families.len() > 10, "{section}: {families:?}");
    families
}

/// The documented families a classic-format scrape does not declare.
fn undeclared(exposition: &str, documented: &[String]) -> Vec<String> {
    documented
        .iter()
        .filter(|name| !exposition.contains(&format!("\n# TYPE {name} ")))
        .cloned()
        .collect()
}

/// The address a process logged for `port` on its start-up line
/// (`agent started api=… metrics=…`), read from `log`, the lines of its
/// standard error: kept, and so drained, while the process runs.
async fn started_on(
    log: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    port: &str,
) -> std::net::SocketAddr {
    let key = format!("{port}=");
    let found = async {
        while let Some(line) = log.recv().await {
            if let Some(value) = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&key))
            {
                return value.parse().expect("an address");
            }
        }
        panic!("the process ended before it logged {key}");
    };
    tokio::time::timeout(Duration::from_secs(30), found)
        .await
        .unwrap_or_else(|_| panic!("no {key} on a start-up line within 30s"))
}

/// A fresh server, and a fresh agent before it holds any state, declare
/// every family the metrics reference names, at zero or with no series
/// yet, so an alert or a dashboard never meets an absent family (the
/// webhook and witness families had no `# HELP` or `# TYPE` until their
/// first observation); promtool accepts both scrapes. Each is a process of
/// its own, whose registry no other test has fed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_and_agent_declare_every_family_the_reference_names() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], crate::helpers::free_port()));
    let mut command = std::process::Command::new(policyhub_binary());
    command
        .args(crate::helpers::serve_args(port, dir.path()))
        .args(["--metrics-listen", &metrics.to_string()]);
    let (_server, _) = crate::helpers::start_serving(command, port).await;
    let exposition = scrape(metrics).await;
    let missing = undeclared(&exposition, &documented_families("## The server"));
    assert!(missing.is_empty(), "{missing:?} in:\n{exposition}");
    // Without labels, or with labels known from the start: a series at 0.
    for series in [
        "policyhub_webhook_subscriptions_disabled_total",
        "policyhub_checkpoints_refused_total",
        r#"policyhub_schedule_firings_total{outcome="refused"}"#,
        r#"policyhub_accept_errors_total{port="grpc"}"#,
        r#"policyhub_background_task_failures_total{task="controller"}"#,
    ] {
        assert_eq!(value_of(&exposition, series), 0.0, "{series}");
    }
    crate::helpers::promtool_accepts(&exposition);

    // An agent whose server does not answer: no state, and every family.
    // The server is a port this test holds and never accepts on, and the
    // agent's own ports are the kernel's choice, read from its start-up
    // line: no port here is one another test can take meanwhile.
    let unanswered = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = std::process::Command::new(policyhub_binary())
        .args(["agent", "--namespace", "payments"])
        .args([
            "--server",
            &format!("http://{}", unanswered.local_addr().unwrap()),
        ])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--cache-dir")
        .arg(dir.path().join("agent-cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start policyhub agent");
    let mut agent = crate::helpers::Reaped(agent);
    let mut log = crate::helpers::lines_of(agent.stderr.take().unwrap());
    let agent_metrics = started_on(&mut log, "metrics").await;
    let exposition = scrape(agent_metrics).await;
    assert!(
        !exposition.contains("policyhub_agent_revision{"),
        "the agent holds no state yet: {exposition}"
    );
    let missing = undeclared(&exposition, &documented_families("## The agent"));
    assert!(missing.is_empty(), "{missing:?} in:\n{exposition}");
    crate::helpers::promtool_accepts(&exposition);
}
