//! Runtimes: what each runtime library costs an application, against the
//! Rust library measured in the same run.
//!
//! The real `policyhub serve` binary on SQLite in a temporary directory,
//! two versions of one policy published. Each library runs in a process of
//! its own, a *follower*: `<program> <server> <namespace> <count>` opens
//! `count` subscriptions to the namespace and, in each subscription's
//! callback, writes `<index> <revision>` to its standard output. The Rust
//! library's follower is this binary itself (`runtimes follow ...`); the
//! Python and TypeScript SDKs' are their `examples/follow` programs, run
//! when the SDK is built (by `scripts/install-python-sdk`, whose
//! virtualenv's Python runs it unless `RUNTIMES_BENCH_PYTHON` names
//! another, and `scripts/install-typescript-sdk`); each is left out, and
//! says so, when it is not. The Go library's, `sdk/go/examples/follow`, is
//! built here with `go build` when Go is on `PATH`.
//!
//! Each of `RUNTIMES_BENCH_ROUNDS` (default 3) rounds takes the followers
//! in an order that rotates from round to round, and for each:
//!
//! - **update to callback**: one subscription; `RUNTIMES_BENCH_UPDATES`
//!   (default 100) activations, alternating the two versions, 20 ms apart,
//!   each timed from the moment its `Activate` is issued to the callback's
//!   line arriving here; p50 and p99, and their ratio to the Rust library's
//!   in the same round (target: at most 2 for the Python and TypeScript
//!   SDKs, at most 1.2 for the Go library);
//! - **CPU per update**: the follower's user and system time over those
//!   updates, divided by their number;
//! - **memory per subscription**: the follower's resident set with
//!   `RUNTIMES_BENCH_SUBSCRIPTIONS` (default 100) subscriptions, each on a
//!   connection of its own, less the one-subscription process's, divided
//!   by the subscriptions added.
//!
//! The report gives each round and the median over the rounds with the
//! spread. Run with `cargo bench --bench runtimes`.

use std::{
    collections::HashSet,
    env,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

mod support;

use support::{
    NAMESPACE, Policyhub, SETTLE, collect_round, cpu_time, median_and_spread, ms, percentile,
    rss_kib,
};

/// The ratio to the Rust library's latency the Python and TypeScript SDKs
/// must stay within.
const SDK_TARGET_RATIO: f64 = 2.0;

/// The ratio to the Rust library's latency the Go library must stay
/// within: compiled, on a gRPC stack of its own language's maintainers.
const GO_TARGET_RATIO: f64 = 1.2;

/// Time between two measured activations: every update is its own.
const UPDATE_PAUSE: Duration = Duration::from_millis(20);

/// Activations before the measured ones (connections, caches and JITs warm).
const WARM_UP_UPDATES: usize = 10;

/// How long a follower may take to hold its first state.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    if args.get(1).map(String::as_str) == Some("follow") {
        let [server, namespace, count] = &args[2..] else {
            bail!("usage: runtimes follow <server> <namespace> <count>");
        };
        return runtime.block_on(follow(server.clone(), namespace.clone(), count.parse()?));
    }
    runtime.block_on(bench())
}

/// The Rust library's follower: `count` subscriptions, each callback
/// writing `<index> <revision>`.
async fn follow(server: String, namespace: String, count: usize) -> anyhow::Result<()> {
    let mut subscriptions = tokio::task::JoinSet::new();
    for index in 0..count {
        let subscription = policyhub_runtime::Subscription::new(server.clone(), namespace.clone());
        subscriptions.spawn(subscription.run(move |state| {
            // Standard output is line-buffered: the line leaves at once.
            println!("{index} {}", state.revision);
            Ok(())
        }));
    }
    while let Some(ended) = subscriptions.join_next().await {
        ended??;
    }
    Ok(())
}

/// A follower's lines as they arrive: (revision, arrival, index).
type Lines = mpsc::UnboundedReceiver<(u64, Instant, usize)>;

/// A runtime library and how to start its follower.
struct Follower {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// The ratio of its p50 and p99 to the Rust library's it must stay
    /// within.
    target: f64,
}

