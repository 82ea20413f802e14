//! Prometheus metrics, served on their own HTTP port (`metrics_listen`).
//!
//! - `policyhub_rpc_requests_total{method,code}` and
//!   `policyhub_rpc_duration_seconds{method}`: every RPC, by the gRPC status
//!   code it ended with (see `rpc`); methods no service serves are `_OTHER`;
//! - `policyhub_build_info{version}` and the standard `process_*` metrics;
//! - `policyhub_activations_total`: pointer moves applied to the index;
//! - `policyhub_revision`: the revision this replica serves;
//! - `policyhub_watch_streams`: open watch streams;
//! - `policyhub_watch_delivery_seconds`: from the moment a revision is
//!   applied to the index to the moment a stream hands its update to the
//!   transport; its maximum per revision is the time to the last delivery;
//! - `policyhub_runtime_reports_total`: ReportStatus calls accepted;
//! - `policyhub_runtime_flushes_total`: batches of the fleet view written
//!   (at most one per `runtimes.flush_interval_ms`);
//! - `policyhub_schedule_firings_total{outcome}`: schedule firings this
//!   replica made, `applied`, `already_active` or `refused`;
//! - `policyhub_decisions_kept_total` and
//!   `policyhub_decisions_dropped_total{reason}`: decisions OPAs uploaded
//!   that were kept, and those the retention dropped, `count` or `age`;
//! - `policyhub_schedules_paused_by_refusal`: schedules a refused firing
//!   paused and no operator resumed yet;
//! - `policyhub_rollouts_awaiting_approval`: rollouts that wait for a
//!   person's approval;
//! - `policyhub_rollouts_self_paused`: rollouts that paused themselves (a
//!   step failed, or a requirement moved out of range as they completed)
//!   and no operator resumed yet;
//! - `policyhub_webhook_deliveries_total{subscription, outcome}`,
//!   `policyhub_webhook_queue_depth{subscription}`,
//!   `policyhub_webhook_oldest_undelivered_age_seconds{subscription}` and
//!   `policyhub_webhook_subscriptions_disabled_total`: the webhook delivery
//!   worker (`notifications`);
//! - `policyhub_witness_submissions_total{witness, outcome}`: checkpoint
//!   submissions to the witnesses of `audit.witnesses` (`witnessing`), by
//!   outcome: `cosigned`, `unreachable`, `refused` or `invalid`;
//! - `policyhub_accept_errors_total{port}`: accepts that failed on the
//!   `grpc`, `http` or `metrics` port (at the open-files limit, say), each
//!   followed by a pause;
//! - `policyhub_connections_refused_total{port}`: connections closed at once
//!   because their port held `connections.max_per_port`.
//! - `policyhub_background_task_failures_total{task}`: background tasks
//!   (the controller, the webhook worker, the witnessing, …) that ended
//!   while the server served, by a panic or by returning (see
//!   `startup::tasks`).

mod exposition;
mod families;
mod notifications;
mod process;
mod rpc;
mod witnesses;

use std::{
    net::SocketAddr,
    sync::{Arc, LazyLock},
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use families::{FamilyDescription, Registrar};
pub use notifications::{NotificationInstruments, SubscriptionLabels};
pub use rpc::{DirectCall, RpcMetricsLayer};
pub use witnesses::WitnessInstruments;

use notifications::register_notifications;
use witnesses::register_witnesses;

use crate::connections::Listener;

use crate::fleet;
use crate::watch::{ActiveIndex, Instruments};

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
    /// Every family `registry` holds, with a series or not yet.
    families: Vec<FamilyDescription>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabel, Histogram>,
    /// What the index feeds: pointer moves applied, apply-to-send time.
    index: Instruments,
    revision: Gauge,
    watch_streams: Gauge,
    /// What the fleet view feeds: reports accepted, batches written.
    fleet: fleet::Instruments,
    schedule_firings: Family<OutcomeLabel, Counter>,
    schedules_paused_by_refusal: Gauge,
    decisions_kept: Counter,
    decisions_dropped: Family<ReasonLabel, Counter>,
    /// Checkpoints refused over a log that does not extend the last one.
    checkpoints_refused: Counter,
    accept_errors: Family<PortLabel, Counter>,
    connections_refused: Family<PortLabel, Counter>,
    background_task_failures: Family<TaskLabel, Counter>,
    /// What fetching the OpenID Connect issuers' keys feeds.
    auth: crate::grpc::auth::Instruments,
    /// What the webhook delivery worker feeds.
    notifications: NotificationInstruments,
    /// What the witnessing feeds.
    witnesses: WitnessInstruments,
}

