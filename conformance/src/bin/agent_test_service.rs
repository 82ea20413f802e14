//! `policyhub-agent-test-service`: `policyhub agent` behind the
//! conformance kit's test-service protocol. Each runtime the kit starts is
//! one agent process, its settings turned into the agent's flags; what the
//! agent did is read from its own surfaces only, as a local operator reads
//! them, never from the server:
//!
//! - the states it put in force: `--exec` appends each swapped-in
//!   revision's `manifest.json` to a log (the command runs once per swap,
//!   before the state is in force), and `GET /v1/namespaces/{ns}/state`
//!   says which state is in force and whether it is the cache's;
//! - connections, refusals, histories and checkpoints: `/healthz` (whether
//!   a stream is open, whether the checkpoint is stale, the last state
//!   refused and why, the last history refused or restore taken) and the
//!   counters of `/metrics` (reconnections, refusals, histories), which
//!   tell how many happened between two looks.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Parser;
use policyhub_conformance::protocol::{
    Capability, Created, PolicyView, RuntimeEvent, RuntimeSettings, RuntimeView, ServiceInfo,
    Source, StateView,
};
use serde_json::Value;
use tokio::process::{Child, Command};

/// How often the agent's surfaces are read.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Serves the test-service protocol for `policyhub agent`.
#[derive(Debug, Parser)]
struct Args {
    /// Where to listen; port 0 takes a free one. The address is printed
    /// on standard output once it listens.
    #[arg(long, default_value = "127.0.0.1:8112")]
    listen: SocketAddr,
    /// The `policyhub` binary to run agents of [default: the one beside
    /// this binary]
    #[arg(long)]
    agent_binary: Option<PathBuf>,
}

/// The runtimes started, by id.
struct Runtimes {
    agent_binary: PathBuf,
    http: reqwest::Client,
    next: AtomicU64,
    running: Mutex<HashMap<String, Running>>,
}

struct Running {
    view: Arc<Mutex<RuntimeView>>,
    agent: Child,
    /// Reads the agent's surfaces into `view`.
    watcher: tokio::task::JoinHandle<()>,
    /// The render directory and the log of what `--exec` saw.
    _work: tempfile::TempDir,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let agent_binary = match args.agent_binary {
        Some(binary) => binary,
        None => std::env::current_exe()?.with_file_name("policyhub"),
    };
    let runtimes = Arc::new(Runtimes {
        agent_binary,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        next: AtomicU64::new(0),
        running: Mutex::default(),
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
        name: "policyhub agent".to_owned(),
        // Not a fleet: a thousand agent processes on one machine is no
        // deployment anyone runs.
        capabilities: vec![
            Capability::Cache,
            Capability::Reports,
            Capability::History,
            Capability::Witnesses,
            Capability::Endpoints,
            Capability::Revocation,
        ],
    })
}

async fn start(
    State(runtimes): State<Arc<Runtimes>>,
    Json(settings): Json<RuntimeSettings>,
) -> Response {
    let started = async {
        let work = tempfile::tempdir()?;
        let arguments = agent_arguments(&settings, work.path())?;
        let agent = spawn(&runtimes.agent_binary, &arguments, work.path())?;
        let (agent, api, metrics) = until_listening(&runtimes.http, agent, work.path()).await?;
        anyhow::Ok((work, api, metrics, agent))
    };
    let (work, api, metrics, agent) = match started.await {
        Ok(started) => started,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error:#}")).into_response(),
    };
    let id = runtimes.next.fetch_add(1, Ordering::Relaxed).to_string();
    let view = Arc::new(Mutex::new(RuntimeView::default()));
    let surfaces = Surfaces {
        http: runtimes.http.clone(),
        api: format!("http://{api}"),
        metrics: format!("http://{metrics}/metrics"),
        namespace: settings.namespace.clone(),
        applied_log: work.path().join("applied.log"),
    };
    let watcher = tokio::spawn(surfaces.watch(view.clone()));
    runtimes.running.lock().unwrap().insert(
        id.clone(),
        Running {
            view,
            agent,
            watcher,
            _work: work,
        },
    );
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/runtimes/{id}"))],
        Json(Created { id }),
    )
        .into_response()
}

