//! Watch fan-out: how fast one activation reaches N concurrent watch streams,
//! and what an idle stream costs the server, with etcd as the reference.
//!
//! For each count N (`WATCH_FANOUT_COUNTS`, default `1000,10000`):
//!
//! 1. policyhub: the real `policyhub serve` binary on SQLite in a temporary
//!    directory; one published active policy (and the versions the rounds
//!    will activate); N `BundleService.WatchActive` streams, each on its own
//!    TCP connection, opened 200 at a time, each until its SNAPSHOT; the
//!    server's VmRSS before and after opening them; then `WATCH_FANOUT_ROUNDS`
//!    (default 5) `PolicyService.Activate` calls of a new version, timing from
//!    the moment each call is issued to the UPDATE's receipt on every stream.
//! 2. etcd (Debian's `etcd-server`, installed with apt-get when missing and
//!    running as root; `ETCD_BIN` names another binary): N native gRPC
//!    watchers on one key (`etcdserverpb.Watch/Watch`, each on its own
//!    HTTP/2 connection, as runtimes in separate processes would have), then
//!    the same rounds of one `KV/Put` each, timed from the moment the put is
//!    issued to the event's receipt on every watcher. The value is as long
//!    as policyhub's encoded bundle.
//!
//! 3. policyhub with reports: the same as 1, but every stream names a runtime
//!    (`runtime.id`) and answers each UPDATE with a `ReportStatus` APPLIED, as
//!    the runtime library does; what that costs the next Activate and the
//!    server's CPU, and how many fleet-view batches the server wrote per
//!    second (`policyhub_runtime_flushes_total` from its metrics port).
//!    `WATCH_FANOUT_REPORTS=0` skips it.
//!
//! Each server is started fresh for each count and killed afterwards. Run
//! with `cargo bench --bench watch_fanout`.

use std::{
    env, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use futures::{StreamExt, TryStreamExt};
use policyhub::grpc::proto;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
};
use tonic::transport::{Channel, Endpoint};

/// The etcd v3 API subset the benchmark calls (`benches/proto`).
mod etcd {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

use etcd::{kv_client::KvClient, watch_client::WatchClient};

mod support;

use support::{
    CONNECT_CONCURRENCY, NAMESPACE, POLICY, Policyhub, ROUND_PAUSE, SETTLE, SPARE_FDS, Server,
    Watcher, collect_round, cpu_time, free_port, load_average, ms, open_files_limit, percentile,
    rss_kib, wait_for_fds_to_close,
};

const ETCD_KEY: &str = "/bench/fanout";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let counts = parse_counts(&env::var("WATCH_FANOUT_COUNTS").unwrap_or("1000,10000".into()))?;
    let rounds: usize = env::var("WATCH_FANOUT_ROUNDS")
        .unwrap_or("5".into())
        .parse()
        .context("WATCH_FANOUT_ROUNDS is not a number")?;
    ensure!(rounds > 0, "WATCH_FANOUT_ROUNDS must be at least 1");
    let fd_limit = open_files_limit()?;
    let largest = counts.iter().copied().max().unwrap_or(0);
    ensure!(
        largest + SPARE_FDS <= fd_limit,
        "{largest} streams need {} file descriptors, the limit is {fd_limit}",
        largest + SPARE_FDS
    );
    let etcd = etcd_binary()?;
    let etcd_version = etcd_version(&etcd)?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Other work on the machine takes CPU from both servers and the clients.
    println!(
        "watch fan-out: counts {counts:?}, {rounds} rounds each, {cpus} CPUs, \
         open files limit {fd_limit}, {etcd_version}, load average {}",
        load_average()
    );

