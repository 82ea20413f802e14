//! `policyhub-runtime-test-service`: the Rust runtime library
//! (`policyhub-runtime`) behind the conformance kit's test-service
//! protocol. Each runtime the kit starts is one `Subscription`; what it
//! says becomes the runtime's view.
//!
//! With `--break`, it is a deliberately broken runtime instead, for the
//! kit's own tests: [`Break`] distorts what the library does at the
//! runtime's boundary (the settings it takes, what it says it put in
//! force) the way a runtime breaking one obligation of the contract would
//! look from outside.

use std::{
    collections::{BTreeSet, HashMap},
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
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use policyhub_conformance::protocol::{
    Backoff, Capability, Created, PolicyView, RuntimeEvent, RuntimeSettings, RuntimeView,
    ServiceInfo, Source, StateView,
};
use policyhub_runtime::{Event, Subscription, Tls, token_file};

/// Serves the test-service protocol for the Rust runtime library.
#[derive(Debug, Parser)]
struct Args {
    /// Where to listen; port 0 takes a free one. The address is printed
    /// on standard output once it listens.
    #[arg(long, default_value = "127.0.0.1:8111")]
    listen: SocketAddr,
    /// For the conformance kit's own tests only: be a runtime that breaks
    /// one obligation of the runtime contract, to show that the kit
    /// catches it. Never for a runtime that is meant to work.
    #[arg(long = "break", value_enum, value_name = "VARIANT")]
    broken: Option<Break>,
}

/// The runtimes started, by id.
#[derive(Default)]
struct Runtimes {
    next: AtomicU64,
    running: Mutex<HashMap<String, Running>>,
    /// How every runtime is broken, if it is.
    broken: Option<Break>,
}

struct Running {
    record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a runtime did, as the kit reads it, and what a broken runtime
/// remembers to break the contract with.
#[derive(Default)]
struct Record {
    view: RuntimeView,
    /// The first state put in force.
    first: Option<StateView>,
    /// Streams opened.
    connections: usize,
    /// The key ids the first state was signed with.
    first_keys: Option<BTreeSet<String>>,
}

impl Record {
    fn put_in_force(&mut self, state: StateView) {
        self.view.events.push(RuntimeEvent::Applied {
            revision: state.revision,
            source: state.source,
            policies: state
                .policies
                .iter()
                .map(|(name, policy)| (name.clone(), policy.version))
                .collect(),
        });
        self.first.get_or_insert_with(|| state.clone());
        self.view.in_force = Some(state);
    }

    fn refuse(&mut self, revision: u64, reason: String) {
        self.view
            .events
            .push(RuntimeEvent::Rejected { revision, reason });
    }

    /// The state in force, moved to `revision` with the same policies: a
    /// state the library refused, whose altered bundles it keeps to itself.
    fn moved_to(&self, revision: u64) -> StateView {
        let mut state = self.view.in_force.clone().unwrap_or(StateView {
            revision,
            source: Source::Server,
            policies: Default::default(),
        });
        state.revision = revision;
        state.source = Source::Server;
        state
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // What the library logs, on standard error, as RUST_LOG asks (nothing
    // unless set).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtimes = Arc::new(Runtimes {
        broken: args.broken,
        ..Runtimes::default()
    });
    let app = Router::new()
        .route("/", get(info))
        .route("/runtimes", axum::routing::post(start))
        .route("/runtimes/{id}", get(view).delete(stop))
        .with_state(runtimes);
    policyhub_conformance::protocol::serve(args.listen, app).await
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
            Capability::Revocation,
            Capability::Fleet,
        ],
    })
}