/// The agent's flags for the kit's settings.
fn agent_arguments(settings: &RuntimeSettings, work: &Path) -> anyhow::Result<Vec<String>> {
    if settings.endpoints.is_empty() {
        bail!("no endpoint");
    }
    let Some(runtime_id) = &settings.runtime_id else {
        bail!("the agent always reports: give a runtimeId");
    };
    let log = work.join("applied.log");
    let mut arguments: Vec<String> = vec![
        "agent".into(),
        "--server".into(),
        settings.endpoints.join(","),
        "--runtime-id".into(),
        runtime_id.clone(),
        // Ports the agent binds itself, read back from its log.
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--render-dir".into(),
        work.join("render").to_string_lossy().into_owned(),
        // The files it swapped in, as the command run after each swap
        // sees them: one manifest per state put in force.
        "--exec".into(),
        format!(
            "cat \"$POLICYHUB_DIR/manifest.json\" >> '{}'",
            log.to_string_lossy()
        ),
    ];
    if settings.names.is_empty() {
        arguments.extend(["--namespace".into(), settings.namespace.clone()]);
    }
    for name in &settings.names {
        arguments.extend(["--policy".into(), format!("{}/{name}", settings.namespace)]);
    }
    let millis = |ms: u64| format!("{ms}ms");
    if let Some(dir) = &settings.cache_dir {
        arguments.extend(["--cache-dir".into(), dir.clone()]);
    }
    if let Some(interval) = settings.heartbeat_interval_ms {
        arguments.extend(["--heartbeat-interval".into(), millis(interval)]);
    }
    if let Some(backoff) = settings.backoff {
        arguments.extend([
            "--backoff-initial".into(),
            millis(backoff.initial_ms),
            "--backoff-max".into(),
            millis(backoff.max_ms),
        ]);
    }
    if let Some(interval) = settings.rebalance_interval_ms {
        arguments.extend(["--rebalance-interval".into(), millis(interval)]);
    }
    if let Some(age) = settings.max_checkpoint_age_ms {
        arguments.extend(["--max-checkpoint-age".into(), millis(age)]);
    }
    if let Some(witnesses) = &settings.witnesses {
        for key in &witnesses.keys {
            arguments.extend(["--witness".into(), key.clone()]);
        }
        arguments.extend([
            "--witness-cosignatures".into(),
            witnesses.required.to_string(),
        ]);
    }
    if let Some(file) = &settings.ca_file {
        arguments.extend(["--ca-file".into(), file.clone()]);
    }
    if let Some(file) = &settings.token_file {
        arguments.extend(["--token-file".into(), file.clone()]);
    }
    Ok(arguments)
}

