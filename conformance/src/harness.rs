//! Runs the tests: each gets a fresh server, a fault proxy in front of it
//! and the test service; a test needing a capability the implementation
//! does not declare is skipped. One line per test, a closing count, and a
//! JSON report.

use std::{
    future::Future,
    io::Write as _,
    path::{Path, PathBuf},
    pin::Pin,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    protocol::{Backoff, Capability, RuntimeSettings, ServiceInfo},
    proxy::FaultProxy,
    server::{HEARTBEAT, Server, copy_dir},
    service::{Runtime, Service},
};

/// What a test runs.
pub type TestFn = fn(Context) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One conformance test.
pub struct Test {
    /// Its id, `area.name`.
    pub id: &'static str,
    /// The contract's obligations it checks.
    pub obligations: &'static [&'static str],
    /// What the implementation must declare for it to run.
    pub needs: &'static [Capability],
    /// Whether it runs several replicas of one server, which share a
    /// PostgreSQL database (the kit's `--database-url`); without one the
    /// test is skipped.
    pub replicas: bool,
    /// Whether it draws what it does from a seed: it runs once per seed
    /// the kit is given, each run for the kit's fault duration.
    pub seeded: bool,
    /// The test.
    pub run: TestFn,
}

/// The namespace every test follows.
pub const NAMESPACE: &str = "conformance";

/// How long a single test may take (a seeded one: besides its faults).
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// What a seeded test draws its faults from, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    /// The seed: the same seed draws the same faults, in the same order.
    pub seed: u64,
    /// How long faults are drawn.
    pub duration: Duration,
}

/// What a test works with.
pub struct Context {
    /// The server, behind `proxy`.
    pub server: Server,
    /// Between the server and the runtime.
    pub proxy: FaultProxy,
    /// The runtime's test service.
    pub service: Service,
    /// What the implementation declared.
    pub capabilities: Vec<Capability>,
    /// A directory of the test's own (caches, database copies).
    pub scratch: PathBuf,
    /// The test's id, which its runtimes' ids start with.
    pub test: &'static str,
    /// The `policyhub` binary.
    pub binary: PathBuf,
    /// The test's own PostgreSQL database, for a test with replicas.
    pub database_url: Option<String>,
    /// The seed and duration of this run of a seeded test.
    pub seeded: Seeded,
}

impl Context {
    /// The settings of a runtime `n` of this test, following the namespace
    /// through the proxy with the kit's heartbeat and a short backoff.
    pub fn settings(&self, n: usize) -> RuntimeSettings {
        RuntimeSettings {
            endpoints: vec![self.proxy.endpoint()],
            namespace: NAMESPACE.to_owned(),
            runtime_id: Some(format!("{}-{n}", self.test)),
            heartbeat_interval_ms: Some(HEARTBEAT.as_millis() as u64),
            backoff: Some(Backoff {
                initial_ms: 100,
                max_ms: 1000,
            }),
            ..RuntimeSettings::default()
        }
    }

    /// Starts runtime `n` with the usual settings.
    pub async fn runtime(&self, n: usize) -> anyhow::Result<Runtime> {
        self.service.start(&self.settings(n)).await
    }

    /// Runtime `n`'s settings with its cache directory.
    pub fn settings_with_cache(&self, n: usize) -> RuntimeSettings {
        RuntimeSettings {
            cache_dir: Some(self.cache_dir(n)),
            ..self.settings(n)
        }
    }

    /// A runtime's cache directory in the scratch directory.
    pub fn cache_dir(&self, n: usize) -> String {
        self.scratch
            .join(format!("cache-{n}"))
            .to_string_lossy()
            .into_owned()
    }

