//! What the benchmarks share: the policyhub server they start, its watch
//! streams and the receipts they time ([`streams`]), percentiles, and what
//! `/proc` says of a process ([`process`]).

// Each bench binary compiles this module and uses a different part of it.
#![allow(dead_code)]

mod process;
mod streams;

pub use process::*;
pub use streams::*;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{self, policy_service_client::PolicyServiceClient},
};
use serde_json::json;
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Streams being connected at once.
pub const CONNECT_CONCURRENCY: usize = 200;

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

/// The OPA `scripts/install-opa` builds, the reference the OPA benches
/// measure against.
pub fn opa_binary() -> anyhow::Result<std::path::PathBuf> {
    let binary =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/opa/v1.22.3/opa");
    anyhow::ensure!(
        binary.exists(),
        "OPA v1.22.3 is missing: run scripts/install-opa"
    );
    Ok(binary)
}

/// The median of `values` (the upper one of an even count), their lowest
/// and their highest.
pub fn median_and_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
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
                expected_active_revision: None,
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

/// `PERF_SERVER_WORKERS`, when set: the tokio worker threads of every
/// server the bench starts (`TOKIO_WORKER_THREADS` there), the bench's own
/// clients keeping theirs.
fn server_workers() -> Option<(&'static str, String)> {
    std::env::var("PERF_SERVER_WORKERS")
        .ok()
        .filter(|workers| !workers.is_empty())
        .map(|workers| ("TOKIO_WORKER_THREADS", workers))
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
            // One connection per stream, and the bench's own beside them:
            // above the default cap of 10,000 per port.
            .env(
                "POLICYHUB_CONNECTIONS__MAX_PER_PORT",
                (options.streams + 100).max(10_000).to_string(),
            )
            .envs(server_workers())
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
            let body = padded_policy_body(version, body_bytes);
            self.publish_body(NAMESPACE, name, &body, version == 1)
                .await?;
        }
        Ok(())
    }

    /// Drafts `body` as policy `name` of `namespace` and publishes it,
    /// activated when `activate`.
    pub async fn publish_body(
        &mut self,
        namespace: &str,
        name: &str,
        body: &serde_json::Value,
        activate: bool,
    ) -> anyhow::Result<()> {
        let draft = self.request(proto::DraftRequest {
            namespace: namespace.into(),
            name: name.into(),
            body: Some(json_to_struct(body)),
            change_notes: "benchmark".into(),
            ..Default::default()
        });
        self.policies.draft(draft).await?;
        let publish = self.request(proto::PublishRequest {
            namespace: namespace.into(),
            name: name.into(),
            activate,
            reason: "benchmark".into(),
            ..Default::default()
        });
        self.policies.publish(publish).await?;
        Ok(())
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

    /// Activates each of `versions` in a timed round on `streams`, `count`
    /// of them.
    pub async fn activation_rounds(
        &mut self,
        streams: &mut Streams,
        count: usize,
        versions: std::ops::RangeInclusive<u32>,
    ) -> anyhow::Result<Tally> {
        let pid = self.server.pid();
        let mut tally = Tally::default();
        for version in versions {
            let reason = format!("benchmark round to version {version}");
            let write = self.activate(version, &reason);
            tally
                .round(&pid, &mut streams.received, count, write)
                .await?;
        }
        Ok(tally)
    }

    /// Opens one stream per watcher on this server: see [`open_streams`].
    pub async fn open_streams(
        &self,
        watchers: impl Iterator<Item = Watcher>,
    ) -> anyhow::Result<Streams> {
        open_streams(&self.endpoint, self.token.as_ref(), watchers).await
    }
}
