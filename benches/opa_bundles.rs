//! OPA bundles: what long polling costs the server, against a floor server
//! holding the same long polls, and what it gives real OPAs, against the
//! same OPAs polling a static file server.
//!
//! The real `policyhub serve` binary on SQLite in a temporary directory,
//! with its HTTP port and namespace `payments` served to OPA (roots
//! `["payments"]`), one Rego policy `authz` whose data holds its version.
//!
//! **Long-polling clients.** `OPA_BUNDLES_CLIENTS` (default 1,000) HTTP/1.1
//! clients on their own keep-alive connections, each holding
//! `GET /v1/opa/bundles/payments` with `If-None-Match` of the bundle it has
//! and `Prefer: wait=60`, as OPA's bundle plugin does. Once every request
//! is written and has had a second to be parked, the next version is
//! activated (`Activate` over gRPC); two figures per delivery: the time
//! from the activation's issue to the last client having read the whole
//! 200 body (judged from the issue, since policyhub answers the polls
//! before its `Activate` reply reaches the bench; the time from the reply
//! is printed too), and the server's CPU time (its CPU-time clock)
//! from the activation's issue to that last body, over the clients. The
//! baseline, measured in turn in the same run: **the floor**, a minimal
//! hyper HTTP/1.1 server (the bench binary started again as a child
//! process, so its CPU is read as the server's is) that holds
//! the same long polls on the same clients and, when told over a control
//! connection, answers each with one prebuilt buffer of the bundle's bytes
//! (policyhub's own tarball) and a new `ETag`: no routing, authentication,
//! store or encoding per request, the least an HTTP long-polling bundle
//! server can do. Each of `OPA_BUNDLES_ROUNDS` (default 5) rounds makes
//! `OPA_BUNDLES_DELIVERIES` (default 4) deliveries on each server, after
//! one untimed delivery on each that pays their one-time costs; a round's
//! latency is the median of its deliveries', its CPU their sum over every
//! delivered bundle. The report gives the medians over the rounds with
//! their spread and each round's ratio policyhub / floor (target: at most
//! 1.3× for both). After the rounds, as many activations with the clients
//! connected and no poll held give the activation's own CPU, which the
//! floor has no counterpart of; not judged, the report gives what the CPU
//! ratio would be were each answer as cheap as the floor's, and the ratio
//! of policyhub's answers beyond the activation.
//!
//! **Real OPAs.** `OPA_BUNDLES_OPAS` (default 5) OPAs (v1.22.3, built by
//! `scripts/install-opa`) follow the server's bundle verifying its
//! signature, polling at OPA's default delays (60 to 120 s) with
//! `long_polling_timeout_seconds: 30`; `OPA_BUNDLES_OPA_ROUNDS` (default 5)
//! activations are each timed from the activation's reply to every OPA
//! deciding with the new data (`GET /v1/data/payments/version`, every
//! 10 ms). Against them, the same number of OPAs, with the same bundles and
//! keys, polling a static file server (in the bench; the tarball with an
//! `ETag`, 304 for `If-None-Match`) at the same default delays without long
//! polling: the new tarball is put in place and the time to every OPA
//! deciding with it is measured, `OPA_BUNDLES_STATIC_RUNS` (default 1)
//! times, each up to about two minutes (0 skips them).
//!
//! Run with `cargo bench --bench opa_bundles`.

use std::{
    convert::Infallible,
    env,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header};
use policyhub::grpc::proto::{self, bundle_service_client::BundleServiceClient};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};

mod support;

use support::{
    Options, Policyhub, Server, activate_in, cpu_time, free_port, load_average, median_and_spread,
    ms, opa_binary, raise_open_files_limit,
};

/// The server's allocator, so the floor (this binary, started again) and
/// the clients allocate as the server does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable that makes the bench binary the floor server:
/// `<http port>,<control port>,<bundle file>`.
const FLOOR_ROLE: &str = "OPA_BUNDLES_FLOOR_SERVER";

/// The namespace served to OPA, and its policy.
const NAMESPACE: &str = "payments";
const POLICY: &str = "authz";
const BUNDLE_PATH: &str = "/v1/opa/bundles/payments";

/// The ratio to the floor each figure must stay within.
const TARGET_RATIO: f64 = 1.3;

/// How long a parked long poll is given before the change.
const PARK: Duration = Duration::from_secs(1);

/// How long a delivery may take before its missing clients are counted.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Clients connecting at once.
const CONNECT_CONCURRENCY: usize = 100;

/// OPA's default polling delays.
const OPA_MIN_DELAY: u64 = 60;
const OPA_MAX_DELAY: u64 = 120;

/// The long poll OPA asks of policyhub.
const OPA_LONG_POLL: u64 = 30;