    /// Another replica of the test's server, over the same PostgreSQL
    /// database and with its signing keys (copied from its data directory),
    /// with a fault proxy of its own in front of it.
    pub async fn replica(&self, n: usize) -> anyhow::Result<(Server, FaultProxy)> {
        let Some(url) = &self.database_url else {
            anyhow::bail!("a replica needs the test's PostgreSQL database");
        };
        let data_dir = self.scratch.join(format!("replica-{n}"));
        copy_dir(self.server.data_dir(), &data_dir)?;
        let server =
            Server::start(&self.binary, &data_dir, &[("POLICYHUB_DATABASE_URL", url)]).await?;
        let proxy = FaultProxy::start(server.grpc_address()).await?;
        Ok((server, proxy))
    }

    /// Whether the implementation declared `capability`.
    pub fn can(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// A test's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It passed.
    Passed,
    /// It failed.
    Failed,
    /// It needs a capability not declared.
    Skipped,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Result {
    /// The test.
    pub id: &'static str,
    /// The seed of this run, for a seeded test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// What it checks.
    pub obligations: &'static [&'static str],
    /// Passed, failed, skipped.
    pub outcome: Outcome,
    /// How long it ran, in seconds.
    pub seconds: f64,
    /// Why it failed, or what it needs when skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The implementation, as its service names it.
    pub implementation: String,
    /// What it declared.
    pub capabilities: Vec<Capability>,
    /// Counts.
    pub passed: usize,
    /// Counts.
    pub failed: usize,
    /// Counts.
    pub skipped: usize,
    /// Per test, in the order run.
    pub tests: Vec<Result>,
}

/// How the kit runs.
pub struct Run<'a> {
    /// The `policyhub` binary.
    pub binary: &'a Path,
    /// The test service.
    pub service: Service,
    /// Its name and capabilities.
    pub info: ServiceInfo,
    /// Tests whose id contains one of these run; empty: all.
    pub filters: &'a [String],
    /// Tests whose id contains one of these do not run, whatever
    /// `filters` says.
    pub skips: &'a [String],
    /// A PostgreSQL server (`postgres://`, a role that may create
    /// databases) in which each test with replicas gets a database of its
    /// own; `None`: those tests are skipped.
    pub database_url: Option<&'a str>,
    /// The seeds a seeded test runs with, once each.
    pub seeds: &'a [u64],
    /// How long a seeded test draws faults, per seed.
    pub fault_duration: Duration,
}

