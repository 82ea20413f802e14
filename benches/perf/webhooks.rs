//! Webhooks: what ten subscriptions delivering every activation cost
//! Activate, against the same server with none (the two take turns in
//! slices of each repeat, A B B A), and the time from an
//! activation's commit (the call's start, an upper bound) to its receipt
//! at a local endpoint, median and 99th percentile. The endpoint is a bare
//! HTTP/1.1 server in this process answering 204 at once.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Empty;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use policyhub::grpc::proto::{
    self, EventKind, SubscriptionFormat, subscription_service_client::SubscriptionServiceClient,
};
use tokio::sync::mpsc;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{NAMESPACE, Options, POLICY, Policyhub, activation_rate, ms, percentile},
};

/// Subscriptions of the loaded server.
const SUBSCRIPTIONS: usize = 10;
/// The most ten subscriptions may cost Activate: 1.1× its time without.
const RATE_FLOOR: f64 = 1.0 / 1.1;

/// Slices of each repeat's time, the two servers taking turns.
const SLICES: u32 = 4;

/// Waits until the loaded server delivered what its last slice activated
/// (no delivery for longer than its poll interval), so that the deliveries
/// of one slice do not run in the other server's.
async fn quiet(received: &mut mpsc::UnboundedReceiver<(String, Instant)>) -> anyhow::Result<()> {
    let started = Instant::now();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), received.recv()).await
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the deliveries of a slice did not drain within 60 s"
        );
    }
    Ok(())
}

/// A local endpoint answering 204 to every POST; sends the path of each
/// delivery, as it arrives, to the returned channel.
async fn endpoint() -> anyhow::Result<(SocketAddr, mpsc::UnboundedReceiver<(String, Instant)>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let sender = Arc::new(sender);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let _ = sender.send((request.uri().path().to_owned(), Instant::now()));
                    async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(204)
                                .body(Empty::<Bytes>::new())
                                .expect("a valid response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((address, receiver))
}

/// A server whose deliveries may go to loopback over plain HTTP.
async fn server() -> anyhow::Result<Policyhub> {
    let env = [
        ("POLICYHUB_NOTIFICATIONS__ALLOW_HTTP", "true"),
        ("POLICYHUB_NOTIFICATIONS__ALLOW_PRIVATE_ADDRESSES", "true"),
    ];
    let mut policyhub = Policyhub::start(Options {
        env: env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        ..Options::default()
    })
    .await?;
    policyhub.publish_policy(POLICY, 2, 0).await?;
    Ok(policyhub)
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let (address, mut received) = endpoint().await?;
    let loaded = server().await?;
    let plain = server().await?;
    let mut subscriptions = SubscriptionServiceClient::connect(loaded.endpoint.clone()).await?;
    for index in 0..SUBSCRIPTIONS {
        subscriptions
            .create_subscription(proto::CreateSubscriptionRequest {
                namespace: NAMESPACE.into(),
                name: format!("bench-{index}"),
                url: format!("http://{address}/s{index}"),
                event_kinds: vec![EventKind::Activated as i32],
                format: SubscriptionFormat::Cloudevents as i32,
                secret: String::new(),
            })
            .await?;
    }
    let target = [(NAMESPACE.to_owned(), POLICY.to_owned())];
    // Warm up: the first commits of a fresh WAL file cost more.
    activation_rate(&loaded, &target, Duration::from_millis(300)).await?;
    activation_rate(&plain, &target, Duration::from_millis(300)).await?;
    quiet(&mut received).await?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        let (mut ours, mut theirs) = (0.0, 0.0);
        for slice in 0..SLICES {
            // A B, then B A: a drift of the machine's speed within the
            // repeat weighs on both servers alike.
            if slice % 2 == 0 {
                ours += activation_rate(&loaded, &target, duration / SLICES).await?;
                quiet(&mut received).await?;
                theirs += activation_rate(&plain, &target, duration / SLICES).await?;
            } else {
                theirs += activation_rate(&plain, &target, duration / SLICES).await?;
                ours += activation_rate(&loaded, &target, duration / SLICES).await?;
                quiet(&mut received).await?;
            }
        }
        let (ours, theirs) = (ours / f64::from(SLICES), theirs / f64::from(SLICES));
        println!(
            "  repeat {repeat}: Activate {ours:.0}/s with {SUBSCRIPTIONS} subscriptions, \
             {theirs:.0}/s with none"
        );
        with.push(ours);
        without.push(theirs);
    }
    // Version 2 active, so that every timed call below moves the pointer.
    let mut policyhub = loaded;
    policyhub.activate(2, "benchmark").await?;
    quiet(&mut received).await?;
    let mut latencies = Vec::new();
    let mut version = 1;
    for _ in 0..settings.size(50, 200) {
        let started = Instant::now();
        policyhub.activate(version, "benchmark").await?;
        version = 3 - version;
        loop {
            let Some((path, at)) =
                tokio::time::timeout(Duration::from_secs(10), received.recv()).await?
            else {
                anyhow::bail!("the endpoint stopped");
            };
            if path == "/s0" {
                latencies.push(at.duration_since(started));
                break;
            }
        }
    }
    let p50 = ms(percentile(&latencies, 0.5));
    let p99 = ms(percentile(&latencies, 0.99));
    Ok(Outcome {
        rows: vec![
            Row::new(
                format!("Activate calls/s on SQLite with {SUBSCRIPTIONS} webhook subscriptions"),
                Unit::PerSecond,
                with,
                "the same calls with no subscription",
                without,
            )
            .target(Target::RatioAtLeast(RATE_FLOOR)),
            Row::new(
                "commit to webhook receipt, p50",
                Unit::Milliseconds,
                vec![p50],
                "a bound",
                Vec::new(),
            )
            .target(Target::AtMost(1000.0)),
            Row::new(
                "commit to webhook receipt, p99",
                Unit::Milliseconds,
                vec![p99],
                "a bound",
                Vec::new(),
            )
            .target(Target::AtMost(1000.0)),
        ],
        notes: vec![format!(
            "{} activations timed one at a time, from the call's start to the first \
             subscription's receipt; delivery polls every 200 ms (notifications.poll_interval); \
             each repeat's rates in {SLICES} slices, the servers taking turns, the next \
             starting once the deliveries of a slice with subscriptions ended",
            latencies.len(),
        )],
    })
}
