//! Connections that ask for nothing, against the real server and agent
//! binaries: each port closes one that sends no complete request in time,
//! holds at most its maximum, and at the open-files limit backs off, says
//! so and serves again once descriptors are free. And a call under way at
//! SIGTERM, on each port of the server, is answered before it exits.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::transport::Channel;

use crate::helpers::{
    Reaped, free_port, policyhub_binary, send_signal, serve_args, spawn_binary_server,
    spawn_binary_server_on, start_serving,
};

/// The HTTP/2 client preface: what a gRPC client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Request headers that take longer to trickle than any test waits.
const SLOW_HEADERS: &[u8] =
    b"GET /healthz HTTP/1.1\r\nhost: policyhub\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

/// Connects to `address` and sends `trickle` one byte a second (nothing
/// when empty); how long until the server closed the connection, if it did
/// within `within`.
async fn held_until_closed(
    address: SocketAddr,
    trickle: &[u8],
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let mut sent = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    let mut buffer = [0; 4096];
    loop {
        tokio::select! {
            read = reader.read(&mut buffer) => match read {
                // The server may write first (HTTP/2's SETTINGS): only its
                // close counts.
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            _ = ticker.tick(), if sent < trickle.len() => {
                if writer.write_all(&trickle[sent..=sent]).await.is_err() {
                    return Some(started.elapsed());
                }
                sent += 1;
            }
            () = &mut deadline => return None,
        }
    }
}

/// One HTTP/1.1 GET on a fresh connection: its status line.
async fn http_get(address: SocketAddr, path: &str) -> String {
    http_get_body(address, path)
        .await
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One HTTP/1.1 GET on a fresh connection: the whole reply.
async fn http_get_body(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: policyhub\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("a reply");
    String::from_utf8_lossy(&reply).into_owned()
}

/// A health check over a fresh gRPC connection.
async fn grpc_health(port: u16) -> Result<(), String> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(drop)
        .map_err(|status| status.to_string())
}

/// How long `call` took, after checking what it answered.
async fn timed<F: Future<Output = bool>>(what: &str, call: F) -> Duration {
    let started = Instant::now();
    assert!(call.await, "{what} did not answer");
    started.elapsed()
}

/// The three calls a normal client makes: gRPC, HTTP, the agent's API; how
/// long each took.
async fn normal_calls(grpc: u16, http: SocketAddr, api: SocketAddr) -> [Duration; 3] {
    [
        timed("grpc", async { grpc_health(grpc).await.is_ok() }).await,
        timed("http", async {
            http_get(http, "/openapi.json").await.contains(" 200")
        })
        .await,
        timed("the agent api", async {
            http_get(api, "/healthz").await.starts_with("HTTP/1.1 ")
        })
        .await,
    ]
}

fn agent(server_port: u16, api_port: u16, dir: &std::path::Path) -> Reaped {
    let child = Command::new(policyhub_binary())
        .args([
            "agent",
            "--server",
            &format!("http://127.0.0.1:{server_port}"),
        ])
        .args(["--namespace", "team", "--runtime-id", "agent-1"])
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .args([
            "--api-header-read-timeout",
            "2s",
            "--api-idle-timeout",
            "2s",
        ])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start policyhub agent");
    Reaped(child)
}

async fn wait_for_port(address: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(address).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {address}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_on_every_port_while_normal_calls_answer() {
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let env = [
        ("POLICYHUB_HTTP_LISTEN", http.to_string()),
        (
            "POLICYHUB_CONNECTIONS__HEADER_READ_TIMEOUT",
            "2s".to_owned(),
        ),
        ("POLICYHUB_CONNECTIONS__IDLE_TIMEOUT", "2s".to_owned()),
    ];
    let grpc_port = free_port();
    let (_server, _channel) =
        spawn_binary_server_on(grpc_port, &dir.path().join("server"), &env).await;
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _agent = agent(grpc_port, api.port(), dir.path());
    wait_for_port(http).await;
    wait_for_port(api).await;

    let before = normal_calls(grpc_port, http, api).await;
    let mut attack = Vec::new();
    for (address, slow) in [
        (grpc, H2_PREFACE),
        (http, SLOW_HEADERS),
        (api, SLOW_HEADERS),
    ] {
        for trickle in [slow, b"".as_slice()] {
            for _ in 0..10 {
                attack.push(tokio::spawn(async move {
                    (
                        address,
                        trickle.is_empty(),
                        held_until_closed(address, trickle, Duration::from_secs(8)).await,
                    )
                }));
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = normal_calls(grpc_port, http, api).await;
    for (before, during) in before.iter().zip(during) {
        assert!(
            during < *before * 10 + Duration::from_secs(1),
            "a call took {during:?} during the attack, {before:?} before"
        );
    }
    // A kept-alive connection is closed once idle after its response.
    for (address, path) in [(http, "/openapi.json"), (api, "/healthz")] {
        let mut kept = TcpStream::connect(address).await.unwrap();
        kept.write_all(format!("GET {path} HTTP/1.1\r\nhost: policyhub\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(8), kept.read_to_end(&mut reply))
            .await
            .unwrap_or_else(|_| panic!("the idle connection to {address} was never closed"))
            .unwrap();
        let closed = started.elapsed();
        assert!(
            reply.starts_with(b"HTTP/1.1 "),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        assert!(
            closed >= Duration::from_millis(1500) && closed <= Duration::from_secs(5),
            "an idle kept-alive connection to {address} closed after {closed:?}, the timeout is 2 s"
        );
    }
    for held in attack {
        let (address, idle, closed) = held.await.unwrap();
        let what = if idle { "an idle" } else { "a slow" };
        let closed =
            closed.unwrap_or_else(|| panic!("{what} connection to {address} was never closed"));
        assert!(
            closed >= Duration::from_millis(1500) && closed <= Duration::from_secs(5),
            "{what} connection to {address} closed after {closed:?}, the timeout is 2 s"
        );
    }
}

/// A gRPC health check whose message is half sent on a fresh HTTP/2
/// connection: a call under way until `finish` sends the rest.
struct HalfSentGrpcCall {
    response: h2::client::ResponseFuture,
    body: h2::SendStream<prost::bytes::Bytes>,
    _client: h2::client::SendRequest<prost::bytes::Bytes>,
}

impl HalfSentGrpcCall {
    async fn start(port: u16) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!(
            "http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        // An empty HealthCheckRequest is its 5-byte prefix alone: 2 of them.
        body.send_data(prost::bytes::Bytes::from_static(&[0, 0]), false)
            .unwrap();
        HalfSentGrpcCall {
            response,
            body,
            _client: client,
        }
    }

    /// Sends the rest; the call's `grpc-status`.
    async fn finish(mut self) -> Result<String, h2::Error> {
        self.body
            .send_data(prost::bytes::Bytes::from_static(&[0, 0, 0]), true)?;
        let mut reply = self.response.await?.into_body();
        while let Some(data) = reply.data().await {
            let data = data?;
            reply.flow_control().release_capacity(data.len())?;
        }
        let trailers = reply.trailers().await?.unwrap_or_default();
        Ok(trailers
            .get("grpc-status")
            .and_then(|status| status.to_str().ok())
            .unwrap_or("none")
            .to_owned())
    }
}

/// SIGTERM while a call on the gRPC port and one on the HTTP/JSON port
/// each wait for the rest of their request's body: neither port takes a
/// new connection, the server waits, each call is answered once its body
/// arrives (the HTTP one after the gRPC one, when nothing else holds the
/// server), and the server then exits cleanly. The metrics port answers
/// every scrape at once, so no call of its can be held this way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_under_way_at_sigterm_is_answered_on_the_grpc_and_http_ports() {
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let env = [("POLICYHUB_HTTP_LISTEN", http.to_string())];
    let grpc_port = free_port();
    let (mut server, _channel) =
        spawn_binary_server_on(grpc_port, &dir.path().join("server"), &env).await;
    wait_for_port(http).await;
    let grpc_call = HalfSentGrpcCall::start(grpc_port).await;
    let draft = r#"{"body":{"max":1}}"#;
    let mut http_call = TcpStream::connect(http).await.unwrap();
    http_call
        .write_all(
            format!(
                "POST /v1/namespaces/team/policies/limits/drafts HTTP/1.1\r\nhost: policyhub\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                draft.len(),
                &draft[..5]
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    send_signal(&server.0, "-TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.0.try_wait().unwrap().is_none(), "the server waits");
    for address in [format!("127.0.0.1:{grpc_port}"), http.to_string()] {
        assert!(
            TcpStream::connect(&address).await.is_err(),
            "{address} takes no new connection"
        );
    }
    assert_eq!(grpc_call.finish().await.unwrap(), "0", "the grpc call");
    tokio::time::sleep(Duration::from_secs(1)).await;
    http_call.write_all(&draft.as_bytes()[5..]).await.unwrap();
    let mut reply = Vec::new();
    http_call.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 201 "), "the http call: {reply}");
    let started = Instant::now();
    let exited = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "{exited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_at_its_maximum_closes_new_connections_and_serves_those_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let env = [
        ("POLICYHUB_HTTP_LISTEN", http.to_string()),
        ("POLICYHUB_METRICS_LISTEN", metrics.to_string()),
        ("POLICYHUB_CONNECTIONS__MAX_PER_PORT", "3".to_owned()),
    ];
    let (_server, _channel) = spawn_binary_server(&dir.path().join("server"), &env).await;
    // No connection of the start-up checks may still count against the
    // maximum: this one the server closes itself, and is done with at once.
    assert!(http_get(http, "/openapi.json").await.contains(" 200"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(http).await.unwrap());
    }
    let refused = held_until_closed(http, b"", Duration::from_secs(5))
        .await
        .expect("a fourth connection is closed");
    assert!(refused < Duration::from_secs(2), "closed after {refused:?}");
    for stream in &mut held {
        stream
            .write_all(b"GET /openapi.json HTTP/1.1\r\nhost: policyhub\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    let scraped = http_get_body(metrics, "/metrics").await;
    assert!(
        scraped.contains("policyhub_connections_refused_total{port=\"http\"} 1"),
        "{scraped}"
    );
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server runs");
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of proc(5), 12 and 13 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_files_limit_the_server_backs_off_logs_counts_and_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 64 && exec \"$@\" 2>\"$LOG_FILE\"", "sh"])
        .arg(policyhub_binary())
        .args(serve_args(port, &dir.path().join("server")))
        .env("LOG_FILE", &log)
        .env("POLICYHUB_METRICS_LISTEN", metrics.to_string());
    let (server, _channel) = start_serving(command, port).await;
    let pid = server.id();
    let grpc: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // More connections than the server has descriptors left: the rest wait
    // in the listen backlog, and its accepts fail.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(TcpStream::connect(grpc).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_ticks(pid) - before;
    // A spinning accept loop burns the 300 ticks of 3 s.
    assert!(
        spent < 60,
        "the server used {spent} ticks of CPU in 3 s while idle"
    );

    let logged = async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|line| line.contains("cannot accept a connection"))
            {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let line = tokio::time::timeout(Duration::from_secs(5), logged)
        .await
        .expect("the failed accept is logged");
    assert!(
        line.contains("WARN") && line.contains("port=\"grpc\""),
        "{line}"
    );

    drop(idle);
    let answered = async {
        loop {
            if grpc_health(port).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(8), answered)
        .await
        .expect("a call succeeds once descriptors are free");
    let scraped = http_get_body(metrics, "/metrics").await;
    let failed: f64 = scraped
        .lines()
        .find_map(|line| line.strip_prefix("policyhub_accept_errors_total{port=\"grpc\"} "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no grpc accept errors in:\n{scraped}"));
    assert!(failed >= 1.0, "{scraped}");
}