struct Settings {
    clients: usize,
    rounds: usize,
    deliveries: usize,
    opas: usize,
    opa_rounds: usize,
    static_runs: usize,
}

fn setting(name: &str, default: usize) -> anyhow::Result<usize> {
    env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .map_or(Ok(default), |value| {
            value
                .parse()
                .with_context(|| format!("{name} is not a number"))
        })
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let settings = Settings {
            clients: setting("OPA_BUNDLES_CLIENTS", 1000)?,
            rounds: setting("OPA_BUNDLES_ROUNDS", 5)?,
            deliveries: setting("OPA_BUNDLES_DELIVERIES", 4)?,
            opas: setting("OPA_BUNDLES_OPAS", 5)?,
            opa_rounds: setting("OPA_BUNDLES_OPA_ROUNDS", 5)?,
            static_runs: setting("OPA_BUNDLES_STATIC_RUNS", 1)?,
        };
        ensure!(
            settings.clients > 0 && settings.rounds > 0 && settings.deliveries > 0,
            "OPA_BUNDLES_CLIENTS, OPA_BUNDLES_ROUNDS and OPA_BUNDLES_DELIVERIES must be at least 1"
        );
        Ok(settings)
    }

    /// The versions published: one active at the start, one per timed or
    /// untimed activation after it.
    fn versions(&self) -> u32 {
        let client_deliveries = 1 + self.rounds * self.deliveries + self.rounds;
        let opa = if self.opas > 0 {
            1 + self.opa_rounds + self.static_runs
        } else {
            0
        };
        (1 + client_deliveries + opa) as u32
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(spec) = env::var(FLOOR_ROLE) {
        return floor_serve(&spec).await;
    }
    let settings = Settings::from_env()?;
    let started = Instant::now();
    // Both servers' clients are open at once, and the servers inherit the
    // limit.
    let (fd_limit, capped) = raise_open_files_limit((4 * settings.clients + 1000) as u64)?;
    ensure!(
        fd_limit as usize >= 2 * settings.clients + 200,
        "{} clients on two servers need {} file descriptors, the limit is {fd_limit}{}",
        settings.clients,
        2 * settings.clients + 200,
        capped.map(|why| format!(" ({why})")).unwrap_or_default()
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "opa bundles: {} long-polling clients, {} rounds of {} deliveries, {} OPAs ({} long-polling \
         rounds, {} static runs); {cpus} CPUs, load average {}, commit {}",
        settings.clients,
        settings.rounds,
        settings.deliveries,
        settings.opas,
        settings.opa_rounds,
        settings.static_runs,
        load_average(),
        commit()
    );

    let dir = tempfile::tempdir()?;
    let http_address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut policyhub = Policyhub::start(Options {
        streams: settings.clients + 100,
        env: vec![
            ("POLICYHUB_HTTP_LISTEN".into(), http_address.to_string()),
            (
                "POLICYHUB_OPA__NAMESPACES__PAYMENTS__ROOTS".into(),
                r#"["payments"]"#.into(),
            ),
        ],
        ..Options::default()
    })
    .await?;
    publish(&mut policyhub, settings.versions()).await?;
    let mut version = 1u32;
    let tarball = get_bundle(http_address).await?;
    println!("  bundle: {} B (gzipped tarball)", tarball.len());

    let bundle_file = dir.path().join("bundle.tar.gz");
    std::fs::write(&bundle_file, &tarball)?;
    let mut floor = Floor::start(&dir.path().join("floor.log"), &bundle_file).await?;

    let opened = Instant::now();
    let mut policyhub_clients = Fleet::open(http_address, settings.clients).await?;
    let mut floor_clients = Fleet::open(floor.address, settings.clients).await?;
    println!(
        "  {} clients on each server opened in {:.1} s",
        settings.clients,
        opened.elapsed().as_secs_f64()
    );

    // One untimed delivery on each: the first pays one-time costs.
    version += 1;
    let warm = policyhub_clients
        .deliver(&policyhub.server.pid(), || {
            activate_version(&mut policyhub, version)
        })
        .await?;
    ensure!(
        warm.missing == 0,
        "{} clients missed policyhub's first bundle",
        warm.missing
    );
    let mut floor_revision = 1u64;
    floor_revision += 1;
    let warm = floor_clients
        .deliver(&floor.server.pid(), || floor.write(floor_revision))
        .await?;
    ensure!(
        warm.missing == 0,
        "{} clients missed the floor's first bundle",
        warm.missing
    );

    let mut rounds = Vec::with_capacity(settings.rounds);
    for _ in 0..settings.rounds {
        let mut ours = Vec::with_capacity(settings.deliveries);
        let mut theirs = Vec::with_capacity(settings.deliveries);
        for _ in 0..settings.deliveries {
            version += 1;
            ours.push(
                policyhub_clients
                    .deliver(&policyhub.server.pid(), || {
                        activate_version(&mut policyhub, version)
                    })
                    .await?,
            );
            floor_revision += 1;
            theirs.push(
                floor_clients
                    .deliver(&floor.server.pid(), || floor.write(floor_revision))
                    .await?,
            );
        }
        let round = Round {
            policyhub: Summary::of(&ours, settings.clients),
            floor: Summary::of(&theirs, settings.clients),
        };
        println!(
            "  round {}: policyhub {}; floor {}",
            rounds.len() + 1,
            round.policyhub,
            round.floor
        );
        rounds.push(round);
    }
    // The same clients' connections open, no poll held: what the
    // activation itself costs.
    let mut alone = Vec::with_capacity(settings.rounds);
    for _ in 0..settings.rounds {
        version += 1;
        alone.push(activation_alone(&mut policyhub, version).await?);
    }
    drop(policyhub_clients);
    drop(floor_clients);
    drop(floor);
    report_clients(&rounds, &alone, settings.clients);

    if settings.opas > 0 {
        let keys = BundleServiceClient::new(policyhub.endpoint.connect().await?)
            .get_opa_signing_keys(proto::GetOpaSigningKeysRequest {})
            .await?
            .into_inner()
            .keys;
        let service = format!("http://{http_address}/v1/opa");
        let long_polling = opa_long_polling(
            &settings,
            &mut policyhub,
            &mut version,
            &service,
            &keys,
            dir.path(),
        )
        .await?;
        let static_runs = opa_static(
            &settings,
            &mut policyhub,
            http_address,
            &mut version,
            &keys,
            dir.path(),
        )
        .await?;
        report_opas(&settings, &long_polling, &static_runs);
    }
    drop(policyhub);
    println!(
        "load average at the end: {}; the bench took {:.0} s",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let head = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = !run(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

/// The body of version `version` of the policy: a Rego module and data
/// that says which version it is.
fn policy_body(version: u32) -> Value {
    json!({
        "modules": {"authz/allow.rego": "package payments.authz\n\nallow := true\n"},
        "data": {"payments": {"version": version}},
    })
}

/// Publishes versions 1..=`versions` of the policy, version 1 active.
async fn publish(policyhub: &mut Policyhub, versions: u32) -> anyhow::Result<()> {
    for version in 1..=versions {
        policyhub
            .publish_body(NAMESPACE, POLICY, &policy_body(version), version == 1)
            .await?;
    }
    Ok(())
}

async fn activate_version(policyhub: &mut Policyhub, version: u32) -> anyhow::Result<()> {
    activate_in(
        &mut policyhub.policies,
        None,
        NAMESPACE,
        POLICY,
        version,
        "benchmark",
    )
    .await?;
    Ok(())
}

/// How long an activation's follow-up work (the streams' fan-out, the
/// notifications) is given to end before its CPU is read.
const SETTLE: Duration = Duration::from_millis(50);

/// The server's CPU time for activating `version` while no poll is held:
/// from the issue to [`SETTLE`] after the reply.
async fn activation_alone(policyhub: &mut Policyhub, version: u32) -> anyhow::Result<Duration> {
    tokio::time::sleep(PARK).await;
    let pid = policyhub.server.pid();
    let before = cpu_time(&pid)?;
    activate_version(policyhub, version).await?;
    tokio::time::sleep(SETTLE).await;
    Ok(cpu_time(&pid)?.saturating_sub(before))
}

/// The current bundle, by one plain GET.
async fn get_bundle(address: SocketAddr) -> anyhow::Result<Bytes> {
    let answer = reqwest::Client::new()
        .get(format!("http://{address}{BUNDLE_PATH}"))
        .send()
        .await?;
    ensure!(
        answer.status() == reqwest::StatusCode::OK,
        "GET {BUNDLE_PATH} answered {}",
        answer.status()
    );
    Ok(answer.bytes().await?)
}

// ---------------------------------------------------------------------
// Long-polling clients.

/// A client's answer: when its last byte was read, its status and length.
struct Receipt {
    at: Instant,
    status: u16,
    bytes: usize,
}

/// Clients of one server, each on its own connection, that hold one long
/// poll each when told to.
struct Fleet {
    count: usize,
    go: watch::Sender<u64>,
    sent: Arc<AtomicUsize>,
    receipts: mpsc::UnboundedReceiver<anyhow::Result<Receipt>>,
}

/// One delivery to every client.
struct Delivery {
    /// From the change's reply to the last full body (zero when every body
    /// came before the reply).
    to_last: Duration,
    /// From the change's issue to the last full body.
    from_issue: Duration,
    /// From the change's issue to the first full body.
    first: Duration,
    /// From the change's issue to its reply.
    reply: Duration,
    /// The server's CPU time from the change's issue to the last body.
    cpu: Duration,
    /// The server's CPU time while the long polls were written and parked.
    park_cpu: Duration,
    missing: usize,
}

impl Fleet {
    /// Opens `count` clients of `address`, each having read the bundle
    /// once (its `ETag` kept for the next poll).
    async fn open(address: SocketAddr, count: usize) -> anyhow::Result<Fleet> {
        let (go, _) = watch::channel(0u64);
        let sent = Arc::new(AtomicUsize::new(0));
        let (deliver, mut receipts) = mpsc::unbounded_channel();
        let connecting = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        for _ in 0..count {
            let (go, sent, deliver) = (go.subscribe(), sent.clone(), deliver.clone());
            let connecting = connecting.clone();
            tokio::spawn(async move {
                let result = client(address, go, sent, &deliver, connecting).await;
                if let Err(error) = result {
                    let _ = deliver.send(Err(error));
                }
            });
        }
        for _ in 0..count {
            let receipt = receipts.recv().await.context("a client ended")??;
            ensure!(
                receipt.status == 200,
                "a first GET answered {}",
                receipt.status
            );
        }
        Ok(Fleet {
            count,
            go,
            sent,
            receipts,
        })
    }

    /// Has every client write its long poll, waits until they are parked,
    /// makes the change and times its delivery to every client.
    async fn deliver<F, Fut>(&mut self, pid: &str, change: F) -> anyhow::Result<Delivery>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        self.sent.store(0, Ordering::SeqCst);
        let park_start = cpu_time(pid)?;
        self.go.send_modify(|round| *round += 1);
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while self.sent.load(Ordering::SeqCst) < self.count {
            ensure!(
                Instant::now() < deadline,
                "clients did not write their polls"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(PARK).await;
        let cpu_before = cpu_time(pid)?;
        // A client answered before the change answered early (a 304 or an
        // error): counted as missing.
        let mut early = 0;
        while let Ok(receipt) = self.receipts.try_recv() {
            let _ = receipt;
            early += 1;
        }
        let issued = Instant::now();
        change().await?;
        let replied = Instant::now();
        let mut last = replied;
        let mut last_body = issued;
        let mut first_body: Option<Instant> = None;
        let mut missing = early;
        let mut received = early;
        while received < self.count {
            let left = deadline_after(issued);
            match tokio::time::timeout(left, self.receipts.recv()).await {
                Ok(Some(Ok(receipt))) => {
                    received += 1;
                    if receipt.status == 200 && receipt.bytes > 0 {
                        last = last.max(receipt.at);
                        last_body = last_body.max(receipt.at);
                        first_body =
                            Some(first_body.map_or(receipt.at, |first| first.min(receipt.at)));
                    } else {
                        missing += 1;
                    }
                }
                Ok(Some(Err(_))) => {
                    received += 1;
                    missing += 1;
                }
                Ok(None) => bail!("every client ended"),
                Err(_) => {
                    missing += self.count - received;
                    break;
                }
            }
        }
        let cpu_after = cpu_time(pid)?;
        Ok(Delivery {
            to_last: last.duration_since(replied),
            from_issue: last.max(last_body).duration_since(issued),
            first: first_body.unwrap_or(issued).duration_since(issued),
            reply: replied.duration_since(issued),
            cpu: cpu_after.saturating_sub(cpu_before),
            park_cpu: cpu_before.saturating_sub(park_start),
            missing,
        })
    }
}

fn deadline_after(issued: Instant) -> Duration {
    (issued + DELIVERY_TIMEOUT).saturating_duration_since(Instant::now())
}

/// One client: a first GET, then one long poll each time `go` changes.
async fn client(
    address: SocketAddr,
    mut go: watch::Receiver<u64>,
    sent: Arc<AtomicUsize>,
    deliver: &mpsc::UnboundedSender<anyhow::Result<Receipt>>,
    connecting: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let permit = connecting.acquire_owned().await?;
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut buffer = Vec::with_capacity(8192);
    write_request(&mut stream, address, None).await?;
    let (receipt, mut etag) = read_response(&mut stream, &mut buffer).await?;
    drop(permit);
    let _ = deliver.send(Ok(receipt));
    go.borrow_and_update();
    while go.changed().await.is_ok() {
        write_request(&mut stream, address, etag.as_deref()).await?;
        sent.fetch_add(1, Ordering::SeqCst);
        let (receipt, tag) = read_response(&mut stream, &mut buffer).await?;
        if tag.is_some() {
            etag = tag;
        }
        if deliver.send(Ok(receipt)).is_err() {
            break;
        }
    }
    Ok(())
}

async fn write_request(
    stream: &mut TcpStream,
    address: SocketAddr,
    etag: Option<&str>,
) -> anyhow::Result<()> {
    let mut request = format!("GET {BUNDLE_PATH} HTTP/1.1\r\nHost: {address}\r\n");
    if let Some(etag) = etag {
        request.push_str(&format!(
            "If-None-Match: {etag}\r\nPrefer: modes=snapshot,delta;wait=60\r\n"
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(())
}

/// Reads one response with a `Content-Length` body: its receipt and `ETag`.
async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<(Receipt, Option<String>)> {
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        read_more(stream, buffer).await?;
    };
    let head = std::str::from_utf8(&buffer[..head_end])?.to_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("a response without a status")?;
    let mut length = 0usize;
    let mut etag = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse()?;
        } else if name.eq_ignore_ascii_case("etag") {
            etag = Some(value.trim().to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a chunked response: {head}");
        }
    }
    while buffer.len() < head_end + length {
        read_more(stream, buffer).await?;
    }
    let at = Instant::now();
    buffer.drain(..head_end + length);
    Ok((
        Receipt {
            at,
            status,
            bytes: length,
        },
        etag,
    ))
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 16384];
    let read = stream.read(&mut chunk).await?;
    ensure!(read > 0, "the server closed the connection");
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

// ---------------------------------------------------------------------
// The floor.

/// The floor server, running as a child process.
struct Floor {
    server: Server,
    address: SocketAddr,
    control: BufReader<TcpStream>,
}

impl Floor {
    async fn start(log: &Path, bundle: &Path) -> anyhow::Result<Floor> {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut command = Command::new(env::current_exe()?);
        command.env(
            FLOOR_ROLE,
            format!("{},{},{}", address.port(), control.port(), bundle.display()),
        );
        let server = Server::spawn(&mut command, log)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let control = loop {
            match TcpStream::connect(control).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    server.ensure_running()?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => return Err(error).context("the floor server did not come up"),
            }
        };
        control.set_nodelay(true)?;
        Ok(Floor {
            server,
            address,
            control: BufReader::new(control),
        })
    }

    /// Has the floor answer every held poll with the bundle at `revision`.
    async fn write(&mut self, revision: u64) -> anyhow::Result<()> {
        self.control
            .get_mut()
            .write_all(format!("{revision}\n").as_bytes())
            .await?;
        let mut reply = String::new();
        self.control.read_line(&mut reply).await?;
        ensure!(reply == "ok\n", "the floor server answered {reply:?}");
        Ok(())
    }
}

/// The floor server's process: serves until its control connection closes.
async fn floor_serve(spec: &str) -> anyhow::Result<()> {
    let mut parts = spec.splitn(3, ',');
    let (Some(port), Some(control_port), Some(file)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("{FLOOR_ROLE} takes two ports and a file, not {spec:?}");
    };
    let bundle = Bytes::from(std::fs::read(file)?);
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>()?)).await?;
    let control = TcpListener::bind(("127.0.0.1", control_port.parse::<u16>()?)).await?;
    let (revisions, _) = watch::channel(1u64);
    tokio::spawn({
        let revisions = revisions.clone();
        async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let (revisions, bundle) = (revisions.subscribe(), bundle.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        floor_answer(request, revisions.clone(), bundle.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        }
    });
    let (control, _) = control.accept().await?;
    let (reader, mut writer) = control.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        let revision = line.trim().parse().context("a revision")?;
        revisions.send_replace(revision);
        writer.write_all(b"ok\n").await?;
    }
    Ok(())
}

/// The floor's answer: the bundle and its revision's `ETag`, 304 for an
/// `If-None-Match` naming it, held until the revision changes when
/// `Prefer` asks.
async fn floor_answer(
    request: Request<hyper::body::Incoming>,
    mut revisions: watch::Receiver<u64>,
    bundle: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let etag = |revision: u64| format!("\"floor-{revision}\"");
    let mut revision = *revisions.borrow_and_update();
    let named = |revision: u64| {
        request
            .headers()
            .get(header::IF_NONE_MATCH)
            .is_some_and(|tag| tag.as_bytes() == etag(revision).as_bytes())
    };
    if named(revision) && request.headers().contains_key("prefer") {
        let _ = tokio::time::timeout(Duration::from_secs(60), revisions.changed()).await;
        revision = *revisions.borrow_and_update();
    }
    let mut response = if named(revision) {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Full::new(bundle));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/vnd.openpolicyagent.bundles"),
        );
        response
    };
    response.headers_mut().insert(
        header::ETAG,
        header::HeaderValue::from_str(&etag(revision)).expect("an ASCII tag"),
    );
    Ok(response)
}

