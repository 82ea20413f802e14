//! The machinery behind [`Subscription::events`](crate::Subscription::events):
//! connect, resume, verify, decide whole states, report, and say what
//! happened as [`Event`]s.
//!
//! ```text
//!   start ── cache? ──> FromCache (re-verified, validated)
//!     │
//!     v
//!   connect ──> fetch JWKS ──> WatchActive(since = decided revision) ──> Connected
//!     ^                              │ parts ──> whole revision
//!     │                              │   verify every bundle, validate ──> Applied / Rejected
//!     │                              │   report APPLIED / REJECTED
//!     └── full-jitter backoff <──────┘ any failure: UNAVAILABLE, reset,
//!         Disconnected                 h2 error, 3 missed heartbeats
//! ```
//!
//! A [`Revoker`](crate::Revoker)'s request, served between messages and
//! during the backoff, puts the state before the one in force back (the
//! one in force is reported REJECTED).
//!
//! The subscription resumes from the last revision it *decided* on, applied
//! or rejected, so a rejected version is not sent again in a loop; it
//! applies a state only when its revision is newer than the applied one
//! (unless the server says `reset`), so it never goes backwards.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    time::{Duration, Instant},
};

use tokio::sync::{OwnedMutexGuard, mpsc};
use tonic::{
    Code, Request, Status, metadata::MetadataValue, service::interceptor::InterceptedService,
    transport::Channel,
};

use crate::backoff::Backoff;
use crate::bundle::{self, Envelope, Jwks};
use crate::cache::Cache;
use crate::checkpoint::{Freshness, verify_checkpoint};
use crate::proto::{
    self, ApplyState, Bundle, GetSigningKeysRequest, PolicyApplyStatus, ReportStatusRequest,
    ReportStatusResponse, WatchActiveRequest, WatchEventKind,
    bundle_service_client::BundleServiceClient,
};
use crate::state::{Assembler, Revision, Source, State, VerifiedBundle};
use crate::watcher::{
    DEFAULT_HEARTBEAT_INTERVAL, Event, HEARTBEAT_INTERVAL_HEADER, Revocation, RevokeError,
    Subscription, TokenSource, Validate, WatchError,
};

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

/// Where events go, and the application's verdict on each new state.
pub(crate) struct Outlet<F> {
    events: mpsc::Sender<Result<Event, WatchError>>,
    validate: F,
}

/// The consumer of the events went away: the subscription stops.
struct Gone;

impl<F> Outlet<F>
where
    F: Validate,
{
    pub(crate) fn new(events: mpsc::Sender<Result<Event, WatchError>>, validate: F) -> Self {
        Outlet { events, validate }
    }

    async fn emit(&self, event: Event) -> Result<(), Gone> {
        self.events.send(Ok(event)).await.map_err(|_| Gone)
    }
}