/// Starts the agent with nothing of this process's `POLICYHUB_*`
/// environment or client config file, its output in `agent.log`.
fn spawn(binary: &Path, arguments: &[String], work: &Path) -> anyhow::Result<Child> {
    let output = std::fs::File::create(work.join("agent.log"))?;
    let mut command = Command::new(binary);
    command
        .args(arguments)
        .env("POLICYHUB_CLIENT_CONFIG", work.join("client.toml"))
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .kill_on_drop(true);
    // Its `agent started` line, which names its ports, whatever else
    // RUST_LOG asks for.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        command.env("RUST_LOG", format!("{filter},policyhub::agent=info"));
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("POLICYHUB_") && name != "POLICYHUB_CLIENT_CONFIG" {
            command.env_remove(name);
        }
    }
    command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Waits until the agent says where it listens (its `agent started` log
/// line names the API and metrics addresses it bound) and its API answers
/// `/healthz`; fails with its output if it ends first.
async fn until_listening(
    http: &reqwest::Client,
    mut agent: Child,
    work: &Path,
) -> anyhow::Result<(Child, SocketAddr, SocketAddr)> {
    let mut bound = None;
    for _ in 0..500 {
        let output = std::fs::read_to_string(work.join("agent.log")).unwrap_or_default();
        if let Some(status) = agent.try_wait()? {
            bail!("the agent ended with {status}: {output}");
        }
        bound = bound.or_else(|| started_on(&output));
        if let Some((api, _)) = bound
            && http
                .get(format!("http://{api}/healthz"))
                .send()
                .await
                .is_ok()
        {
            let (api, metrics) = bound.expect("read above");
            return Ok((agent, api, metrics));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the agent's API did not answer within 10 s")
}

/// The API and metrics addresses of the agent's `agent started` line.
fn started_on(output: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = output.lines().find(|line| line.contains("agent started"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.parse().ok())
    };
    Some((field("api=")?, field("metrics=")?))
}

/// Where one agent says what it did.
struct Surfaces {
    http: reqwest::Client,
    /// Its API's base URL.
    api: String,
    /// Its metrics' URL.
    metrics: String,
    namespace: String,
    /// Where `--exec` appends each manifest swapped in.
    applied_log: PathBuf,
}

/// What the view holds so far, to tell what is new at the next look.
#[derive(Default)]
struct Seen {
    /// The `ETag` of the state in force last read.
    etag: Option<String>,
    /// Manifests of the log already turned into events.
    manifests: usize,
    ever_connected: bool,
    connected: u64,
    disconnected: u64,
    rejections: u64,
    history_refusals: u64,
    history_restores: u64,
    stale: bool,
}

/// The counters of `/metrics` read at one look.
struct Counters {
    reconnects: u64,
    rejections: u64,
    history_refusals: u64,
    history_restores: u64,
}

impl Surfaces {
    /// Reads the agent's surfaces every [`LOOK_EVERY`] into `view`, until
    /// aborted. A look that fails (the agent ended) is tried again, its
    /// error written to standard error once.
    async fn watch(self, view: Arc<Mutex<RuntimeView>>) {
        let mut seen = Seen::default();
        let mut last_error = String::new();
        loop {
            match self.look(&mut seen, &view).await {
                // Said once, not at every look while it lasts.
                Err(error) if format!("{error:#}") != last_error => {
                    last_error = format!("{error:#}");
                    eprintln!("reading the agent at {}: {last_error}", self.api);
                }
                Err(_) => {}
                Ok(()) => last_error.clear(),
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// One look. The state in force is read before the log: `--exec` logs
    /// a state before the agent puts it in force, so a state read is
    /// always already in the log read after it. The counters are read
    /// before `/healthz`, whose last reasons are then at least as new.
    async fn look(&self, seen: &mut Seen, view: &Mutex<RuntimeView>) -> anyhow::Result<()> {
        let in_force = self.state(seen).await?;
        let manifests = self.applied_since(seen.manifests)?;
        let counters = self.counters().await?;
        let health: Value = self
            .http
            .get(format!("{}/healthz", self.api))
            .send()
            .await?
            .json()
            .await?;
        let health = &health["namespaces"][&self.namespace];

        let mut view = view.lock().unwrap();
        seen.manifests += manifests.len();
        view.events.extend(manifests);
        self.connections(seen, &counters, health, &mut view.events);
        while seen.rejections < counters.rejections {
            seen.rejections += 1;
            let last = &health["lastRejection"];
            view.events.push(RuntimeEvent::Rejected {
                revision: last["revision"]
                    .as_str()
                    .and_then(|revision| revision.parse().ok())
                    .unwrap_or(0),
                reason: text(&last["reason"]),
            });
        }
        while seen.history_refusals < counters.history_refusals {
            seen.history_refusals += 1;
            view.events.push(RuntimeEvent::HistoryRefused {
                reason: text(&health["lastHistoryRefusal"]),
            });
        }
        while seen.history_restores < counters.history_restores {
            seen.history_restores += 1;
            view.events.push(RuntimeEvent::HistoryRestored {
                reason: text(&health["lastHistoryRestore"]),
            });
        }
        let stale = health["checkpointStale"].as_bool().unwrap_or(false);
        if stale != seen.stale {
            seen.stale = stale;
            view.events.push(if stale {
                RuntimeEvent::CheckpointStale
            } else {
                RuntimeEvent::CheckpointFresh
            });
        }
        if let Some(state) = in_force {
            view.in_force = state;
        }
        Ok(())
    }

    /// The state in force, when it changed since the last look (`None`:
    /// unchanged; `Some(None)`: none yet).
    async fn state(&self, seen: &mut Seen) -> anyhow::Result<Option<Option<StateView>>> {
        let mut request = self.http.get(format!(
            "{}/v1/namespaces/{}/state",
            self.api, self.namespace
        ));
        if let Some(etag) = &seen.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        let response = request.send().await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(None),
            StatusCode::SERVICE_UNAVAILABLE => Ok(Some(None)),
            StatusCode::OK => {
                seen.etag = response
                    .headers()
                    .get(header::ETAG)
                    .and_then(|etag| etag.to_str().ok())
                    .map(str::to_owned);
                let state: Value = response.json().await?;
                Ok(Some(Some(state_view(&state)?)))
            }
            status => bail!("the state in force answered {status}"),
        }
    }

    /// The manifests `--exec` logged after the first `skip`, as `Applied`
    /// events. The log is JSON documents one after the other; one being
    /// written is left for the next look.
    fn applied_since(&self, skip: usize) -> anyhow::Result<Vec<RuntimeEvent>> {
        let log = match std::fs::read(&self.applied_log) {
            Ok(log) => log,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        serde_json::Deserializer::from_slice(&log)
            .into_iter::<Value>()
            .skip(skip)
            .map_while(Result::ok)
            .map(|manifest| {
                let revision = manifest["revision"]
                    .as_str()
                    .and_then(|revision| revision.parse().ok())
                    .context("a manifest without its revision")?;
                let source = match manifest["source"].as_str() {
                    Some("cache") => Source::Cache,
                    _ => Source::Server,
                };
                let policies = manifest["policies"]
                    .as_object()
                    .context("a manifest without its policies")?
                    .iter()
                    .map(|(name, policy)| (name.clone(), version(policy)))
                    .collect();
                Ok(RuntimeEvent::Applied {
                    revision,
                    source,
                    policies,
                })
            })
            .collect()
    }

    /// The counters of `/metrics` for the namespace.
    async fn counters(&self) -> anyhow::Result<Counters> {
        let text = self
            .http
            .get(&self.metrics)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let counter = |family: &str| {
            let series = format!("policyhub_agent_{family}_total{{");
            text.lines()
                .filter(|line| line.starts_with(&series))
                .filter(|line| line.contains(&format!("namespace=\"{}\"", self.namespace)))
                .find_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .map_or(0, |value| value as u64)
        };
        Ok(Counters {
            reconnects: counter("reconnects"),
            rejections: counter("rejections"),
            history_refusals: counter("history_refusals"),
            history_restores: counter("history_restores"),
        })
    }

    /// `Connected` and `Disconnected` events, alternating, up to what the
    /// agent says: the streams it opened are the first (once it said it
    /// was connected) and one per reconnection; those it lost are all but
    /// the one open now.
    fn connections(
        &self,
        seen: &mut Seen,
        counters: &Counters,
        health: &Value,
        events: &mut Vec<RuntimeEvent>,
    ) {
        let connected = health["connected"].as_bool().unwrap_or(false);
        seen.ever_connected |= connected || counters.reconnects > 0;
        let opened = u64::from(seen.ever_connected) + counters.reconnects;
        let lost = opened.saturating_sub(u64::from(connected));
        while seen.connected < opened || seen.disconnected < lost {
            if seen.connected == seen.disconnected {
                seen.connected += 1;
                events.push(RuntimeEvent::Connected {
                    endpoint: health["server"].as_str().unwrap_or_default().to_owned(),
                });
            } else {
                seen.disconnected += 1;
                events.push(RuntimeEvent::Disconnected {
                    reason: "the agent's /healthz and reconnection count say the stream was lost"
                        .to_owned(),
                });
            }
        }
    }
}

/// A policy's version in the agent's JSON.
fn version(policy: &Value) -> u32 {
    policy["version"]
        .as_u64()
        .and_then(|version| u32::try_from(version).ok())
        .unwrap_or(0)
}

/// A reason the agent gave, or what stands for none.
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| "the agent gave no reason".to_owned(), str::to_owned)
}

/// The state in force as the agent's API gives it.
fn state_view(state: &Value) -> anyhow::Result<StateView> {
    let revision = state["revision"]
        .as_str()
        .and_then(|revision| revision.parse().ok())
        .context("the state in force without its revision")?;
    let source = match state["source"].as_str() {
        Some("cache") => Source::Cache,
        _ => Source::Server,
    };
    let policies = state["policies"]
        .as_object()
        .context("the state in force without its policies")?
        .iter()
        .map(|(name, policy)| {
            let policy = PolicyView {
                version: version(policy),
                digest: policy["digest"].as_str().unwrap_or_default().to_owned(),
                body: policy["body"].clone(),
            };
            (name.clone(), policy)
        })
        .collect();
    Ok(StateView {
        revision,
        source,
        policies,
    })
}

async fn view(State(runtimes): State<Arc<Runtimes>>, UrlPath(id): UrlPath<String>) -> Response {
    let running = runtimes.running.lock().unwrap();
    match running.get(&id) {
        Some(running) => Json(running.view.lock().unwrap().clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stop(State(runtimes): State<Arc<Runtimes>>, UrlPath(id): UrlPath<String>) -> StatusCode {
    let Some(mut running) = runtimes.running.lock().unwrap().remove(&id) else {
        return StatusCode::NOT_FOUND;
    };
    running.watcher.abort();
    terminate(&mut running.agent).await;
    StatusCode::NO_CONTENT
}

/// Stops the agent as its service manager would: SIGTERM, then SIGKILL if
/// it has not ended within 5 s. Either way it has let its cache go before
/// the next agent over the same cache starts.
async fn terminate(agent: &mut Child) {
    if let Some(pid) = agent.id() {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .ok();
    }
    if tokio::time::timeout(Duration::from_secs(5), agent.wait())
        .await
        .is_err()
    {
        agent.kill().await.ok();
    }
}
