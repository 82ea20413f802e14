//! Scale: as many watch streams as this machine lets one server hold,
//! toward 100,000, one activation delivered to all of them, and the
//! server's RSS; the baseline is a second server holding a tenth as many
//! streams at the same time, the two activated in turn.
//!
//! What binds on one machine, and what the bench does about it:
//!
//! - open files: both this process and the server hold one descriptor per
//!   connection. The bench raises its RLIMIT_NOFILE (as root, the hard
//!   limit too, up to `fs.nr_open`) before starting the servers, which
//!   inherit it;
//! - ephemeral ports: ~28,000 per (source address, destination) pair, so
//!   connections are spread over several loopback source addresses
//!   (127.0.0.2, 127.0.0.3, …), 25,000 each;
//! - where the descriptors still do not suffice (a container's root may
//!   lack CAP_SYS_RESOURCE, and then the hard limit stays), several
//!   streams share one HTTP/2 connection, the baseline's streams keeping
//!   one connection each. The notes print the streams, connections and
//!   source addresses used.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{
        CONNECT_CONCURRENCY, Options, Policyhub, ROUND_PAUSE, SETTLE, SPARE_FDS, Streams, Watcher,
        collect_round, ms, percentile, raise_open_files_limit, rss_kib,
    },
};

/// The bound on the server's RSS at 100,000 streams.
const RSS_BOUND_MIB: f64 = 2048.0;

/// Connections per loopback source address, below the ~28,000 ephemeral
/// ports of the default range.
const CONNECTIONS_PER_SOURCE: usize = 25_000;

/// How the streams of one server are laid out on connections.
#[derive(Clone, Copy, Debug)]
struct Layout {
    streams: usize,
    connections: usize,
    /// The index of its first source address: the two servers' clients
    /// use different ones, each address having its own ports.
    first_source: usize,
}

impl Layout {
    fn sources(&self) -> usize {
        self.connections.div_ceil(CONNECTIONS_PER_SOURCE)
    }

    fn describe(&self) -> String {
        format!(
            "{} streams on {} connections ({} per connection at most) from {} loopback \
             source address(es) from {}",
            self.streams,
            self.connections,
            self.streams.div_ceil(self.connections),
            self.sources(),
            source(self.first_source)
        )
    }
}

/// The `n`th loopback source address: 127.0.0.2, 127.0.0.3, …
fn source(n: usize) -> IpAddr {
    let n = n as u32 + 2;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n))
}