/// Labels of a port's connection counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    /// `grpc`, `http`, `metrics` (the agent's: `api`, `metrics`).
    pub port: String,
}

/// The connection counts of `port` in the two families, at zero until the
/// first.
pub fn connection_instruments(
    accept_errors: &Family<PortLabel, Counter>,
    refused: &Family<PortLabel, Counter>,
    port: &str,
) -> crate::connections::Instruments {
    let label = PortLabel {
        port: port.to_owned(),
    };
    crate::connections::Instruments {
        accept_errors: accept_errors.get_or_create(&label).clone(),
        refused: refused.get_or_create(&label).clone(),
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

/// Labels of a schedule firing count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    /// `applied`, `already_active` or `refused`.
    outcome: String,
}

/// Labels of a count of decisions dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    /// `count` or `age`.
    reason: String,
}

/// Labels of a background task's failure count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    /// The task's name, as the supervisor logs it.
    task: String,
}

/// Labels of the build-info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut root = Registry::default();
    root.register_collector(Box::new(process::ProcessCollector));
    let build_info = Family::<BuildLabels, Gauge>::default();
    build_info
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .set(1);
    let mut registry = Registrar::new(root.sub_registry_with_prefix("policyhub"), "policyhub");
    registry.register(
        "build_info",
        "Always 1; the version label names the running build",
        build_info,
    );
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
        "Time from a call's start to its status (the end of a stream)",
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
    let schedule_firings = Family::<OutcomeLabel, Counter>::default();
    // Every outcome at zero from the start, so that a rate or an alert on
    // `refused` has a series before the first refusal.
    for outcome in ["applied", "already_active", "refused"] {
        let _ = schedule_firings.get_or_create(&OutcomeLabel {
            outcome: outcome.to_owned(),
        });
    }
    let schedules_paused_by_refusal = Gauge::default();
    registry.register(
        "schedule_firings",
        "Schedule firings, by outcome: applied, already_active or refused",
        schedule_firings.clone(),
    );
    registry.register(
        "schedules_paused_by_refusal",
        "Schedules a refused firing paused and no operator resumed yet",
        schedules_paused_by_refusal.clone(),
    );
    let decisions_kept = Counter::default();
    registry.register(
        "decisions_kept",
        "Decisions OPAs uploaded that were kept (not kept before)",
        decisions_kept.clone(),
    );
    let decisions_dropped = Family::<ReasonLabel, Counter>::default();
    for reason in ["count", "age"] {
        let _ = decisions_dropped.get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        });
    }
    registry.register(
        "decisions_dropped",
        "Decisions dropped by the retention, oldest first, by reason: count or age",
        decisions_dropped.clone(),
    );
    let checkpoints_refused = Counter::default();
    registry.register(
        "checkpoints_refused",
        "Checkpoints refused because the event log does not extend the last signed one",
        checkpoints_refused.clone(),
    );
    let accept_errors = Family::<PortLabel, Counter>::default();
    let connections_refused = Family::<PortLabel, Counter>::default();
    registry.register(
        "accept_errors",
        "Accepts that failed, by port; each is followed by a pause of up to a second",
        accept_errors.clone(),
    );
    registry.register(
        "connections_refused",
        "Connections closed at once because their port held connections.max_per_port, by port",
        connections_refused.clone(),
    );
    let background_task_failures = Family::<TaskLabel, Counter>::default();
    registry.register(
        "background_task_failures",
        "Background tasks that ended while the server served (a panic, or a return), by task",
        background_task_failures.clone(),
    );
    let auth = crate::grpc::auth::Instruments::default();
    registry.register(
        "auth_key_fetches",
        "Fetches of an OpenID Connect issuer's discovery document and keys, by issuer and outcome: success or failure",
        auth.fetches.clone(),
    );
    registry.register(
        "auth_keys_fetched_timestamp_seconds",
        "When each OpenID Connect issuer's keys were last fetched, in seconds since the epoch; 0 until the first success",
        auth.fetched_at.clone(),
    );
    registry.register(
        "watch_delivery_seconds",
        "From applying a revision to handing its update to a watch stream",
        watch_delivery.clone(),
    );
    let notifications = NotificationInstruments::default();
    register_notifications(&mut registry, &notifications);
    let witnesses = WitnessInstruments::default();
    register_witnesses(&mut registry, &witnesses);
    let families = registry.families();
    Metrics {
        registry: root,
        families,
        rpc_requests,
        rpc_duration,
        index: Instruments {
            activations,
            delivery: watch_delivery,
        },
        revision,
        watch_streams,
        fleet: fleet::Instruments {
            reports: runtime_reports,
            flushes: runtime_flushes,
        },
        schedule_firings,
        schedules_paused_by_refusal,
        decisions_kept,
        decisions_dropped,
        checkpoints_refused,
        accept_errors,
        connections_refused,
        background_task_failures,
        auth,
        notifications,
        witnesses,
    }
});

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Every family of the server's registry, with a series or not yet:
    /// what the metrics reference lists.
    pub fn families(&self) -> &[FamilyDescription] {
        &self.families
    }

    /// The instruments the fleet view feeds.
    pub fn fleet_instruments(&self) -> fleet::Instruments {
        self.fleet.clone()
    }

    /// The count of schedule firings with `outcome`, at zero until the
    /// first.
    pub fn schedule_firings(&self, outcome: &str) -> Counter {
        self.schedule_firings
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .clone()
    }

    /// What the accept loop of `port` counts.
    pub fn connection_instruments(&self, port: &str) -> crate::connections::Instruments {
        connection_instruments(&self.accept_errors, &self.connections_refused, port)
    }

    /// The failure count of the background task `task`, at zero until the
    /// first, so that an alert on it has a series from the start.
    pub fn background_task_failures(&self, task: &str) -> Counter {
        self.background_task_failures
            .get_or_create(&TaskLabel {
                task: task.to_owned(),
            })
            .clone()
    }

    /// The gauge of schedules paused by a refused firing.
    pub fn schedules_paused_by_refusal(&self) -> Gauge {
        self.schedules_paused_by_refusal.clone()
    }

    /// The instruments of the issuers' key fetches.
    pub fn auth_instruments(&self) -> crate::grpc::auth::Instruments {
        self.auth.clone()
    }

    /// The instruments decision uploads feed.
    pub fn decision_instruments(&self) -> crate::grpc::DecisionInstruments {
        let dropped = |reason: &str| {
            self.decisions_dropped
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .clone()
        };
        crate::grpc::DecisionInstruments {
            kept: self.decisions_kept.clone(),
            dropped_by_count: dropped("count"),
            dropped_by_age: dropped("age"),
        }
    }

    /// The count of checkpoints refused over a rewritten log.
    pub fn checkpoints_refused(&self) -> Counter {
        self.checkpoints_refused.clone()
    }

    /// The instruments the webhook delivery worker feeds.
    pub fn notification_instruments(&self) -> NotificationInstruments {
        self.notifications.clone()
    }

    /// The instruments the witnessing feeds.
    pub fn witness_instruments(&self) -> WitnessInstruments {
        self.witnesses.clone()
    }

    /// The instruments the active index feeds.
    pub fn index_instruments(&self) -> Instruments {
        self.index.clone()
    }

    /// The OpenMetrics exposition, with the gauges read from the index now.
    fn render(&self, index: &ActiveIndex) -> String {
        self.revision.set(index.revision() as i64);
        self.watch_streams.set(index.subscribers() as i64);
        encode_registry(&self.registry)
    }
}

