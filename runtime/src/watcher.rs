//! The subscription: connect, resume, verify, apply whole states, report.
//!
//! A small state machine in the manner of kube-rs's watcher:
//!
//! ```text
//!   start ── cache? ──> apply cached state (re-verified), say so
//!     │
//!     v
//!   connect ──> fetch JWKS ──> WatchActive(since = decided revision)
//!     ^                              │ parts ──> whole revision
//!     │                              │   verify every bundle ──> apply or reject
//!     │                              │   report APPLIED / REJECTED
//!     └── full-jitter backoff <──────┘ any failure: UNAVAILABLE, reset,
//!                                      h2 error, 3 missed heartbeats
//! ```
//!
//! The server says its heartbeat interval in the stream's response header
//! [`HEARTBEAT_INTERVAL_HEADER`], so a stream that misses three of them is
//! known dead whatever the server was configured with; an interval set on
//! the [`Subscription`] overrides it.
//!
//! The subscription resumes from the last revision it *decided* on, applied
//! or rejected, so a rejected version is not sent again in a loop; it
//! applies a state only when its revision is newer than the applied one
//! (unless the server says `reset`), so it never goes backwards.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use crate::backoff::Backoff;
use crate::bundle::{self, Envelope, Jwks};
use crate::cache::Cache;
use crate::proto::{
    ApplyState, Bundle, GetSigningKeysRequest, PolicyApplyStatus, ReportStatusRequest,
    RuntimeIdentity, WatchActiveRequest, WatchEventKind,
    bundle_service_client::BundleServiceClient,
};
use crate::state::{Assembler, Revision, Source, State, VerifiedBundle};

/// Gives the bearer token for each connection (so a rotated token file is
/// read again); `None` sends no token.
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Why a subscription stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The server refused the subscription itself (credentials, role, a
    /// malformed request): retrying cannot help.
    #[error("the server refused the watch: {}", .0.message())]
    Refused(Status),
    /// The subscription is misconfigured.
    #[error("{0}")]
    Config(String),
}