    let with_reports = env::var("WATCH_FANOUT_REPORTS").map_or(true, |value| value != "0");
    let mut results = Vec::new();
    let mut reporting = Vec::new();
    for &count in &counts {
        let ours = run_policyhub(count, rounds, false)
            .await
            .with_context(|| format!("policyhub with {count} streams"))?;
        ours.print_line();
        wait_for_fds_to_close().await;
        if with_reports {
            let reported = run_policyhub(count, rounds, true)
                .await
                .with_context(|| format!("policyhub with {count} reporting runtimes"))?;
            reported.print_line();
            wait_for_fds_to_close().await;
            reporting.push(reported);
        }
        let theirs = run_etcd(&etcd, &etcd_version, count, rounds, ours.payload_bytes)
            .await
            .with_context(|| format!("etcd with {count} watchers"))?;
        theirs.print_line();
        wait_for_fds_to_close().await;
        results.push((ours, theirs));
    }
    print_report(&results);
    print_report_costs(&results, &reporting);
    println!("load average at the end: {}", load_average());
    Ok(())
}

fn parse_counts(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|count| {
            let count: usize = count
                .trim()
                .parse()
                .with_context(|| format!("WATCH_FANOUT_COUNTS: {count:?} is not a number"))?;
            ensure!(count > 0, "WATCH_FANOUT_COUNTS: counts must be positive");
            Ok(count)
        })
        .collect()
}

/// What one system did with one count.
struct Measurement {
    system: String,
    streams: usize,
    rounds: usize,
    /// Time to open every stream, until each had its first message.
    open: Duration,
    /// Server VmRSS before and after opening the streams, KiB.
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// From issuing the write to receipt, one per stream and round.
    latencies: Vec<Duration>,
    /// Receipts that did not arrive within the round timeout.
    missing: usize,
    /// How long the write call itself took to return, per round.
    write_replies: Vec<Duration>,
    /// Server and bench-process CPU time over the rounds.
    server_cpu: Duration,
    client_cpu: Duration,
    /// Size of the watched value: the encoded bundle, or etcd's value.
    payload_bytes: usize,
    /// With reports: fleet-view batches the server wrote per second.
    flushes_per_second: Option<f64>,
}

impl Measurement {
    fn kib_per_stream(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.streams as f64
    }

    fn latency(&self, quantile: f64) -> Duration {
        percentile(&self.latencies, quantile)
    }

    fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }

    fn print_line(&self) {
        println!(
            "  {} x{}: opened in {:.1} s, {} samples ({} missing), p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms, write reply p50 {:.1} ms, RSS {} -> {} KiB ({:.1} KiB/stream), \
             server CPU {:.0} ms/round, bench CPU {:.0} ms/round, payload {} B",
            self.system,
            self.streams,
            self.open.as_secs_f64(),
            self.latencies.len(),
            self.missing,
            ms(self.latency(0.50)),
            ms(self.latency(0.99)),
            ms(self.max()),
            ms(percentile(&self.write_replies, 0.50)),
            self.rss_before_kib,
            self.rss_after_kib,
            self.kib_per_stream(),
            ms(self.server_cpu) / self.rounds as f64,
            ms(self.client_cpu) / self.rounds as f64,
            self.payload_bytes,
        );
    }
}

fn print_report(results: &[(Measurement, Measurement)]) {
    println!();
    println!(
        "| system | streams | samples | missing | p50 ms | p99 ms | max ms | write reply p50 ms \
         | server CPU ms/round | RSS before MiB | RSS after MiB | KiB/idle stream |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (ours, theirs) in results {
        for m in [ours, theirs] {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} |",
                m.system,
                m.streams,
                m.latencies.len(),
                m.missing,
                ms(m.latency(0.50)),
                ms(m.latency(0.99)),
                ms(m.max()),
                ms(percentile(&m.write_replies, 0.50)),
                ms(m.server_cpu) / m.rounds as f64,
                m.rss_before_kib as f64 / 1024.0,
                m.rss_after_kib as f64 / 1024.0,
                m.kib_per_stream(),
            );
        }
    }
    println!();
    println!("| ratio policyhub/etcd | streams | p50 | p99 | max | KiB/idle stream |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (ours, theirs) in results {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "| policyhub/etcd | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ours.streams,
            ratio(ours.latency(0.50), theirs.latency(0.50)),
            ratio(ours.latency(0.99), theirs.latency(0.99)),
            ratio(ours.max(), theirs.max()),
            ours.kib_per_stream() / theirs.kib_per_stream(),
        );
    }
    println!();
    println!("targets (set for 10,000 streams, shown for every count):");
    for (ours, theirs) in results {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let p99 = ours.latency(0.99);
        println!(
            "  {} streams: p99 {:.1} ms <= 100 ms: {}; p99 <= half of etcd's {:.1} ms: {}; \
             {:.1} KiB/idle stream <= 16 KiB: {}; every stream received every round: {}",
            ours.streams,
            ms(p99),
            verdict(p99 <= Duration::from_millis(100)),
            ms(theirs.latency(0.99)),
            verdict(p99.as_secs_f64() <= 0.5 * theirs.latency(0.99).as_secs_f64()),
            ours.kib_per_stream(),
            verdict(ours.kib_per_stream() <= 16.0),
            verdict(ours.missing == 0),
        );
    }
}

