//! `policyhub-runtime-test-service`: the Rust runtime library
//! (`policyhub-runtime`) behind the conformance kit's test-service
//! protocol. Each runtime the kit starts is one `Subscription`; what it
//! says becomes the runtime's view.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Parser;
use futures_util::StreamExt;
use policyhub_conformance::protocol::{
    Capability, Created, PolicyView, RuntimeEvent, RuntimeSettings, RuntimeView, ServiceInfo,
    Source, StateView,
};
use policyhub_runtime::{Event, Subscription};

/// Serves the test-service protocol for the Rust runtime library.
#[derive(Debug, Parser)]
struct Args {
    /// Where to listen; port 0 takes a free one. The address is printed
    /// on standard output once it listens.
    #[arg(long, default_value = "127.0.0.1:8111")]
    listen: SocketAddr,
}

/// The runtimes started, by id.
#[derive(Default)]
struct Runtimes {
    next: AtomicU64,
    running: Mutex<HashMap<String, Running>>,
}

struct Running {
    view: Arc<Mutex<RuntimeView>>,
    task: tokio::task::JoinHandle<()>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtimes = Arc::new(Runtimes::default());
    let app = Router::new()
        .route("/", get(info))
        .route("/runtimes", axum::routing::post(start))
        .route("/runtimes/{id}", get(view).delete(stop))
        .with_state(runtimes);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn info() -> Json<ServiceInfo> {
    Json(ServiceInfo {
        name: "policyhub-runtime (Rust)".to_owned(),
        capabilities: vec![
            Capability::Cache,
            Capability::Reports,
            Capability::History,
            Capability::Witnesses,
            Capability::Endpoints,
            Capability::Fleet,
        ],
    })
}

async fn start(
    State(runtimes): State<Arc<Runtimes>>,
    Json(settings): Json<RuntimeSettings>,
) -> Response {
    let subscription = match subscription(&settings) {
        Ok(subscription) => subscription,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let id = runtimes.next.fetch_add(1, Ordering::Relaxed).to_string();
    let view = Arc::new(Mutex::new(RuntimeView::default()));
    let task = tokio::spawn(follow(subscription, view.clone()));
    runtimes
        .running
        .lock()
        .unwrap()
        .insert(id.clone(), Running { view, task });
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/runtimes/{id}"))],
        Json(Created { id }),
    )
        .into_response()
}

/// The library's subscription for the kit's settings.
fn subscription(settings: &RuntimeSettings) -> Result<Subscription, String> {
    if settings.endpoints.is_empty() {
        return Err("at least one endpoint".to_owned());
    }
    let mut subscription =
        Subscription::with_endpoints(settings.endpoints.clone(), settings.namespace.clone())
            .names(settings.names.clone());
    if let Some(id) = &settings.runtime_id {
        subscription = subscription.runtime(id.clone(), []);
    }
    if let Some(dir) = &settings.cache_dir {
        subscription = subscription.cache_dir(dir);
    }
    if let Some(interval) = settings.heartbeat_interval_ms {
        subscription = subscription.heartbeat_interval(Duration::from_millis(interval));
    }
    if let Some(backoff) = settings.backoff {
        subscription = subscription.backoff(
            Duration::from_millis(backoff.initial_ms),
            Duration::from_millis(backoff.max_ms),
        );
    }
    if let Some(interval) = settings.rebalance_interval_ms {
        subscription = subscription.rebalance_interval(Duration::from_millis(interval));
    }
    if let Some(age) = settings.max_checkpoint_age_ms {
        subscription = subscription.max_checkpoint_age(Some(Duration::from_millis(age)));
    }
    if let Some(witnesses) = &settings.witnesses {
        subscription = subscription.witnesses(witnesses.keys.clone(), witnesses.required);
    }
    Ok(subscription)
}

/// Follows until stopped, writing what the subscription says into `view`.
async fn follow(subscription: Subscription, view: Arc<Mutex<RuntimeView>>) {
    let mut events = std::pin::pin!(subscription.events());
    while let Some(event) = events.next().await {
        let mut view = view.lock().unwrap();
        match event {
            Ok(Event::Applied(state) | Event::FromCache(state))
            | Ok(Event::Revoked {
                restored: state, ..
            }) => {
                let state = state_view(&state);
                view.events.push(RuntimeEvent::Applied {
                    revision: state.revision,
                    source: state.source,
                    policies: state
                        .policies
                        .iter()
                        .map(|(name, policy)| (name.clone(), policy.version))
                        .collect(),
                });
                view.in_force = Some(state);
            }
            Ok(Event::Rejected { revision, reason }) => {
                view.events
                    .push(RuntimeEvent::Rejected { revision, reason });
            }
            Ok(Event::Connected { endpoint, .. }) => {
                view.events.push(RuntimeEvent::Connected { endpoint })
            }
            Ok(Event::Disconnected { reason, .. } | Event::Refused { reason, .. }) => {
                view.events.push(RuntimeEvent::Disconnected { reason })
            }
            Ok(Event::HistoryRefused { reason, .. }) => {
                view.events.push(RuntimeEvent::HistoryRefused { reason })
            }
            Ok(Event::HistoryRestored { reason, .. }) => {
                view.events.push(RuntimeEvent::HistoryRestored { reason })
            }
            Ok(Event::CheckpointStale { .. }) => view.events.push(RuntimeEvent::CheckpointStale),
            Ok(Event::CheckpointFresh { .. }) => view.events.push(RuntimeEvent::CheckpointFresh),
            Ok(_) => {}
            Err(error) => {
                view.events.push(RuntimeEvent::Disconnected {
                    reason: format!("ended: {error}"),
                });
                return;
            }
        }
    }
}

fn state_view(state: &policyhub_runtime::State) -> StateView {
    StateView {
        revision: state.revision,
        source: match state.source {
            policyhub_runtime::Source::Server => Source::Server,
            policyhub_runtime::Source::Cache => Source::Cache,
        },
        policies: state
            .bundles
            .iter()
            .map(|(name, bundle)| {
                let policy = PolicyView {
                    version: bundle.version,
                    digest: bundle.digest.clone(),
                    body: bundle.body.clone(),
                };
                (name.clone(), policy)
            })
            .collect(),
    }
}

async fn view(State(runtimes): State<Arc<Runtimes>>, Path(id): Path<String>) -> Response {
    let running = runtimes.running.lock().unwrap();
    match running.get(&id) {
        Some(running) => Json(running.view.lock().unwrap().clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stop(State(runtimes): State<Arc<Runtimes>>, Path(id): Path<String>) -> StatusCode {
    let Some(running) = runtimes.running.lock().unwrap().remove(&id) else {
        return StatusCode::NOT_FOUND;
    };
    running.task.abort();
    // Aborted, the subscription's task lets its cache and connection go
    // before the next runtime over the same cache starts.
    running.task.await.ok();
    StatusCode::NO_CONTENT
}