/// Attaches the token to every call.
#[derive(Clone)]
struct Bearer(Option<TokenSource>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0.as_ref().and_then(|source| source()) {
            let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| Status::unauthenticated("the token is not valid metadata"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Client = BundleServiceClient<InterceptedService<Channel, Bearer>>;

/// The response header of `WatchActive` in which the server says its
/// heartbeat interval, in milliseconds (`policyhub serve`'s
/// `watch.heartbeat_interval`).
pub const HEARTBEAT_INTERVAL_HEADER: &str = "policyhub-heartbeat-interval-ms";

/// The heartbeat interval assumed of a server that does not say it.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The heartbeat interval the server announced on a watch response.
fn announced_heartbeat(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let millis: u64 = metadata
        .get(HEARTBEAT_INTERVAL_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (millis > 0).then(|| Duration::from_millis(millis))
}

/// What one subscription follows and how.
#[derive(Clone)]
pub struct Subscription {
    endpoint: String,
    tls: Option<ClientTlsConfig>,
    token: Option<TokenSource>,
    namespace: String,
    names: Vec<String>,
    runtime: Option<RuntimeIdentity>,
    cache_dir: Option<PathBuf>,
    /// Overrides the interval the server announces.
    heartbeat_interval: Option<Duration>,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl Subscription {
    /// Follows every policy of `namespace` at `endpoint` (`http://` or
    /// `https://`).
    pub fn new(endpoint: impl Into<String>, namespace: impl Into<String>) -> Self {
        Subscription {
            endpoint: endpoint.into(),
            tls: None,
            token: None,
            namespace: namespace.into(),
            names: Vec::new(),
            runtime: None,
            cache_dir: None,
            heartbeat_interval: None,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// Only these policies.
    pub fn names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.names = names.into_iter().map(Into::into).collect();
        self.names.sort();
        self.names.dedup();
        self
    }

    /// Names the runtime, so that it appears in the fleet view and reports
    /// what it applied.
    pub fn runtime(
        mut self,
        id: impl Into<String>,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        self.runtime = Some(RuntimeIdentity {
            id: id.into(),
            labels: labels.into_iter().collect(),
        });
        self
    }

    /// The bearer token of every call.
    pub fn token(mut self, source: TokenSource) -> Self {
        self.token = Some(source);
        self
    }

    /// TLS settings for an `https://` endpoint.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Keeps the last-known-good state in this directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Overrides the heartbeat interval the server announces (10 s when it
    /// announces none): three intervals without a message mean a dead
    /// stream.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// Reconnection delays: a random duration up to `initial`, doubling the
    /// bound per failed attempt up to `max` (full jitter).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Follows the namespace until a permanent error, calling `apply` with
    /// every new whole state. `apply` accepts a state (`Ok`) or refuses it
    /// with a reason (`Err`); either way the outcome is reported, and a
    /// refused state leaves the previous one in force.
    pub async fn run<F>(self, mut apply: F) -> Result<(), WatchError>
    where
        F: FnMut(&State) -> Result<(), String>,
    {
        let mut core = Core::start(&self, &mut apply);
        let mut backoff = self.fresh_backoff();
        loop {
            let started = Instant::now();
            match self.session(&mut core, &mut apply).await {
                Err(Failure::Permanent(status)) => return Err(WatchError::Refused(status)),
                Err(Failure::Config(message)) => return Err(WatchError::Config(message)),
                Err(Failure::Transient(reason)) => {
                    // A stream that stayed up a while starts the backoff
                    // over; every reconnection is still jittered, so a
                    // fleet that lost its server does not return in a wave.
                    if started.elapsed() > self.backoff_max {
                        backoff = self.fresh_backoff();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        %reason,
                        revision = core.decided,
                        delay_ms = delay.as_millis() as u64,
                        "watch interrupted; resuming from the last decided revision"
                    );
                    tokio::time::sleep(delay).await;
                }
                Ok(never) => match never {},
            }
        }
    }

    fn fresh_backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }

    async fn connect(&self) -> Result<Client, Failure> {
        // Before the server has said its interval, the override or the
        // default paces the connection's own checks.
        let interval = self
            .heartbeat_interval
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|_| Failure::Config(format!("{:?} is not a URL", self.endpoint)))?
            .connect_timeout(interval.max(Duration::from_secs(1)))
            // HTTP/2 pings find a half-open connection even when the
            // server's heartbeats are far apart.
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(interval)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| Failure::Config(format!("tls: {error}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| Failure::Transient(format!("cannot connect: {error}")))?;
        Ok(BundleServiceClient::with_interceptor(
            channel,
            Bearer(self.token.clone()),
        ))
    }

    /// One connection's life; it ends only by failing.
    async fn session<F>(&self, core: &mut Core, apply: &mut F) -> Result<Infallible, Failure>
    where
        F: FnMut(&State) -> Result<(), String>,
    {
        let mut client = self.connect().await?;
        if core.jwks.keys.is_empty() {
            core.jwks = fetch_jwks(&mut client).await?;
        }
        core.flush_reports(&mut client, self).await;
        let response = client
            .watch_active(WatchActiveRequest {
                namespace: self.namespace.clone(),
                names: self.names.clone(),
                since_revision: core.decided,
                runtime: self.runtime.clone(),
            })
            .await
            .map_err(Failure::from_status)?;
        let interval = self
            .heartbeat_interval
            .or_else(|| announced_heartbeat(response.metadata()))
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let deadline = interval * 3;
        let mut stream = response.into_inner();
        let mut assembler = Assembler::default();
        loop {
            let message = match tokio::time::timeout(deadline, stream.message()).await {
                Err(_) => {
                    return Err(Failure::Transient(format!(
                        "no message for {} ms, three heartbeats",
                        deadline.as_millis()
                    )));
                }
                Ok(Err(status)) => return Err(Failure::from_status(status)),
                Ok(Ok(None)) => return Err(Failure::Transient("the stream ended".into())),
                Ok(Ok(Some(message))) => message,
            };
            let Some(revision) = assembler.push(message).map_err(Failure::Transient)? else {
                continue;
            };
            core.decide(revision, &mut client, self, apply).await?;
            core.flush_reports(&mut client, self).await;
        }
    }
}

/// How a session ended.
enum Failure {
    /// Retry after a backoff.
    Transient(String),
    /// The server refused for good.
    Permanent(Status),
    /// The subscription cannot work as configured.
    Config(String),
}

impl Failure {
    fn from_status(status: Status) -> Self {
        match status.code() {
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::Unimplemented => Failure::Permanent(status),
            _ => Failure::Transient(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

async fn fetch_jwks(client: &mut Client) -> Result<Jwks, Failure> {
    let keys = client
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .map_err(Failure::from_status)?
        .into_inner();
    Ok(Jwks::from(keys))
}

/// What the subscription holds between sessions.
struct Core {
    /// The state in force.
    applied: State,
    /// The newest revision applied or rejected: where to resume.
    decided: u64,
    /// The keys that verify bundles; fetched from the server, never taken
    /// from the stream.
    jwks: Jwks,
    cache: Option<Cache>,
    /// Outcomes not yet reported, by policy, and their revision.
    pending_reports: BTreeMap<String, PolicyApplyStatus>,
    pending_revision: u64,
}

impl Core {
    /// Starts from the cache when there is a good one.
    fn start<F>(subscription: &Subscription, apply: &mut F) -> Self
    where
        F: FnMut(&State) -> Result<(), String>,
    {
        let cache = subscription
            .cache_dir
            .as_ref()
            .map(|dir| Cache::new(dir, &subscription.namespace, &subscription.names));
        let mut core = Core {
            applied: State {
                namespace: subscription.namespace.clone(),
                ..State::default()
            },
            decided: 0,
            jwks: Jwks::default(),
            cache,
            pending_reports: BTreeMap::new(),
            pending_revision: 0,
        };
        let Some(cache) = &core.cache else {
            return core;
        };
        match cache.load() {
            Ok(None) => {}
            Ok(Some((state, jwks))) => match apply(&state) {
                Ok(()) => {
                    tracing::info!(
                        revision = state.revision,
                        policies = state.bundles.len(),
                        path = %cache.path().display(),
                        "started from the cached state (verified again) until the server answers"
                    );
                    core.decided = state.revision;
                    core.applied = state;
                    core.jwks = jwks;
                }
                Err(reason) => {
                    tracing::warn!(%reason, "the application refused the cached state");
                }
            },
            Err(reason) => {
                tracing::error!(
                    path = %cache.path().display(),
                    %reason,
                    "refusing the cached state; starting without one"
                );
            }
        }
        core
    }

    /// Verifies one bundle of the stream; a key unknown to the JWKS makes
    /// it fetch the JWKS once more.
    async fn verify(
        &mut self,
        bundle: &Bundle,
        client: &mut Client,
        subscription: &Subscription,
    ) -> Result<VerifiedBundle, String> {
        let known = bundle::key_id(&bundle.jws).is_ok_and(|kid| self.jwks.knows(&kid));
        if !known && let Ok(jwks) = fetch_jwks(client).await {
            self.jwks = jwks;
        }
        if !subscription.names.is_empty() && !subscription.names.contains(&bundle.name) {
            return Err(format!(
                "{}/{} was not asked for",
                subscription.namespace, bundle.name
            ));
        }
        let envelope = Envelope {
            namespace: &subscription.namespace,
            name: &bundle.name,
            version: bundle.version,
            digest: &bundle.digest,
        };
        let claims = bundle::verify_envelope(&bundle.jws, &envelope, &self.jwks)?;
        Ok(VerifiedBundle {
            name: bundle.name.clone(),
            version: claims.ver,
            label: claims.label,
            digest: claims.digest,
            revision: bundle.revision,
            key_id: bundle.key_id.clone(),
            body: claims.body,
            jws: bundle.jws.clone(),
        })
    }

    /// Applies or rejects one whole revision.
    async fn decide<F>(
        &mut self,
        revision: Revision,
        client: &mut Client,
        subscription: &Subscription,
        apply: &mut F,
    ) -> Result<(), Failure>
    where
        F: FnMut(&State) -> Result<(), String>,
    {
        let is_snapshot = match revision.kind {
            WatchEventKind::Snapshot => true,
            WatchEventKind::Update => false,
            _ => {
                // A heartbeat: the cursor moves, nothing changes.
                self.decided = self.decided.max(revision.revision);
                return Ok(());
            }
        };
        if revision.revision < self.applied.revision && !revision.reset {
            tracing::warn!(
                revision = revision.revision,
                applied = self.applied.revision,
                "ignoring a state older than the one applied"
            );
            return Ok(());
        }
        if !is_snapshot && revision.bundles.is_empty() {
            self.decided = self.decided.max(revision.revision);
            return Ok(());
        }
        let mut verified = Vec::with_capacity(revision.bundles.len());
        let mut failures = Vec::new();
        for bundle in &revision.bundles {
            match self.verify(bundle, client, subscription).await {
                Ok(good) => verified.push(good),
                Err(reason) => failures.push((bundle, reason)),
            }
        }
        let rejected_because = if failures.is_empty() {
            let mut candidate = if is_snapshot {
                State {
                    namespace: subscription.namespace.clone(),
                    ..State::default()
                }
            } else {
                self.applied.clone()
            };
            candidate.revision = revision.revision;
            candidate.source = Source::Server;
            for bundle in verified {
                candidate.bundles.insert(bundle.name.clone(), bundle);
            }
            match apply(&candidate) {
                Ok(()) => {
                    self.report(&revision, ApplyState::Applied, |_| String::new());
                    if let Some(cache) = &self.cache
                        && let Err(error) = cache.save(&candidate, &self.jwks)
                    {
                        tracing::warn!(%error, path = %cache.path().display(), "cannot write the cache");
                    }
                    self.applied = candidate;
                    None
                }
                Err(reason) => Some(reason),
            }
        } else {
            let (bad, reason) = &failures[0];
            Some(format!(
                "{}/{} version {} does not verify: {reason}",
                subscription.namespace, bad.name, bad.version
            ))
        };
        if let Some(reason) = rejected_because {
            tracing::warn!(
                revision = revision.revision,
                %reason,
                "rejected a state; the previous one stays in force"
            );
            let failed: BTreeMap<&str, &str> = failures
                .iter()
                .map(|(bundle, reason)| (bundle.name.as_str(), reason.as_str()))
                .collect();
            self.report(&revision, ApplyState::Rejected, |name| {
                match failed.get(name) {
                    Some(own) => format!("does not verify: {own}"),
                    None => reason.clone(),
                }
            });
        }
        self.decided = self.decided.max(revision.revision);
        Ok(())
    }

    /// Queues the outcome of every bundle of `revision`.
    fn report(&mut self, revision: &Revision, state: ApplyState, error: impl Fn(&str) -> String) {
        for bundle in &revision.bundles {
            self.pending_reports.insert(
                bundle.name.clone(),
                PolicyApplyStatus {
                    name: bundle.name.clone(),
                    version: bundle.version,
                    state: state as i32,
                    error: error(&bundle.name).chars().take(1000).collect(),
                    revision: revision.revision,
                },
            );
        }
        self.pending_revision = self.pending_revision.max(revision.revision);
    }

    /// Sends the queued outcomes; keeps them for the next try on failure.
    async fn flush_reports(&mut self, client: &mut Client, subscription: &Subscription) {
        let Some(runtime) = &subscription.runtime else {
            self.pending_reports.clear();
            return;
        };
        if self.pending_reports.is_empty() {
            return;
        }
        let request = ReportStatusRequest {
            namespace: subscription.namespace.clone(),
            runtime_id: runtime.id.clone(),
            revision: self.pending_revision,
            policies: self.pending_reports.values().cloned().collect(),
        };
        match client.report_status(request).await {
            Ok(_) => self.pending_reports.clear(),
            Err(status) => tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "cannot report the applied state; retrying later"
            ),
        }
    }
}