/// What runtimes reporting every update cost, against the same count
/// without reports.
fn print_report_costs(results: &[(Measurement, Measurement)], reporting: &[Measurement]) {
    if reporting.is_empty() {
        return;
    }
    println!();
    println!(
        "| runtimes reporting APPLIED | streams | Activate reply p50 ms | server CPU ms/round \
         | p99 ms | fleet batches/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for ((plain, _), reported) in results.iter().zip(reporting) {
        for m in [plain, reported] {
            println!(
                "| {} | {} | {:.1} | {:.0} | {:.1} | {} |",
                m.system,
                m.streams,
                ms(percentile(&m.write_replies, 0.50)),
                ms(m.server_cpu) / m.rounds as f64,
                ms(m.latency(0.99)),
                m.flushes_per_second
                    .map_or("-".to_owned(), |rate| format!("{rate:.2}")),
            );
        }
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "| ratio with/without | {} | {:.2} | {:.2} | {:.2} | |",
            plain.streams,
            ratio(
                percentile(&reported.write_replies, 0.50),
                percentile(&plain.write_replies, 0.50)
            ),
            ratio(reported.server_cpu, plain.server_cpu),
            ratio(reported.latency(0.99), plain.latency(0.99)),
        );
    }
}

// ---------------------------------------------------------------- policyhub

async fn run_policyhub(count: usize, rounds: usize, reports: bool) -> anyhow::Result<Measurement> {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut policyhub =
        Policyhub::spawn(count, &[("POLICYHUB_METRICS_LISTEN", &metrics.to_string())]).await?;
    // Version 1 active; versions 2..=rounds+1 published for the rounds.
    policyhub.publish(rounds + 1).await?;

    tokio::time::sleep(SETTLE).await;
    let server = &policyhub.server;
    let rss_before_kib = rss_kib(server.pid())?;
    let watchers = (0..count).map(|n| Watcher {
        runtime: reports.then(|| format!("rt-{n}")),
        reports,
    });
    let mut streams = policyhub.open_streams(watchers).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss_kib(server.pid())?;

    let mut latencies = Vec::with_capacity(count * rounds);
    let mut write_replies = Vec::with_capacity(rounds);
    let mut missing = 0;
    let cpu_before = (cpu_time(server.pid())?, cpu_time("self")?);
    let flushes_before = (flushes(metrics).await?, Instant::now());
    for round in 1..=rounds {
        tokio::time::sleep(ROUND_PAUSE).await;
        let request = proto::ActivateRequest {
            targets: vec![proto::ActivationTarget {
                namespace: NAMESPACE.into(),
                name: POLICY.into(),
                selector: Some(proto::activation_target::Selector::Version(
                    round as u32 + 1,
                )),
                expected_active_version: None,
            }],
            reason: format!("benchmark round {round}"),
            idempotency_key: String::new(),
        };
        let issued = Instant::now();
        let revision = policyhub
            .policies
            .activate(request)
            .await?
            .into_inner()
            .revision;
        write_replies.push(issued.elapsed());
        missing += collect_round(
            &mut streams.received,
            revision,
            issued,
            count,
            &mut latencies,
        )
        .await;
    }
    // The reports of the last round, and the batch that writes them.
    if reports {
        tokio::time::sleep(ROUND_PAUSE * 2).await;
    }
    let server = &policyhub.server;
    let cpu_after = (cpu_time(server.pid())?, cpu_time("self")?);
    let flushed = flushes(metrics).await? - flushes_before.0;
    let flushes_per_second =
        reports.then(|| flushed as f64 / flushes_before.1.elapsed().as_secs_f64());
    let open = streams.opened_in;
    let payload_bytes = streams.payload_bytes;
    drop(streams);
    drop(policyhub);
    Ok(Measurement {
        system: if reports {
            "policyhub+reports".into()
        } else {
            "policyhub".into()
        },
        streams: count,
        rounds,
        open,
        rss_before_kib,
        rss_after_kib,
        latencies,
        missing,
        write_replies,
        server_cpu: cpu_after.0.saturating_sub(cpu_before.0),
        client_cpu: cpu_after.1.saturating_sub(cpu_before.1),
        payload_bytes,
        flushes_per_second,
    })
}

