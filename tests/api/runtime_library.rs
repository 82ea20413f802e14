//! The runtime library (`policyhub-runtime`) against the real server
//! binary: resume after kill -9, half-open connections, reconnect storms,
//! tampered bundles, the cache, and namespaces above 4 MiB.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::StreamExt;
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{
        self, bundle_service_client::BundleServiceClient,
        policy_service_client::PolicyServiceClient,
    },
};
use policyhub_runtime::{Event, Source, State, Subscription};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tonic::transport::Channel;

use crate::helpers::{free_port, policyhub_binary, spawn_binary_server_on};

/// A 200 ms heartbeat on the server, and the same expectation on clients.
const HEARTBEAT: Duration = Duration::from_millis(200);

pub(crate) fn server_env() -> Vec<(&'static str, String)> {
    vec![(
        "POLICYHUB_WATCH__HEARTBEAT_INTERVAL",
        format!("{}ms", HEARTBEAT.as_millis()),
    )]
}

/// Drafts and publishes `body` as the next version of team/`name`, active.
pub(crate) async fn release(channel: &Channel, name: &str, body: serde_json::Value) -> u64 {
    let mut client = PolicyServiceClient::new(channel.clone());
    client
        .draft(proto::DraftRequest {
            namespace: "team".into(),
            name: name.into(),
            body: Some(json_to_struct(&body)),
            ..Default::default()
        })
        .await
        .expect("draft");
    client
        .publish(crate::helpers::publish_request("team", name, "", true))
        .await
        .expect("publish")
        .into_inner()
        .revision
}

/// Runs a subscription's event stream in a task: every state it puts in
/// force (from the server or the cache) arrives on the first channel, and
/// every event on the second.
pub(crate) fn follow_events(
    subscription: Subscription,
) -> (
    JoinHandle<()>,
    mpsc::UnboundedReceiver<State>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (states, received_states) = mpsc::unbounded_channel();
    let (events, received_events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(subscription.events());
        while let Some(Ok(event)) = stream.next().await {
            // The event first: a test that saw the state finds its event.
            let state = match &event {
                Event::Applied(state) | Event::FromCache(state) => Some(state.clone()),
                _ => None,
            };
            events.send(event).ok();
            if let Some(state) = state {
                states.send(state).ok();
            }
        }
    });
    (task, received_states, received_events)
}

/// [`follow_events`], for the states only.
fn follow(subscription: Subscription) -> (JoinHandle<()>, mpsc::UnboundedReceiver<State>) {
    let (task, states, _) = follow_events(subscription);
    (task, states)
}

/// A subscription that learns the heartbeat interval from the server.
pub(crate) fn quick(endpoint: &str) -> Subscription {
    Subscription::new(endpoint, "team").backoff(Duration::from_millis(100), Duration::from_secs(1))
}

/// The next applied state, failing the test after `wait`.
async fn next_state(states: &mut mpsc::UnboundedReceiver<State>, wait: Duration) -> State {
    tokio::time::timeout(wait, states.recv())
        .await
        .expect("a state in time")
        .expect("the subscription runs")
}

/// Waits for the state in which team/`name` is at `version`.
async fn until_version(
    states: &mut mpsc::UnboundedReceiver<State>,
    name: &str,
    version: u32,
    seen: &mut Vec<State>,
) -> State {
    loop {
        let state = next_state(states, Duration::from_secs(15)).await;
        seen.push(state.clone());
        if state.bundles.get(name).map(|bundle| bundle.version) == Some(version) {
            return state;
        }
    }
}

pub(crate) fn kill_9(mut server: crate::helpers::Reaped) {
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
}

/// A loopback TCP proxy that can black-hole its open connections (stop
/// forwarding, keep the sockets) and flip bytes of the JWS it forwards.
#[derive(Clone)]
pub(crate) struct Proxy {
    address: SocketAddr,
    /// Connections opened before this flips stop forwarding.
    stalled: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// When each connection was accepted.
    accepts: Arc<Mutex<Vec<Instant>>>,
    pub(crate) tamper: Arc<Mutex<Option<Tamper>>>,
}

