//! Unary: `BundleService.GetActive` against `grpc.health.v1.Health/Check`
//! on the same server, the cheapest call a tonic server answers, so the
//! ratio is what GetActive costs beyond the transport.
//!
//! The real server with authentication on (a bearer token minted with
//! `policyhub token`, verified on every GetActive; Health/Check takes none,
//! as in production). Throughput: 64 calls kept in flight for a fixed time
//! over 1 connection, and over 16 connections (4 each), the two calls
//! alternating run by run. Latency: one caller issuing calls one after the
//! other. And GetActive over the HTTP/JSON port, HTTP/1.1 keep-alive on 16
//! connections one request each at a time, against the same call over gRPC
//! with the same 16 in flight. And `policyhub agent`'s localhost GET of the
//! same policy (calls/s and p50) against GetActive over gRPC, with the
//! agent's RSS while idle. The bench's clients share the machine's cores
//! with the server.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::ensure;
use policyhub::grpc::proto::{self, bundle_service_client::BundleServiceClient};
use tokio::task::JoinSet;
use tonic::{metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{
        NAMESPACE, Options, POLICY, Policyhub, authorized, cpu_time, free_port, micros, ms,
        percentile,
    },
};

/// Calls kept in flight.
pub(crate) const IN_FLIGHT: usize = 64;

/// The bound on GetActive's p50.
const P50_BOUND_MS: f64 = 0.3;

/// The floor on GetActive's rate against Health/Check's.
const RATE_FLOOR: f64 = 0.8;

/// HTTP/1.1 keep-alive connections of the HTTP row, one request in flight
/// on each.
pub(crate) const HTTP_CONNECTIONS: usize = 16;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Call {
    GetActive,
    HealthCheck,
}

