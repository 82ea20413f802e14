//! What the benchmarks share: the policyhub server they start, its watch
//! streams and the receipts they time, percentiles, and what `/proc` says
//! of a process.

// Each bench binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::{
    fs,
    io::{self},
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{
        self, WatchEventKind, bundle_service_client::BundleServiceClient,
        policy_service_client::PolicyServiceClient,
    },
};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Streams being connected at once.
pub const CONNECT_CONCURRENCY: usize = 200;

/// How long every stream of one round may take to receive the change.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause before each round, so rounds do not overlap.
pub const ROUND_PAUSE: Duration = Duration::from_millis(500);

/// Pause between the last stream opening and the RSS reading.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Sockets and files the bench process needs besides its streams.
pub const SPARE_FDS: usize = 200;

pub const NAMESPACE: &str = "bench";

pub const POLICY: &str = "fanout";

/// Nearest-rank percentile.
pub fn percentile(samples: &[Duration], quantile: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn policy_body(version: usize) -> serde_json::Value {
    json!({
        "maxAmount": 100 * version,
        "currencies": ["EUR", "USD", "GBP"],
        "rules": [{"action": "review", "above": 1000}, {"action": "deny", "above": 5000}],
    })
}

/// The benchmark body of `version`, padded to about `bytes` of JSON when
/// that is more than its natural size.
pub fn padded_policy_body(version: usize, bytes: usize) -> serde_json::Value {
    let mut body = policy_body(version);
    let natural = body.to_string().len() + r#","padding":"""#.len();
    if bytes > natural {
        body["padding"] = "x".repeat(bytes - natural).into();
    }
    body
}

async fn connect_with_retry(endpoint: &Endpoint, server: &Server) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(_) if Instant::now() < deadline => {
                server.ensure_running()?;
                // Short: the startup bench times the server's first answer.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(error) => return Err(error).context("the server did not come up"),
        }
    }
}

/// How a benchmark stream presents itself.
#[derive(Clone, Default)]
pub struct Watcher {
    /// The runtime id it names; without one it joins rollouts at 100 %.
    pub runtime: Option<String>,
    /// Whether it answers each UPDATE with a `ReportStatus` APPLIED, as the
    /// runtime library does.
    pub reports: bool,
    /// The loopback source address of its own connection: each address has
    /// its own ephemeral ports, so more than one is needed beyond ~28,000
    /// connections to one server port.
    pub source: Option<IpAddr>,
    /// A connection it shares with other streams (HTTP/2 multiplexing)
    /// instead of one of its own.
    pub channel: Option<Channel>,
    /// Watch the whole namespace instead of the benchmark policy alone,
    /// resuming at this revision: the first message is then an empty
    /// UPDATE rather than a snapshot of every policy.
    pub whole_namespace_since: Option<u64>,
}

/// Activates `version` of policy `name` of the benchmark namespace through
/// `policies`; returns its revision.
pub async fn activate(
    policies: &mut PolicyServiceClient<Channel>,
    token: Option<&MetadataValue<tonic::metadata::Ascii>>,
    name: &str,
    version: u32,
    reason: &str,
) -> anyhow::Result<u64> {
    activate_in(policies, token, NAMESPACE, name, version, reason).await
}

/// [`activate`] of a policy of any namespace.
pub async fn activate_in(
    policies: &mut PolicyServiceClient<Channel>,
    token: Option<&MetadataValue<tonic::metadata::Ascii>>,
    namespace: &str,
    name: &str,
    version: u32,
    reason: &str,
) -> anyhow::Result<u64> {
    let request = authorized(
        token,
        proto::ActivateRequest {
            targets: vec![proto::ActivationTarget {
                namespace: namespace.into(),
                name: name.into(),
                selector: Some(proto::activation_target::Selector::Version(version)),
                expected_active_version: None,
            }],
            reason: reason.into(),
            idempotency_key: String::new(),
        },
    );
    Ok(policies.activate(request).await?.into_inner().revision)
}

