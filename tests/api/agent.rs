//! `policyhub agent` against the real server binary: the localhost API read
//! by curl, Python and shell consumers, long polling, SSE resumed across an
//! agent restart, the cache when the server is gone, tampered bundles, the
//! rendered files under 200 activations, a failing reload that rolls a
//! rollout back, and a SIGTERM that lets a reload and held reads finish.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

use crate::helpers::{
    Reaped, TestDatabase, free_port, policyhub_binary, spawn_binary_server_on, stdout_lines,
};
use crate::rollout_binary::{seed, serve};
use crate::rollouts::{start_request, step, until};
use crate::runtime_library::{Proxy, Tamper, kill_9};
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{self, RolloutState, policy_service_client::PolicyServiceClient},
};

/// A running agent and its API port.
pub(crate) struct Agent {
    child: Reaped,
    pub(crate) port: u16,
}

impl Agent {
    /// `policyhub agent` following `namespace` of `server` as runtime
    /// agent-1, its cache in `dir`, with `extra` flags.
    pub(crate) fn spawn(server: &str, namespace: &str, dir: &Path, extra: &[&str]) -> Self {
        Agent::spawn_on(free_port(), server, namespace, dir, extra)
    }

    fn spawn_on(port: u16, server: &str, namespace: &str, dir: &Path, extra: &[&str]) -> Self {
        let child = Command::new(policyhub_binary())
            .args(["agent", "--server", server, "--namespace", namespace])
            .args(["--runtime-id", "agent-1", "--heartbeat-interval", "300ms"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("start policyhub agent");
        Agent {
            child: Reaped(child),
            port,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `/healthz` answers 200; its body.
    pub(crate) async fn healthy(&self) -> Value {
        for _ in 0..200 {
            if let Ok(reply) = get(self.port, "/healthz", &[]).await
                && reply.status == 200
            {
                return reply.json();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the agent never became healthy");
    }

    pub(crate) fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

/// An HTTP/1.1 reply, read whole.
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

/// One request on a fresh connection.
pub(crate) async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

pub(crate) async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    request(port, "GET", path, headers, "").await
}

/// Drafts and publishes `body` as the next version of `namespace`/`name`,
/// active; its revision.
pub(crate) async fn release(channel: &Channel, namespace: &str, name: &str, body: Value) -> u64 {
    let mut client = PolicyServiceClient::new(channel.clone());
    client
        .draft(proto::DraftRequest {
            namespace: namespace.into(),
            name: name.into(),
            body: Some(json_to_struct(&body)),
            ..Default::default()
        })
        .await
        .expect("draft");
    client
        .publish(crate::helpers::publish_request(namespace, name, "", true))
        .await
        .expect("publish")
        .into_inner()
        .revision
}

pub(crate) async fn server(dir: &Path) -> (Reaped, Channel, u16) {
    let port = free_port();
    // 200 activations a test: above the default quota of mutations.
    let env = [
        ("POLICYHUB_WATCH__HEARTBEAT_INTERVAL", "300ms".to_owned()),
        ("POLICYHUB_QUOTAS__MUTATIONS_PER_SECOND", "10000".to_owned()),
    ];
    let (child, channel) = spawn_binary_server_on(port, &dir.join("server"), &env).await;
    (child, channel, port)
}

async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.recv())
        .await
        .expect("a line within 10 s")
        .expect("the consumer is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_python_and_shell_read_the_verified_body_and_a_long_poll_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    let endpoint = format!("http://127.0.0.1:{server_port}");
    let revision = release(
        &channel,
        "payments",
        "card-limits",
        json!({"maxAmount": 100}),
    )
    .await;
    let agent = Agent::spawn(&endpoint, "payments", dir.path(), &[]);
    let health = agent.healthy().await;
    assert_eq!(
        health["namespaces"]["payments"],
        json!({"revision": revision.to_string(), "source": "server", "connected": true,
               "server": endpoint, "checkpointStale": false, "refused": null, "lastRejection": null,
               "lastHistoryRefusal": null, "lastHistoryRestore": null,
               "ageSeconds": health["namespaces"]["payments"]["ageSeconds"]}),
        "{health}"
    );

    // curl: the body, its version, label, revision and digest as headers.
    let curl = Command::new("curl")
        .args([
            "-sS",
            "-i",
            &agent.url("/v1/namespaces/payments/policies/card-limits"),
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8(curl.stdout).unwrap();
    let bundle = proto::bundle_service_client::BundleServiceClient::new(channel.clone())
        .get_active(proto::GetActiveRequest {
            namespace: "payments".into(),
            name: "card-limits".into(),
            ..Default::default()
        })
        .await
        .expect("the active bundle")
        .into_inner()
        .digest;
    for expected in [
        "HTTP/1.1 200 OK".to_owned(),
        "policyhub-version: 1".to_owned(),
        format!("policyhub-revision: {revision}"),
        format!("policyhub-digest: {bundle}"),
        "policyhub-source: server".to_owned(),
        format!(
            "etag: \"1-{revision}-{}\"",
            bundle.trim_start_matches("sha256:")
        ),
    ] {
        assert!(text.contains(&expected), "{expected:?} in {text}");
    }
    assert!(text.ends_with("{\"maxAmount\":100}"), "{text}");

    // The Python and shell consumers of the README print each version.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent");
    let mut python = Reaped(
        Command::new("python3")
            .arg(examples.join("consumer.py"))
            .args(["payments", "card-limits"])
            .env("AGENT", agent.url(""))
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the Python consumer"),
    );
    let mut shell = Reaped(
        Command::new("sh")
            .arg(examples.join("consumer.sh"))
            .args(["payments", "card-limits"])
            .env("AGENT", agent.url(""))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the shell consumer"),
    );
    let (mut from_python, mut from_shell) =
        (stdout_lines(&mut python.0), stdout_lines(&mut shell.0));
    assert_eq!(
        next_line(&mut from_python).await,
        "version 1 {\"maxAmount\": 100}"
    );
    assert_eq!(
        next_line(&mut from_shell).await,
        "version 1 {\"maxAmount\":100}"
    );

    // A long poll held on the current ETag returns within 100 ms of the
    // activation that changes it.
    let mut latencies = Vec::new();
    for (version, amount) in [(2, 200), (3, 300), (4, 400)] {
        let etag = etag_of(&agent).await;
        let port = agent.port;
        let held = tokio::spawn(async move {
            let path = "/v1/namespaces/payments/policies/card-limits";
            let headers = [("if-none-match", etag.as_str()), ("prefer", "wait=20")];
            let reply = get(port, path, &headers)
                .await
                .expect("the long poll answers");
            (reply, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        release(
            &channel,
            "payments",
            "card-limits",
            json!({"maxAmount": amount}),
        )
        .await;
        let activated = Instant::now();
        let (reply, answered) = held.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("policyhub-version"),
            Some(version.to_string().as_str())
        );
        assert_eq!(reply.json(), json!({"maxAmount": amount}));
        latencies.push(answered.saturating_duration_since(activated));
        assert_eq!(
            next_line(&mut from_python).await,
            format!("version {version} {{\"maxAmount\": {amount}}}")
        );
        assert_eq!(
            next_line(&mut from_shell).await,
            format!("version {version} {{\"maxAmount\":{amount}}}")
        );
    }
    latencies.sort();
    assert!(
        latencies[1] < Duration::from_millis(100),
        "a long poll returns within 100 ms of the activation: {latencies:?}"
    );
    // Held on the ETag in force with nothing changing: 304 after the wait.
    let current = get(
        agent.port,
        "/v1/namespaces/payments/policies/card-limits",
        &[],
    )
    .await
    .unwrap();
    let etag = current.header("etag").unwrap().to_owned();
    let started = Instant::now();
    let unchanged = get(
        agent.port,
        "/v1/namespaces/payments/policies/card-limits",
        &[("if-none-match", &etag), ("prefer", "wait=1")],
    )
    .await
    .unwrap();
    assert_eq!((unchanged.status, unchanged.body.as_str()), (304, ""));
    assert!(started.elapsed() >= Duration::from_millis(900));

    drop((python, shell));
    drop(agent);
    kill_9(server);
}

/// The ETag the agent serves now for payments/card-limits.
async fn etag_of(agent: &Agent) -> String {
    let reply = get(
        agent.port,
        "/v1/namespaces/payments/policies/card-limits",
        &[],
    )
    .await
    .unwrap();
    reply.header("etag").expect("an ETag").to_owned()
}

/// The `id` and `data` of the next SSE event on `lines`.
async fn next_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
    within: Duration,
) -> Option<(u64, Value)> {
    let deadline = tokio::time::Instant::now() + within;
    let mut id = None;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .ok()?
            .ok()??;
        if let Some(value) = line.strip_prefix("id: ") {
            id = value.parse().ok();
        }
        if let Some(data) = line.strip_prefix("data: ") {
            return Some((id?, serde_json::from_str(data).unwrap()));
        }
    }
}

async fn open_events(
    port: u16,
    last_event_id: Option<u64>,
) -> tokio::io::Lines<BufReader<tokio::net::TcpStream>> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut text = "GET /v1/namespaces/team/state:watch HTTP/1.1\r\nhost: agent\r\naccept: text/event-stream\r\n".to_owned();
    if let Some(id) = last_event_id {
        text.push_str(&format!("last-event-id: {id}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    BufReader::new(stream).lines()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_after_the_agent_restarts_and_the_cache_outlives_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    let endpoint = format!("http://127.0.0.1:{server_port}");
    let first = release(&channel, "team", "limits", json!({"v": 1})).await;
    let agent_port = free_port();
    let agent = Agent::spawn_on(agent_port, &endpoint, "team", dir.path(), &[]);
    agent.healthy().await;
    let mut events = open_events(agent_port, None).await;
    let (id, state) = next_event(&mut events, Duration::from_secs(5))
        .await
        .expect("the state in force");
    assert_eq!(id, first);
    assert_eq!(state["policies"]["limits"]["body"], json!({"v": 1}));

    // The agent goes; a change lands meanwhile; the client reconnects with
    // its Last-Event-ID to the restarted agent and gets exactly that change.
    agent.kill_9();
    let second = release(&channel, "team", "limits", json!({"v": 2})).await;
    let agent = Agent::spawn_on(agent_port, &endpoint, "team", dir.path(), &[]);
    agent.healthy().await;
    until_revision(&agent, second).await;
    let mut events = open_events(agent_port, Some(id)).await;
    let (id, state) = next_event(&mut events, Duration::from_secs(5))
        .await
        .expect("the change missed");
    assert_eq!(id, second);
    assert_eq!(state["policies"]["limits"]["body"], json!({"v": 2}));
    // Resumed at the state in force: nothing until the next change.
    let mut current = open_events(agent_port, Some(second)).await;
    assert!(
        next_event(&mut current, Duration::from_millis(700))
            .await
            .is_none()
    );
    let third = release(&channel, "team", "limits", json!({"v": 3})).await;
    let (id, _) = next_event(&mut current, Duration::from_secs(5))
        .await
        .expect("the next change");
    assert_eq!(id, third);

    // The server is killed: the agent keeps serving the verified state and
    // says it is not connected; restarted without a server, it serves the
    // cache and says so.
    kill_9(server);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let health = agent.healthy().await;
    assert_eq!(
        health["namespaces"]["team"]["connected"],
        json!(false),
        "{health}"
    );
    let body = get(agent_port, "/v1/namespaces/team/policies/limits", &[])
        .await
        .unwrap();
    assert_eq!((body.status, body.json()), (200, json!({"v": 3})));
    agent.kill_9();
    let agent = Agent::spawn_on(agent_port, &endpoint, "team", dir.path(), &[]);
    let health = agent.healthy().await;
    assert_eq!(
        (
            &health["status"],
            &health["namespaces"]["team"]["source"],
            &health["namespaces"]["team"]["revision"]
        ),
        (
            &json!("serving"),
            &json!("cache"),
            &json!(third.to_string())
        ),
        "{health}"
    );
    let body = get(agent_port, "/v1/namespaces/team/policies/limits", &[])
        .await
        .unwrap();
    assert_eq!(body.header("policyhub-source"), Some("cache"));
    assert_eq!(body.json(), json!({"v": 3}));

    // Without a server or a cache there is nothing verified to serve.
    let empty = tempfile::tempdir().unwrap();
    let fresh = Agent::spawn(&endpoint, "team", empty.path(), &[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let health = get(fresh.port, "/healthz", &[]).await.unwrap();
    assert_eq!(health.status, 503, "{}", health.body);
    let body = get(fresh.port, "/v1/namespaces/team/policies/limits", &[])
        .await
        .unwrap();
    assert_eq!(body.status, 503, "{}", body.body);
}

pub(crate) async fn until_revision(agent: &Agent, revision: u64) {
    for _ in 0..200 {
        let health = agent.healthy().await;
        if health["namespaces"]
            .as_object()
            .unwrap()
            .values()
            .all(|held| held["revision"] == json!(revision.to_string()))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the agent never held revision {revision}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_bundle_never_reaches_the_api_or_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"v": 1})).await;
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], server_port))).await;
    let render = dir.path().join("render");
    let agent = Agent::spawn(
        &proxy.endpoint(),
        "team",
        dir.path(),
        &["--render-dir", render.to_str().unwrap()],
    );
    agent.healthy().await;
    *proxy.tamper.lock().unwrap() = Some(Tamper::Payload);
    let tampered = release(&channel, "team", "limits", json!({"v": 2})).await;
    let status = until_rejected(&channel, "team", "limits", 2).await;
    assert!(status.contains("does not verify"), "{status}");
    let body = get(agent.port, "/v1/namespaces/team/policies/limits", &[])
        .await
        .unwrap();
    assert_eq!(
        body.json(),
        json!({"v": 1}),
        "the API keeps the verified state"
    );
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(render.join("team/policies/limits.json")).unwrap())
            .unwrap();
    assert_eq!(
        on_disk,
        json!({"v": 1}),
        "the files keep the verified state"
    );
    let health = agent.healthy().await;
    assert_ne!(
        health["namespaces"]["team"]["revision"],
        json!(tampered.to_string())
    );
    let health = health_until(&agent, "the last refusal", |health| {
        !health["namespaces"]["team"]["lastRejection"].is_null()
    })
    .await;
    let refusal = &health["namespaces"]["team"]["lastRejection"];
    assert_eq!(
        refusal["revision"],
        json!(tampered.to_string()),
        "/healthz names the revision refused: {health}"
    );
    assert!(
        refusal["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("does not verify")),
        "/healthz says why it was refused: {health}"
    );
    drop(agent);
    kill_9(server);
}

/// The fleet's view of the active `version`, once the agent reported it
/// rejected.
async fn until_rejected(channel: &Channel, namespace: &str, name: &str, version: u32) -> String {
    let mut client = PolicyServiceClient::new(channel.clone());
    for _ in 0..200 {
        let status = client
            .get_policy_status(proto::GetPolicyStatusRequest {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await
            .expect("status")
            .into_inner();
        let text = format!("{status:?}");
        if status.active_version == version && status.rejected > 0 {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent never reported version {version} rejected");
}

const READER: &str = r#"
import json, os, sys
root, stop = sys.argv[1], sys.argv[2]
whole = gone = 0
while not os.path.exists(stop):
    try:
        # Resolve the link once: everything below is one revision.
        revision = os.path.join(root, os.readlink(os.path.join(root, "team")))
        with open(os.path.join(revision, "manifest.json")) as file:
            manifest = json.load(file)
        policy = manifest["policies"].get("limits")
        if policy is None:
            continue
        with open(os.path.join(revision, policy["file"])) as file:
            body = json.load(file)
        if body["n"] != policy["version"]:
            print("torn", manifest, body)
            sys.exit(1)
        whole += 1
    except FileNotFoundError as error:
        # A directory removed while read: the grace period is for this.
        print("gone", error)
        sys.exit(1)
print(whole)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_render_directory_is_never_seen_half_written_during_200_activations() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"n": 1})).await;
    let render = dir.path().join("render");
    let agent = Agent::spawn(
        &format!("http://127.0.0.1:{server_port}"),
        "team",
        dir.path(),
        &["--render-dir", render.to_str().unwrap()],
    );
    agent.healthy().await;
    let stop = dir.path().join("stop");
    let mut reader = Reaped(
        Command::new("python3")
            .args(["-c", READER])
            .arg(&render)
            .arg(&stop)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the reader"),
    );
    let mut last = 0;
    for n in 2..=201 {
        last = release(&channel, "team", "limits", json!({"n": n})).await;
    }
    until_revision(&agent, last).await;
    std::fs::write(&stop, b"").unwrap();
    let (status, text) = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut stdout = reader.0.stdout.take().unwrap();
        stdout.read_to_string(&mut text).unwrap();
        (reader.0.wait().unwrap(), text)
    })
    .await
    .unwrap();
    assert!(
        status.success(),
        "the reader saw half a revision, or lost its directory: {text}"
    );
    let whole: u64 = text.trim().parse().unwrap();
    assert!(
        whole > 200,
        "the reader read while the revisions changed: {text}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(render.join("team/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["revision"], json!(last.to_string()));
    drop(agent);
    kill_9(server);
}

/// The revision directories under `render`.
fn revision_dirs(render: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(render)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_directory_held_across_many_swaps_is_read_whole_and_removed_after_the_grace_period()
 {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    let first = release(&channel, "team", "limits", json!({"n": 1})).await;
    let render = dir.path().join("render");
    let grace = Duration::from_secs(5);
    let agent = Agent::spawn(
        &format!("http://127.0.0.1:{server_port}"),
        "team",
        dir.path(),
        &[
            "--render-dir",
            render.to_str().unwrap(),
            "--render-grace-period",
            "5s",
        ],
    );
    agent.healthy().await;
    // A reader resolves the link, then stalls while 30 revisions go by.
    let held = render.join(std::fs::read_link(render.join("team")).unwrap());
    let stalled = Instant::now();
    let mut last = 0;
    for n in 2..=31 {
        last = release(&channel, "team", "limits", json!({"n": n})).await;
    }
    until_revision(&agent, last).await;
    assert!(
        stalled.elapsed() < grace,
        "the swaps outlasted the grace period: {:?}",
        stalled.elapsed()
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(held.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["revision"], json!(first.to_string()));
    let body: Value =
        serde_json::from_slice(&std::fs::read(held.join("policies/limits.json")).unwrap()).unwrap();
    assert_eq!(body, json!({"n": 1}));
    // Once the grace period is over, only the revision in force is left.
    let swapped_last = Instant::now();
    loop {
        let dirs = revision_dirs(&render);
        if dirs.len() == 1 {
            assert!(!held.exists());
            break;
        }
        assert!(
            swapped_last.elapsed() < grace + Duration::from_secs(3),
            "superseded directories outlived the grace period: {dirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        revision_dirs(&render)[0],
        render.join(std::fs::read_link(render.join("team")).unwrap())
    );
    drop(agent);
    kill_9(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reload_is_reported_rejected_with_its_stderr_and_rolls_the_rollout_back() {
    let database = TestDatabase::new(crate::helpers::Backend::Sqlite).await;
    let port = free_port();
    let (server, mut policy) = serve(port, &database).await;
    seed(&mut policy).await;
    let dir = tempfile::tempdir().unwrap();
    let render = dir.path().join("render");
    let reload = "if grep -q '\"max\": 2' \"$POLICYHUB_DIR/policies/limits.json\"; then \
                  echo 'starting the proxy' >&2; echo \"reload failed: max 2 is over the limit\" >&2; exit 3; fi";
    let agent = Agent::spawn(
        &format!("http://127.0.0.1:{port}"),
        "team",
        dir.path(),
        &["--render-dir", render.to_str().unwrap(), "--exec", reload],
    );
    agent.healthy().await;

    let started = policy
        .start_rollout(start_request(vec![step(100, Duration::from_secs(3600))]))
        .await
        .expect("start the rollout")
        .into_inner();
    let rolled_back = until(&policy, &started.id, |rollout| {
        rollout.state() != RolloutState::Running
    })
    .await;
    assert_eq!(rolled_back.state(), RolloutState::RolledBack);
    assert!(
        rolled_back
            .halted_because
            .contains("reload failed: max 2 is over the limit")
            && rolled_back.halted_because.contains("exit status: 3"),
        "the command's stderr tail reaches the rollout: {}",
        rolled_back.halted_because
    );
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(render.join("team/policies/limits.json")).unwrap())
            .unwrap();
    assert_eq!(
        on_disk,
        json!({"max": 1}),
        "the previous files stay in force"
    );
    let body = get(agent.port, "/v1/namespaces/team/policies/limits", &[])
        .await
        .unwrap();
    assert_eq!(body.json(), json!({"max": 1}));

    // The application refuses a state after the fact: REJECTED upstream,
    // the state before back in the API and the files.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let good = release(&channel, "team", "limits", json!({"max": 1, "burst": 5})).await;
    until_revision(&agent, good).await;
    let refused = request(
        agent.port,
        "POST",
        "/v1/namespaces/team/state:reject",
        &[("content-type", "application/json")],
        &json!({"revision": good.to_string(), "reason": "the health check failed after the reload"}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 200, "{}", refused.body);
    let body = get(agent.port, "/v1/namespaces/team/policies/limits", &[])
        .await
        .unwrap();
    assert_eq!(body.json(), json!({"max": 1}));
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(render.join("team/policies/limits.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, json!({"max": 1}));
    let status = until_rejected(&channel, "team", "limits", 3).await;
    assert!(
        status.contains("the health check failed after the reload"),
        "{status}"
    );
    let health = health_until(&agent, "the application's refusal", |health| {
        health["namespaces"]["team"]["lastRejection"]["revision"] == json!(good.to_string())
    })
    .await;
    assert_eq!(
        health["namespaces"]["team"]["lastRejection"],
        json!({"revision": good.to_string(), "reason": "the health check failed after the reload"}),
        "/healthz keeps the last refusal, the application's too"
    );
    drop(agent);
    crate::helpers::terminate(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    let revision = release(&channel, "team", "limits", json!({"v": 1})).await;
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let agent = Agent::spawn(
        &format!("http://127.0.0.1:{server_port}"),
        "team",
        dir.path(),
        &[
            "--api-token-file",
            dir.path().join("token").to_str().unwrap(),
        ],
    );
    agent.healthy().await;
    let bearer = [("authorization", "Bearer s3cret")];
    // method, path, headers, body; the status and a part of the message.
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/v1/namespaces/team/policies/limits",
            vec![],
            String::new(),
            401,
            "requires Authorization",
        ),
        (
            "GET",
            "/v1/namespaces/team/policies/limits",
            vec![("authorization", "Bearer nope")],
            String::new(),
            401,
            "not this agent's",
        ),
        (
            "GET",
            "/v1/namespaces/other/state",
            bearer.to_vec(),
            String::new(),
            404,
            "does not follow namespace other",
        ),
        (
            "GET",
            "/v1/namespaces/team/policies/missing",
            bearer.to_vec(),
            String::new(),
            404,
            "team/missing has no active version",
        ),
        (
            "GET",
            "/v2/nothing",
            bearer.to_vec(),
            String::new(),
            404,
            "no GET /v2/nothing here",
        ),
        (
            "POST",
            "/v1/namespaces/team/state:reject",
            bearer.to_vec(),
            "not json".into(),
            400,
            "not JSON",
        ),
        (
            "POST",
            "/v1/namespaces/team/state:reject",
            bearer.to_vec(),
            json!({"reason": "x"}).to_string(),
            400,
            "revision",
        ),
        (
            "POST",
            "/v1/namespaces/team/state:reject",
            bearer.to_vec(),
            json!({"revision": revision}).to_string(),
            400,
            "reason",
        ),
        (
            "POST",
            "/v1/namespaces/team/state:reject",
            bearer.to_vec(),
            json!({"revision": revision + 7, "reason": "x"}).to_string(),
            409,
            "is not the state in force",
        ),
        (
            "POST",
            "/v1/namespaces/team/state:reject",
            bearer.to_vec(),
            json!({"revision": revision, "reason": "x"}).to_string(),
            400,
            "no earlier state",
        ),
        (
            "POST",
            "/v1/namespaces/team/state:reject",
            bearer.to_vec(),
            "x".repeat(70_000),
            429,
            "exceeds",
        ),
    ];
    for (method, path, headers, body, status, message) in cases {
        let reply = request(agent.port, method, path, &headers, &body)
            .await
            .unwrap();
        assert_eq!(
            reply.status, status,
            "{method} {path} {body:.40}: {}",
            reply.body
        );
        let error = reply.json();
        assert!(
            error["message"].as_str().unwrap().contains(message) && error["code"].is_number(),
            "{method} {path}: {error}"
        );
    }
    // Nothing changed; /healthz needs no token.
    let body = get(agent.port, "/v1/namespaces/team/policies/limits", &bearer)
        .await
        .unwrap();
    assert_eq!((body.status, body.json()), (200, json!({"v": 1})));
    assert_eq!(get(agent.port, "/healthz", &[]).await.unwrap().status, 200);

    // An API other machines could reach needs TLS and a token.
    let refused = Command::new(policyhub_binary())
        .args([
            "agent",
            "--namespace",
            "team",
            "--runtime-id",
            "a",
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("reachable from other machines"), "{stderr}");
    // Following nothing is a usage error.
    let nothing = Command::new(policyhub_binary())
        .args(["agent", "--runtime-id", "a"])
        .output()
        .unwrap();
    assert_eq!(
        nothing.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );
    drop(agent);
    kill_9(server);
}

/// The value of `name` for namespace team on the agent's metrics port.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let scraped = get(port, "/metrics", &[]).await.ok()?;
    let prefix = format!("{name}{{namespace=\"team\"}} ");
    scraped
        .body
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// Polls `/healthz` until `done` holds of its body; that body. Polls for
/// longer than the runtime library's longest backoff (30 s): a server back
/// after a few failed attempts may be tried again only that late.
async fn health_until(agent: &Agent, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while tokio::time::Instant::now() < deadline {
        if let Ok(reply) = get(agent.port, "/healthz", &[]).await
            && reply.status == 200
        {
            last = reply.json();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never showed in /healthz: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_keeps_the_cached_state_served_and_a_replaced_token_file_recovers_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"v": 1})).await;
    kill_9(server);
    // The same server, now asking for a token.
    let mut secured = Command::new(policyhub_binary());
    secured.args(
        crate::helpers::serve_args(server_port, &dir.path().join("server"))
            .into_iter()
            .filter(|arg| arg.to_str() != Some("--insecure")),
    );
    let _server = crate::helpers::start_serving(secured, server_port).await.0;
    let minted = Command::new(policyhub_binary())
        .args(["token", "--subject", "agent-1", "--role", "team:reader"])
        .arg("--data-dir")
        .arg(dir.path().join("server"))
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &minted.stdout).unwrap();
    let endpoint = format!("http://127.0.0.1:{server_port}");
    let with_token = ["--token-file", token_file.to_str().unwrap()];
    let agent = Agent::spawn(&endpoint, "team", dir.path(), &with_token);
    agent.healthy().await;
    agent.kill_9();

    // Restarted with a token the server refuses, the agent serves its cache.
    std::fs::write(&token_file, "not-a-token\n").unwrap();
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut agent = Agent::spawn(
        &endpoint,
        "team",
        dir.path(),
        &[
            with_token[0],
            with_token[1],
            "--metrics-listen",
            &metrics_listen,
        ],
    );
    let health = health_until(&agent, "the refusal", |health| {
        health["namespaces"]["team"]["refused"].is_string()
    })
    .await;
    let team = &health["namespaces"]["team"];
    assert_eq!(
        (&team["source"], &team["connected"]),
        (&json!("cache"), &json!(false)),
        "{health}"
    );
    assert!(
        team["refused"]
            .as_str()
            .unwrap()
            .contains("Unauthenticated"),
        "{health}"
    );
    let body = get(agent.port, "/v1/namespaces/team/policies/limits", &[])
        .await
        .unwrap();
    assert_eq!((body.status, body.json()), (200, json!({"v": 1})));
    assert!(
        metric(metrics_port, "policyhub_agent_refusals_total")
            .await
            .is_some_and(|refusals| refusals >= 1.0)
    );

    // The valid token back in the file: the agent follows again, unrestarted.
    std::fs::write(&token_file, &minted.stdout).unwrap();
    health_until(&agent, "the recovery", |health| {
        let team = &health["namespaces"]["team"];
        team["connected"] == json!(true) && team["refused"].is_null()
    })
    .await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent kept running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_read_back_from_the_cache_keeps_its_age_from_when_it_was_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"v": 1})).await;
    let endpoint = format!("http://127.0.0.1:{server_port}");
    let agent = Agent::spawn(&endpoint, "team", dir.path(), &[]);
    agent.healthy().await;
    agent.kill_9();
    kill_9(server);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics_port = free_port();
    let agent = Agent::spawn(
        &endpoint,
        "team",
        dir.path(),
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    let health = agent.healthy().await;
    assert_eq!(health["namespaces"]["team"]["source"], json!("cache"));
    let age = health["namespaces"]["team"]["ageSeconds"].as_u64().unwrap();
    assert!(age >= 3, "{health}");
    let metric_age = metric(metrics_port, "policyhub_agent_state_age_seconds")
        .await
        .unwrap();
    assert!(metric_age >= 3.0, "{metric_age}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_total_counts_one_for_a_server_killed_and_back_after_failed_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"v": 1})).await;
    let metrics_port = free_port();
    let agent = Agent::spawn(
        &format!("http://127.0.0.1:{server_port}"),
        "team",
        dir.path(),
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    agent.healthy().await;
    assert_eq!(
        metric(metrics_port, "policyhub_agent_reconnects_total").await,
        Some(0.0)
    );
    kill_9(server);
    // Several attempts fail while the server is away.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (server, _) = spawn_binary_server_on(
        server_port,
        &dir.path().join("server"),
        &[("POLICYHUB_WATCH__HEARTBEAT_INTERVAL", "300ms".to_owned())],
    )
    .await;
    health_until(&agent, "the reconnection", |health| {
        health["namespaces"]["team"]["connected"] == json!(true)
    })
    .await;
    assert_eq!(
        metric(metrics_port, "policyhub_agent_reconnects_total").await,
        Some(1.0)
    );
    drop(agent);
    kill_9(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_is_reported_with_its_status_and_stderr_but_not_its_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"v": 1})).await;
    let render = dir.path().join("render");
    let _agent = Agent::spawn(
        &format!("http://127.0.0.1:{server_port}"),
        "team",
        dir.path(),
        &[
            "--render-dir",
            render.to_str().unwrap(),
            "--exec",
            "RELOAD_PASSWORD=hunter2; echo 'reload failed' >&2; exit 3",
        ],
    );
    let status = until_rejected(&channel, "team", "limits", 1).await;
    assert!(
        status.contains("reload failed") && status.contains("exit status: 3"),
        "{status}"
    );
    assert!(!status.contains("hunter2"), "{status}");
    kill_9(server);
}

/// SIGTERM while a reload runs, a long poll is held and an event stream is
/// open: the long poll is answered at once with what the agent holds, the
/// event stream ends whole (its last chunk written), the reload finishes,
/// and only then does the agent exit, cleanly. Cut with the process, the
/// reload would be killed half done and the clients left without an end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_sigterm_a_reload_under_way_finishes_and_held_reads_end_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"v": 1})).await;
    let (render, marks) = (dir.path().join("render"), dir.path().join("marks"));
    std::fs::create_dir(&marks).unwrap();
    let marks_dir = marks.display();
    let reload = format!(
        "touch {marks_dir}/started-$POLICYHUB_REVISION; sleep 2; touch {marks_dir}/done-$POLICYHUB_REVISION"
    );
    let mut agent = Agent::spawn(
        &format!("http://127.0.0.1:{server_port}"),
        "team",
        dir.path(),
        &["--render-dir", render.to_str().unwrap(), "--exec", &reload],
    );
    agent.healthy().await;
    let held = get(agent.port, "/v1/namespaces/team/state", &[])
        .await
        .unwrap();
    let etag = held.header("etag").expect("an ETag").to_owned();
    let mut events = open_events(agent.port, None).await;
    next_event(&mut events, Duration::from_secs(5))
        .await
        .expect("the state in force");
    let revision = release(&channel, "team", "limits", json!({"v": 2})).await;
    let started = marks.join(format!("started-{revision}"));
    for _ in 0..200 {
        if started.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.exists(),
        "the reload of revision {revision} started"
    );
    let port = agent.port;
    let poll = tokio::spawn(async move {
        let headers = [("if-none-match", etag.as_str()), ("prefer", "wait=60")];
        get(port, "/v1/namespaces/team/state", &headers).await
    });
    let events = tokio::spawn(async move {
        let mut last = None;
        while let Ok(Some(line)) = events.next_line().await {
            if !line.is_empty() {
                last = Some(line);
            }
        }
        last
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = Instant::now();
    crate::helpers::send_signal(&agent.child, "-TERM");
    let answered = tokio::time::timeout(Duration::from_secs(1), poll)
        .await
        .expect("the long poll is answered at once")
        .unwrap()
        .expect("a reply, not a cut connection");
    assert_eq!(
        answered.status, 304,
        "what the agent holds: {}",
        answered.body
    );
    let last = tokio::time::timeout(Duration::from_secs(1), events)
        .await
        .expect("the event stream ends at once")
        .unwrap();
    assert_eq!(last.as_deref(), Some("0"), "the stream's last chunk");
    let exited = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "the agent did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited:?}");
    assert!(
        marks.join(format!("done-{revision}")).exists(),
        "the reload under way finished before the agent exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_is_said_to_be_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let refused = Command::new(policyhub_binary())
        .args(["agent", "--namespace", "team", "--runtime-id", "a"])
        .args(["--server", "http://127.0.0.1:1"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let hint = stderr
        .lines()
        .find(|line| line.starts_with("hint: "))
        .unwrap_or_default();
    assert!(
        hint.contains("port is in use") && !hint.contains("disk"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_a_path_does_not_take_is_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::spawn("http://127.0.0.1:1", "team", dir.path(), &[]);
    for (method, path, allow) in [
        ("POST", "/v1/namespaces/team/state", "GET"),
        ("DELETE", "/v1/namespaces/team/policies/limits", "GET"),
        ("PUT", "/v1/namespaces/team/state:watch", "GET"),
        ("GET", "/v1/namespaces/team/state:reject", "POST"),
        ("POST", "/healthz", "GET"),
    ] {
        let mut reply = Err(std::io::Error::other("not tried"));
        for _ in 0..100 {
            reply = request(agent.port, method, path, &[], "").await;
            if reply.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reply = reply.unwrap();
        assert_eq!(reply.status, 405, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains(&format!("does not take {method}")),
            "{}",
            reply.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_revision_applied_is_logged_at_info_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    let revision = release(&channel, "team", "limits", json!({"v": 1})).await;
    let log = dir.path().join("agent.log");
    let child = Command::new(policyhub_binary())
        .args(["agent", "--namespace", "team", "--runtime-id", "agent-1"])
        .args(["--server", &format!("http://127.0.0.1:{server_port}")])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _agent = Reaped(child);
    let expected = format!("namespace=\"team\" revision={revision}");
    for _ in 0..200 {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text
            .lines()
            .find(|line| line.contains("applied a revision"))
        {
            assert!(
                line.contains(" INFO ") && line.contains(&expected) && line.contains("limits@1"),
                "{line}"
            );
            kill_9(server);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no line for the revision applied: {}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// `--server` with two addresses, one of which nothing answers: whichever
/// the agent prefers, it follows through the other, and every other
/// command refuses a list of servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_given_several_servers_follows_through_the_one_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    release(&channel, "team", "limits", json!({"v": 1})).await;
    let servers = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{server_port}",
        free_port()
    );
    let agent = Agent::spawn(&servers, "team", dir.path(), &[]);
    agent.healthy().await;
    let revision = release(&channel, "team", "limits", json!({"v": 2})).await;
    until_revision(&agent, revision).await;

    let refused = Command::new(policyhub_binary())
        .args(["health", "--server", &servers])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("2 servers are given"), "{stderr}");
    drop(agent);
    kill_9(server);
}