/// How the proxy corrupts the next JWS it forwards to the client.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tamper {
    /// One character of the signed payload.
    Payload,
    /// The key id in the header, rewritten to a key no JWKS holds.
    KeyId,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            address: listener.local_addr().unwrap(),
            stalled: Arc::default(),
            accepts: Arc::default(),
            tamper: Arc::default(),
        };
        let shared = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.accepts.lock().unwrap().push(Instant::now());
                let stall = Arc::new(AtomicBool::new(false));
                shared.stalled.lock().unwrap().push(stall.clone());
                let tamper = shared.tamper.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let none = Arc::new(Mutex::new(None));
                    tokio::join!(
                        pipe(client_read, server_write, stall.clone(), none),
                        pipe(server_read, client_write, stall, tamper),
                    );
                });
            }
        });
        proxy
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// How many connections it accepted.
    pub(crate) fn accepted(&self) -> usize {
        self.accepts.lock().unwrap().len()
    }

    /// Open connections stop forwarding; new ones work.
    pub(crate) fn black_hole_open_connections(&self) {
        for stall in self.stalled.lock().unwrap().drain(..) {
            stall.store(true, Ordering::SeqCst);
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stall: Arc<AtomicBool>,
    tamper: Arc<Mutex<Option<Tamper>>>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        if stall.load(Ordering::SeqCst) {
            // Black hole: swallow everything, keep the socket open.
            continue;
        }
        let chunk = &mut buffer[..read];
        let pending = *tamper.lock().unwrap();
        if let Some(how) = pending
            && corrupt(chunk, how)
        {
            tamper.lock().unwrap().take();
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}

/// Corrupts the first bundle's JWS in `chunk` in place, keeping its
/// length. A checkpoint's JWS is left alone: corrupting one that comes
/// first (a checkpoint signed after its revision was sent) would end the
/// stream rather than refuse a bundle.
fn corrupt(chunk: &mut [u8], how: Tamper) -> bool {
    let Some((start, dot)) = first_bundle_jws(chunk) else {
        return false;
    };
    match how {
        Tamper::Payload => {
            let at = dot + 12;
            if at >= chunk.len() {
                return false;
            }
            chunk[at] = if chunk[at] == b'A' { b'B' } else { b'A' };
        }
        Tamper::KeyId => {
            let Ok(header) = URL_SAFE_NO_PAD.decode(&chunk[start..dot]) else {
                return false;
            };
            let Ok(mut header) = serde_json::from_slice::<serde_json::Value>(&header) else {
                return false;
            };
            let kid = header["kid"].as_str().unwrap_or_default().to_owned();
            header["kid"] = json!("X".repeat(kid.len()));
            let encoded = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
            if encoded.len() != dot - start {
                return false;
            }
            chunk[start..dot].copy_from_slice(encoded.as_bytes());
        }
    }
    true
}

/// Where the protected header of the first bundle's JWS in `chunk` starts
/// and ends (at its first dot).
fn first_bundle_jws(chunk: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(at) = chunk[from..].windows(3).position(|window| window == b"eyJ") {
        let start = from + at;
        let dot = start + chunk[start..].iter().position(|byte| *byte == b'.')?;
        let is_bundle = URL_SAFE_NO_PAD
            .decode(&chunk[start..dot])
            .ok()
            .and_then(|header| serde_json::from_slice::<serde_json::Value>(&header).ok())
            .is_some_and(|header| header["typ"] == "policyhub-bundle+jwt");
        if is_bundle {
            return Some((start, dot));
        }
        from = dot;
    }
    None
}

/// The server's environment with its metrics port at `metrics_port`, and
/// `more`.
pub(crate) fn server_env_with_metrics(
    metrics_port: u16,
    more: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = server_env();
    env.push((
        "POLICYHUB_METRICS_LISTEN",
        format!("127.0.0.1:{metrics_port}"),
    ));
    env.extend(more.iter().map(|(key, value)| (*key, value.to_string())));
    env
}

/// Waits until one runtime reported team/limits APPLIED (panics after
/// 10 s, saying `what`); returns the server's metrics then.
async fn once_applied_reported(channel: &Channel, metrics_port: u16, what: &str) -> String {
    let reported = tokio::time::timeout(Duration::from_secs(10), async {
        while policy_status(channel, "limits").await.applied != 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(reported.is_ok(), "{what}");
    crate::observability::scrape(([127, 0, 0, 1], metrics_port).into()).await
}

async fn policy_status(channel: &Channel, name: &str) -> proto::GetPolicyStatusResponse {
    PolicyServiceClient::new(channel.clone())
        .get_policy_status(proto::GetPolicyStatusRequest {
            namespace: "team".into(),
            name: name.into(),
        })
        .await
        .expect("policy status")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_resumes_after_kill_9_missing_nothing_and_repeating_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    let (task, mut states) = follow(quick(&format!("http://127.0.0.1:{port}")).runtime("rt-1", []));
    let mut seen = Vec::new();
    until_version(&mut states, "limits", 1, &mut seen).await;
    release(&channel, "limits", json!({"v": 2})).await;
    until_version(&mut states, "limits", 2, &mut seen).await;

    kill_9(server);
    let metrics_port = free_port();
    let env = server_env_with_metrics(metrics_port, &[]);
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &env).await;
    for version in 3..=5 {
        release(&channel, "limits", json!({"v": version})).await;
    }
    let last = until_version(&mut states, "limits", 5, &mut seen).await;
    assert_eq!(last.revision, 5);
    let revisions: Vec<u64> = seen.iter().map(|state| state.revision).collect();
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]),
        "revisions only increase and none is applied twice: {revisions:?}"
    );
    // The report of the last state reached the restarted server, on its
    // ReportStatusStream: no ReportStatus call ended.
    let what = "APPLIED reported after the restart";
    let metrics = once_applied_reported(&channel, metrics_port, what).await;
    assert!(
        !metrics.contains(r#"method="/policyhub.v1.BundleService/ReportStatus""#),
        "{metrics}"
    );
    task.abort();
    kill_9(server);
}

/// The library follows the log's tree with the consistency proofs the
/// watch messages carry: releases reach it, each with a tree that extends
/// the last, and it asked the server for no proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_follows_the_log_with_the_proofs_the_stream_carries() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let env = server_env_with_metrics(metrics_port, &[]);
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &env).await;
    release(&channel, "limits", json!({"v": 1})).await;
    let (task, mut states) = follow(quick(&format!("http://127.0.0.1:{port}")).runtime("rt-1", []));
    let mut seen = Vec::new();
    until_version(&mut states, "limits", 1, &mut seen).await;
    for version in 2..=5 {
        release(&channel, "limits", json!({"v": version})).await;
        until_version(&mut states, "limits", version, &mut seen).await;
    }
    let metrics = crate::observability::scrape(([127, 0, 0, 1], metrics_port).into()).await;
    // The library's calls are counted (its one JWKS fetch), but no proof.
    assert!(
        metrics.contains(r#"method="/policyhub.v1.BundleService/GetSigningKeys""#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"method="/policyhub.v1.BundleService/GetConsistencyProof""#),
        "{metrics}"
    );
    task.abort();
    kill_9(server);
}