impl Run<'_> {
    /// Runs the tests, printing a line each; the report.
    pub async fn run(&self, tests: &[Test]) -> Report {
        let mut results = Vec::new();
        for test in tests {
            let named =
                |patterns: &[String]| patterns.iter().any(|pattern| test.id.contains(pattern));
            if (!self.filters.is_empty() && !named(self.filters)) || named(self.skips) {
                continue;
            }
            let seeds: Vec<Option<u64>> = if test.seeded {
                self.seeds.iter().copied().map(Some).collect()
            } else {
                vec![None]
            };
            for seed in seeds {
                let result = self.one(test, seed).await;
                let seconds = match seed {
                    Some(seed) => format!("seed {seed}, {:.1} s", result.seconds),
                    None => format!("{:.1} s", result.seconds),
                };
                match (&result.outcome, &result.message) {
                    (Outcome::Passed, _) => println!("PASS  {} ({seconds})", test.id),
                    (Outcome::Skipped, message) => {
                        println!("SKIP  {} ({})", test.id, message.as_deref().unwrap_or(""))
                    }
                    (Outcome::Failed, message) => println!(
                        "FAIL  {} ({seconds}): {}",
                        test.id,
                        message.as_deref().unwrap_or("")
                    ),
                }
                std::io::stdout().flush().ok();
                results.push(result);
            }
        }
        let count = |outcome| {
            results
                .iter()
                .filter(|result| result.outcome == outcome)
                .count()
        };
        Report {
            implementation: self.info.name.clone(),
            capabilities: self.info.capabilities.clone(),
            passed: count(Outcome::Passed),
            failed: count(Outcome::Failed),
            skipped: count(Outcome::Skipped),
            tests: results,
        }
    }

    async fn one(&self, test: &Test, seed: Option<u64>) -> Result {
        let missing: Vec<String> = test
            .needs
            .iter()
            .filter(|need| !self.info.capabilities.contains(need))
            .map(|need| {
                serde_json::to_value(need)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let skipped = |message: String| Result {
            id: test.id,
            seed,
            obligations: test.obligations,
            outcome: Outcome::Skipped,
            seconds: 0.0,
            message: Some(message),
        };
        if !missing.is_empty() {
            return skipped(format!("needs {}", missing.join(", ")));
        }
        if test.replicas && self.database_url.is_none() {
            return skipped(
                "runs two replicas, which need PostgreSQL: give --database-url".to_owned(),
            );
        }
        let started = Instant::now();
        let seeded = Seeded {
            seed: seed.unwrap_or_default(),
            duration: self.fault_duration,
        };
        let outcome = self.attempt(test, seeded).await;
        self.service.stop_all().await;
        Result {
            id: test.id,
            seed,
            obligations: test.obligations,
            outcome: if outcome.is_ok() {
                Outcome::Passed
            } else {
                Outcome::Failed
            },
            seconds: started.elapsed().as_secs_f64(),
            message: outcome.err().map(|error| format!("{error:#}")),
        }
    }

    async fn attempt(&self, test: &Test, seeded: Seeded) -> anyhow::Result<()> {
        let database = match (test.replicas, self.database_url) {
            (true, Some(url)) => Some(Database::create(url).await?),
            _ => None,
        };
        let database_url = database.as_ref().map(|database| database.url.clone());
        let outcome = self.attempt_with(test, database_url, seeded).await;
        if let Some(database) = database {
            database.drop_it().await?;
        }
        outcome
    }

    async fn attempt_with(
        &self,
        test: &Test,
        database_url: Option<String>,
        seeded: Seeded,
    ) -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let env: Vec<(&str, &str)> = database_url
            .iter()
            .map(|url| ("POLICYHUB_DATABASE_URL", url.as_str()))
            .collect();
        let server = Server::start(self.binary, &scratch.path().join("server"), &env).await?;
        let proxy = FaultProxy::start(server.grpc_address()).await?;
        let context = Context {
            server,
            proxy,
            service: self.service.clone(),
            capabilities: self.info.capabilities.clone(),
            scratch: scratch.path().to_owned(),
            test: test.id,
            binary: self.binary.to_owned(),
            database_url,
            seeded,
        };
        let timeout = if test.seeded {
            TEST_TIMEOUT + seeded.duration
        } else {
            TEST_TIMEOUT
        };
        match tokio::time::timeout(timeout, (test.run)(context)).await {
            Ok(outcome) => outcome,
            Err(_) => anyhow::bail!("did not finish within {timeout:?}"),
        }
    }
}

/// A PostgreSQL database of one test's own, made and dropped with `psql`
/// over the kit's `--database-url`.
struct Database {
    /// The server's URL, the database the kit was given.
    server: String,
    name: String,
    /// The URL of this database.
    url: String,
}

impl Database {
    async fn create(server: &str) -> anyhow::Result<Self> {
        let name = format!("conformance_{:016x}", fastrand::u64(..));
        let mut url = reqwest::Url::parse(server)
            .map_err(|error| anyhow::anyhow!("--database-url is not a URL: {error}"))?;
        url.set_path(&format!("/{name}"));
        psql(server, &format!("CREATE DATABASE {name}")).await?;
        Ok(Database {
            server: server.to_owned(),
            name,
            url: url.into(),
        })
    }

    /// Drops it, closing whatever connection a killed replica left.
    async fn drop_it(self) -> anyhow::Result<()> {
        psql(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await
    }
}

/// Runs one SQL command with `psql` (PostgreSQL's client, on `PATH`).
async fn psql(url: &str, command: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            command,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|error| anyhow::anyhow!("running psql (PostgreSQL's client): {error}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "psql {command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