/// One caller's clients on one connection.
#[derive(Clone)]
pub(crate) struct Caller {
    bundles: BundleServiceClient<Channel>,
    health: HealthClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Caller {
    pub(crate) fn new(
        channel: Channel,
        token: Option<MetadataValue<tonic::metadata::Ascii>>,
    ) -> Self {
        Caller {
            bundles: BundleServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            token,
        }
    }

    pub(crate) async fn call(&mut self, call: Call) -> Result<(), tonic::Status> {
        match call {
            Call::GetActive => {
                let request = authorized(
                    self.token.as_ref(),
                    proto::GetActiveRequest {
                        namespace: NAMESPACE.into(),
                        name: POLICY.into(),
                        ..Default::default()
                    },
                );
                self.bundles.get_active(request).await?;
            }
            Call::HealthCheck => {
                self.health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

/// Calls per second with `IN_FLIGHT` calls spread over `callers`, after a
/// short warm-up, and the server's CPU time per call over the whole run,
/// warm-up included.
async fn rate(
    callers: &[Caller],
    call: Call,
    duration: Duration,
    server: &str,
) -> anyhow::Result<(f64, Duration)> {
    let cpu_before = cpu_time(server)?;
    let calls_before = CALLS.load(Ordering::Relaxed);
    let rate = rate_in_flight(callers, call, duration, IN_FLIGHT).await?;
    let calls = CALLS.load(Ordering::Relaxed) - calls_before;
    let cpu = cpu_time(server)?.saturating_sub(cpu_before);
    Ok((rate, cpu / u32::try_from(calls.max(1))?))
}

/// Calls answered, warm-up included, for the server's CPU per call.
static CALLS: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn rate_in_flight(
    callers: &[Caller],
    call: Call,
    duration: Duration,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let warm_up = Instant::now() + Duration::from_millis(300);
    let start = warm_up;
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for slot in 0..in_flight {
        let mut caller = callers[slot % callers.len()].clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            loop {
                caller.call(call).await?;
                CALLS.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if now >= end {
                    return Ok::<_, tonic::Status>(done);
                }
                if now >= start {
                    done += 1;
                }
            }
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result??;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

/// One HTTP/1.1 keep-alive connection issuing one request at a time.
pub(crate) struct HttpCaller {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
    request: String,
    /// The status line every response must start with.
    expected: &'static str,
    line: String,
}

impl HttpCaller {
    /// A caller issuing GET `path` with `token`, each answered 200.
    async fn connect(
        address: std::net::SocketAddr,
        path: &str,
        token: &str,
    ) -> anyhow::Result<Self> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        HttpCaller::sending(address, request, "HTTP/1.1 200").await
    }

    /// A caller issuing `request`, whole, each answered with a status line
    /// starting with `expected`.
    pub(crate) async fn sending(
        address: std::net::SocketAddr,
        request: String,
        expected: &'static str,
    ) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(HttpCaller {
            stream: tokio::io::BufReader::new(stream),
            request,
            expected,
            line: String::new(),
        })
    }

    /// One request, its response read whole.
    pub(crate) async fn get(&mut self) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.stream
            .get_mut()
            .write_all(self.request.as_bytes())
            .await?;
        let mut length = 0usize;
        let mut ok = false;
        loop {
            self.line.clear();
            self.stream.read_line(&mut self.line).await?;
            if self.line == "\r\n" {
                break;
            }
            ok |= self.line.starts_with(self.expected);
            if let Some((name, value)) = self.line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        ensure!(
            ok,
            "answered other than {:?}: {}",
            self.expected,
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// GET `path` over `connections` HTTP/1.1 keep-alive connections, one
/// request at a time on each, for `duration`: calls per second.
async fn http_rate(
    address: std::net::SocketAddr,
    path: &str,
    token: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut callers = Vec::with_capacity(connections);
    for _ in 0..connections {
        callers.push(HttpCaller::connect(address, path, token).await?);
    }
    callers_rate(callers, duration).await
}

/// Requests per second of `callers`, each on its own connection issuing
/// one request at a time, for `duration` after 0.3 s of warm-up.
pub(crate) async fn callers_rate(
    callers: Vec<HttpCaller>,
    duration: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for mut caller in callers {
        tasks.spawn(async move {
            let mut done = 0u64;
            loop {
                caller.get().await?;
                let now = Instant::now();
                if now >= end {
                    return anyhow::Ok(done);
                }
                if now >= start {
                    done += 1;
                }
            }
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result??;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

/// Latencies of `count` GETs issued one after the other on one connection.
async fn http_sequential(caller: &mut HttpCaller, count: usize) -> anyhow::Result<Vec<Duration>> {
    for _ in 0..count / 10 {
        caller.get().await?;
    }
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let issued = Instant::now();
        caller.get().await?;
        latencies.push(issued.elapsed());
    }
    Ok(latencies)
}

/// Latencies of `count` calls issued one after the other.
async fn sequential(caller: &Caller, call: Call, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut caller = caller.clone();
    for _ in 0..count / 10 {
        caller.call(call).await?;
    }
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let issued = Instant::now();
        caller.call(call).await?;
        latencies.push(issued.elapsed());
    }
    Ok(latencies)
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let sequential_calls = settings.size(2_000, 10_000);
    let http_address = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut policyhub = Policyhub::start(Options {
        authenticated: true,
        env: vec![("POLICYHUB_HTTP_LISTEN".into(), http_address.to_string())],
        ..Options::default()
    })
    .await?;
    policyhub.publish(1).await?;
    let token = policyhub.token();
    ensure!(token.is_some(), "the unary server must authenticate");
    let server = policyhub.server.pid();

    let mut outcome = Outcome::default();
    for connections in [1, 16] {
        let mut callers = Vec::with_capacity(connections);
        for _ in 0..connections {
            callers.push(Caller::new(
                policyhub.endpoint.connect().await?,
                token.clone(),
            ));
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut our_cpu, mut their_cpu) = (Vec::new(), Vec::new());
        for repeat in 1..=settings.repeats {
            let (get_active, get_active_cpu) =
                rate(&callers, Call::GetActive, duration, &server).await?;
            let (health, health_cpu) = rate(&callers, Call::HealthCheck, duration, &server).await?;
            println!(
                "  {connections} connection(s), repeat {repeat}: GetActive {get_active:.0}/s \
                 ({get_active_cpu:?} server CPU per call), Health/Check {health:.0}/s \
                 ({health_cpu:?})"
            );
            ours.push(get_active);
            theirs.push(health);
            our_cpu.push(micros(get_active_cpu));
            their_cpu.push(micros(health_cpu));
        }
        let plural = if connections == 1 { "" } else { "s" };
        outcome.rows.push(Row::new(
            format!(
                "server CPU per GetActive call, {IN_FLIGHT} in flight over {connections} \
                 connection{plural}"
            ),
            Unit::Microseconds,
            our_cpu,
            "per Health/Check call, same server and concurrency",
            their_cpu,
        ));
        outcome.rows.push(
            Row::new(
                format!(
                    "GetActive calls/s, {IN_FLIGHT} in flight over {connections} connection{plural}"
                ),
                Unit::PerSecond,
                ours,
                "Health/Check, same server and concurrency",
                theirs,
            )
            .target(Target::RatioAtLeast(RATE_FLOOR)),
        );
    }

    // GetActive over HTTP/1.1 against the same call over gRPC.
    let bearer = token
        .as_ref()
        .and_then(|token| token.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let path = format!("/v1/namespaces/{NAMESPACE}/policies/{POLICY}/active");
    let mut callers = Vec::with_capacity(HTTP_CONNECTIONS);
    for _ in 0..HTTP_CONNECTIONS {
        callers.push(Caller::new(
            policyhub.endpoint.connect().await?,
            token.clone(),
        ));
    }
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        let http = http_rate(http_address, &path, &bearer, HTTP_CONNECTIONS, duration).await?;
        let grpc = rate_in_flight(&callers, Call::GetActive, duration, HTTP_CONNECTIONS).await?;
        println!(
            "  http, repeat {repeat}: GetActive {http:.0}/s over HTTP/1.1, {grpc:.0}/s over gRPC"
        );
        ours.push(http);
        theirs.push(grpc);
    }
    outcome.rows.push(Row::new(
        format!("GetActive calls/s over HTTP/1.1 keep-alive, {HTTP_CONNECTIONS} connections"),
        Unit::PerSecond,
        ours,
        "the same call over gRPC, 16 connections, as many in flight",
        theirs,
    ));

    let agent = Agent::start(&policyhub, &bearer).await?;
    agent_rows(
        settings,
        &agent,
        &callers,
        sequential_calls,
        duration,
        &mut outcome,
    )
    .await?;
    drop(agent);

    let caller = Caller::new(policyhub.endpoint.connect().await?, token);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        let get_active = ms(percentile(
            &sequential(&caller, Call::GetActive, sequential_calls).await?,
            0.5,
        ));
        let health = ms(percentile(
            &sequential(&caller, Call::HealthCheck, sequential_calls).await?,
            0.5,
        ));
        println!(
            "  sequential, repeat {repeat}: GetActive p50 {get_active:.3} ms, \
             Health/Check p50 {health:.3} ms"
        );
        ours.push(get_active);
        theirs.push(health);
    }
    outcome.rows.push(
        Row::new(
            "GetActive p50, one sequential caller",
            Unit::Milliseconds,
            ours,
            "Health/Check p50, same caller",
            theirs,
        )
        .target(Target::Below(P50_BOUND_MS)),
    );
    outcome.notes.push(format!(
        "authenticated server (HS256 bearer token on GetActive); {} s per throughput run \
         after 0.3 s of warm-up; {sequential_calls} sequential calls per latency run",
        duration.as_secs()
    ));
    Ok(outcome)
}

/// `policyhub agent` following the bench's namespace, killed when dropped.
pub(crate) struct Agent {
    child: std::process::Child,
    pub(crate) address: std::net::SocketAddr,
}

impl Agent {
    pub(crate) async fn start(policyhub: &Policyhub, token: &str) -> anyhow::Result<Self> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = std::process::Command::new(crate::support::policyhub_binary())
            .args([
                "agent",
                "--namespace",
                NAMESPACE,
                "--runtime-id",
                "bench-agent",
            ])
            .args(["--server", &format!("http://{}", policyhub.address)])
            .args(["--token", token, "--listen", &address.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let agent = Agent { child, address };
        let path = format!("/v1/namespaces/{NAMESPACE}/policies/{POLICY}");
        for _ in 0..100 {
            if let Ok(mut caller) = HttpCaller::connect(address, &path, "").await
                && caller.get().await.is_ok()
            {
                return Ok(agent);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the agent never served {path}")
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory, in KiB.
    fn rss_kib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .ok_or_else(|| anyhow::anyhow!("no VmRSS for the agent"))?;
        Ok(kib)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's localhost GET against the server's GetActive over gRPC, in
/// the same run: calls/s with 16 in flight, p50 of one sequential caller,
/// and the agent's RSS while idle.
async fn agent_rows(
    settings: &Settings,
    agent: &Agent,
    callers: &[Caller],
    sequential_calls: usize,
    duration: Duration,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = agent.rss_kib()?;
    let path = format!("/v1/namespaces/{NAMESPACE}/policies/{POLICY}");
    let (mut rates, mut grpc_rates) = (Vec::new(), Vec::new());
    let (mut p50s, mut grpc_p50s) = (Vec::new(), Vec::new());
    let mut single = HttpCaller::connect(agent.address, &path, "").await?;
    for repeat in 1..=settings.repeats {
        let local = http_rate(agent.address, &path, "", HTTP_CONNECTIONS, duration).await?;
        let grpc = rate_in_flight(callers, Call::GetActive, duration, HTTP_CONNECTIONS).await?;
        let p50 = ms(percentile(
            &http_sequential(&mut single, sequential_calls).await?,
            0.5,
        ));
        let grpc_p50 = ms(percentile(
            &sequential(&callers[0], Call::GetActive, sequential_calls).await?,
            0.5,
        ));
        println!(
            "  agent, repeat {repeat}: GET {local:.0}/s, p50 {p50:.3} ms; \
             GetActive over gRPC {grpc:.0}/s, p50 {grpc_p50:.3} ms"
        );
        rates.push(local);
        grpc_rates.push(grpc);
        p50s.push(p50);
        grpc_p50s.push(grpc_p50);
    }
    outcome.rows.push(Row::new(
        format!("agent GET calls/s, localhost HTTP/1.1, {HTTP_CONNECTIONS} connections"),
        Unit::PerSecond,
        rates,
        "the server's GetActive over gRPC, 16 in flight",
        grpc_rates,
    ));
    outcome.rows.push(Row::new(
        "agent GET p50, one sequential caller",
        Unit::Milliseconds,
        p50s,
        "the server's GetActive p50 over gRPC, one sequential caller",
        grpc_p50s,
    ));
    outcome.rows.push(Row::new(
        "agent RSS, idle, following one namespace",
        Unit::KiB,
        vec![idle],
        "—",
        Vec::new(),
    ));
    Ok(())
}