/// Writes the OpenMetrics text of one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The OpenMetrics text of `registry`.
pub fn encode_registry(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// The standard `process_*` metrics, for a registry of another process kind
/// (`policyhub agent`).
pub fn process_collector() -> Box<dyn prometheus_client::collector::Collector> {
    Box::new(process::ProcessCollector)
}

/// Answers `GET /metrics` in the format the scraper asks for; every other
/// path is 404.
fn answer(request: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(
                b"only /metrics is served here\n",
            )))
            .expect("a static response is valid");
    }
    let accept = request
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let openmetrics = render();
    let (content_type, body) = if exposition::wants_openmetrics(accept) {
        (exposition::OPENMETRICS, openmetrics)
    } else {
        (exposition::CLASSIC, exposition::to_classic(&openmetrics))
    };
    Response::builder()
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a content type is a valid header")
}

/// Serves the server's `/metrics` on `listener` until `stop` is
/// cancelled and the scrapes under way are answered.
pub async fn serve(listener: Listener, index: ActiveIndex, stop: CancellationToken) {
    serve_with(listener, Arc::new(move || global().render(&index)), stop).await
}

/// Serves `/metrics` on `listener` until `stop` is cancelled and the
/// scrapes under way are answered, each scrape written by `render`.
pub async fn serve_with(listener: Listener, render: Render, stop: CancellationToken) {
    listener
        .serve_http(stop, move |request| {
            let response = answer(&request, &render);
            async move { response }
        })
        .await
}

/// Binds the metrics port.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics port {address}"))
}
