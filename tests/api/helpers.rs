//! Every test gets its own server on port 0 and its own database: a SQLite
//! file in a temporary directory, or a fresh database in the PostgreSQL
//! cluster named by `POLICYHUB_TEST_DATABASE_URL` (`./scripts/test` starts
//! one).

use std::{net::SocketAddr, path::PathBuf};

use policyhub::grpc::watch_message::WatchActiveResponse;
use policyhub::{
    config::Settings,
    grpc::{
        convert::json_to_struct,
        proto::{
            self, bundle_service_client::BundleServiceClient,
            policy_service_client::PolicyServiceClient,
        },
    },
    startup::Application,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::Value;
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, Streaming, transport::Channel};

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that outlives one server, so a test can restart the server.
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    pub data_dir: TempDir,
}

impl TestDatabase {
    /// The same database for a second server (a replica), with its own data
    /// directory.
    pub fn replica(&self) -> Self {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "only PostgreSQL has replicas"
        );
        TestDatabase {
            backend: self.backend,
            url: self.url.clone(),
            data_dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub async fn new(backend: Backend) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let url = match backend {
            Backend::Sqlite => format!(
                "sqlite://{}",
                data_dir.path().join("policyhub.db").display()
            ),
            Backend::Postgres => {
                let admin_url = std::env::var("POLICYHUB_TEST_DATABASE_URL").expect(
                    "POLICYHUB_TEST_DATABASE_URL is not set: run the tests with ./scripts/test, \
                     which starts a throwaway PostgreSQL cluster",
                );
                let name = format!("policyhub_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to postgres");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let (base, _) = admin_url.rsplit_once('/').expect("url has a database");
                format!("{base}/{name}")
            }
        };
        TestDatabase {
            backend,
            url,
            data_dir,
        }
    }
}

/// A running server and clients for it.
pub struct TestApp {
    pub address: SocketAddr,
    /// The metrics port, when the settings asked for one.
    pub metrics_address: Option<SocketAddr>,
    /// The HTTP/JSON port, when the settings asked for one.
    pub http_address: Option<SocketAddr>,
    pub database: TestDatabase,
    pub policy: PolicyServiceClient<Channel>,
    pub bundle: BundleServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings of a test server on `database`.
pub fn test_settings(database: &TestDatabase) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: database.data_dir.path().to_owned(),
        database_url: Some(database.url.clone().into()),
        insecure: true,
        health_check_interval: std::time::Duration::from_secs(1),
        rollouts: policyhub::config::RolloutSettings {
            tick_interval: std::time::Duration::from_millis(100),
            ..Default::default()
        },
        // Schedules with seconds in their patterns keep the tests short.
        schedules: policyhub::config::ScheduleSettings {
            min_interval: std::time::Duration::from_secs(1),
        },
        ..Settings::default()
    }
}

/// The OPA signing key file in `data_dir`, written on first use: on
/// PostgreSQL a server serving OPA takes its key from a file, as replicas
/// sharing the directory share the key.
pub fn opa_key_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    let path = data_dir.join("opa-key.pem");
    if !path.exists() {
        let (_, pem) = policyhub::signing::OpaSigningKey::generate().unwrap();
        std::fs::write(&path, pem).unwrap();
    }
    path
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_on(TestDatabase::new(backend).await, |_| {}).await
}