async fn start(
    State(runtimes): State<Arc<Runtimes>>,
    Json(mut settings): Json<RuntimeSettings>,
) -> Response {
    if let Some(broken) = runtimes.broken {
        broken.settings(&mut settings);
    }
    let subscription = match subscription(&settings) {
        Ok(subscription) => subscription,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let id = runtimes.next.fetch_add(1, Ordering::Relaxed).to_string();
    let record = Arc::new(Mutex::new(Record::default()));
    let task = tokio::spawn(follow(subscription, record.clone(), runtimes.broken));
    runtimes
        .running
        .lock()
        .unwrap()
        .insert(id.clone(), Running { record, task });
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
    if let Some(file) = &settings.ca_file {
        let pem = std::fs::read(file).map_err(|error| format!("caFile {file}: {error}"))?;
        subscription = subscription.tls(Tls::new().ca_certificate(pem));
    }
    if let Some(file) = &settings.token_file {
        subscription = subscription.token(token_file(file));
    }
    Ok(subscription)
}

/// Follows until stopped, writing what the subscription says into
/// `record`, as `broken` distorts it.
async fn follow(subscription: Subscription, record: Arc<Mutex<Record>>, broken: Option<Break>) {
    let mut events = std::pin::pin!(subscription.events());
    while let Some(event) = events.next().await {
        let mut record = record.lock().unwrap();
        match event {
            Ok(Event::Applied(state) | Event::FromCache(state))
            | Ok(Event::Revoked {
                restored: state, ..
            }) => {
                let keys = state
                    .bundles
                    .values()
                    .map(|bundle| bundle.key_id.clone())
                    .collect();
                let state = state_view(&state);
                match broken {
                    Some(broken) => broken.applied(&mut record, state, keys),
                    None => record.put_in_force(state),
                }
            }
            Ok(Event::Rejected { revision, reason }) => match broken {
                Some(broken) => broken.rejected(&mut record, revision, reason),
                None => record.refuse(revision, reason),
            },
            Ok(Event::Connected { endpoint, .. }) => {
                record
                    .view
                    .events
                    .push(RuntimeEvent::Connected { endpoint });
                record.connections += 1;
                if let Some(broken) = broken {
                    broken.connected(&mut record);
                }
            }
            Ok(Event::Disconnected { reason, .. } | Event::Refused { reason, .. }) => record
                .view
                .events
                .push(RuntimeEvent::Disconnected { reason }),
            Ok(Event::HistoryRefused { reason, .. }) => match broken {
                Some(broken) => broken.history_refused(&mut record, reason),
                None => record
                    .view
                    .events
                    .push(RuntimeEvent::HistoryRefused { reason }),
            },
            Ok(Event::HistoryRestored { reason, .. }) => match broken {
                Some(broken) => broken.history_restored(&mut record, reason),
                None => record
                    .view
                    .events
                    .push(RuntimeEvent::HistoryRestored { reason }),
            },
            Ok(Event::CheckpointStale { .. }) => {
                record.view.events.push(RuntimeEvent::CheckpointStale)
            }
            Ok(Event::CheckpointFresh { .. }) => {
                record.view.events.push(RuntimeEvent::CheckpointFresh)
            }
            Ok(_) => {}
            Err(error) => {
                record.view.events.push(RuntimeEvent::Disconnected {
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
        Some(running) => Json(running.record.lock().unwrap().view.clone()).into_response(),
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

/// The ways `--break` makes the runtime break the contract, one per
/// obligation (the book's "The runtime contract"). Each distorts the
/// library at the runtime's boundary: the settings it is given, or what
/// it says it put in force, where the library cannot be made to misbehave
/// itself; from outside, a runtime with the defect looks the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Break {
    /// D1: the first state is put in force policy by policy.
    FirstSnapshotInParts,
    /// D2: every state from the server is applied twice.
    ApplyTwice,
    /// D3: after every reconnection the state held is applied again, as
    /// by a runtime that resumes from nothing.
    ReapplyAfterReconnect,
    /// D4: heartbeats are expected once an hour, so a link that carries
    /// nothing is held on to.
    IgnoreHeartbeats,
    /// D5: reconnects at once, without delay or jitter.
    NoJitter,
    /// D7: a state larger than one message is applied in two parts.
    LargeInParts,
    /// V1: a state whose bundles fail verification is put in force,
    /// without a refusal.
    SkipVerification,
    /// V2: the signing keys are never fetched again: a state signed with a
    /// key the first state was not signed with is refused.
    NoKeyRefetch,
    /// V3: a refused state is put in force all the same.
    KeepRefused,
    /// V4: a revoked key is trusted still: what it signs, refused by the
    /// library for the revocation, is put in force.
    IgnoreRevocation,
    /// C1: the cache directory is ignored.
    ForgetCache,
    /// P1: the runtime id is dropped, so nothing is reported.
    NoReports,
    /// H1: a server whose log is smaller than the one verified (wound
    /// back) is followed: its state is put in force.
    AcceptWoundBack,
    /// H2: a server whose log forks from the one verified is followed.
    AcceptFork,
    /// H3: a declared restore is taken twice.
    RestoreTwice,
    /// H4: the age of the server's checkpoints is not checked.
    IgnoreStaleCheckpoints,
    /// W1: witness cosignatures are not required.
    IgnoreWitnesses,
    /// E1: only the first of several addresses is followed.
    OneEndpoint,
    /// E2: an address it moved to is kept: it never tries the one it
    /// prefers again.
    NeverMoveBack,
}

/// gRPC's largest message by default, 4 MiB.
const MESSAGE_SIZE: usize = 4 * 1024 * 1024;

impl Break {
    /// The settings as this broken runtime takes them.
    fn settings(self, settings: &mut RuntimeSettings) {
        match self {
            Break::IgnoreHeartbeats => settings.heartbeat_interval_ms = Some(3_600_000),
            // The smallest window the library takes (1 ms; 0 is refused as a
            // setting it cannot follow): a fleet cut at once comes back at
            // once, unspread.
            Break::NoJitter => {
                settings.backoff = Some(Backoff {
                    initial_ms: 1,
                    max_ms: 1,
                })
            }
            Break::ForgetCache => settings.cache_dir = None,
            Break::NoReports => settings.runtime_id = None,
            Break::IgnoreStaleCheckpoints => settings.max_checkpoint_age_ms = None,
            Break::IgnoreWitnesses => settings.witnesses = None,
            Break::OneEndpoint => settings.endpoints.truncate(1),
            Break::NeverMoveBack => settings.rebalance_interval_ms = Some(3_600_000),
            _ => {}
        }
    }

    /// What this broken runtime records of a state the library put in
    /// force, signed with `keys`.
    fn applied(self, record: &mut Record, state: StateView, keys: BTreeSet<String>) {
        let first = record.first.is_none();
        let first_keys = record.first_keys.get_or_insert_with(|| keys.clone());
        match self {
            Break::FirstSnapshotInParts if first => in_parts(record, state, 1),
            Break::ApplyTwice if state.source == Source::Server => {
                record.put_in_force(state.clone());
                record.put_in_force(state);
            }
            Break::LargeInParts if size(&state) > MESSAGE_SIZE => {
                let half = state.policies.len() / 2;
                in_parts(record, state, half.max(1));
            }
            Break::NoKeyRefetch if !keys.is_subset(first_keys) => {
                let unknown: Vec<_> = keys.difference(first_keys).cloned().collect();
                record.refuse(state.revision, format!("unknown signing key {unknown:?}"));
            }
            _ => record.put_in_force(state),
        }
    }

    /// What this broken runtime records of a state the library refused.
    fn rejected(self, record: &mut Record, revision: u64, reason: String) {
        match self {
            Break::SkipVerification => record.put_in_force(record.moved_to(revision)),
            Break::IgnoreRevocation if reason.contains("revoked") => {
                record.put_in_force(record.moved_to(revision));
            }
            Break::KeepRefused => {
                record.refuse(revision, reason);
                record.put_in_force(record.moved_to(revision));
            }
            _ => record.refuse(revision, reason),
        }
    }

    /// What this broken runtime records of a history the library refused
    /// (`reason` says why: a log wound back or forked).
    fn history_refused(self, record: &mut Record, reason: String) {
        let follows = match self {
            Break::AcceptWoundBack => reason.contains("wound back"),
            Break::AcceptFork => reason.contains("fork"),
            _ => false,
        };
        if follows {
            let next = record.view.revision() + 1;
            record.put_in_force(record.moved_to(next));
        } else {
            record
                .view
                .events
                .push(RuntimeEvent::HistoryRefused { reason });
        }
    }

    /// What this broken runtime records of a restore the library took.
    fn history_restored(self, record: &mut Record, reason: String) {
        let times = if self == Break::RestoreTwice { 2 } else { 1 };
        for _ in 0..times {
            record.view.events.push(RuntimeEvent::HistoryRestored {
                reason: reason.clone(),
            });
        }
    }

    /// What this broken runtime does once a stream opened.
    fn connected(self, record: &mut Record) {
        if record.connections < 2 {
            return;
        }
        let again = match self {
            Break::ReapplyAfterReconnect => record.view.in_force.clone(),
            _ => None,
        };
        if let Some(state) = again {
            record.put_in_force(state);
        }
    }
}

/// Puts `state` in force in parts of `step` policies, each part with the
/// ones before it, the last the whole.
fn in_parts(record: &mut Record, state: StateView, step: usize) {
    let names: Vec<String> = state.policies.keys().cloned().collect();
    for end in (step..names.len()).step_by(step) {
        let mut part = state.clone();
        part.policies.retain(|name, _| names[..end].contains(name));
        record.put_in_force(part);
    }
    record.put_in_force(state);
}

/// The size of a state's documents.
fn size(state: &StateView) -> usize {
    state
        .policies
        .values()
        .map(|policy| policy.body.to_string().len())
        .sum()
}