/// Where the server will hold no more report streams for its subject, the
/// library reports with one ReportStatus call each, and the report lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_reports_with_calls_where_no_report_stream_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let quota = [("POLICYHUB_QUOTAS__MAX_STREAMS_PER_SUBJECT", "1")];
    let env = server_env_with_metrics(metrics_port, &quota);
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &env).await;
    release(&channel, "limits", json!({"v": 1})).await;
    // Another caller of the same subject holds its one report stream.
    let _held = BundleServiceClient::new(channel.clone())
        .report_status_stream(futures::stream::pending::<proto::ReportStatusRequest>())
        .await
        .expect("the first report stream is allowed");

    let (task, mut states) = follow(quick(&format!("http://127.0.0.1:{port}")).runtime("rt-1", []));
    until_version(&mut states, "limits", 1, &mut Vec::new()).await;
    let metrics = once_applied_reported(&channel, metrics_port, "APPLIED reported").await;
    assert!(
        metrics.contains(
            r#"policyhub_rpc_requests_total{method="/policyhub.v1.BundleService/ReportStatus",code="0"}"#
        ),
        "{metrics}"
    );
    task.abort();
    kill_9(server);
}

/// A reader holds the verified state in force and wakes on each new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holds_the_state_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    let (mut reader, follow) = quick(&format!("http://127.0.0.1:{port}")).reader();
    assert!(reader.current().is_none(), "nothing before the first state");
    let task = tokio::spawn(follow);
    let wait = Duration::from_secs(10);
    let first = tokio::time::timeout(wait, reader.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.bundles["limits"].version, 1);
    release(&channel, "limits", json!({"v": 2})).await;
    let second = tokio::time::timeout(wait, reader.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.bundles["limits"].version, 2);
    assert_eq!(reader.current(), Some(second));
    task.abort();
    kill_9(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_is_noticed_within_three_of_the_servers_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let (task, mut states, mut events) = follow_events(quick(&proxy.endpoint()));
    let mut seen = Vec::new();
    until_version(&mut states, "limits", 1, &mut seen).await;

    proxy.black_hole_open_connections();
    let stalled_at = Instant::now();
    release(&channel, "limits", json!({"v": 2})).await;
    until_version(&mut states, "limits", 2, &mut seen).await;
    let noticed = stalled_at.elapsed();
    println!("a black-holed stream was replaced after {noticed:?}");
    // Given no interval, the client takes the server's 200 ms: three of
    // them, a reconnection and a backoff of at most 100 ms, far from the
    // 30 s that three of the 10 s default would take.
    assert!(
        noticed < Duration::from_secs(3),
        "noticed within three of the server's 200 ms heartbeats plus a backoff: {noticed:?}"
    );
    task.abort();
    // The stream said so: connected, lost for want of heartbeats,
    // connected again from the revision it had, and the new state.
    let mut said = Vec::new();
    while let Ok(event) = events.try_recv() {
        said.push(event);
    }
    let lost = said
        .iter()
        .position(|event| {
            matches!(event, Event::Disconnected { reason, revision: 1, .. }
                if reason.contains("three heartbeats"))
        })
        .unwrap_or_else(|| panic!("a Disconnected event: {said:?}"));
    assert!(
        matches!(
            said[lost + 1..],
            [Event::Connected { revision: 1, .. }, Event::Applied(_), ..]
        ),
        "{said:?}"
    );

    // The same through `policyhub watch`, also given no interval.
    let (_watch, lines) = watch_json(&proxy.endpoint(), dir.path());
    let first = next_line(&lines).await;
    assert_eq!(first["bundles"][0]["version"], 2);
    proxy.black_hole_open_connections();
    release(&channel, "limits", json!({"v": 3})).await;
    let next = next_line(&lines).await;
    assert_eq!(next["bundles"][0]["version"], 3);
    kill_9(server);
}

