//! Benchmark watch streams: opening them, and timing a change's receipt on
//! every one.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use futures::{StreamExt, TryStreamExt};
use policyhub::grpc::proto::{self, WatchEventKind, bundle_service_client::BundleServiceClient};
use policyhub::grpc::watch_message::WatchActiveResponse;
use policyhub_runtime::{DEFAULT_REPORT_SPREAD, report_delay};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use super::{CONNECT_CONCURRENCY, NAMESPACE, POLICY, ROUND_PAUSE, authorized, cpu_time};

/// How long every stream of one round may take to receive the change.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// How a benchmark stream presents itself.
#[derive(Clone, Default)]
pub struct Watcher {
    /// The runtime id it names; without one it joins rollouts at 100 %.
    pub runtime: Option<String>,
    /// Whether it answers each UPDATE with a report APPLIED on its
    /// `ReportStatusStream`, spread as the runtime library spreads them.
    pub reports: bool,
    /// The loopback source address of its own connection: each address has
    /// its own ephemeral ports, so more than one is needed beyond ~28,000
    /// connections to one server port.
    pub source: Option<IpAddr>,
    /// A connection it shares with other streams (HTTP/2 multiplexing)
    /// instead of one of its own.
    pub channel: Option<Channel>,
    /// Watch the whole namespace instead of the benchmark policy alone,
    /// resuming at this revision: the first message is then an empty
    /// UPDATE rather than a snapshot of every policy.
    pub whole_namespace_since: Option<u64>,
}

/// Opens one `WatchActive` stream per watcher at `endpoint`, each on its own
/// connection (unless the watcher brings a shared one) and past its
/// SNAPSHOT, 200 at a time; their UPDATEs' revisions and receipt times
/// arrive on the receiver. Also returns how long opening took and the size
/// of the snapshot.
pub async fn open_streams(
    endpoint: &Endpoint,
    token: Option<&MetadataValue<tonic::metadata::Ascii>>,
    watchers: impl Iterator<Item = Watcher>,
) -> anyhow::Result<Streams> {
    let (receipts, received) = mpsc::unbounded_channel();
    let started = Instant::now();
    let tasks: Vec<(JoinHandle<()>, Snapshot)> = futures::stream::iter(watchers)
        .map(|watcher| open_watch(endpoint.clone(), token.cloned(), receipts.clone(), watcher))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let first = tasks
        .first()
        .map_or(Snapshot::default(), |(_, first)| *first);
    Ok(Streams {
        opened_in: started.elapsed(),
        payload_bytes: first.bundle_bytes,
        message_bytes: first.message_bytes,
        tasks: tasks.into_iter().map(|(task, _)| task).collect(),
        received,
    })
}

/// The size of a stream's first message.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    /// Its bundle (none on a resumed stream).
    bundle_bytes: usize,
    /// The whole encoded message.
    message_bytes: usize,
}