/// Opens `layout.streams` streams on `layout.connections` connections.
async fn open(policyhub: &Policyhub, layout: Layout) -> anyhow::Result<Streams> {
    if layout.connections >= layout.streams {
        let watchers = (0..layout.streams).map(|n| Watcher {
            source: Some(source(layout.first_source + n / CONNECTIONS_PER_SOURCE)),
            ..Watcher::default()
        });
        return policyhub.open_streams(watchers).await;
    }
    let channels: Vec<Channel> = futures::stream::iter(0..layout.connections)
        .map(|n| {
            let endpoint = policyhub.endpoint.clone().local_address(Some(source(
                layout.first_source + n / CONNECTIONS_PER_SOURCE,
            )));
            async move { endpoint.connect().await }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let watchers = (0..layout.streams).map(|n| Watcher {
        channel: Some(channels[n % channels.len()].clone()),
        ..Watcher::default()
    });
    policyhub.open_streams(watchers).await
}

/// A server holding streams, and what opening them cost.
struct Held {
    policyhub: Policyhub,
    streams: Streams,
    layout: Layout,
    rss_kib: u64,
}

async fn hold(layout: Layout, rounds: usize) -> anyhow::Result<Held> {
    let mut policyhub = Policyhub::start(Options {
        streams: layout.streams,
        ..Options::default()
    })
    .await?;
    policyhub.publish(rounds + 1).await?;
    let streams = open(&policyhub, layout)
        .await
        .with_context(|| layout.describe())?;
    tokio::time::sleep(SETTLE).await;
    let rss_kib = rss_kib(policyhub.server.pid())?;
    println!(
        "  held {} in {:.1} s; server RSS {:.0} MiB; bench RSS {:.0} MiB",
        layout.describe(),
        streams.opened_in.as_secs_f64(),
        rss_kib as f64 / 1024.0,
        self::rss_kib_of_self() / 1024.0,
    );
    Ok(Held {
        policyhub,
        streams,
        layout,
        rss_kib,
    })
}

fn rss_kib_of_self() -> f64 {
    rss_kib("self").unwrap_or(0) as f64
}

/// Activates the next version on `held` and returns the p99 of its
/// receipts, and how many were missing.
async fn round(held: &mut Held, version: u32) -> anyhow::Result<(Duration, usize)> {
    tokio::time::sleep(ROUND_PAUSE).await;
    let issued = Instant::now();
    let revision = held
        .policyhub
        .activate(version, "benchmark scale round")
        .await?;
    let mut latencies = Vec::with_capacity(held.layout.streams);
    let missing = collect_round(
        &mut held.streams.received,
        revision,
        issued,
        held.layout.streams,
        &mut latencies,
    )
    .await;
    Ok((percentile(&latencies, 0.99), missing))
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let wanted = settings.size(5_000, 100_000);
    let baseline_streams = wanted / 10;
    let rounds = settings.repeats;
    // Both servers' streams are held by this process at once.
    let wanted_fds = (wanted + baseline_streams + 4 * SPARE_FDS) as u64;
    let (limit, bound) = raise_open_files_limit(wanted_fds)?;
    let limit = limit as usize;
    let budget = limit.saturating_sub(baseline_streams + 4 * SPARE_FDS);
    let baseline_layout = Layout {
        streams: baseline_streams,
        connections: baseline_streams,
        first_source: 0,
    };
    let layout = Layout {
        streams: wanted,
        connections: wanted.min(budget).max(1),
        first_source: baseline_layout.sources(),
    };

    let mut baseline = hold(baseline_layout, rounds).await?;
    let mut large = hold(layout, rounds).await?;
    let (mut ours, mut theirs, mut missing) = (Vec::new(), Vec::new(), 0);
    for repeat in 1..=rounds {
        let version = repeat as u32 + 1;
        let (p99_baseline, missing_baseline) = round(&mut baseline, version).await?;
        let (p99, missing_large) = round(&mut large, version).await?;
        println!(
            "  repeat {repeat}: p99 {:.1} ms at {} streams, {:.1} ms at {}",
            ms(p99),
            layout.streams,
            ms(p99_baseline),
            baseline_layout.streams
        );
        ours.push(ms(p99));
        theirs.push(ms(p99_baseline));
        missing += missing_baseline + missing_large;
    }
    let opened_in = large.streams.opened_in;
    let (rss_large, rss_baseline) = (large.rss_kib, baseline.rss_kib);
    drop(large);
    drop(baseline);

    let baseline_name = format!("policyhub at {baseline_streams} streams, same run");
    Ok(Outcome {
        rows: vec![
            Row::new(
                format!("one activation to every stream p99, {wanted} streams on one server"),
                Unit::Milliseconds,
                ours,
                &baseline_name,
                theirs,
            ),
            Row::new(
                format!("server RSS holding {wanted} idle streams"),
                Unit::MiB,
                vec![rss_large as f64 / 1024.0],
                &baseline_name,
                vec![rss_baseline as f64 / 1024.0],
            )
            .target(Target::AtMost(RSS_BOUND_MIB)),
        ],
        notes: vec![format!(
            "used {} (open-file limit {limit} for the bench and both servers, {wanted_fds} \
             wanted{}); opened in {:.0} s; baseline {}; receipts missing: {missing}",
            layout.describe(),
            bound.map_or(String::new(), |why| format!(": {why}")),
            opened_in.as_secs_f64(),
            baseline_layout.describe(),
        )],
    })
}
