//! Workloads present the token they hold: `policyhub agent` with a
//! projected ServiceAccount token of the cluster issuer, the file replaced
//! as the kubelet replaces it (a new directory, then its `..data` symlink
//! swapped by a rename) while the watch stream stays open.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use policyhub::grpc::proto::{self, ListRuntimesRequest};
use serde_json::{Value, json};

use super::{Server, binding, eventually, issuer::Issuer, issuer_entry, seed, with_token};
use crate::agent::get;
use crate::helpers::{Reaped, free_port, policyhub_binary};
use crate::runtime_library::Proxy;

/// The kubelet's projected volume: `token` links to `..data/token`, and
/// `..data` to the directory of the current generation.
struct Projected {
    dir: PathBuf,
    generation: u32,
}

impl Projected {
    fn new(dir: &Path, token: &str) -> Self {
        let dir = dir.join("projected");
        std::fs::create_dir(&dir).unwrap();
        let mut projected = Projected { dir, generation: 0 };
        projected.write(token);
        std::os::unix::fs::symlink("..data/token", projected.file()).unwrap();
        projected
    }

    fn file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// Writes `token` into a new generation and swaps `..data` onto it
    /// atomically.
    fn write(&mut self, token: &str) {
        self.generation += 1;
        let data = self.dir.join(format!("..generation-{}", self.generation));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("token"), token).unwrap();
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

/// `policyhub agent` following payments as `runtime_id` with the token of
/// `token_file`, its log and metrics kept.
struct Agent {
    child: Reaped,
    port: u16,
    metrics: std::net::SocketAddr,
    log: PathBuf,
}

impl Agent {
    fn spawn(server: &str, runtime_id: &str, token_file: &Path, dir: &Path) -> Self {
        let (port, metrics) = (free_port(), free_port());
        let log = dir.join(format!("{runtime_id}.log"));
        let child = Command::new(policyhub_binary())
            .args(["agent", "--server", server, "--namespace", "payments"])
            .args(["--runtime-id", runtime_id, "--heartbeat-interval", "300ms"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--token-file")
            .arg(token_file)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start policyhub agent");
        Agent {
            child: Reaped(child),
            port,
            metrics: format!("127.0.0.1:{metrics}").parse().unwrap(),
            log,
        }
    }

    /// `/healthz`'s view of payments (whatever its status code).
    async fn payments(&self) -> Value {
        match get(self.port, "/healthz", &[]).await {
            Ok(reply) => reply.json()["namespaces"]["payments"].clone(),
            Err(_) => Value::Null,
        }
    }

    async fn holds(&self, revision: u64) -> bool {
        self.payments().await["revision"] == json!(revision.to_string())
    }

    async fn metric(&self, name: &str) -> f64 {
        let scraped = crate::observability::scrape(self.metrics).await;
        series(&scraped, &format!("{name}{{namespace=\"payments\"}}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

fn series(scraped: &str, series: &str) -> f64 {
    scraped
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{scraped}"))
}

/// The server's open watch streams, and how many ever ended (an ended
/// stream is counted by its status code).
async fn watch_streams(server: &Server) -> (f64, f64) {
    let scraped = crate::observability::scrape(server.metrics).await;
    let ended = scraped
        .lines()
        .filter(|line| {
            line.starts_with(
                "policyhub_rpc_requests_total{method=\"/policyhub.v1.BundleService/WatchActive\"",
            )
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (series(&scraped, "policyhub_watch_streams"), ended)
}

/// Publishes `body` as the next version of payments/limits, active; its
/// revision.
async fn release(server: &Server, admin: &str, body: Value) -> u64 {
    let mut policy = server.policy();
    let draft = proto::DraftRequest {
        namespace: "payments".into(),
        name: "limits".into(),
        body: Some(policyhub::grpc::convert::json_to_struct(&body)),
        ..Default::default()
    };
    policy.draft(with_token(draft, admin)).await.unwrap();
    let publish = crate::helpers::publish_request("payments", "limits", "", true);
    let reply = policy.publish(with_token(publish, admin)).await.unwrap();
    reply.into_inner().revision
}

/// The revision the server last heard `runtime_id` report as applied.
/// Releases `body` and waits until `agent` holds it (within `seconds`) and
/// the server has its report; returns the revision.
async fn release_and_follow(
    server: &Server,
    admin: &str,
    agent: &Agent,
    body: Value,
    seconds: u64,
) -> u64 {
    let revision = release(server, admin, body).await;
    assert!(
        eventually(seconds, async || agent.holds(revision).await).await,
        "{}",
        agent.log()
    );
    assert!(
        eventually(10, async || reported(server, admin, "agent-1").await
            == revision)
        .await
    );
    revision
}

async fn reported(server: &Server, admin: &str, runtime_id: &str) -> u64 {
    let request = ListRuntimesRequest {
        namespace: "payments".into(),
        ..Default::default()
    };
    let mut policy = server.policy();
    let reply = policy.list_runtimes(with_token(request, admin)).await;
    reply
        .unwrap()
        .into_inner()
        .runtimes
        .into_iter()
        .find(|runtime| runtime.id == runtime_id)
        .map_or(0, |runtime| runtime.applied_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_follows_with_its_service_account_token_through_a_rotation_without_reconnecting() {
    let idp = Issuer::start("idp").await;
    let cluster = Issuer::start("cluster").await;
    // No leeway: a token past its exp is refused at once.
    let auth = "leeway = \"0s\"\n".to_owned()
        + &issuer_entry(&idp, "")
        + &issuer_entry(&cluster, "claims = []")
        + "\n[watch]\nheartbeat_interval = \"300ms\"\n";
    let bindings = binding("admins", &idp, "subject = \"root\"", "*:admin")
        + &binding(
            "payments-agents",
            &cluster,
            "service_account = \"payments:policyhub-agent\"",
            "payments:reader",
        );
    let server = Server::start(&auth, &bindings).await;
    let admin = idp.sign(&idp.claims("root", json!({})));
    seed(&server, &admin).await;
    let first = release(&server, &admin, json!({"max": 6})).await;
    // Between the agent and the server: its connections are counted, and
    // cut on demand.
    let proxy = Proxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap()).await;

    // A first token that expires in seconds, as if its hour were up.
    let dir = tempfile::tempdir().unwrap();
    let lifetime = 6;
    let issued = std::time::Instant::now();
    let short = cluster.service_account_token("payments", "policyhub-agent", "policyhub", lifetime);
    let mut projected = Projected::new(dir.path(), &short);
    let mut agent = Agent::spawn(&proxy.endpoint(), "agent-1", &projected.file(), dir.path());
    assert!(
        eventually(20, async || agent.holds(first).await).await,
        "the agent follows payments: {}\n{}",
        agent.payments().await,
        agent.log()
    );
    assert!(
        eventually(10, async || reported(&server, &admin, "agent-1").await
            == first)
        .await
    );
    let (open, ended) = watch_streams(&server).await;
    assert_eq!(
        (open, proxy.accepted()),
        (1.0, 1),
        "one stream: the agent's"
    );

    // The kubelet swaps in a new token; the first one then expires.
    let renewed = cluster.service_account_token("payments", "policyhub-agent", "policyhub", 600);
    projected.write(&renewed);
    tokio::time::sleep(Duration::from_secs(lifetime as u64 + 1).saturating_sub(issued.elapsed()))
        .await;
    assert_eq!(
        server
            .who(&short)
            .await
            .expect_err("the first token expired")
            .code(),
        tonic::Code::Unauthenticated
    );

    // The next activation arrives over the same stream: no reconnection,
    // no refusal.
    release_and_follow(&server, &admin, &agent, json!({"max": 7}), 10).await;
    assert_eq!(
        watch_streams(&server).await,
        (1.0, ended),
        "the same stream"
    );
    assert_eq!(proxy.accepted(), 1, "the same connection");
    assert_eq!(agent.metric("policyhub_agent_reconnects_total").await, 0.0);
    assert_eq!(agent.metric("policyhub_agent_refusals_total").await, 0.0);

    // The connection lost: the next stream carries the new token (the
    // first one would be refused now).
    proxy.black_hole_open_connections();
    release_and_follow(&server, &admin, &agent, json!({"max": 8}), 20).await;
    assert_eq!(agent.metric("policyhub_agent_refusals_total").await, 0.0);
    assert!(
        agent
            .log()
            .contains("the token file holds a new token; the next call carries it"),
        "{}",
        agent.log()
    );

    // An empty file mid-rotation, and the connection lost again: logged,
    // and the last good token kept.
    projected.write("");
    proxy.black_hole_open_connections();
    release_and_follow(&server, &admin, &agent, json!({"max": 9}), 20).await;
    assert_eq!(agent.metric("policyhub_agent_refusals_total").await, 0.0);
    let log = agent.log();
    assert!(
        log.contains("cannot read the token file; the last good token is kept"),
        "{log}"
    );
    assert!(
        !log.contains(&renewed) && !log.contains(&short),
        "no token in the log"
    );
    assert!(agent.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_audience_is_refused_and_the_agent_retries_until_its_file_holds_a_good_one()
 {
    let idp = Issuer::start("idp").await;
    let cluster = Issuer::start("cluster").await;
    let auth = issuer_entry(&idp, "") + &issuer_entry(&cluster, "claims = []");
    let bindings = binding("admins", &idp, "subject = \"root\"", "*:admin")
        + &binding(
            "payments-agents",
            &cluster,
            "service_account = \"payments:policyhub-agent\"",
            "payments:reader",
        );
    let server = Server::start(&auth, &bindings).await;
    let admin = idp.sign(&idp.claims("root", json!({})));
    seed(&server, &admin).await;
    let revision = release(&server, &admin, json!({"max": 6})).await;

    // The pod's token was projected for another service.
    let dir = tempfile::tempdir().unwrap();
    let vault = cluster.service_account_token("payments", "policyhub-agent", "vault", 3600);
    let mut projected = Projected::new(dir.path(), &vault);
    let mut agent = Agent::spawn(&server.url(), "agent-1", &projected.file(), dir.path());
    assert!(
        eventually(20, async || agent.payments().await["refused"].is_string()).await,
        "{}",
        agent.log()
    );
    let payments = agent.payments().await;
    let refused = payments["refused"].as_str().unwrap();
    assert!(
        refused.contains("Unauthenticated") && refused.contains("audience"),
        "{payments}"
    );
    assert!(agent.metric("policyhub_agent_refusals_total").await >= 1.0);
    assert!(
        agent
            .log()
            .contains("the server refused the credentials; the state in force stays, retrying"),
        "{}",
        agent.log()
    );
    assert!(agent.running(), "a refused token is retried, not the end");

    // The right audience in the file: the agent follows, unrestarted.
    projected.write(&cluster.service_account_token(
        "payments",
        "policyhub-agent",
        "policyhub",
        3600,
    ));
    assert!(
        eventually(20, async || agent.holds(revision).await).await,
        "{}\n{}",
        agent.payments().await,
        agent.log()
    );
    assert!(agent.running());
    assert!(
        !server.log().contains(&vault),
        "the refused token is not logged"
    );
}