impl Follower {
    /// The followers this machine has: the Rust library always, the SDKs
    /// when installed.
    fn available() -> anyhow::Result<Vec<Follower>> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut followers = vec![Follower {
            name: "rust",
            program: env::current_exe()?,
            args: vec!["follow".into()],
            target: 1.0,
        }];
        let python = env::var_os("RUNTIMES_BENCH_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/tools/python-sdk/venv/bin/python"));
        if python.exists() {
            followers.push(Follower {
                name: "python",
                program: python,
                args: vec![
                    root.join("sdk/python/examples/follow.py")
                        .display()
                        .to_string(),
                ],
                target: SDK_TARGET_RATIO,
            });
        } else {
            println!("python: left out (run scripts/install-python-sdk)");
        }
        if root.join("sdk/typescript/dist/index.js").exists() {
            followers.push(Follower {
                name: "typescript",
                program: "node".into(),
                args: vec![
                    root.join("sdk/typescript/examples/follow.mjs")
                        .display()
                        .to_string(),
                ],
                target: SDK_TARGET_RATIO,
            });
        } else {
            println!("typescript: left out (run scripts/install-typescript-sdk)");
        }
        let go_follower = root.join("target/runtimes-bench/go-follow");
        let built = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&go_follower)
            .arg("./examples/follow")
            .current_dir(root.join("sdk/go"))
            .status();
        if matches!(built, Ok(status) if status.success()) {
            followers.push(Follower {
                name: "go",
                program: go_follower,
                args: Vec::new(),
                target: GO_TARGET_RATIO,
            });
        } else {
            println!("go: left out (no Go toolchain to build sdk/go/examples/follow)");
        }
        Ok(followers)
    }

    /// Starts the follower with `count` subscriptions; its lines arrive on
    /// the receiver as (revision, arrival, index).
    fn start(&self, server: &str, count: usize) -> anyhow::Result<(Child, Lines)> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .args([server, NAMESPACE, &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {} follower", self.name))?;
        let stdout = child.stdout.take().context("no standard output")?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let arrived = Instant::now();
                let mut fields = line.split_whitespace().map(str::parse::<u64>);
                if let (Some(Ok(index)), Some(Ok(revision))) = (fields.next(), fields.next()) {
                    let _ = sender.send((revision, arrived, index as usize));
                }
            }
        });
        Ok((child, receiver))
    }
}

/// Waits until each of `count` subscriptions wrote a line.
async fn ready(name: &str, receiver: &mut Lines, count: usize) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while seen.len() < count {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some((_, _, index))) => {
                seen.insert(index);
            }
            Ok(None) => bail!("the {name} follower exited"),
            Err(_) => bail!("{name}: {} of {count} subscriptions ready", seen.len()),
        }
    }
    Ok(())
}

/// What one round measured of one follower.
struct Measure {
    p50: Duration,
    p99: Duration,
    cpu_per_update: Duration,
    kib_per_subscription: f64,
}

async fn measure(
    policyhub: &mut Policyhub,
    follower: &Follower,
    server: &str,
    version: &mut u32,
    updates: usize,
    subscriptions: usize,
) -> anyhow::Result<Measure> {
    let (child, mut receiver) = follower.start(server, 1)?;
    ready(follower.name, &mut receiver, 1).await?;
    let pid = child.id().context("the follower exited")?;
    // Receipts without the index, for the shared round collector.
    let (receipts, mut received) = mpsc::unbounded_channel();
    let forward = tokio::spawn(async move {
        while let Some((revision, arrived, _)) = receiver.recv().await {
            let _ = receipts.send((revision, arrived));
        }
    });
    let mut latencies = Vec::with_capacity(updates);
    let mut cpu_before = cpu_time(pid)?;
    for update in 0..WARM_UP_UPDATES + updates {
        if update == WARM_UP_UPDATES {
            latencies.clear();
            cpu_before = cpu_time(pid)?;
        }
        tokio::time::sleep(UPDATE_PAUSE).await;
        *version = 3 - *version;
        let issued = Instant::now();
        let revision = policyhub.activate(*version, "benchmark").await?;
        let missing = collect_round(&mut received, revision, issued, 1, &mut latencies).await;
        ensure!(
            missing == 0,
            "{}: revision {revision} never arrived",
            follower.name
        );
    }
    let cpu_per_update = cpu_time(pid)?.saturating_sub(cpu_before) / updates as u32;
    let one = rss_kib(pid)?;
    forward.abort();
    drop(child);

    let (child, mut receiver) = follower.start(server, subscriptions)?;
    ready(follower.name, &mut receiver, subscriptions).await?;
    tokio::time::sleep(SETTLE).await;
    let many = rss_kib(child.id().context("the follower exited")?)?;
    drop(child);

    latencies.sort();
    Ok(Measure {
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        cpu_per_update,
        kib_per_subscription: many.saturating_sub(one) as f64 / (subscriptions - 1) as f64,
    })
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    env::var(name)
        .ok()
        .map(|value| value.parse().with_context(|| format!("{name}={value}")))
        .transpose()
        .map(|value| value.unwrap_or(default))
}