/// Open watch streams; dropping this closes them.
pub struct Streams {
    pub opened_in: Duration,
    pub payload_bytes: usize,
    /// The encoded length of the first stream's first message.
    pub message_bytes: usize,
    pub received: mpsc::UnboundedReceiver<(u64, Instant)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Streams {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens one stream on its own connection (or the watcher's shared one)
/// and waits for its SNAPSHOT; the task it returns reports the receipt
/// time of every UPDATE. Also returns the size of the snapshot.
async fn open_watch(
    endpoint: Endpoint,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    receipts: mpsc::UnboundedSender<(u64, Instant)>,
    watcher: Watcher,
) -> anyhow::Result<(JoinHandle<()>, Snapshot)> {
    let channel = match &watcher.channel {
        Some(channel) => channel.clone(),
        None => endpoint.local_address(watcher.source).connect().await?,
    };
    let mut client = BundleServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let request = authorized(
        token.as_ref(),
        proto::WatchActiveRequest {
            namespace: NAMESPACE.into(),
            names: match watcher.whole_namespace_since {
                Some(_) => Vec::new(),
                None => vec![POLICY.into()],
            },
            since_revision: watcher.whole_namespace_since.unwrap_or(0),
            runtime: watcher.runtime.clone().map(|id| proto::RuntimeIdentity {
                id,
                labels: Default::default(),
            }),
        },
    );
    let mut stream = client.watch_active(request).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .context("no snapshot within 30 s")??
        .context("the stream ended before its snapshot")?;
    let message_bytes = prost::Message::encoded_len(&first);
    let bundle_bytes = if watcher.whole_namespace_since.is_some() {
        ensure!(
            first.kind() == WatchEventKind::Update && first.bundles.is_empty(),
            "the first message of a resumed stream is not an empty update: {first:?}"
        );
        0
    } else {
        ensure!(
            first.kind() == WatchEventKind::Snapshot && first.bundles.len() == 1,
            "the first message is not a snapshot of one bundle: {first:?}"
        );
        first.bundles[0].len()
    };
    let task = tokio::spawn(async move {
        // The client keeps the connection's request half alive.
        let mut client = client;
        let mut reporter: Option<Reporter> = None;
        // The report due, and when: as the runtime library, at a random
        // moment in the second half of its report spread after the first
        // outcome since the last report.
        let mut due: Option<(tokio::time::Instant, proto::ReportStatusRequest)> = None;
        loop {
            let report = tokio::select! {
                message = stream.message() => {
                    let Ok(Some(message)) = message else { break };
                    if message.kind() != WatchEventKind::Update {
                        continue;
                    }
                    if receipts.send((message.revision, Instant::now())).is_err() {
                        break;
                    }
                    if let Some(id) = watcher.runtime.as_ref().filter(|_| watcher.reports) {
                        let report = applied(id, &message);
                        let at = due.take().map_or_else(
                            || tokio::time::Instant::now() + report_delay(DEFAULT_REPORT_SPREAD),
                            |(at, _)| at,
                        );
                        due = Some((at, report));
                    }
                    continue;
                }
                () = tokio::time::sleep_until(due.as_ref().map_or_else(tokio::time::Instant::now, |(at, _)| *at)),
                    if due.is_some() => due.take().expect("a report is due").1,
            };
            let reported = match &mut reporter {
                Some(reporter) => reporter.report(report).await,
                None => match Reporter::open(&mut client, token.as_ref()).await {
                    Ok(opened) => reporter.insert(opened).report(report).await,
                    Err(status) => Err(status),
                },
            };
            if let Err(status) = reported {
                let id = watcher.runtime.as_deref().unwrap_or_default();
                eprintln!("  warning: a report of {id} was refused: {status}");
                reporter = None;
            }
        }
    });
    Ok((
        task,
        Snapshot {
            bundle_bytes,
            message_bytes,
        },
    ))
}

/// The report of runtime `id` that it applied `update`.
fn applied(id: &str, update: &WatchActiveResponse) -> proto::ReportStatusRequest {
    proto::ReportStatusRequest {
        namespace: NAMESPACE.into(),
        runtime_id: id.to_owned(),
        revision: update.revision,
        policies: update
            .decode_bundles()
            .unwrap_or_default()
            .iter()
            .map(|bundle| proto::PolicyApplyStatus {
                name: bundle.name.clone(),
                version: bundle.version,
                state: proto::ApplyState::Applied as i32,
                ..Default::default()
            })
            .collect(),
    }
}

/// A `ReportStatusStream` as the runtime library holds one: each report
/// answered before the next is sent.
pub struct Reporter {
    requests: mpsc::Sender<proto::ReportStatusRequest>,
    replies: tonic::Streaming<proto::ReportStatusResponse>,
}

impl Reporter {
    /// Opens the stream on `client`'s connection.
    pub async fn open(
        client: &mut BundleServiceClient<Channel>,
        token: Option<&MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<Self, tonic::Status> {
        let (requests, receiver) = mpsc::channel(1);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let replies = client
            .report_status_stream(authorized(token, outbound))
            .await?
            .into_inner();
        Ok(Reporter { requests, replies })
    }

    /// Sends `report` and waits for its answer.
    pub async fn report(
        &mut self,
        report: proto::ReportStatusRequest,
    ) -> Result<(), tonic::Status> {
        self.requests
            .send(report)
            .await
            .map_err(|_| tonic::Status::unavailable("the report stream closed"))?;
        match self.replies.message().await? {
            Some(_) => Ok(()),
            None => Err(tonic::Status::unavailable("the report stream ended")),
        }
    }
}

/// What one timed round cost.
pub struct Round {
    /// Streams whose receipt did not arrive in time.
    pub missing: usize,
    /// The server's CPU time from just before the write to the last
    /// receipt.
    pub server_cpu: Duration,
}

/// What a series of timed rounds saw.
#[derive(Default)]
pub struct Tally {
    /// From issuing each write to each receipt.
    pub latencies: Vec<Duration>,
    /// Receipts that did not arrive in time.
    pub missing: usize,
    /// The server's CPU time over the rounds' writes and deliveries.
    pub server_cpu: Duration,
}

impl Tally {
    /// Runs one [`timed_round`] and adds what it saw.
    pub async fn round(
        &mut self,
        pid: &str,
        received: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
        count: usize,
        write: impl Future<Output = anyhow::Result<u64>>,
    ) -> anyhow::Result<()> {
        let round = timed_round(pid, received, count, &mut self.latencies, write).await?;
        self.missing += round.missing;
        self.server_cpu += round.server_cpu;
        Ok(())
    }
}

/// One round whose figures are dropped: a server's first write after its
/// streams opened pays one-time costs (statements prepared, caches and
/// files cold) that no later write does, and in a series of 20 it alone
/// would set the p99.
pub async fn warm_up(
    pid: &str,
    received: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    count: usize,
    write: impl Future<Output = anyhow::Result<u64>>,
) -> anyhow::Result<()> {
    timed_round(pid, received, count, &mut Vec::new(), write).await?;
    Ok(())
}

/// One timed round: after a pause, issues `write` (which returns the tag
/// its change arrives with) and waits for that tag on `count` streams,
/// recording the latencies from the issue; reads the CPU time of the
/// server `pid` around it.
pub async fn timed_round(
    pid: &str,
    received: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    count: usize,
    latencies: &mut Vec<Duration>,
    write: impl Future<Output = anyhow::Result<u64>>,
) -> anyhow::Result<Round> {
    tokio::time::sleep(ROUND_PAUSE).await;
    let cpu_before = cpu_time(pid)?;
    let issued = Instant::now();
    let tag = write.await?;
    let missing = collect_round(received, tag, issued, count, latencies).await;
    Ok(Round {
        missing,
        server_cpu: cpu_time(pid)?.saturating_sub(cpu_before),
    })
}

/// Waits until `count` receipts tagged `tag` arrived (or the round timed
/// out), records their latencies, and returns how many are missing.
pub async fn collect_round(
    received: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    tag: u64,
    issued: Instant,
    count: usize,
    latencies: &mut Vec<Duration>,
) -> usize {
    let deadline = tokio::time::Instant::from_std(issued + ROUND_TIMEOUT);
    let mut got = 0;
    while got < count {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some((seen, at))) if seen == tag => {
                latencies.push(at.saturating_duration_since(issued));
                got += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if got < count {
        eprintln!(
            "  warning: {} of {count} streams did not receive change {tag} in time",
            count - got
        );
    }
    count - got
}