/// `policyhub_runtime_flushes_total` from the server's metrics port.
async fn flushes(metrics: SocketAddr) -> anyhow::Result<u64> {
    // One HTTP/1.0 request: the server closes the connection after the body.
    let mut connection = TcpStream::connect(metrics).await?;
    connection
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut response = String::new();
    connection.read_to_string(&mut response).await?;
    response
        .lines()
        .find_map(|line| line.strip_prefix("policyhub_runtime_flushes_total "))
        .context("the metrics have no policyhub_runtime_flushes_total")?
        .trim()
        .parse()
        .context("policyhub_runtime_flushes_total is not a number")
}

// --------------------------------------------------------------------- etcd

async fn run_etcd(
    etcd: &Path,
    version: &str,
    count: usize,
    rounds: usize,
    value_bytes: usize,
) -> anyhow::Result<Measurement> {
    let dir = tempfile::tempdir()?;
    let client = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let client_url = format!("http://{client}");
    let server = Server::spawn(
        Command::new(etcd)
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("bench={peer}"))
            .arg("--log-level")
            .arg("warn"),
        &dir.path().join("etcd.log"),
    )?;
    let endpoint = Endpoint::from_shared(client_url)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));

    // The writer's connection, kept open like the policyhub control channel.
    let mut writer = wait_for_etcd(&endpoint, &server, etcd_value(0, value_bytes)).await?;

    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(server.pid())?;
    let (receipts, mut received) = mpsc::unbounded_channel();
    let started = Instant::now();
    let opened: Vec<JoinHandle<()>> = futures::stream::iter(0..count)
        .map(|_| open_etcd_watch(endpoint.clone(), receipts.clone()))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let open = started.elapsed();
    drop(receipts);
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss_kib(server.pid())?;

    let mut latencies = Vec::with_capacity(count * rounds);
    let mut write_replies = Vec::with_capacity(rounds);
    let mut missing = 0;
    let cpu_before = (cpu_time(server.pid())?, cpu_time("self")?);
    for round in 1..=rounds {
        tokio::time::sleep(ROUND_PAUSE).await;
        let put = etcd::PutRequest {
            key: ETCD_KEY.into(),
            value: etcd_value(round, value_bytes),
        };
        let issued = Instant::now();
        writer.put(put).await?;
        write_replies.push(issued.elapsed());
        missing += collect_round(&mut received, round as u64, issued, count, &mut latencies).await;
    }
    let cpu_after = (cpu_time(server.pid())?, cpu_time("self")?);

    for task in &opened {
        task.abort();
    }
    drop(opened);
    drop(server);
    Ok(Measurement {
        system: format!("{version} gRPC"),
        streams: count,
        rounds,
        open,
        rss_before_kib,
        rss_after_kib,
        latencies,
        missing,
        write_replies,
        server_cpu: cpu_after.0.saturating_sub(cpu_before.0),
        client_cpu: cpu_after.1.saturating_sub(cpu_before.1),
        payload_bytes: value_bytes,
        flushes_per_second: None,
    })
}