/// Follows the subscription until it fails for good or nobody listens,
/// sending every event to `outlet`; a permanent failure is sent last.
pub(crate) async fn drive<F>(subscription: Subscription, mut outlet: Outlet<F>)
where
    F: Validate,
{
    let Ok(mut core) = Core::start(&subscription, &mut outlet).await else {
        return;
    };
    let mut revocations = Revocations::of(&subscription).await;
    let fresh_backoff = || Backoff::new(subscription.backoff_initial, subscription.backoff_max);
    let mut backoff = fresh_backoff();
    loop {
        let started = Instant::now();
        let failure = match session(&subscription, &mut core, &mut outlet, &mut revocations).await {
            Err(failure) => failure,
            Ok(never) => match never {},
        };
        let reason = match failure {
            Failure::Gone => return,
            Failure::Permanent(status) => {
                let _ = outlet.events.send(Err(WatchError::Refused(status))).await;
                return;
            }
            Failure::Config(message) => {
                let _ = outlet.events.send(Err(WatchError::Config(message))).await;
                return;
            }
            Failure::Transient(reason) => reason,
        };
        // A stream that stayed up a while starts the backoff over; every
        // reconnection is still jittered, so a fleet that lost its server
        // does not return in a wave.
        if started.elapsed() > subscription.backoff_max {
            backoff = fresh_backoff();
        }
        let retry_in = backoff.next_delay();
        tracing::warn!(
            %reason,
            revision = core.decided,
            delay_ms = retry_in.as_millis() as u64,
            "watch interrupted; resuming from the last decided revision"
        );
        let lost = Event::Disconnected {
            reason,
            retry_in,
            revision: core.decided,
        };
        if outlet.emit(lost).await.is_err() {
            return;
        }
        // The application may take back its state while the server is away;
        // the report goes with the next connection.
        let sleep = tokio::time::sleep(retry_in);
        let mut sleep = std::pin::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                request = revocations.next() => {
                    if core.revoke(request, &outlet).await.is_err() {
                        return;
                    }
                }
                () = core.freshness.expiry() => {
                    if outlet.emit(core.freshness.expire()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The revocations of a [`Subscription::revocable`] subscription, taken
/// for the whole life of its stream.
struct Revocations(Option<OwnedMutexGuard<mpsc::Receiver<Revocation>>>);

impl Revocations {
    async fn of(subscription: &Subscription) -> Self {
        match &subscription.revocations {
            Some(receiver) => Revocations(Some(receiver.clone().lock_owned().await)),
            None => Revocations(None),
        }
    }

    /// The next request; never, once every revoker is gone.
    async fn next(&mut self) -> Revocation {
        if let Some(receiver) = self.0.as_mut()
            && let Some(request) = receiver.recv().await
        {
            return request;
        }
        self.0 = None;
        std::future::pending().await
    }
}

async fn connect(subscription: &Subscription) -> Result<Client, Failure> {
    let endpoint = subscription.endpoint()?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| Failure::Transient(format!("cannot connect: {error}")))?;
    Ok(BundleServiceClient::with_interceptor(
        channel,
        Bearer(subscription.token.clone()),
    ))
}

/// One connection's life; it ends only by failing.
async fn session<F>(
    subscription: &Subscription,
    core: &mut Core,
    outlet: &mut Outlet<F>,
    revocations: &mut Revocations,
) -> Result<Infallible, Failure>
where
    F: Validate,
{
    let mut client = connect(subscription).await?;
    let mut reporter = Reporter::new(client.clone());
    if core.jwks.keys.is_empty() {
        core.jwks = fetch_jwks(&mut client).await?;
    }
    core.flush_reports(&mut reporter, subscription).await;
    let response = client
        .watch_active(WatchActiveRequest {
            namespace: subscription.namespace.clone(),
            names: subscription.names.clone(),
            since_revision: core.decided,
            runtime: subscription.runtime.clone(),
        })
        .await
        .map_err(Failure::from_status)?;
    let interval = subscription
        .heartbeat_interval
        .or_else(|| announced_heartbeat(response.metadata()))
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
    let deadline = interval * 3;
    let mut stream = response.into_inner();
    outlet
        .emit(Event::Connected {
            revision: core.decided,
        })
        .await?;
    let mut assembler = Assembler::default();
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(deadline, stream.message()) => message,
            request = revocations.next() => {
                core.revoke(request, outlet).await?;
                core.flush_reports(&mut reporter, subscription).await;
                continue;
            }
            () = core.freshness.expiry() => {
                let stale = core.freshness.expire();
                let reason = core.freshness.to_string();
                outlet.emit(stale).await?;
                return Err(Failure::Transient(reason));
            }
        };
        let message = match message {
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
        if let Some(checkpoint) = &message.checkpoint
            && let Some(fresh) = core.checkpoint(checkpoint, &mut client).await?
        {
            outlet.emit(fresh).await?;
        }
        let Some(revision) = assembler.push(message).map_err(Failure::Transient)? else {
            continue;
        };
        if let Some(event) = core
            .decide(revision, &mut client, subscription, &mut outlet.validate)
            .await
        {
            outlet.emit(event).await?;
        }
        core.flush_reports(&mut reporter, subscription).await;
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
    /// Nobody listens any more.
    Gone,
}

impl From<Gone> for Failure {
    fn from(_: Gone) -> Self {
        Failure::Gone
    }
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

impl From<WatchError> for Failure {
    fn from(error: WatchError) -> Self {
        match error {
            WatchError::Refused(status) => Failure::Permanent(status),
            WatchError::Config(message) => Failure::Config(message),
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
    /// The state in force before it, received in this run: what a
    /// revocation restores.
    previous: Option<State>,
    /// The newest revision applied or rejected: where to resume.
    decided: u64,
    /// The keys that verify bundles; fetched from the server, never taken
    /// from the stream.
    jwks: Jwks,
    cache: Option<Cache>,
    /// Outcomes not yet reported, by policy, and their revision.
    pending_reports: BTreeMap<String, PolicyApplyStatus>,
    pending_revision: u64,
    /// The server's newest checkpoint, and whether it grew stale.
    freshness: Freshness,
}

impl Core {
    /// Starts from the cache when there is a good one, and says so.
    async fn start<F>(subscription: &Subscription, outlet: &mut Outlet<F>) -> Result<Self, Gone>
    where
        F: Validate,
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
            previous: None,
            decided: 0,
            jwks: Jwks::default(),
            cache,
            pending_reports: BTreeMap::new(),
            pending_revision: 0,
            freshness: Freshness::new(subscription.max_checkpoint_age),
        };
        let Some(cache) = &core.cache else {
            return Ok(core);
        };
        let event = match cache.load() {
            Ok(None) => return Ok(core),
            Ok(Some((state, jwks))) => match outlet.validate.validate(&state).await {
                Ok(()) => {
                    tracing::info!(
                        revision = state.revision,
                        policies = state.bundles.len(),
                        path = %cache.path().display(),
                        "started from the cached state (verified again) until the server answers"
                    );
                    core.decided = state.revision;
                    core.applied = state.clone();
                    core.jwks = jwks;
                    Event::FromCache(state)
                }
                Err(reason) => {
                    tracing::warn!(%reason, "the application refused the cached state");
                    Event::Rejected {
                        revision: state.revision,
                        reason: format!("the cached state was refused: {reason}"),
                    }
                }
            },
            Err(reason) => {
                tracing::error!(
                    path = %cache.path().display(),
                    %reason,
                    "refusing the cached state; starting without one"
                );
                Event::Rejected {
                    revision: 0,
                    reason: format!("the cached state does not verify: {reason}"),
                }
            }
        };
        outlet.emit(event).await?;
        Ok(core)
    }

    /// Verifies a checkpoint of the stream (a key unknown to the JWKS makes
    /// it fetch the JWKS once more) and takes it; the event when it ends a
    /// stale spell. One that does not verify ends the connection.
    async fn checkpoint(
        &mut self,
        checkpoint: &proto::Checkpoint,
        client: &mut Client,
    ) -> Result<Option<Event>, Failure> {
        if self.freshness.holds(&checkpoint.jws) {
            return Ok(None);
        }
        let known = bundle::key_id(&checkpoint.jws).is_ok_and(|kid| self.jwks.knows(&kid));
        if !known && let Ok(jwks) = fetch_jwks(client).await {
            self.jwks = jwks;
        }
        let claims = verify_checkpoint(&checkpoint.jws, &self.jwks).map_err(|error| {
            Failure::Transient(format!("a checkpoint does not verify: {error}"))
        })?;
        Ok(self.freshness.observe(claims, &checkpoint.jws))
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

    /// Applies or rejects one whole revision; what the application is told,
    /// if anything (heartbeats and stale states tell it nothing).
    async fn decide<F>(
        &mut self,
        revision: Revision,
        client: &mut Client,
        subscription: &Subscription,
        validate: &mut F,
    ) -> Option<Event>
    where
        F: Validate,
    {
        let is_snapshot = match revision.kind {
            WatchEventKind::Snapshot => true,
            WatchEventKind::Update => false,
            _ => {
                // A heartbeat: the cursor moves, nothing changes.
                self.decided = self.decided.max(revision.revision);
                return None;
            }
        };
        if revision.revision < self.applied.revision && !revision.reset {
            tracing::warn!(
                revision = revision.revision,
                applied = self.applied.revision,
                "ignoring a state older than the one applied"
            );
            return None;
        }
        if !is_snapshot && revision.bundles.is_empty() {
            self.decided = self.decided.max(revision.revision);
            return None;
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
            match validate.validate(&candidate).await {
                Ok(()) => {
                    self.report(&revision, ApplyState::Applied, |_| String::new());
                    self.save(&candidate);
                    let before = std::mem::replace(&mut self.applied, candidate);
                    self.previous = (before.revision > 0).then_some(before);
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
        self.decided = self.decided.max(revision.revision);
        let Some(reason) = rejected_because else {
            return Some(Event::Applied(self.applied.clone()));
        };
        {
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
        Some(Event::Rejected {
            revision: revision.revision,
            reason,
        })
    }

    /// Keeps `state` as the last-known-good one.
    fn save(&self, state: &State) {
        if let Some(cache) = &self.cache
            && let Err(error) = cache.save(state, &self.jwks)
        {
            tracing::warn!(%error, path = %cache.path().display(), "cannot write the cache");
        }
    }

    /// Answers a revocation, and says what it changed.
    async fn revoke<F>(&mut self, request: Revocation, outlet: &Outlet<F>) -> Result<(), Gone>
    where
        F: Validate,
    {
        let Revocation {
            revision,
            reason,
            reply,
        } = request;
        let restored = self.take_back(revision, &reason);
        let event = restored.as_ref().ok().map(|state| Event::Revoked {
            revision,
            reason,
            restored: state.clone(),
        });
        // The caller may have given up waiting; the revocation stands.
        let _ = reply.send(restored);
        match event {
            Some(event) => outlet.emit(event).await,
            None => Ok(()),
        }
    }

    /// Puts the state before the one in force back, reporting what it
    /// brought REJECTED; the state restored.
    fn take_back(&mut self, revision: u64, reason: &str) -> Result<State, RevokeError> {
        if revision != self.applied.revision {
            return Err(RevokeError::NotInForce {
                asked: revision,
                held: self.applied.revision,
            });
        }
        let previous = self
            .previous
            .take()
            .ok_or(RevokeError::NothingToRestore(revision))?;
        let error: String = reason.chars().take(1000).collect();
        for bundle in self.applied.bundles.values() {
            let kept = previous
                .bundles
                .get(&bundle.name)
                .is_some_and(|before| before.version == bundle.version);
            if !kept {
                self.pending_reports.insert(
                    bundle.name.clone(),
                    PolicyApplyStatus {
                        name: bundle.name.clone(),
                        version: bundle.version,
                        state: ApplyState::Rejected as i32,
                        error: error.clone(),
                        revision,
                    },
                );
            }
        }
        self.pending_revision = self.pending_revision.max(revision);
        tracing::warn!(
            revision,
            restored = previous.revision,
            %reason,
            "the application took back the state in force; the one before is in force again"
        );
        self.save(&previous);
        self.applied = previous;
        Ok(self.applied.clone())
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
    async fn flush_reports(&mut self, reporter: &mut Reporter, subscription: &Subscription) {
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
        match reporter.send(request).await {
            Ok(()) => self.pending_reports.clear(),
            Err(status) => tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "cannot report the applied state; retrying later"
            ),
        }
    }
}

/// Where one connection's reports go: a `ReportStatusStream` opened on it
/// at the first report, each report answered before the next is sent; or
/// one `ReportStatus` call per report where the server does not serve the
/// stream (an older server) or will not hold another one (its quota).
struct Reporter {
    client: Client,
    route: Route,
}

/// How the next report travels.
enum Route {
    /// On a stream, opened at the next report.
    Unopened,
    Stream(Box<ReportStream>),
    /// One `ReportStatus` call each.
    Calls,
}

/// An open `ReportStatusStream`: where requests go, and the answers.
struct ReportStream {
    requests: mpsc::Sender<ReportStatusRequest>,
    replies: tonic::Streaming<ReportStatusResponse>,
}

impl Reporter {
    fn new(client: Client) -> Self {
        Reporter {
            client,
            route: Route::Unopened,
        }
    }

    /// Sends one report and waits for the server's answer.
    async fn send(&mut self, request: ReportStatusRequest) -> Result<(), Status> {
        if matches!(self.route, Route::Unopened) {
            self.route = self.open().await?;
        }
        let Route::Stream(stream) = &mut self.route else {
            return self.client.report_status(request).await.map(drop);
        };
        let answer = match stream.requests.send(request).await {
            Ok(()) => stream.replies.message().await,
            Err(_) => Err(Status::unavailable("the report stream closed")),
        };
        match answer {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                self.route = Route::Unopened;
                Err(Status::unavailable("the report stream ended"))
            }
            Err(status) => {
                self.route = Route::Unopened;
                Err(status)
            }
        }
    }

    /// Opens the report stream, or settles on calls where the server will
    /// not hold one.
    async fn open(&mut self) -> Result<Route, Status> {
        let (requests, receiver) = mpsc::channel(1);
        let outbound = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|request| (request, receiver))
        });
        match self.client.report_status_stream(outbound).await {
            Ok(response) => Ok(Route::Stream(Box::new(ReportStream {
                requests,
                replies: response.into_inner(),
            }))),
            Err(status)
                if matches!(status.code(), Code::Unimplemented | Code::ResourceExhausted) =>
            {
                tracing::debug!(
                    code = ?status.code(),
                    "no report stream; reporting with one call each"
                );
                Ok(Route::Calls)
            }
            Err(status) => Err(status),
        }
    }
}