/// Median and spread of `values`, formatted.
fn summary(values: Vec<f64>, unit: &str) -> String {
    let (median, low, high) = median_and_spread(values);
    format!("{median:.2} {unit} ({low:.2}–{high:.2})")
}

async fn bench() -> anyhow::Result<()> {
    let rounds = env_number("RUNTIMES_BENCH_ROUNDS", 3)?;
    let updates = env_number("RUNTIMES_BENCH_UPDATES", 100)?;
    let subscriptions = env_number("RUNTIMES_BENCH_SUBSCRIPTIONS", 100)?.max(2);
    let followers = Follower::available()?;
    let mut policyhub = Policyhub::spawn(subscriptions + 10, &[]).await?;
    policyhub.publish(2).await?;
    let server = format!("http://{}", policyhub.address);
    let mut version = 1;
    println!(
        "{rounds} rounds; {updates} updates each, {} ms apart; memory with {subscriptions} subscriptions",
        UPDATE_PAUSE.as_millis()
    );

    let mut results: Vec<Vec<Measure>> = followers.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..followers.len()).collect();
        order.rotate_left(round % followers.len());
        for index in order {
            let measured = measure(
                &mut policyhub,
                &followers[index],
                &server,
                &mut version,
                updates,
                subscriptions,
            )
            .await?;
            results[index].push(measured);
        }
        for (follower, measures) in followers.iter().zip(&results) {
            let (rust, this) = (&results[0][round], &measures[round]);
            println!(
                "round {round} {:<10} p50 {:.2} ms ({:.2}×) p99 {:.2} ms ({:.2}×) cpu/update {:.0} µs, {:.0} KiB/subscription",
                follower.name,
                ms(this.p50),
                ms(this.p50) / ms(rust.p50),
                ms(this.p99),
                ms(this.p99) / ms(rust.p99),
                this.cpu_per_update.as_secs_f64() * 1e6,
                this.kib_per_subscription,
            );
        }
    }

    println!("\nmedians over {rounds} rounds (spread):");
    let mut met = true;
    for (index, follower) in followers.iter().enumerate() {
        let ratios = |quantile: fn(&Measure) -> Duration| -> Vec<f64> {
            (0..rounds)
                .map(|round| {
                    ms(quantile(&results[index][round])) / ms(quantile(&results[0][round]))
                })
                .collect()
        };
        let (p50_ratios, p99_ratios) = (ratios(|m| m.p50), ratios(|m| m.p99));
        met &= median_and_spread(p50_ratios.clone()).0 <= follower.target
            && median_and_spread(p99_ratios.clone()).0 <= follower.target;
        let of =
            |value: fn(&Measure) -> f64| -> Vec<f64> { results[index].iter().map(value).collect() };
        println!(
            "{:<10} p50 {}, {} of rust; p99 {}, {} of rust; cpu/update {}; memory/subscription {}",
            follower.name,
            summary(of(|m| ms(m.p50)), "ms"),
            summary(p50_ratios, "×"),
            summary(of(|m| ms(m.p99)), "ms"),
            summary(p99_ratios, "×"),
            summary(of(|m| m.cpu_per_update.as_secs_f64() * 1e6), "µs"),
            summary(of(|m| m.kib_per_subscription), "KiB"),
        );
    }
    println!(
        "target: the median p50 and p99 of the Python and TypeScript SDKs within \
         {SDK_TARGET_RATIO}×, of the Go library within {GO_TARGET_RATIO}×, the Rust library's: {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(())
}