// ---------------------------------------------------------------------
// What the clients' rounds say.

/// A server's figures of one round.
struct Summary {
    /// The median of its deliveries' time from the reply to the last body.
    to_last: Duration,
    /// The median of its deliveries' time from the issue to the last body.
    from_issue: Duration,
    /// The median of its deliveries' time from the issue to the first body.
    first: Duration,
    /// Its CPU time per delivered bundle.
    cpu_per_bundle: Duration,
    /// Its CPU time per parked long poll.
    park_cpu_per_poll: Duration,
    reply: Duration,
    missing: usize,
}

impl Summary {
    fn of(deliveries: &[Delivery], clients: usize) -> Summary {
        let mut to_last: Vec<Duration> = deliveries.iter().map(|d| d.to_last).collect();
        to_last.sort();
        let mut from_issue: Vec<Duration> = deliveries.iter().map(|d| d.from_issue).collect();
        from_issue.sort();
        let mut replies: Vec<Duration> = deliveries.iter().map(|d| d.reply).collect();
        replies.sort();
        let mut first: Vec<Duration> = deliveries.iter().map(|d| d.first).collect();
        first.sort();
        let bundles = (deliveries.len() * clients) as u32;
        Summary {
            to_last: to_last[to_last.len() / 2],
            from_issue: from_issue[from_issue.len() / 2],
            first: first[first.len() / 2],
            cpu_per_bundle: deliveries.iter().map(|d| d.cpu).sum::<Duration>() / bundles,
            park_cpu_per_poll: deliveries.iter().map(|d| d.park_cpu).sum::<Duration>() / bundles,
            reply: replies[replies.len() / 2],
            missing: deliveries.iter().map(|d| d.missing).sum(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "issue to the first body {:.1} ms, to the last body {:.1} ms, reply {:.1} ms, reply to the last body {:.1} ms, CPU {:.1} µs per bundle, {:.1} µs per \
             parked poll, {} missing",
            ms(self.first),
            ms(self.from_issue),
            ms(self.reply),
            ms(self.to_last),
            micros(self.cpu_per_bundle),
            micros(self.park_cpu_per_poll),
            self.missing
        )
    }
}

struct Round {
    policyhub: Summary,
    floor: Summary,
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn report_clients(rounds: &[Round], alone: &[Duration], clients: usize) {
    println!();
    println!(
        "| measure, {clients} long-polling clients | policyhub, median (min–max) | floor, median \
         (min–max) | policyhub / floor, median (min–max) | within {TARGET_RATIO}× |"
    );
    println!("|---|---:|---:|---:|---|");
    type Figure = fn(&Summary) -> f64;
    let rows: [(&str, &str, Figure, bool); 4] = [
        (
            "change's issue to the last client holding the new bundle",
            "ms",
            |summary| ms(summary.from_issue),
            true,
        ),
        (
            "change's reply to the last client holding the new bundle (not judged)",
            "ms",
            |summary| ms(summary.to_last),
            false,
        ),
        (
            "server CPU per delivered bundle",
            "µs",
            |summary| micros(summary.cpu_per_bundle),
            true,
        ),
        (
            "server CPU per parked long poll (not judged)",
            "µs",
            |summary| micros(summary.park_cpu_per_poll),
            false,
        ),
    ];
    for (measure, unit, figure, judged) in rows {
        let ours = median_and_spread(rounds.iter().map(|r| figure(&r.policyhub)).collect());
        let theirs = median_and_spread(rounds.iter().map(|r| figure(&r.floor)).collect());
        let ratio = median_and_spread(
            rounds
                .iter()
                .map(|r| figure(&r.policyhub) / figure(&r.floor))
                .collect(),
        );
        let verdict = if !judged {
            "—"
        } else if ratio.0 <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "| {measure} | {:.1} {unit} ({:.1}–{:.1}) | {:.1} {unit} ({:.1}–{:.1}) | {:.2} \
             ({:.2}–{:.2}) | {verdict} |",
            ours.0, ours.1, ours.2, theirs.0, theirs.1, theirs.2, ratio.0, ratio.1, ratio.2
        );
    }
    let replies = median_and_spread(rounds.iter().map(|r| ms(r.policyhub.reply)).collect());
    let missing: usize = rounds
        .iter()
        .map(|r| r.policyhub.missing + r.floor.missing)
        .sum();
    println!(
        "Activate's reply: {:.1} ms ({:.1}–{:.1}); clients missing a bundle: {missing}",
        replies.0, replies.1, replies.2
    );
    // The judged CPU holds the activation, which the floor has no
    // counterpart of: what each round's would be with answers that cost
    // the floor's and nothing more.
    let activation = median_and_spread(alone.iter().map(|cpu| micros(*cpu)).collect());
    let per_bundle = activation.0 / clients as f64;
    let least = median_and_spread(
        rounds
            .iter()
            .map(|r| (micros(r.floor.cpu_per_bundle) + per_bundle) / micros(r.floor.cpu_per_bundle))
            .collect(),
    );
    let answers = median_and_spread(
        rounds
            .iter()
            .map(|r| {
                (micros(r.policyhub.cpu_per_bundle) - per_bundle) / micros(r.floor.cpu_per_bundle)
            })
            .collect(),
    );
    println!(
        "Activation with no poll held ({} times): {:.0} µs of server CPU ({:.0}–{:.0}), {per_bundle:.1} µs \
         per delivered bundle at {clients} clients; with answers as cheap as the floor's, the CPU \
         per delivered bundle would be {:.2}× the floor's ({:.2}–{:.2}); policyhub's answers \
         beyond the activation are {:.2}× the floor's ({:.2}–{:.2}) (not judged)",
        alone.len(),
        activation.0,
        activation.1,
        activation.2,
        least.0,
        least.1,
        least.2,
        answers.0,
        answers.1,
        answers.2
    );
}

// ---------------------------------------------------------------------
// Real OPAs.

/// A running OPA, killed when dropped.
struct Opa {
    child: Child,
    address: SocketAddr,
}

impl Drop for Opa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Opa {
    /// An OPA following bundle `payments` of `service`, verifying it with
    /// `keys`, at OPA's default polling delays, long-polling for
    /// [`OPA_LONG_POLL`] seconds where the server offers it when
    /// `long_polling`.
    fn start(
        dir: &Path,
        service: &str,
        keys: &[proto::OpaSigningKey],
        long_polling: bool,
    ) -> anyhow::Result<Opa> {
        let keys: serde_json::Map<String, Value> = keys
            .iter()
            .map(|key| {
                (
                    key.key_id.clone(),
                    json!({"algorithm": key.algorithm, "key": key.public_key_pem}),
                )
            })
            .collect();
        let mut polling = json!({
            "min_delay_seconds": OPA_MIN_DELAY,
            "max_delay_seconds": OPA_MAX_DELAY,
        });
        if long_polling {
            polling["long_polling_timeout_seconds"] = json!(OPA_LONG_POLL);
        }
        let config = json!({
            "services": {"bundles": {"url": service}},
            "bundles": {"payments": {
                "service": "bundles",
                "resource": "bundles/payments",
                "polling": polling,
                "signing": {},
            }},
            "keys": keys,
        });
        let port = free_port()?;
        // OPA reads YAML, of which JSON is a part.
        let config_file = dir.join(format!("opa-{port}.yaml"));
        std::fs::write(&config_file, config.to_string())?;
        let child = Command::new(opa_binary()?)
            .args(["run", "--server", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config-file")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting OPA")?;
        Ok(Opa {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// The policy version whose data OPA decides with, if it has one.
    async fn version(&self, client: &reqwest::Client) -> Option<u64> {
        let answer: Value = client
            .get(format!("http://{}/v1/data/payments/version", self.address))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["result"].as_u64()
    }
}

/// Waits until every OPA decides with `version`; the time from `since` to
/// the last one, or None past `within`.
async fn every_opa_decides(
    opas: &[Opa],
    version: u32,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let client = reqwest::Client::new();
    let waits = opas.iter().map(|opa| {
        let client = client.clone();
        async move {
            loop {
                if opa.version(&client).await == Some(u64::from(version)) {
                    return Some(Instant::now());
                }
                if since.elapsed() > within {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let decided = futures::future::join_all(waits).await;
    decided
        .into_iter()
        .collect::<Option<Vec<Instant>>>()?
        .into_iter()
        .max()
        .map(|last| last.duration_since(since))
}

/// Activations to OPAs long-polling policyhub: each timed from the
/// activation's reply to every OPA deciding with it.
async fn opa_long_polling(
    settings: &Settings,
    policyhub: &mut Policyhub,
    version: &mut u32,
    service: &str,
    keys: &[proto::OpaSigningKey],
    dir: &Path,
) -> anyhow::Result<Vec<Duration>> {
    let opas = (0..settings.opas)
        .map(|_| Opa::start(dir, service, keys, true))
        .collect::<anyhow::Result<Vec<Opa>>>()?;
    every_opa_decides(&opas, *version, Instant::now(), Duration::from_secs(60))
        .await
        .context("the OPAs did not load policyhub's bundle within a minute")?;
    let mut took = Vec::with_capacity(settings.opa_rounds);
    // One untimed activation first, as for the clients.
    for round in 0..=settings.opa_rounds {
        // Each OPA asks again once it has the bundle: let it park.
        tokio::time::sleep(PARK).await;
        *version += 1;
        activate_version(policyhub, *version).await?;
        let replied = Instant::now();
        let last = every_opa_decides(&opas, *version, replied, Duration::from_secs(150))
            .await
            .context("an OPA did not decide with an activation within 150 s")?;
        if round > 0 {
            println!(
                "  OPAs long-polling policyhub, activation {round}: every OPA decides with it \
                 {:.1} ms after its reply",
                ms(last)
            );
            took.push(last);
        }
    }
    Ok(took)
}

/// The same OPAs on a static file server at OPA's default delays: each run
/// timed from the new bundle being in place to every OPA deciding with it.
async fn opa_static(
    settings: &Settings,
    policyhub: &mut Policyhub,
    http: SocketAddr,
    version: &mut u32,
    keys: &[proto::OpaSigningKey],
    dir: &Path,
) -> anyhow::Result<Vec<Duration>> {
    if settings.static_runs == 0 {
        return Ok(Vec::new());
    }
    let files = StaticFiles::start(get_bundle(http).await?).await?;
    let service = format!("http://{}/v1/opa", files.address);
    let opas = (0..settings.opas)
        .map(|_| Opa::start(dir, &service, keys, false))
        .collect::<anyhow::Result<Vec<Opa>>>()?;
    every_opa_decides(&opas, *version, Instant::now(), Duration::from_secs(60))
        .await
        .context("the OPAs did not load the static bundle within a minute")?;
    let mut took = Vec::with_capacity(settings.static_runs);
    for run in 1..=settings.static_runs {
        *version += 1;
        activate_version(policyhub, *version).await?;
        let tarball = get_bundle(http).await?;
        files.replace(tarball);
        let placed = Instant::now();
        let last = every_opa_decides(
            &opas,
            *version,
            placed,
            Duration::from_secs(OPA_MAX_DELAY + 30),
        )
        .await
        .context("an OPA did not decide with the static bundle within its poll delay")?;
        println!(
            "  OPAs polling a static file server, run {run}: every OPA decides with the new \
             bundle {:.1} s after it is in place",
            last.as_secs_f64()
        );
        took.push(last);
    }
    Ok(took)
}

/// A static file server of one bundle: the tarball with an `ETag`, 304
/// for `If-None-Match` naming it, as a web server of files answers.
struct StaticFiles {
    address: SocketAddr,
    current: Arc<Mutex<(String, Bytes)>>,
    served: tokio::task::JoinHandle<()>,
}

impl Drop for StaticFiles {
    fn drop(&mut self) {
        self.served.abort();
    }
}

impl StaticFiles {
    async fn start(tarball: Bytes) -> anyhow::Result<StaticFiles> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let current = Arc::new(Mutex::new((static_etag(&tarball), tarball)));
        let state = current.clone();
        let served = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<_>| {
                        let (etag, tarball) = state.lock().expect("not poisoned").clone();
                        async move {
                            let named = request
                                .headers()
                                .get(header::IF_NONE_MATCH)
                                .is_some_and(|tag| tag.as_bytes() == etag.as_bytes());
                            let mut response = if named {
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = StatusCode::NOT_MODIFIED;
                                response
                            } else {
                                let mut response = Response::new(Full::new(tarball));
                                response.headers_mut().insert(
                                    header::CONTENT_TYPE,
                                    header::HeaderValue::from_static("application/gzip"),
                                );
                                response
                            };
                            response.headers_mut().insert(
                                header::ETAG,
                                header::HeaderValue::from_str(&etag).expect("an ASCII tag"),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(StaticFiles {
            address,
            current,
            served,
        })
    }

    fn replace(&self, tarball: Bytes) {
        *self.current.lock().expect("not poisoned") = (static_etag(&tarball), tarball);
    }
}

/// A file's entity tag as a web server makes one: of its length and a
/// digest of its bytes.
fn static_etag(tarball: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    tarball.hash(&mut hasher);
    format!("\"{:x}-{:x}\"", tarball.len(), hasher.finish())
}

fn report_opas(settings: &Settings, long_polling: &[Duration], static_runs: &[Duration]) {
    println!();
    println!(
        "| {} OPAs following the bundle | runs | every OPA deciding with the change, median \
         (min–max) |",
        settings.opas
    );
    println!("|---|---:|---:|");
    if !long_polling.is_empty() {
        let (median, low, high) =
            median_and_spread(long_polling.iter().map(|took| ms(*took)).collect());
        println!(
            "| long-polling policyhub (`long_polling_timeout_seconds: {OPA_LONG_POLL}`), from \
             the activation's reply | {} | {median:.1} ms ({low:.1}–{high:.1}) |",
            long_polling.len()
        );
    }
    if !static_runs.is_empty() {
        let (median, low, high) = median_and_spread(
            static_runs
                .iter()
                .map(|took| took.as_secs_f64() * 1000.0)
                .collect(),
        );
        println!(
            "| polling a static file server ({OPA_MIN_DELAY}–{OPA_MAX_DELAY} s), from the \
             bundle in place | {} | {:.1} s ({:.1}–{:.1}) |",
            static_runs.len(),
            median / 1000.0,
            low / 1000.0,
            high / 1000.0
        );
    }
}
