//! PostgreSQL: `Activate` calls per second on a PostgreSQL cluster the
//! bench starts (durable: `fsync` and `synchronous_commit` on), against raw
//! single-INSERT commits on the same cluster measured in the same run.
//!
//! And the cost of the namespace lock every activation takes before it reads
//! the namespace's active set (docs/src/contributing/design.md#storage): 16
//! concurrent callers moving 16 policies of one namespace, which wait for
//! each other's whole transaction, against 16 callers each moving a policy of
//! its own namespace, which only take the revision counter in turn.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{self, policy_service_client::PolicyServiceClient},
};
use sea_orm::{ConnectionTrait, Database};
use tonic::transport::Channel;

use crate::{
    Outcome, Row, Settings, Unit,
    support::{Options, Policyhub, activation_rate, free_port},
};

const CONCURRENT_CALLERS: usize = 16;

/// A throwaway PostgreSQL cluster, stopped when dropped.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::getuid() == 0
    }
}

impl Cluster {
    fn start() -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL server binaries (initdb, pg_ctl) are missing")?
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .max()
            .context("no PostgreSQL version under /usr/lib/postgresql")?;
        let cluster = Cluster {
            bin,
            dir: tempfile::tempdir()?,
            port: free_port()?,
        };
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path())
                .status()?;
            ensure!(chown.success(), "chown of the cluster directory failed");
        }
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust"])?;
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            cluster.port,
            cluster.dir.path().display()
        );
        let log = cluster.dir.path().join("log").display().to_string();
        cluster.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
        )?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A PostgreSQL tool, as the `postgres` user when running as root.
    fn tool(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let output = self.tool(tool).args(args).output()?;
        if !output.status.success() {
            bail!("{tool} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// Durable single-INSERT commits per second for `duration`, each its own
/// transaction on one connection.
async fn raw_commits(url: &str, duration: Duration) -> anyhow::Result<f64> {
    let db = Database::connect(url).await?;
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS bench_commits (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)",
    )
    .await?;
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        db.execute_unprepared("INSERT INTO bench_commits (note) VALUES ('benchmark activation')")
            .await?;
        done += 1;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    db.close().await?;
    Ok(rate)
}

/// Drafts and publishes versions 1 (active) and 2 of `namespace`/`name`.
async fn seed(
    policies: &mut PolicyServiceClient<Channel>,
    namespace: &str,
    name: &str,
) -> anyhow::Result<()> {
    for version in 1..=2 {
        policies
            .draft(proto::DraftRequest {
                namespace: namespace.into(),
                name: name.into(),
                body: Some(json_to_struct(&serde_json::json!({ "version": version }))),
                ..Default::default()
            })
            .await?;
        policies
            .publish(proto::PublishRequest {
                namespace: namespace.into(),
                name: name.into(),
                activate: version == 1,
                reason: "benchmark".into(),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let cluster = Cluster::start()?;
    let url = cluster.url();
    let policyhub = Policyhub::start(Options {
        env: vec![("POLICYHUB_DATABASE_URL".into(), url.clone())],
        ..Options::default()
    })
    .await?;
    let mut policies = policyhub.policies.clone();
    let one = |n: usize| ("bench".to_owned(), format!("policy-{n}"));
    let own = |n: usize| (format!("bench-{n}"), "policy".to_owned());
    let shared: Vec<_> = (0..CONCURRENT_CALLERS).map(one).collect();
    let apart: Vec<_> = (0..CONCURRENT_CALLERS).map(own).collect();
    for (namespace, name) in shared.iter().chain(&apart) {
        seed(&mut policies, namespace, name).await?;
    }
    // Warm up the server's pool and the cluster's caches.
    activation_rate(&policyhub, &shared[..1], Duration::from_millis(300)).await?;

    let (mut sequential, mut raw) = (Vec::new(), Vec::new());
    let (mut together, mut separately) = (Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        let ours = activation_rate(&policyhub, &shared[..1], duration).await?;
        let theirs = raw_commits(&url, duration).await?;
        let one_namespace = activation_rate(&policyhub, &shared, duration).await?;
        let namespaces = activation_rate(&policyhub, &apart, duration).await?;
        println!(
            "  repeat {repeat}: Activate {ours:.0}/s sequential; raw {theirs:.0} commits/s; \
             {CONCURRENT_CALLERS} callers {one_namespace:.0}/s in one namespace, \
             {namespaces:.0}/s in {CONCURRENT_CALLERS} namespaces"
        );
        sequential.push(ours);
        raw.push(theirs);
        together.push(one_namespace);
        separately.push(namespaces);
    }
    Ok(Outcome {
        rows: vec![
            Row::new(
                "Activate calls/s on PostgreSQL, one sequential caller",
                Unit::PerSecond,
                sequential,
                "raw PostgreSQL commits/s (1 INSERT each, one connection), same cluster",
                raw,
            ),
            Row::new(
                format!(
                    "Activate calls/s on PostgreSQL, {CONCURRENT_CALLERS} callers in one namespace"
                ),
                Unit::PerSecond,
                together,
                "the same with each caller in a namespace of its own (no shared lock)",
                separately,
            ),
        ],
        notes: vec![format!(
            "{} s per run on a cluster the bench starts (fsync on); each caller moves one policy \
             between two versions",
            duration.as_secs()
        )],
    })
}
