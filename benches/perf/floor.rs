//! The floor of the watch fan-out: what writing the same frames to the same
//! streams costs with nothing but HTTP/2 in between. A minimal server on
//! the `h2` crate (the HTTP/2 implementation under hyper and tonic) answers
//! every request with a SNAPSHOT as long as policyhub's first message, and
//! on each line `<revision>` of its control connection writes one
//! pre-encoded UPDATE frame, shared by every stream, to each stream it
//! holds. No routing, authentication, index or encoding per message: the
//! least any gRPC watch server can do per delivered update.
//!
//! It runs as a child process, the bench binary started again with
//! [`ROLE`] set, so its CPU time is read like the
//! servers' it is the floor of.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::Context;
use h2::server::SendResponse;
use policyhub::watch::{MessageKind, WatchMessage};
use prost::{
    Message,
    bytes::{BufMut, Bytes, BytesMut},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::transport::Endpoint;

use crate::support::{Server, free_port};

/// The environment variable that makes the bench binary the floor server:
/// `<h2 port>,<control port>,<message bytes>`.
pub const ROLE: &str = "PERF_FLOOR_SERVER";

/// The floor server, running as a child process.
pub struct Floor {
    pub server: Server,
    pub endpoint: Endpoint,
    control: BufReader<TcpStream>,
}

impl Floor {
    /// Starts the floor server with messages of `message_bytes` encoded.
    pub async fn start(log: &Path, message_bytes: usize) -> anyhow::Result<Self> {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut command = Command::new(std::env::current_exe()?);
        command.env(
            ROLE,
            format!("{},{},{message_bytes}", address.port(), control.port()),
        );
        let server = Server::spawn(&mut command, log)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let control = loop {
            match TcpStream::connect(control).await {
                Ok(stream) => break stream,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    server.ensure_running()?;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => return Err(error).context("the floor server did not come up"),
            }
        };
        control.set_nodelay(true)?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        Ok(Floor {
            server,
            endpoint,
            control: BufReader::new(control),
        })
    }

    /// Has every stream sent an UPDATE at `revision`.
    pub async fn write(&mut self, revision: u64) -> anyhow::Result<()> {
        self.control
            .get_mut()
            .write_all(format!("{revision}\n").as_bytes())
            .await?;
        let mut reply = String::new();
        self.control.read_line(&mut reply).await?;
        anyhow::ensure!(reply == "ok\n", "the floor server answered {reply:?}");
        Ok(())
    }
}

/// The floor server's process: serves until its control connection closes.
pub async fn serve(spec: &str) -> anyhow::Result<()> {
    let numbers: Vec<usize> = spec
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{ROLE}={spec:?}"))?;
    let &[port, control_port, message_bytes] = numbers.as_slice() else {
        anyhow::bail!("{ROLE} takes three numbers, not {spec:?}");
    };
    let listener = TcpListener::bind(("127.0.0.1", port as u16)).await?;
    let control = TcpListener::bind(("127.0.0.1", control_port as u16)).await?;
    let snapshot = frame(MessageKind::Snapshot, 1, message_bytes);
    let (updates, _) = watch::channel(Bytes::new());
    tokio::spawn({
        let updates = updates.clone();
        async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                tokio::spawn(connection(socket, snapshot.clone(), updates.subscribe()));
            }
        }
    });
    let (control, _) = control.accept().await?;
    let (reader, mut writer) = control.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        let revision = line.trim().parse().context("a revision")?;
        updates.send_replace(frame(MessageKind::Update, revision, message_bytes));
        writer.write_all(b"ok\n").await?;
    }
    Ok(())
}

/// One connection: a SNAPSHOT on each stream it opens, then every update
/// to every stream.
async fn connection(
    socket: TcpStream,
    snapshot: Bytes,
    mut updates: watch::Receiver<Bytes>,
) -> Result<(), h2::Error> {
    let mut connection = h2::server::handshake(socket).await?;
    // Each stream's sending half, and its request kept open.
    let mut streams = Vec::new();
    loop {
        tokio::select! {
            request = connection.accept() => {
                let Some(request) = request else { return Ok(()) };
                let (request, respond) = request?;
                let mut send = respond_grpc(respond)?;
                send.send_data(snapshot.clone(), false)?;
                streams.push((send, request));
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let update = updates.borrow_and_update().clone();
                for (send, _) in &mut streams {
                    send.send_data(update.clone(), false)?;
                }
            }
        }
    }
}

fn respond_grpc(mut respond: SendResponse<Bytes>) -> Result<h2::SendStream<Bytes>, h2::Error> {
    let response = http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(())
        .expect("a static response");
    respond.send_response(response, false)
}

/// A gRPC frame of a `WatchActiveResponse` of `kind` at `revision`, one
/// bundle long enough for the message to take `message_bytes` encoded.
fn frame(kind: MessageKind, revision: u64, message_bytes: usize) -> Bytes {
    let mut message = WatchMessage {
        kind,
        revision,
        bundles: vec![Bytes::new()],
        complete: true,
        ..WatchMessage::default()
    };
    let overhead = message.encoded_len();
    // The bundle's length prefix grows with it: shrink until it fits.
    let mut bundle_bytes = message_bytes.saturating_sub(overhead);
    loop {
        message.bundles[0] = Bytes::from(vec![b'x'; bundle_bytes]);
        if message.encoded_len() <= message_bytes || bundle_bytes == 0 {
            break;
        }
        bundle_bytes -= 1;
    }
    let mut frame = BytesMut::with_capacity(5 + message.encoded_len());
    frame.put_u8(0);
    frame.put_u32(message.encoded_len() as u32);
    message.encode(&mut frame).expect("capacity reserved");
    frame.freeze()
}
