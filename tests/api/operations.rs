//! What operators see: grpcurl with reflection, the README walk-through,
//! health, migrations and the refusal to run unauthenticated in the open.

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

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
use sea_orm::ConnectionTrait;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{
    Backend, TestDatabase, policyhub_binary, send_signal, spawn_app, spawn_binary_server, spawn_on,
    target, terminate, test_settings,
};
use crate::runtime_library::kill_9;

fn grpcurl(args: &[&str]) -> std::process::Output {
    Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl is not on PATH: run the tests with ./scripts/test, which installs it")
}

/// `-o json` prints each reply in the protobuf JSON mapping, exactly as
/// grpcurl prints the same reply: one jq filter serves both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_json_output_is_what_grpcurl_prints() {
    let app = spawn_app(Backend::Sqlite).await;
    app.release(
        "payments",
        "limits",
        serde_json::json!({"max": 2, "ratio": 0.5, "currencies": ["EUR"]}),
        true,
    )
    .await;
    let address = app.address.to_string();
    let server = format!("http://{address}");
    let parse = |bytes: &[u8]| -> serde_json::Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(bytes)))
    };
    for (cli, method, request) in [
        (
            vec!["get-version", "payments/limits", "--version", "1"],
            "policyhub.v1.PolicyService/GetVersion",
            r#"{"namespace": "payments", "name": "limits", "version": 1}"#,
        ),
        (
            vec!["list-events", "payments/limits"],
            "policyhub.v1.PolicyService/ListEvents",
            r#"{"namespace": "payments", "name": "limits"}"#,
        ),
        (
            vec!["list-policies", "payments"],
            "policyhub.v1.PolicyService/ListPolicies",
            r#"{"namespace": "payments"}"#,
        ),
        (
            vec!["get-signing-keys"],
            "policyhub.v1.BundleService/GetSigningKeys",
            "{}",
        ),
        (vec!["health"], "grpc.health.v1.Health/Check", "{}"),
        (
            vec!["health", "--service", "policyhub.liveness"],
            "grpc.health.v1.Health/Check",
            r#"{"service": "policyhub.liveness"}"#,
        ),
    ] {
        let ours = Command::new(policyhub_binary())
            .args(&cli)
            .args(["--server", &server, "-o", "json"])
            .output()
            .unwrap();
        assert!(
            ours.status.success(),
            "{cli:?}: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let theirs = grpcurl(&["-plaintext", "-d", request, &address, method]);
        assert!(
            theirs.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&theirs.stderr)
        );
        assert_eq!(
            parse(&ours.stdout),
            parse(&theirs.stdout),
            "{cli:?} against {method}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_describes_through_reflection() {
    let app = spawn_app(Backend::Sqlite).await;
    let address = app.address.to_string();
    let listed = grpcurl(&["-plaintext", &address, "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    for service in [
        "policyhub.v1.PolicyService",
        "policyhub.v1.BundleService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(service), "{listed}");
    }
    let described = grpcurl(&[
        "-plaintext",
        &address,
        "describe",
        "policyhub.v1.PolicyService.Rollback",
    ]);
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("Activates an older published version"),
        "{described}"
    );
    let message = grpcurl(&[
        "-plaintext",
        &address,
        "describe",
        "policyhub.v1.ActivationTarget",
    ]);
    let message = String::from_utf8_lossy(&message.stdout);
    assert!(message.contains("Compare-and-swap"), "{message}");
}

/// The shell block between the `<!-- NAME:start -->` and `<!-- NAME:end -->`
/// markers of the README or of a page of the book.
pub(crate) fn readme_block(name: &str) -> String {
    let page = marked_page(name);
    let start = page
        .find(&format!("<!-- {name}:start -->"))
        .expect("walk-through start marker");
    let end = page
        .find(&format!("<!-- {name}:end -->"))
        .expect("walk-through end marker");
    let block = &page[start..end];
    let fence = block.find("```sh").expect("a sh code block");
    let body_start = fence + block[fence..].find('\n').expect("the fence's line") + 1;
    let body_end = block.rfind("```").expect("the end of the code block");
    block[body_start..body_end].to_owned()
}

/// The text of the README or of the page of the book that holds the block
/// marked `name`.
pub(crate) fn marked_page(name: &str) -> String {
    let marker = format!("<!-- {name}:start -->");
    crate::helpers::documentation_pages()
        .into_iter()
        .map(|page| std::fs::read_to_string(page).unwrap())
        .find(|text| text.contains(&marker))
        .unwrap_or_else(|| panic!("no page holds the block {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_when_pasted() {
    // The server runs as the quick start runs it: authentication on, its
    // data directory `data` next to where the commands are typed.
    let workdir = tempfile::tempdir().unwrap();
    let database = TestDatabase {
        backend: Backend::Sqlite,
        url: format!(
            "sqlite://{}",
            workdir.path().join("data/policyhub.db").display()
        ),
        data_dir: tempfile::tempdir().unwrap(),
    };
    let data_dir = workdir.path().join("data");
    let app = spawn_on(database, |settings| {
        settings.insecure = false;
        settings.data_dir = data_dir;
    })
    .await;
    let bin_dir = policyhub_binary().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = readme_block("walkthrough");
    assert!(
        script.matches("grpcurl").count() >= 10,
        "the walk-through has draft, publish, activate, rollback"
    );
    let script = script.replace("localhost:50051", &app.address.to_string());
    let output = Command::new("sh")
        .arg("-e")
        .arg("-x")
        .arg("-c")
        .arg(&script)
        .current_dir(workdir.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the README walk-through failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("verified: payments/card-limits version 1 (1.0.0)"),
        "{stdout}"
    );
    let versions = app
        .policy
        .clone()
        .list_versions(policyhub::grpc::proto::ListVersionsRequest {
            namespace: "payments".into(),
            name: "card-limits".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await;
    // The test's own client has no token: the server really was secured.
    assert_eq!(versions.unwrap_err().code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_not_serving_while_the_database_is_unreachable() {
    let app = spawn_app(Backend::Postgres).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "policyhub.v1.PolicyService".into(),
                })
                .await
                .map(|response| response.into_inner().status)
        }
    };
    let wait_for = |wanted: ServingStatus| {
        let mut health = health.clone();
        async move {
            for _ in 0..100 {
                if status(&mut health).await.ok() == Some(wanted as i32) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("health never became {wanted:?}");
        }
    };
    wait_for(ServingStatus::Serving).await;

    let admin = sea_orm::Database::connect(std::env::var("POLICYHUB_TEST_DATABASE_URL").unwrap())
        .await
        .unwrap();
    let name = app.database.url.rsplit('/').next().unwrap().to_owned();
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();
    wait_for(ServingStatus::NotServing).await;
    let liveness = health
        .clone()
        .check(HealthCheckRequest {
            service: policyhub::startup::LIVENESS_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        liveness.status,
        ServingStatus::Serving as i32,
        "liveness does not follow the database"
    );
    let refused = app
        .try_draft("payments", "limits", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    wait_for(ServingStatus::Serving).await;
    app.draft("payments", "limits", serde_json::json!({})).await;
    let _ = &mut health;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_the_schema_and_is_repeatable() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let database = TestDatabase::new(backend).await;
        for _ in 0..2 {
            let output = Command::new(policyhub_binary())
                .args(["migrate", "--database-url", &database.url, "--data-dir"])
                .arg(database.data_dir.path())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // The server starts on the migrated database.
        spawn_on(database, |_| {}).await.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_is_refused_off_loopback_and_auth_is_on_by_default() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let open: Settings = Settings {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..test_settings(&database)
    };
    let error = Application::build(open)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("--insecure is refused on 0.0.0.0"),
        "{error}"
    );

    // With nothing configured, a local token secret is generated and every
    // call needs a token.
    let app = spawn_on(database, |settings| settings.insecure = false).await;
    let secret = app
        .database
        .data_dir
        .path()
        .join(policyhub::config::GENERATED_SECRET_FILE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let refused = app
        .try_draft("team", "a", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_that_returned_ok_survives_kill_minus_nine() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel) = spawn_binary_server(dir.path(), &[]).await;
    let mut policies = PolicyServiceClient::new(channel);
    policies
        .draft(proto::DraftRequest {
            namespace: "team".into(),
            name: "durable".into(),
            body: Some(json_to_struct(&serde_json::json!({"v": 1}))),
            ..Default::default()
        })
        .await
        .unwrap();
    let published = policies
        .publish(proto::PublishRequest {
            namespace: "team".into(),
            name: "durable".into(),
            activate: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    send_signal(&server, "-KILL");
    let mut server = server;
    server.wait().unwrap();

    let (restarted, channel) = spawn_binary_server(dir.path(), &[]).await;
    let active = BundleServiceClient::new(channel)
        .get_active(proto::GetActiveRequest {
            namespace: "team".into(),
            name: "durable".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((active.version, active.revision), (1, published.revision));
    terminate(restarted).await;
}

/// Activations from 8 concurrent callers share commits on SQLite (see
/// "Durability" in the README); a `kill -9` in the middle of them loses
/// none that was acknowledged. Each caller moves a policy of its own back
/// and forth, so after the restart each policy is at its last acknowledged
/// activation, or at the one in flight when the server died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_activations_from_concurrent_callers_survive_kill_minus_nine() {
    const CALLERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "POLICYHUB_QUOTAS__MUTATIONS_PER_SECOND",
        "100000".to_owned(),
    )];
    let (server, channel) = spawn_binary_server(dir.path(), &env).await;
    let mut policies = PolicyServiceClient::new(channel.clone());
    let names: Vec<String> = (0..CALLERS)
        .map(|caller| format!("load-{caller}"))
        .collect();
    for name in &names {
        for version in 1..=2 {
            policies
                .draft(proto::DraftRequest {
                    namespace: "team".into(),
                    name: name.clone(),
                    body: Some(json_to_struct(&serde_json::json!({"v": version}))),
                    ..Default::default()
                })
                .await
                .unwrap();
            policies
                .publish(proto::PublishRequest {
                    namespace: "team".into(),
                    name: name.clone(),
                    activate: version == 1,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    // Each caller's last acknowledged (version, revision).
    let acknowledged: Vec<_> = (0..CALLERS)
        .map(|_| Arc::new(Mutex::new((1u32, 0u64))))
        .collect();
    let callers: Vec<_> = names
        .iter()
        .zip(&acknowledged)
        .map(|(name, acknowledged)| {
            let (mut policies, name, acknowledged) =
                (policies.clone(), name.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let mut version = 2;
                while let Ok(reply) = policies
                    .activate(proto::ActivateRequest {
                        targets: vec![target("team", &name, version)],
                        reason: "load".into(),
                        idempotency_key: String::new(),
                    })
                    .await
                {
                    *acknowledged.lock().unwrap() = (version, reply.into_inner().revision);
                    version = 3 - version;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill_9(server);
    for caller in callers {
        caller.await.unwrap();
    }

    let (restarted, channel) = spawn_binary_server(dir.path(), &env).await;
    let mut bundles = BundleServiceClient::new(channel);
    let mut moved = 0;
    for (name, acknowledged) in names.iter().zip(&acknowledged) {
        let (version, revision) = *acknowledged.lock().unwrap();
        moved += u64::from(revision > 0);
        let active = bundles
            .get_active(proto::GetActiveRequest {
                namespace: "team".into(),
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            active.revision >= revision,
            "{name}: {active:?} lost revision {revision}"
        );
        if active.revision == revision {
            assert_eq!(active.version, version, "{name}");
        }
    }
    assert_eq!(
        moved, CALLERS as u64,
        "every caller had an activation acknowledged"
    );
    terminate(restarted).await;
}

/// The example runtime in the README is the one the build compiles
/// (`runtime/examples/enforcer.rs`), character for character.
#[test]
fn the_readme_example_runtime_is_the_compiled_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = marked_page("example-runtime");
    let block = page
        .split("<!-- example-runtime:start -->\n```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n<!-- example-runtime:end -->").next())
        .expect("a page has the example runtime block");
    let example = std::fs::read_to_string(root.join("runtime/examples/enforcer.rs")).unwrap();
    assert_eq!(block, example);
}

/// `listen_backlog` reaches the kernel: `ss` shows it as the listening
/// socket's Send-Q.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let (server, _channel) = crate::helpers::spawn_binary_server_on(
        port,
        dir.path(),
        &[("POLICYHUB_LISTEN_BACKLOG", "777".to_owned())],
    )
    .await;
    let listed = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&listed.stdout);
    let send_queue: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_queue, ["777"], "{text}");
    terminate(server).await;
}

/// Every watch stream is a connection: the server raises its soft limit on
/// open files to the hard limit at start, as etcd does, rather than refusing
/// runtimes at the usual 1,024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::free_port();
    let mut command = Command::new("prlimit");
    command
        .arg("--nofile=256:4096")
        .arg(policyhub_binary())
        .args(crate::helpers::serve_args(port, dir.path()));
    let (server, _channel) = crate::helpers::start_serving(command, port).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3..5], ["4096", "4096"], "{limits}");
    terminate(server).await;
}

/// A start that cannot succeed writes nothing: no data directory, no key,
/// no secret, no database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_writes_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port_in_use = taken.local_addr().unwrap().to_string();
    for (why, args) in [
        (
            "insecure off loopback",
            vec!["--insecure", "--listen", "0.0.0.0:0"],
        ),
        ("a port in use", vec!["--listen", port_in_use.as_str()]),
    ] {
        let output = Command::new(policyhub_binary())
            .arg("serve")
            .args(&args)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{why}: refused");
        assert!(
            !data_dir.exists(),
            "{why}: the data directory was created: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `migrate` offers only the flags it uses; `serve` keeps the listen flags.
#[test]
fn migrate_offers_only_the_flags_it_uses() {
    let help = |command: &str| {
        let output = Command::new(policyhub_binary())
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let migrate = help("migrate");
    for flag in ["--listen", "--metrics-listen", "--insecure"] {
        assert!(!migrate.contains(flag), "{flag} in {migrate}");
    }
    for flag in ["--config", "--data-dir", "--database-url", "--log-format"] {
        assert!(migrate.contains(flag), "{flag} missing from {migrate}");
    }
    let serve = help("serve");
    for flag in ["--listen", "--metrics-listen", "--insecure", "--data-dir"] {
        assert!(serve.contains(flag), "{flag} missing from {serve}");
    }
}

/// With a 1 s health interval, a PostgreSQL outage shows as NOT_SERVING
/// within about two intervals, and SERVING returns as soon as the database
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_a_postgres_outage_within_two_intervals() {
    let cluster = crate::helpers::PrivateCluster::start();
    let database = TestDatabase {
        backend: Backend::Postgres,
        url: cluster.url(),
        data_dir: tempfile::tempdir().unwrap(),
    };
    let app = spawn_on(database, |settings| {
        settings.health_check_interval = Duration::from_secs(1)
    })
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut status = async || {
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|reply| reply.into_inner().status())
    };
    assert_eq!(status().await.unwrap(), ServingStatus::Serving);
    cluster.halt();
    let stopped = std::time::Instant::now();
    loop {
        if status().await.unwrap() == ServingStatus::NotServing {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "NOT_SERVING in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to_not_serving = stopped.elapsed();
    cluster.resume();
    let resumed = std::time::Instant::now();
    loop {
        if status().await.unwrap() == ServingStatus::Serving {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "SERVING again in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to_serving = resumed.elapsed();
    println!(
        "health: NOT_SERVING {to_not_serving:?} after the outage began, SERVING {to_serving:?} after it ended"
    );
    assert!(
        to_not_serving < Duration::from_secs(4),
        "within about two 1 s intervals: {to_not_serving:?}"
    );
}

/// `idempotency_retention`: within it a retry replays the original
/// reply; after it the same key executes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_forgotten_after_the_retention() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.idempotency_retention = Some(Duration::from_secs(1));
    })
    .await;
    let draft = || policyhub::grpc::proto::DraftRequest {
        requirements: Vec::new(),
        namespace: "team".into(),
        name: "limits".into(),
        body: Some(policyhub::grpc::convert::json_to_struct(
            &serde_json::json!({"max": 1}),
        )),
        change_notes: String::new(),
        idempotency_key: "ci-run-7".into(),
    };
    let first = app
        .policy
        .clone()
        .draft(draft())
        .await
        .unwrap()
        .into_inner();
    let replayed = app
        .policy
        .clone()
        .draft(draft())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replayed.version, first.version,
        "a retry within the retention replays"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = app
            .policy
            .clone()
            .draft(draft())
            .await
            .unwrap()
            .into_inner();
        if again.version.as_ref().map(|v| v.version) == Some(2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key is forgotten in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Disk faults on a small tmpfs (mounting needs root, as `./scripts/test`
/// runs in CI): a full disk refuses writes with RESOURCE_EXHAUSTED or
/// UNAVAILABLE, never INTERNAL, and writes succeed again once space returns;
/// a read-only data directory is named, with the cause, at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_until_space_returns_and_a_read_only_one_is_named_at_start() {
    struct Mounted(tempfile::TempDir);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }
    let mount = Mounted(tempfile::tempdir().unwrap());
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mount.0.path())
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mounting a 4 MiB tmpfs needs root, as ./scripts/test has in CI"
    );
    let data_dir = tempfile::tempdir_in(mount.0.path()).unwrap();
    let database = TestDatabase {
        backend: Backend::Sqlite,
        url: format!(
            "sqlite://{}",
            data_dir.path().join("policyhub.db").display()
        ),
        data_dir,
    };
    let app = spawn_on(database, |_| {}).await;
    app.release("team", "limits", serde_json::json!({"max": 1}), true)
        .await;

    // Fill the disk.
    let filler = mount.0.path().join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
    }
    // A write may still fit in the space the write-ahead log already holds
    // (checkpointed, then written over); the disk refuses the ones after.
    let big = serde_json::json!({"filler": "x".repeat(256 * 1024)});
    let mut refusal = None;
    for _ in 0..8 {
        if let Err(status) = app.try_draft("team", "limits", big.clone()).await {
            refusal = Some(status);
            break;
        }
    }
    let refused = refusal.expect("a full disk refuses the write");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::ResourceExhausted | tonic::Code::Unavailable
        ),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("disk is full")
            || refused.message().contains("cannot write to its files"),
        "{}",
        refused.message()
    );

    std::fs::remove_file(&filler).unwrap();
    app.try_draft("team", "limits", big)
        .await
        .expect("writes succeed again once space returns");

    // A read-only data directory is named, with the cause, at start: a
    // second tmpfs, mounted read-only from the first.
    let read_only = Mounted(tempfile::tempdir().unwrap());
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,ro", "tmpfs"])
        .arg(read_only.0.path())
        .status()
        .unwrap();
    assert!(mounted.success());
    let read_only_dir = read_only.0.path().to_owned();
    let settings = Settings {
        data_dir: read_only_dir.clone(),
        database_url: None,
        ..test_settings(&TestDatabase::new(Backend::Sqlite).await)
    };
    let error = match Application::build(settings).await {
        Ok(_) => panic!("a read-only data directory is refused at start"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains(&read_only_dir.display().to_string()) && error.contains("Read-only"),
        "{error}"
    );
}