type Lines = Arc<Mutex<mpsc::UnboundedReceiver<String>>>;

/// `policyhub watch -o json` of namespace team at `endpoint`, and its lines.
fn watch_json(endpoint: &str, dir: &Path) -> (crate::helpers::Reaped, Lines) {
    let mut child = Command::new(policyhub_binary())
        .args([
            "watch",
            "--server",
            endpoint,
            "--namespace",
            "team",
            "-o",
            "json",
        ])
        .env("POLICYHUB_CLIENT_CONFIG", dir.join("no-config.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(crate::helpers::stdout_lines(&mut child)));
    (crate::helpers::Reaped(child), lines)
}

async fn next_line(lines: &Lines) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(line) = lines.lock().unwrap().try_recv() {
            return serde_json::from_str(&line).expect("one JSON object per line");
        }
        assert!(Instant::now() < deadline, "a line within 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a server restart, 1,000 runtimes come back spread over the
/// backoff window (full jitter), not in one wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runtimes_reconnect_spread_over_the_backoff_window() {
    const RUNTIMES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env = server_env();
    env.push((
        "POLICYHUB_QUOTAS__MAX_STREAMS_PER_SUBJECT",
        (RUNTIMES * 2).to_string(),
    ));
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &env).await;
    release(&channel, "limits", json!({"v": 1})).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let (applied, mut applications) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..RUNTIMES {
        let applied = applied.clone();
        let subscription = Subscription::new(proxy.endpoint(), "team")
            .heartbeat_interval(Duration::from_secs(10))
            .backoff(Duration::from_secs(2), Duration::from_secs(10));
        tasks.push(tokio::spawn(async move {
            let mut events = std::pin::pin!(subscription.events());
            while let Some(Ok(event)) = events.next().await {
                if let Event::Applied(state) = event {
                    applied.send(state.revision).ok();
                }
            }
        }));
    }
    for _ in 0..RUNTIMES {
        tokio::time::timeout(Duration::from_secs(60), applications.recv())
            .await
            .expect("every runtime applies the first state")
            .unwrap();
    }
    kill_9(server);
    let killed = Instant::now();
    proxy.accepts.lock().unwrap().clear();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &env).await;
    release(&channel, "limits", json!({"v": 2})).await;
    for _ in 0..RUNTIMES {
        tokio::time::timeout(Duration::from_secs(60), applications.recv())
            .await
            .expect("every runtime applies the state after the restart")
            .unwrap();
    }
    let accepts: Vec<Duration> = proxy
        .accepts
        .lock()
        .unwrap()
        .iter()
        .map(|at| at.duration_since(killed))
        .collect();
    let busiest = accepts
        .iter()
        .map(|start| {
            accepts
                .iter()
                .filter(|at| **at >= *start && **at < *start + Duration::from_millis(100))
                .count()
        })
        .max()
        .unwrap_or(0);
    let spread = accepts.iter().max().copied().unwrap_or_default()
        - accepts.iter().min().copied().unwrap_or_default();
    println!(
        "{RUNTIMES} runtimes reconnected with {} connection attempts over {spread:?}; \
         the busiest 100 ms held {busiest}",
        accepts.len()
    );
    assert!(
        busiest < RUNTIMES / 3,
        "reconnects are spread, not one wave: {busiest} in the busiest 100 ms"
    );
    for task in tasks {
        task.abort();
    }
    kill_9(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_bundles_and_unknown_keys_are_rejected_reported_and_the_last_good_state_stays() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let (task, mut states) = follow(quick(&proxy.endpoint()).runtime("rt-1", []));
    let mut seen = Vec::new();
    until_version(&mut states, "limits", 1, &mut seen).await;

    for (tamper, version, reason) in [
        (Tamper::Payload, 2, "signature check failed"),
        (Tamper::KeyId, 3, "signed by unknown key"),
    ] {
        *proxy.tamper.lock().unwrap() = Some(tamper);
        release(&channel, "limits", json!({"v": version})).await;
        // A bound on eventual delivery, not a latency figure: the report
        // goes out in its spread and reaches the fleet view at its flush,
        // which a machine running the whole suite on two cores can delay
        // past ten seconds.
        let rejected = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let status = policy_status(&channel, "limits").await;
                if let Some(group) = status
                    .versions
                    .iter()
                    .find(|entry| entry.version == version)
                    .and_then(|entry| entry.rejections.first())
                {
                    return group.error.clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{tamper:?}: REJECTED reported"));
        assert!(rejected.contains(reason), "{tamper:?}: {rejected}");
        assert!(
            states.try_recv().is_err(),
            "{tamper:?}: the application never saw version {version}"
        );
    }
    // The next good version is applied.
    release(&channel, "limits", json!({"v": 4})).await;
    let applied = until_version(&mut states, "limits", 4, &mut seen).await;
    assert_eq!(applied.bundles["limits"].body, json!({"v": 4}));
    task.abort();
    kill_9(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_carries_a_runtime_through_an_unreachable_server_and_corruption_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let port = free_port();
    let (server, channel) =
        spawn_binary_server_on(port, &dir.path().join("data"), &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    release(&channel, "other", json!({"v": 1})).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let (task, mut states) = follow(quick(&endpoint).cache_dir(&cache));
    let mut seen = Vec::new();
    until_version(&mut states, "other", 1, &mut seen).await;
    // The cache is written once the application accepted the state.
    let file = cache.join("team.state.json");
    let written = tokio::time::timeout(Duration::from_secs(10), async {
        while !std::fs::read_to_string(&file).is_ok_and(|text| text.contains(r#""revision":2"#)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(written.is_ok(), "the cache holds revision 2");
    task.abort();
    kill_9(server);

    // The server is gone: the library starts from its cache, verified.
    let (task, mut states) = follow(quick(&endpoint).cache_dir(&cache));
    let cached = next_state(&mut states, Duration::from_secs(15)).await;
    assert_eq!(cached.source, Source::Cache);
    assert_eq!((cached.revision, cached.bundles.len()), (2, 2));
    task.abort();
    let watched = watch_from_cache(&endpoint, &cache, dir.path());
    assert!(
        watched
            .0
            .contains("(from the cache: the server has not answered yet)"),
        "{watched:?}"
    );

    // One flipped byte in a cached bundle: the cache is refused.
    let mut text = std::fs::read_to_string(&file).unwrap();
    let at = text.find("eyJ").unwrap() + 40;
    let flipped = if &text[at..at + 1] == "A" { "B" } else { "A" };
    text.replace_range(at..at + 1, flipped);
    std::fs::write(&file, text).unwrap();
    let (task, mut states) = follow(quick(&endpoint).cache_dir(&cache));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), states.recv())
            .await
            .is_err(),
        "a corrupted cache is never applied"
    );
    task.abort();
    let (stdout, stderr) = watch_from_cache(&endpoint, &cache, dir.path());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("refusing the cached state") && stderr.contains("does not verify"),
        "{stderr}"
    );
}

/// `policyhub watch --cache-dir` for two seconds against an unreachable
/// server: what it printed and logged.
fn watch_from_cache(endpoint: &str, cache: &Path, dir: &Path) -> (String, String) {
    let mut child = Command::new(policyhub_binary())
        .args([
            "watch",
            "--server",
            endpoint,
            "--namespace",
            "team",
            "--cache-dir",
        ])
        .arg(cache)
        .env("POLICYHUB_CLIENT_CONFIG", dir.join("no-config.toml"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// 20 policies of 900 KB (about 24 MiB of bundles) arrive as one whole
/// state through the library and through `policyhub watch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_of_twenty_large_policies_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &server_env()).await;
    let filler = "x".repeat(900 * 1024);
    for n in 0..20 {
        release(
            &channel,
            &format!("p{n:02}"),
            json!({"n": n, "filler": filler}),
        )
        .await;
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let (task, mut states) = follow(quick(&endpoint).heartbeat_interval(Duration::from_secs(10)));
    let state = next_state(&mut states, Duration::from_secs(30)).await;
    assert_eq!((state.revision, state.bundles.len()), (20, 20));
    let numbers: BTreeMap<&str, i64> = state
        .bundles
        .iter()
        .map(|(name, bundle)| (name.as_str(), bundle.body["n"].as_i64().unwrap()))
        .collect();
    assert_eq!(numbers["p07"], 7);
    task.abort();

    let (_watch, lines) = watch_json(&endpoint, dir.path());
    let printed = next_line(&lines).await;
    assert_eq!(printed["bundles"].as_array().unwrap().len(), 20);
    kill_9(server);
}

/// Copies the SQLite database files of `from` into `to`, replacing any.
pub(crate) fn copy_database(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(to).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("policyhub.db")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if name.to_string_lossy().starts_with("policyhub.db") {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

/// Waits for a refusal of the server's history saying `says`.
pub(crate) async fn history_refused(
    events: &mut mpsc::UnboundedReceiver<Event>,
    says: &str,
) -> u64 {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await.expect("the subscription runs") {
                Event::HistoryRefused {
                    reason,
                    verified_size,
                    ..
                } if reason.contains(says) => return verified_size,
                Event::Applied(state) => panic!("applied {state:?} from a refused history"),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a history refused saying {says:?}"))
}

/// Two deployments restored from one backup with the same signing key: a
/// runtime that verified the log of the first refuses the second, wound
/// back to the backup (a smaller tree) and then diverging from it (a larger
/// tree no consistency proof ties to the one it verified). The state in
/// force stays, and a runtime started again from the cache refuses too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_wound_back_or_forked_is_refused_and_the_state_in_force_stays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    kill_9(server);
    copy_database(&data, &backup);

    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let (task, mut states, mut events) = follow_events(quick(&endpoint).cache_dir(&cache));
    let mut seen = Vec::new();
    until_version(&mut states, "limits", 1, &mut seen).await;
    release(&channel, "limits", json!({"v": 2})).await;
    release(&channel, "limits", json!({"v": 3})).await;
    until_version(&mut states, "limits", 3, &mut seen).await;
    kill_9(server);
    while events.try_recv().is_ok() {}

    // The other deployment: the backup, with the same key beside it.
    copy_database(&backup, &data);
    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    let verified = history_refused(&mut events, "wound back").await;
    assert!(verified > 0);
    for version in 10..15 {
        release(&channel, "limits", json!({"v": version})).await;
    }
    assert_eq!(
        history_refused(&mut events, "a forked history").await,
        verified,
        "the tree verified last stays remembered"
    );
    assert!(states.try_recv().is_err(), "nothing of the fork applied");
    task.abort();

    let (task, mut states, mut events) = follow_events(quick(&endpoint).cache_dir(&cache));
    let from_cache = next_state(&mut states, Duration::from_secs(5)).await;
    assert_eq!(from_cache.bundles["limits"].body, json!({"v": 3}));
    assert_eq!(
        history_refused(&mut events, "a forked history").await,
        verified
    );
    task.abort();
    kill_9(server);
}