/// A server as the quick start runs one: authentication on, its data
/// directory `data` inside `workdir` (where the commands are typed), the
/// HTTP and metrics ports on.
pub async fn quick_start_app(workdir: &std::path::Path) -> TestApp {
    let data_dir = workdir.join("data");
    let database = TestDatabase {
        backend: Backend::Sqlite,
        url: format!("sqlite://{}", data_dir.join("policyhub.db").display()),
        data_dir: tempfile::tempdir().unwrap(),
    };
    spawn_on(database, |settings| {
        settings.insecure = false;
        settings.data_dir = data_dir;
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// Starts a server on `database`, with settings adjusted by `configure`.
pub async fn spawn_on(database: TestDatabase, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings(&database);
    configure(&mut settings);
    let application = Application::build(settings)
        .await
        .expect("build the server");
    let address = application.address();
    let metrics_address = application.metrics_address();
    let http_address = application.http_address();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async {
        stopped.await.ok();
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the server");
    TestApp {
        address,
        metrics_address,
        http_address,
        database,
        policy: PolicyServiceClient::new(channel.clone()),
        bundle: BundleServiceClient::new(channel),
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    /// Stops the server gracefully and hands back its database.
    pub async fn stop(mut self) -> TestDatabase {
        self.shutdown.take().expect("running").send(()).ok();
        self.server
            .take()
            .expect("running")
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        let TestApp { database, .. } = self;
        database
    }

    /// A direct connection to the server's database, for SQL checks.
    pub async fn sql(&self) -> DatabaseConnection {
        Database::connect(&self.database.url)
            .await
            .expect("connect to the test database")
    }

    /// Every row that matters, as text: policies and their pointers, version
    /// states and digests, the event count and the revision. Two equal
    /// snapshots mean nothing changed.
    pub async fn db_state(&self) -> Vec<String> {
        let db = self.sql().await;
        let backend = db.get_database_backend();
        let mut state = Vec::new();
        for query in [
            "SELECT namespace || '/' || name || ' active=' || COALESCE(CAST(active_version AS TEXT), '-') \
             || ' rev=' || COALESCE(CAST(active_revision AS TEXT), '-') || ' schema=' || COALESCE(schema, '-') \
             AS line FROM policies ORDER BY namespace, name",
            "SELECT CAST(policy_id AS TEXT) || ' v' || CAST(version AS TEXT) || ' ' || state || ' ' \
             || COALESCE(label, '-') || ' ' || digest AS line FROM versions ORDER BY policy_id, version",
            "SELECT 'events=' || CAST(COUNT(*) AS TEXT) AS line FROM events",
            "SELECT 'revision=' || CAST(revision AS TEXT) AS line FROM revision_counter",
            "SELECT 'idempotency=' || CAST(COUNT(*) AS TEXT) AS line FROM idempotency_records",
        ] {
            for row in db
                .query_all_raw(Statement::from_string(backend, query))
                .await
                .expect("state query")
            {
                state.push(row.try_get::<String>("", "line").expect("line column"));
            }
        }
        db.close().await.ok();
        state
    }

    pub async fn try_draft(
        &self,
        namespace: &str,
        name: &str,
        body: Value,
    ) -> Result<proto::Version, Status> {
        let response = self
            .policy
            .clone()
            .draft(proto::DraftRequest {
                requirements: Vec::new(),
                namespace: namespace.into(),
                name: name.into(),
                body: Some(json_to_struct(&body)),
                change_notes: format!("draft of {name}"),
                idempotency_key: String::new(),
            })
            .await?;
        Ok(response.into_inner().version.expect("version"))
    }

    pub async fn draft(&self, namespace: &str, name: &str, body: Value) -> proto::Version {
        self.try_draft(namespace, name, body).await.expect("draft")
    }

    pub async fn try_publish(
        &self,
        request: proto::PublishRequest,
    ) -> Result<proto::PublishResponse, Status> {
        Ok(self.policy.clone().publish(request).await?.into_inner())
    }

    /// Publishes the open draft, optionally with a label and activation.
    pub async fn publish(
        &self,
        namespace: &str,
        name: &str,
        label: &str,
        activate: bool,
    ) -> proto::PublishResponse {
        self.try_publish(publish_request(namespace, name, label, activate))
            .await
            .expect("publish")
    }

    /// Drafts and publishes a body; returns the published version.
    pub async fn release(
        &self,
        namespace: &str,
        name: &str,
        body: Value,
        activate: bool,
    ) -> proto::Version {
        self.draft(namespace, name, body).await;
        self.publish(namespace, name, "", activate)
            .await
            .version
            .expect("version")
    }

    pub async fn try_activate(
        &self,
        targets: Vec<proto::ActivationTarget>,
    ) -> Result<proto::ActivateResponse, Status> {
        Ok(self
            .policy
            .clone()
            .activate(proto::ActivateRequest {
                targets,
                reason: "test activation".into(),
                idempotency_key: String::new(),
            })
            .await?
            .into_inner())
    }

    pub async fn get_active(&self, namespace: &str, name: &str) -> Result<proto::Bundle, Status> {
        Ok(self
            .bundle
            .clone()
            .get_active(proto::GetActiveRequest {
                namespace: namespace.into(),
                name: name.into(),
                as_of: None,
                allow_draft_fallback: false,
                runtime: None,
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    pub async fn versions(&self, namespace: &str, name: &str) -> Vec<proto::Version> {
        self.policy
            .clone()
            .list_versions(proto::ListVersionsRequest {
                namespace: namespace.into(),
                name: name.into(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .expect("list versions")
            .into_inner()
            .versions
    }

    /// `(version, state)` of every version of a policy, newest first.
    pub async fn states(&self, namespace: &str, name: &str) -> Vec<(u32, &'static str)> {
        self.versions(namespace, name)
            .await
            .iter()
            .map(|version| (version.version, state_name(version)))
            .collect()
    }

    pub async fn events(&self, namespace: &str, name: &str) -> Vec<proto::Event> {
        self.policy
            .clone()
            .list_events(proto::ListEventsRequest {
                namespace: namespace.into(),
                name: name.into(),
                kinds: Vec::new(),
                page_size: 500,
                page_token: String::new(),
                ..Default::default()
            })
            .await
            .expect("list events")
            .into_inner()
            .events
    }

    /// Opens a watch stream.
    pub async fn watch(
        &self,
        namespace: &str,
        names: &[&str],
        since_revision: u64,
    ) -> Streaming<WatchActiveResponse> {
        self.try_watch(namespace, names, since_revision)
            .await
            .expect("watch")
    }

    pub async fn try_watch(
        &self,
        namespace: &str,
        names: &[&str],
        since_revision: u64,
    ) -> Result<Streaming<WatchActiveResponse>, Status> {
        Ok(self
            .bundle
            .clone()
            .watch_active(proto::WatchActiveRequest {
                namespace: namespace.into(),
                names: names.iter().map(|name| name.to_string()).collect(),
                since_revision,
                runtime: None,
            })
            .await?
            .into_inner())
    }

    pub async fn jwks_json(&self) -> String {
        let keys = self
            .bundle
            .clone()
            .get_signing_keys(proto::GetSigningKeysRequest {})
            .await
            .expect("signing keys")
            .into_inner();
        serde_json::to_string(&policyhub::grpc::convert::jwks(&keys)).expect("a JWKS serializes")
    }
}

pub fn publish_request(
    namespace: &str,
    name: &str,
    label: &str,
    activate: bool,
) -> proto::PublishRequest {
    proto::PublishRequest {
        namespace: namespace.into(),
        name: name.into(),
        version: None,
        label: label.into(),
        activate,
        expected_active_version: None,
        expected_active_revision: None,
        reason: "test publish".into(),
        idempotency_key: String::new(),
    }
}

pub fn target(namespace: &str, name: &str, version: u32) -> proto::ActivationTarget {
    proto::ActivationTarget {
        namespace: namespace.into(),
        name: name.into(),
        selector: Some(proto::activation_target::Selector::Version(version)),
        expected_active_version: None,
        expected_active_revision: None,
    }
}

pub fn state_name(version: &proto::Version) -> &'static str {
    match proto::VersionState::try_from(version.state).expect("known state") {
        proto::VersionState::Draft => "DRAFT",
        proto::VersionState::Published => "PUBLISHED",
        proto::VersionState::Superseded => "SUPERSEDED",
        proto::VersionState::Discarded => "DISCARDED",
        proto::VersionState::Unspecified => "UNSPECIFIED",
    }
}

/// The next watch message, failing the test after ten seconds.
pub async fn next_message(stream: &mut Streaming<WatchActiveResponse>) -> WatchActiveResponse {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("a watch message within ten seconds")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

/// `(namespace/name, version, revision)` of every bundle of a message.
pub fn bundles_of(message: &WatchActiveResponse) -> Vec<(String, u32, u64)> {
    message
        .decode_bundles()
        .expect("bundles decode")
        .into_iter()
        .map(|bundle| {
            (
                format!("{}/{}", bundle.namespace, bundle.name),
                bundle.version,
                bundle.revision,
            )
        })
        .collect()
}

/// Asserts the code of a failed call and returns its message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> String {
    match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status.message().to_owned()
        }
    }
}

/// The real `policyhub serve --insecure` on a free loopback port with its
/// data in `data_dir` and `env` added to its environment, and a channel to it
/// once it answers.
pub async fn spawn_binary_server(
    data_dir: &std::path::Path,
    env: &[(&str, String)],
) -> (Reaped, Channel) {
    spawn_binary_server_on(free_port(), data_dir, env).await
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// [`spawn_binary_server`] on a given port, so a test can restart a server
/// where its clients expect it.
pub async fn spawn_binary_server_on(
    port: u16,
    data_dir: &std::path::Path,
    env: &[(&str, String)],
) -> (Reaped, Channel) {
    let mut command = std::process::Command::new(policyhub_binary());
    command
        .args(serve_args(port, data_dir))
        .envs(env.iter().map(|(key, value)| (*key, value)));
    start_serving(command, port).await
}

/// The arguments of `policyhub serve --insecure` on `port` over `data_dir`.
pub fn serve_args(port: u16, data_dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "serve",
        "--insecure",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ]
    .map(Into::into)
    .into();
    args.push(data_dir.into());
    args
}

/// Starts `command`, a server that will listen on `port`, and waits until
/// it serves.
pub async fn start_serving(mut command: std::process::Command, port: u16) -> (Reaped, Channel) {
    let server = command
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start policyhub serve");
    wait_until_serving(server, port).await
}

/// Waits until `server`, started to listen on `port`, serves.
pub async fn wait_until_serving(server: std::process::Child, port: u16) -> (Reaped, Channel) {
    let mut server = Reaped(server);
    // The port listens once the store is open, a moment before the server
    // serves: wait until it answers a health check, which it does once it
    // serves (and handles signals).
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            let answered = tonic_health::pb::health_client::HealthClient::new(channel.clone())
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if answered.is_ok() {
                return (server, channel);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Whether it ended (a port taken, a bad setting) or is still starting.
    let ended = server.try_wait().ok().flatten();
    panic!("policyhub serve did not answer on port {port}; exited: {ended:?}");
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a
/// test that fails, or ends without stopping it, leaves nothing running.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` (such as `-TERM`) to a child process.
pub fn send_signal(child: &std::process::Child, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill {signal} failed");
}

/// Stops a child server with SIGTERM and asserts that it exits cleanly.
pub async fn terminate(mut child: Reaped) {
    send_signal(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the server cleanly: {status:?}"
    );
}

/// The `policyhub` binary built for these tests.
pub fn policyhub_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_policyhub"))
}

/// Declares each scenario once per backend: `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await).await;
                }
            )*
        }
    };
}

/// Runs each scenario on SQLite and on PostgreSQL, handing it the backend
/// alone: for scenarios that start the server themselves, beside a process
/// of their own (Prometheus, Alertmanager) it must be configured with.
#[macro_export]
macro_rules! on_both_backends_given_the_backend {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// A PostgreSQL cluster of one test's own, which the test may stop and
/// start (the shared cluster of `./scripts/test` must keep running).
pub struct PrivateCluster {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
}

impl PrivateCluster {
    /// A new cluster, running, trusting local connections.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries are installed (./scripts/test installs them)")
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .max()
            .expect("a PostgreSQL version");
        let dir = tempfile::tempdir().unwrap();
        let cluster = PrivateCluster {
            bin,
            dir,
            port: free_port(),
        };
        if is_root() {
            let chown = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        cluster.run(
            "initdb",
            &["-D", &cluster.data(), "-U", "postgres", "-A", "trust"],
        );
        cluster.resume();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A PostgreSQL tool, as the `postgres` user when running as root
    /// (PostgreSQL refuses to run as root).
    fn tool(&self, tool: &str) -> std::process::Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self.tool(tool).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the (stopped) cluster.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the cluster at once, as a crash would.
    pub fn halt(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }

    /// The database URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// A new PostgreSQL test database that the server reaches through a
/// [`CuttableProxy`].
pub async fn postgres_behind_proxy() -> (TestDatabase, CuttableProxy) {
    let database = TestDatabase::new(Backend::Postgres).await;
    let (scheme_and_user, rest) = database.url.split_once('@').unwrap();
    let (host_port, path) = rest.split_once('/').unwrap();
    let proxy = CuttableProxy::start(host_port.parse().unwrap()).await;
    let database = TestDatabase {
        url: format!("{scheme_and_user}@{}/{path}", proxy.address),
        ..database
    };
    (database, proxy)
}

/// What a [`CuttableProxy`] does with its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Links {
    Forward,
    /// Open links closed, new ones refused.
    Cut,
    /// A black hole: links stay open, nothing moves until forwarded again.
    Stalled,
}

/// A loopback TCP proxy whose links can be cut (open connections closed,
/// new ones refused), stalled (a black hole) and restored.
#[derive(Clone)]
pub struct CuttableProxy {
    pub address: SocketAddr,
    links: std::sync::Arc<tokio::sync::watch::Sender<Links>>,
}

/// Copies `from` to `to` while the links forward; stops when they are cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut links: tokio::sync::watch::Receiver<Links>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = links.wait_for(|links| *links == Links::Cut) => return,
        };
        let Ok(length @ 1..) = read else { return };
        match links.wait_for(|links| *links != Links::Stalled).await {
            Ok(links) if *links == Links::Forward => {}
            _ => return,
        }
        if to.write_all(&buffer[..length]).await.is_err() {
            return;
        }
    }
}

impl CuttableProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (links, _) = tokio::sync::watch::channel(Links::Forward);
        let proxy = CuttableProxy {
            address: listener.local_addr().unwrap(),
            links: std::sync::Arc::new(links),
        };
        let links = proxy.links.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *links.borrow() == Links::Cut {
                    continue;
                }
                let links = links.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, links.clone()),
                        pump(server_read, client_write, links),
                    );
                });
            }
        });
        proxy
    }

    /// Closes every link and refuses new ones.
    pub fn cut(&self) {
        self.links.send_replace(Links::Cut);
    }

    /// Holds every byte, on open links and new ones, until restored.
    pub fn stall(&self) {
        self.links.send_replace(Links::Stalled);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.links.send_replace(Links::Forward);
    }
}

/// The lines a child writes to its piped standard output, as they come.
pub fn stdout_lines(
    child: &mut std::process::Child,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    lines_of(child.stdout.take().expect("a piped standard output"))
}

/// The lines of `pipe` (a child's piped output), as they come, read until
/// the receiver is dropped.
pub fn lines_of(
    pipe: impl std::io::Read + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// `promtool check metrics` of an exposition.
pub fn promtool_accepts(exposition: &str) {
    use std::io::Write as _;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (./scripts/test installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// The README, ARCHITECTURE.md and every page of the book.
pub fn documentation_pages() -> Vec<PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut directories = vec![root.join("docs/src")];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                directories.push(path);
            } else if path.extension().is_some_and(|extension| extension == "md") {
                pages.push(path);
            }
        }
    }
    pages
}