/// The value of round `round`: `round-<n>;` padded to `length` bytes.
fn etcd_value(round: usize, length: usize) -> Vec<u8> {
    let mut value = format!("round-{round};").into_bytes();
    value.resize(length.max(value.len()), b'x');
    value
}

/// The round a watch event's value belongs to.
fn round_of(value: &[u8]) -> Option<u64> {
    let rest = value.strip_prefix(b"round-")?;
    let end = rest.iter().position(|&byte| byte == b';')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Connects once etcd answers, and writes the first value.
async fn wait_for_etcd(
    endpoint: &Endpoint,
    server: &Server,
    value: Vec<u8>,
) -> anyhow::Result<KvClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut writer = KvClient::new(endpoint.connect().await?);
            writer
                .put(etcd::PutRequest {
                    key: ETCD_KEY.into(),
                    value: value.clone(),
                })
                .await?;
            anyhow::Ok(writer)
        };
        match attempt.await {
            Ok(writer) => return Ok(writer),
            Err(_) if Instant::now() < deadline => {
                server.ensure_running()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error).context("etcd did not come up"),
        }
    }
}

/// One native gRPC watcher of the key on its own connection, past its
/// creation; the task reports the receipt of each round's event.
async fn open_etcd_watch(
    endpoint: Endpoint,
    receipts: mpsc::UnboundedSender<(u64, Instant)>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut client = WatchClient::new(endpoint.connect().await?);
    let create = etcd::WatchRequest {
        request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
            etcd::WatchCreateRequest {
                key: ETCD_KEY.into(),
                ..Default::default()
            },
        )),
    };
    // The request stream stays open as long as the watch does.
    let (requests, request_stream) = mpsc::channel(1);
    requests.send(create).await?;
    let mut responses = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(request_stream))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .context("no watch confirmation within 30 s")??
        .context("the watch stream ended before its confirmation")?;
    ensure!(first.created, "the watch was not created: {first:?}");
    Ok(tokio::spawn(async move {
        let _requests = requests;
        while let Ok(Some(response)) = responses.message().await {
            let received = Instant::now();
            for event in &response.events {
                let round = event.kv.as_ref().and_then(|kv| round_of(&kv.value));
                if let Some(round) = round
                    && receipts.send((round, received)).is_err()
                {
                    return;
                }
            }
        }
    }))
}

/// The etcd binary: `ETCD_BIN`, `etcd` on the PATH, or Debian's
/// `etcd-server` package installed with apt-get (as root).
fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = env::var_os("ETCD_BIN") {
        return Ok(path.into());
    }
    if let Some(path) = on_path("etcd") {
        return Ok(path);
    }
    ensure!(
        is_root()?,
        "etcd is not installed: run `apt-get install -y etcd-server` as root, or set ETCD_BIN"
    );
    eprintln!("etcd is missing: installing Debian's etcd-server with apt-get");
    for args in [&["update"][..], &["install", "-y", "etcd-server"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("running apt-get")?;
        ensure!(status.success(), "apt-get {} failed", args.join(" "));
    }
    on_path("etcd").context("etcd-server is installed but there is no etcd on the PATH")
}

fn etcd_version(etcd: &Path) -> anyhow::Result<String> {
    let output = Command::new(etcd)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", etcd.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .lines()
        .find_map(|line| line.strip_prefix("etcd Version:"))
        .context("etcd --version printed no version")?;
    Ok(format!("etcd {}", version.trim()))
}

fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn is_root() -> anyhow::Result<bool> {
    let status = fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .context("no Uid in /proc/self/status")?;
    Ok(uid == "0")
}

// ---------------------------------------------------------------- processes