/// Activate calls per second for `duration`, caller `k` moving
/// `targets[k]` (namespace, name) between versions 1 and 2, version 1
/// active at the start, so that every call commits a change.
pub async fn activation_rate(
    policyhub: &Policyhub,
    targets: &[(String, String)],
    duration: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (namespace, name) in targets {
        let (namespace, name) = (namespace.clone(), name.clone());
        let mut client = policyhub.policies.clone();
        let token = policyhub.token();
        tasks.spawn(async move {
            let mut done = 0u64;
            let mut version = 2;
            while start.elapsed() < duration {
                let token = token.as_ref();
                activate_in(&mut client, token, &namespace, &name, version, "benchmark").await?;
                version = 3 - version;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// `message` as a request, with `token` as its bearer token when given.
pub fn authorized<T>(
    token: Option<&MetadataValue<tonic::metadata::Ascii>>,
    message: T,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

/// The release `policyhub` binary cargo built for this bench (`cargo bench`
/// builds the package's binaries first, so it is never stale).
pub fn policyhub_binary() -> &'static str {
    env!("CARGO_BIN_EXE_policyhub")
}

/// Mints an admin token for everything with `policyhub token`, from the
/// secret the server generated into its data directory on start.
async fn mint_token(
    data_dir: &Path,
    server: &Server,
) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    let secret = data_dir.join(policyhub::config::GENERATED_SECRET_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !secret.exists() {
        ensure!(Instant::now() < deadline, "no token secret was generated");
        server.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = Command::new(policyhub_binary())
        .args([
            "token",
            "--subject",
            "bench",
            "--role",
            "*:admin",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .context("running policyhub token")?;
    ensure!(
        output.status.success(),
        "policyhub token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)?;
    Ok(format!("Bearer {}", token.trim()).parse()?)
}

/// TLS on a server's port: its certificate and key, and the CA clients
/// trust, all PEM files.
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl Tls {
    /// The client side: trust the CA, expect the name `localhost`.
    pub fn client_config(&self) -> anyhow::Result<ClientTlsConfig> {
        let ca = fs::read(&self.ca_file)
            .with_context(|| format!("reading {}", self.ca_file.display()))?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost"))
    }
}

/// How [`Policyhub::start`] runs the server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Watch streams the bench will open: the per-caller quota is lifted
    /// above it.
    pub streams: usize,
    /// More `POLICYHUB_*` settings.
    pub env: Vec<(String, String)>,
    /// Serve TLS with these files.
    pub tls: Option<Tls>,
    /// Authenticate callers (the generated local HS256 secret, and a token
    /// minted with `policyhub token`) instead of `--insecure`.
    pub authenticated: bool,
    /// An existing data directory (a seeded database) instead of a fresh
    /// one.
    pub data_dir: Option<PathBuf>,
}

/// The real `policyhub serve` binary on SQLite, in a temporary directory
/// unless given one, killed when dropped.
pub struct Policyhub {
    pub server: Server,
    pub endpoint: Endpoint,
    pub policies: PolicyServiceClient<Channel>,
    /// The gRPC address it listens on.
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    /// The bearer token of an authenticated server.
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// When the process was started.
    pub started: Instant,
    _dir: tempfile::TempDir,
}

impl Policyhub {
    /// Starts the server for `streams` streams of one caller, with `env`
    /// set, and connects its control client.
    pub async fn spawn(streams: usize, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start(Options {
            streams,
            env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..Options::default()
        })
        .await
    }

    /// Starts the server as `options` say and connects its control client.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let mut command = Command::new(policyhub_binary());
        command
            .arg("serve")
            .arg("--listen")
            .arg(address.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "warn")
            // Every stream here comes from one caller: lift the per-caller
            // stream quota, and the mutation rate the Activate loops exceed.
            .env(
                "POLICYHUB_QUOTAS__MAX_STREAMS_PER_SUBJECT",
                (options.streams + 100).to_string(),
            )
            .env("POLICYHUB_QUOTAS__MUTATIONS_PER_SECOND", "1000000")
            .env("POLICYHUB_QUOTAS__MUTATION_BURST", "1000000")
            .envs(options.env.iter().map(|(key, value)| (key, value)));
        if !options.authenticated {
            command.arg("--insecure");
        }
        let mut scheme = "http";
        if let Some(tls) = &options.tls {
            command
                .env("POLICYHUB_TLS__CERT_FILE", &tls.cert_file)
                .env("POLICYHUB_TLS__KEY_FILE", &tls.key_file);
            scheme = "https";
        }
        let started = Instant::now();
        let server = Server::spawn(&mut command, &dir.path().join("policyhub.log"))?;
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        if let Some(tls) = &options.tls {
            endpoint = endpoint.tls_config(tls.client_config()?)?;
        }
        let policies = PolicyServiceClient::new(connect_with_retry(&endpoint, &server).await?)
            // Snapshots of megabyte bodies.
            .max_decoding_message_size(64 << 20);
        let token = if options.authenticated {
            Some(mint_token(&data_dir, &server).await?)
        } else {
            None
        };
        Ok(Policyhub {
            server,
            endpoint,
            policies,
            address,
            data_dir,
            token,
            started,
            _dir: dir,
        })
    }

    /// `message` as a request, with the bearer token when the server
    /// authenticates.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        authorized(self.token.as_ref(), message)
    }

    /// The bearer token's metadata value, when the server authenticates.
    pub fn token(&self) -> Option<MetadataValue<tonic::metadata::Ascii>> {
        self.token.clone()
    }

    /// Publishes versions 1..=`versions` of the benchmark policy, version
    /// 1 active.
    pub async fn publish(&mut self, versions: usize) -> anyhow::Result<()> {
        self.publish_bodies(versions, 0).await
    }

    /// Publishes versions 1..=`versions` of the benchmark policy, each body
    /// padded to about `body_bytes`, version 1 active.
    pub async fn publish_bodies(
        &mut self,
        versions: usize,
        body_bytes: usize,
    ) -> anyhow::Result<()> {
        self.publish_policy(POLICY, versions, body_bytes).await
    }

    /// Publishes versions 1..=`versions` of policy `name` of the benchmark
    /// namespace, each body padded to about `body_bytes`, version 1 active.
    pub async fn publish_policy(
        &mut self,
        name: &str,
        versions: usize,
        body_bytes: usize,
    ) -> anyhow::Result<()> {
        for version in 1..=versions {
            let draft = self.request(proto::DraftRequest {
                namespace: NAMESPACE.into(),
                name: name.into(),
                body: Some(json_to_struct(&padded_policy_body(version, body_bytes))),
                change_notes: format!("benchmark version {version}"),
                ..Default::default()
            });
            self.policies.draft(draft).await?;
            let publish = self.request(proto::PublishRequest {
                namespace: NAMESPACE.into(),
                name: name.into(),
                version: None,
                label: String::new(),
                activate: version == 1,
                expected_active_version: None,
                reason: "benchmark".into(),
                idempotency_key: String::new(),
            });
            self.policies.publish(publish).await?;
        }
        Ok(())
    }

    /// One timed round: after a pause, activates `version` of the benchmark
    /// policy and waits for its update on each of `count` streams, recording
    /// the latencies; returns how many did not arrive.
    pub async fn timed_round(
        &mut self,
        streams: &mut Streams,
        version: u32,
        count: usize,
        latencies: &mut Vec<Duration>,
    ) -> anyhow::Result<usize> {
        tokio::time::sleep(ROUND_PAUSE).await;
        let issued = Instant::now();
        let revision = self
            .activate(version, &format!("benchmark round to version {version}"))
            .await?;
        Ok(collect_round(&mut streams.received, revision, issued, count, latencies).await)
    }

    /// Activates `version` of the benchmark policy; returns its revision.
    pub async fn activate(&mut self, version: u32, reason: &str) -> anyhow::Result<u64> {
        activate(
            &mut self.policies,
            self.token.as_ref(),
            POLICY,
            version,
            reason,
        )
        .await
    }

    /// Opens one stream per watcher, each on its own connection (unless
    /// the watcher brings a shared one) and past its SNAPSHOT, 200 at a
    /// time; their UPDATEs' revisions and receipt times arrive on the
    /// receiver. Also returns how long opening took and the size of the
    /// snapshot's bundle.
    pub async fn open_streams(
        &self,
        watchers: impl Iterator<Item = Watcher>,
    ) -> anyhow::Result<Streams> {
        let (receipts, received) = mpsc::unbounded_channel();
        let started = Instant::now();
        let tasks: Vec<(JoinHandle<()>, usize)> = futures::stream::iter(watchers)
            .map(|watcher| {
                open_watch(
                    self.endpoint.clone(),
                    self.token.clone(),
                    receipts.clone(),
                    watcher,
                )
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(Streams {
            opened_in: started.elapsed(),
            payload_bytes: tasks.first().map_or(0, |(_, bytes)| *bytes),
            tasks: tasks.into_iter().map(|(task, _)| task).collect(),
            received,
        })
    }
}

/// Open watch streams; dropping this closes them.
pub struct Streams {
    pub opened_in: Duration,
    pub payload_bytes: usize,
    pub received: mpsc::UnboundedReceiver<(u64, Instant)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Streams {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens one stream on its own connection (or the watcher's shared one)
/// and waits for its SNAPSHOT; the task it returns reports the receipt
/// time of every UPDATE. Also returns the size of the bundle the snapshot
/// carried.
async fn open_watch(
    endpoint: Endpoint,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    receipts: mpsc::UnboundedSender<(u64, Instant)>,
    watcher: Watcher,
) -> anyhow::Result<(JoinHandle<()>, usize)> {
    let channel = match &watcher.channel {
        Some(channel) => channel.clone(),
        None => endpoint.local_address(watcher.source).connect().await?,
    };
    let mut client = BundleServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let request = authorized(
        token.as_ref(),
        proto::WatchActiveRequest {
            namespace: NAMESPACE.into(),
            names: match watcher.whole_namespace_since {
                Some(_) => Vec::new(),
                None => vec![POLICY.into()],
            },
            since_revision: watcher.whole_namespace_since.unwrap_or(0),
            runtime: watcher.runtime.clone().map(|id| proto::RuntimeIdentity {
                id,
                labels: Default::default(),
            }),
        },
    );
    let mut stream = client.watch_active(request).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .context("no snapshot within 30 s")??
        .context("the stream ended before its snapshot")?;
    let payload_bytes = if watcher.whole_namespace_since.is_some() {
        ensure!(
            first.kind() == WatchEventKind::Update && first.bundles.is_empty(),
            "the first message of a resumed stream is not an empty update: {first:?}"
        );
        0
    } else {
        ensure!(
            first.kind() == WatchEventKind::Snapshot && first.bundles.len() == 1,
            "the first message is not a snapshot of one bundle: {first:?}"
        );
        first.bundles[0].len()
    };
    let task = tokio::spawn(async move {
        // The client keeps the connection's request half alive.
        let mut client = client;
        while let Ok(Some(message)) = stream.message().await {
            if message.kind() == WatchEventKind::Update {
                let received = Instant::now();
                if receipts.send((message.revision, received)).is_err() {
                    break;
                }
                let Some(id) = watcher.runtime.as_ref().filter(|_| watcher.reports) else {
                    continue;
                };
                let applied = message.decode_bundles().unwrap_or_default();
                let report = proto::ReportStatusRequest {
                    namespace: NAMESPACE.into(),
                    runtime_id: id.clone(),
                    revision: message.revision,
                    policies: applied
                        .iter()
                        .map(|bundle| proto::PolicyApplyStatus {
                            name: bundle.name.clone(),
                            version: bundle.version,
                            state: proto::ApplyState::Applied as i32,
                            ..Default::default()
                        })
                        .collect(),
                };
                let report = authorized(token.as_ref(), report);
                if let Err(status) = client.report_status(report).await {
                    eprintln!("  warning: report of {id} refused: {status}");
                }
            }
        }
    });
    Ok((task, payload_bytes))
}

/// Waits until `count` receipts tagged `tag` arrived (or the round timed
/// out), records their latencies, and returns how many are missing.
pub async fn collect_round(
    received: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    tag: u64,
    issued: Instant,
    count: usize,
    latencies: &mut Vec<Duration>,
) -> usize {
    let deadline = tokio::time::Instant::from_std(issued + ROUND_TIMEOUT);
    let mut got = 0;
    while got < count {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some((seen, at))) if seen == tag => {
                latencies.push(at.saturating_duration_since(issued));
                got += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if got < count {
        eprintln!(
            "  warning: {} of {count} streams did not receive change {tag} in time",
            count - got
        );
    }
    count - got
}

/// A server child process, killed when dropped.
pub struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    pub fn spawn(command: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let file = fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Server {
            child,
            log: log.to_owned(),
        })
    }

    /// Asks the process to stop (SIGTERM) and waits for it, killing it
    /// after `grace`.
    pub fn terminate(mut self, grace: Duration) -> anyhow::Result<()> {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the server did not stop within {grace:?} of SIGTERM")
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Fails with the end of its log when the process exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        let pid = self.pid();
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if state.is_empty() || zombie {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the server exited:\n{}", tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: impl std::fmt::Display) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS")?;
    Ok(rss.trim().trim_end_matches("kB").trim().parse()?)
}

/// User plus system CPU time of a process (`self` for this one).
pub fn cpu_time(pid: impl std::fmt::Display) -> anyhow::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesized command name: state is field 3, utime
    // and stime are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')').context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn open_files_limit() -> anyhow::Result<usize> {
    let limits = fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open files limit")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .context("malformed open files limit")?;
    Ok(soft.parse().unwrap_or(usize::MAX))
}

/// Waits until the previous run's sockets are closed, so the next one has
/// the whole descriptor budget.
pub async fn wait_for_fds_to_close() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let open = fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
        if open < SPARE_FDS {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Raises this process's open-file limit (soft and, as root with
/// CAP_SYS_RESOURCE, hard) toward `wanted`, within the kernel's
/// `fs.nr_open`; children started afterwards inherit it. Returns the soft
/// limit now in force, and why it stays below `wanted` when it does.
pub fn raise_open_files_limit(wanted: u64) -> anyhow::Result<(u64, Option<String>)> {
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit");
    }
    let target = wanted.min(nr_open);
    let capped = (target < wanted).then(|| format!("fs.nr_open is {nr_open}"));
    if limit.rlim_cur >= target {
        return Ok((limit.rlim_cur, capped));
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max.max(target),
    };
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok((target, capped));
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE, which a container's
    // root may lack: the soft limit goes up to the hard one.
    let refused = io::Error::last_os_error();
    let soft_only = libc::rlimit {
        rlim_cur: limit.rlim_max.min(target),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft_only) } != 0 {
        return Err(io::Error::last_os_error()).context("setrlimit");
    }
    Ok((
        soft_only.rlim_cur,
        Some(format!(
            "raising the hard limit {} was refused ({refused})",
            limit.rlim_max
        )),
    ))
}
