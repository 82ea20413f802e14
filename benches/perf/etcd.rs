//! The baseline of the watch: etcd 3.4 through its native gRPC API, the
//! strongest way to watch it. Watchers are `etcdserverpb.Watch/Watch` on
//! one key, each on its own HTTP/2 connection as runtimes in separate
//! processes would have; a change is one `KV/Put`. The client is a
//! wire-compatible subset of etcd's protos (`benches/proto`) compiled by
//! `build.rs` with protox like the rest.

use std::{
    env, fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use futures::{StreamExt, TryStreamExt};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

use crate::support::{CONNECT_CONCURRENCY, Server, Tls, free_port};

/// The etcd v3 API subset the bench calls (`benches/proto`).
mod api {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

use api::{kv_client::KvClient, watch_client::WatchClient};

const KEY: &str = "/bench/fanout";

/// The etcd binary and what it says its version is.
pub struct Etcd {
    binary: PathBuf,
    /// `etcd 3.4.23`.
    pub version: String,
}

impl Etcd {
    /// `ETCD_BIN`, `etcd` on the PATH, or Debian's `etcd-server` package
    /// installed with apt-get (as root).
    pub fn find() -> anyhow::Result<Self> {
        let binary = match env::var_os("ETCD_BIN") {
            Some(path) => PathBuf::from(path),
            None => match on_path("etcd") {
                Some(path) => path,
                None => install()?,
            },
        };
        let output = Command::new(&binary)
            .arg("--version")
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text
            .lines()
            .find_map(|line| line.strip_prefix("etcd Version:"))
            .context("etcd --version printed no version")?;
        Ok(Etcd {
            binary,
            version: format!("etcd {}", version.trim()),
        })
    }

    /// Starts a one-member etcd in a temporary directory, with TLS on its
    /// client port when `tls` is given, and writes the first value.
    pub async fn start(&self, tls: Option<&Tls>, value_bytes: usize) -> anyhow::Result<Running> {
        let dir = tempfile::tempdir()?;
        let client = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{client}");
        let mut command = Command::new(&self.binary);
        command
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
            .arg("warn");
        let mut endpoint = Endpoint::from_shared(client_url)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file);
            endpoint = endpoint.tls_config(tls.client_config()?)?;
        }
        let server = Server::spawn(&mut command, &dir.path().join("etcd.log"))?;
        let writer = wait_for_etcd(&endpoint, &server, value(0, value_bytes)).await?;
        Ok(Running {
            server,
            endpoint,
            writer,
            value_bytes,
            _dir: dir,
        })
    }
}

/// A running etcd, killed when dropped.
pub struct Running {
    pub server: Server,
    endpoint: Endpoint,
    /// The writer's connection, kept open like policyhub's control channel.
    writer: KvClient<Channel>,
    value_bytes: usize,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Opens `count` watchers of the key, 200 at a time, each past its
    /// creation; the receiver gets each round's receipt on each watcher.
    pub async fn open_watchers(&self, count: usize) -> anyhow::Result<Watchers> {
        let (receipts, received) = mpsc::unbounded_channel();
        let tasks: Vec<JoinHandle<()>> = futures::stream::iter(0..count)
            .map(|_| open_watch(self.endpoint.clone(), receipts.clone()))
            .buffer_unordered(CONNECT_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(Watchers { tasks, received })
    }

    /// Writes round `round`'s value.
    pub async fn put(&mut self, round: usize) -> anyhow::Result<()> {
        self.writer
            .put(api::PutRequest {
                key: KEY.into(),
                value: value(round, self.value_bytes),
            })
            .await?;
        Ok(())
    }
}

/// Open watchers; dropping this closes them.
pub struct Watchers {
    pub received: mpsc::UnboundedReceiver<(u64, Instant)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The value of round `round`: `round-<n>;` padded to `length` bytes.
fn value(round: usize, length: usize) -> Vec<u8> {
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
                .put(api::PutRequest {
                    key: KEY.into(),
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
async fn open_watch(
    endpoint: Endpoint,
    receipts: mpsc::UnboundedSender<(u64, Instant)>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut client =
        WatchClient::new(endpoint.connect().await?).max_decoding_message_size(64 << 20);
    let create = api::WatchRequest {
        request_union: Some(api::watch_request::RequestUnion::CreateRequest(
            api::WatchCreateRequest {
                key: KEY.into(),
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

fn install() -> anyhow::Result<PathBuf> {
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

fn on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

pub fn is_root() -> anyhow::Result<bool> {
    let status = fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .context("no Uid in /proc/self/status")?;
    Ok(uid == "0")
}
