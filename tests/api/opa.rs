//! policyhub as the bundle server of real OPAs (docs/src/guides/opa.md):
//! OPA v1.22.3, built by `scripts/install-opa`, downloads a namespace's
//! bundle with its own bundle plugin, verifies its signature with the key
//! policyhub publishes, and decides with it; an activation reaches every
//! waiting OPA through long polling, far inside the poll interval; a bundle
//! altered on its way is refused by OPA's own verification while the OPA
//! keeps deciding with the bundle it had; OPAs keep deciding while
//! policyhub is killed with SIGKILL, and take the next activation once it
//! is back. Bad requests get clear 4xx
//! answers, the same on both backends, and change nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use policyhub::config::{OpaNamespace, Settings};
use policyhub::grpc::proto;
use serde_json::{Value, json};

use crate::auth::{Issuer, secured_app_on, with_token};
use crate::helpers::{
    Backend, Reaped, TestApp, free_port, opa_key_file, send_signal, spawn_binary_server_on,
};
use policyhub::grpc::convert::json_to_struct;

type PolicyClient = proto::policy_service_client::PolicyServiceClient<tonic::transport::Channel>;

crate::on_both_backends_given_the_backend!(
    bad_bundle_requests_are_refused_with_a_clear_4xx_and_change_nothing,
);

/// The OPA `scripts/install-opa` built.
pub(crate) fn opa_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/opa/v1.22.3/opa");
    assert!(binary.exists(), "OPA is missing: run ./scripts/install-opa");
    binary
}

/// A server with authentication on and its HTTP port, serving `payments`
/// to OPA; `tune` changes its settings further.
pub(crate) async fn server(
    backend: Backend,
    issuer: &Issuer,
    tune: impl FnOnce(&mut Settings),
) -> TestApp {
    secured_app_on(backend, issuer, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.opa.namespaces = [(
            "payments".to_owned(),
            OpaNamespace {
                roots: vec!["payments".into()],
                ..OpaNamespace::default()
            },
        )]
        .into();
        settings.signing.opa_key_files = vec![opa_key_file(&settings.data_dir)];
        tune(settings);
    })
    .await
}

/// A [`server`] with a limit of 500 active, and the tokens of its admin and
/// of its OPAs (readers of `payments`).
pub(crate) struct Served {
    pub(crate) issuer: Issuer,
    pub(crate) app: TestApp,
    pub(crate) admin: String,
    pub(crate) reader: String,
}

pub(crate) async fn served(backend: Backend) -> Served {
    served_with(backend, |_| {}).await
}

/// [`served`], its settings changed by `tune`.
pub(crate) async fn served_with(backend: Backend, tune: impl FnOnce(&mut Settings)) -> Served {
    let issuer = Issuer::new();
    let app = server(backend, &issuer, tune).await;
    let admin = issuer.token("ci", &["payments:admin"]);
    let reader = issuer.token("opa", &["payments:reader"]);
    activate_limit(&app, &admin, 500).await;
    Served {
        issuer,
        app,
        admin,
        reader,
    }
}

pub(crate) const ALLOW: &str = "package payments.authz\n\n\
    default allow := false\n\n\
    allow if input.amount <= data.payments.limits.max\n";

/// Drafts, publishes and activates `payments/authz` with a limit of `max`,
/// as `token`'s holder (none for `""`). The data's note holds what Go's
/// JSON escapes differently from others (`<&>`, U+2028, a backspace), so
/// OPA's digest of it is checked on every bundle.
pub(crate) async fn activate(policy: &mut PolicyClient, token: &str, max: u64) {
    let body = json!({
        "modules": {"authz/allow.rego": ALLOW},
        "data": {"payments": {"limits": {"max": max, "note": "<&>\u{2028}\u{8}"}}},
    });
    release(policy, token, &body, true).await;
}

/// Drafts and publishes `body` as `payments/authz` as `token`'s holder,
/// activated when `activate`; returns its version.
pub(crate) async fn release(
    policy: &mut PolicyClient,
    token: &str,
    body: &Value,
    activate: bool,
) -> u32 {
    policy
        .draft(with_token(
            proto::DraftRequest {
                namespace: "payments".into(),
                name: "authz".into(),
                body: Some(json_to_struct(body)),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
    policy
        .publish(with_token(
            proto::PublishRequest {
                namespace: "payments".into(),
                name: "authz".into(),
                activate,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .version
}

pub(crate) async fn activate_limit(app: &TestApp, token: &str, max: u64) {
    activate(&mut app.policy.clone(), token, max).await;
}

/// A running OPA, killed when dropped.
pub(crate) struct Opa {
    _child: Reaped,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Opa {
    /// An OPA whose one service is `service` (a policyhub HTTP port's
    /// `/v1/opa`), following bundle `payments` with `token` (none for
    /// `""`), verifying it with `keys` (GetOpaSigningKeys), polling at most
    /// every minute and long-polling for 30 s. Named `runtime` (an id and
    /// labels), it names itself in its bundle resource and reports its
    /// status.
    pub(crate) async fn start(
        service: &str,
        token: &str,
        keys: &[proto::OpaSigningKey],
        runtime: Option<(&str, &[(&str, &str)])>,
    ) -> Opa {
        Opa::run(&Opa::config(service, token, keys, runtime))
    }

    /// The configuration [`start`](Self::start) runs an OPA with.
    pub(crate) fn config(
        service: &str,
        token: &str,
        keys: &[proto::OpaSigningKey],
        runtime: Option<(&str, &[(&str, &str)])>,
    ) -> Value {
        let keys: serde_json::Map<String, Value> = keys
            .iter()
            .map(|key| {
                (
                    key.key_id.clone(),
                    json!({"algorithm": key.algorithm, "key": key.public_key_pem}),
                )
            })
            .collect();
        let mut policyhub = json!({"url": service});
        if !token.is_empty() {
            policyhub["credentials"] = json!({"bearer": {"token": token}});
        }
        let resource = match runtime {
            Some((id, labels)) => labels.iter().fold(
                format!("bundles/payments?runtime.id={id}"),
                |resource, (key, value)| format!("{resource}&runtime.labels%5B{key}%5D={value}"),
            ),
            None => "bundles/payments".to_owned(),
        };
        let mut config = json!({
            "services": {"policyhub": policyhub},
            "bundles": {"payments": {
                "service": "policyhub",
                "resource": resource,
                "polling": {
                    "min_delay_seconds": 60,
                    "max_delay_seconds": 120,
                    "long_polling_timeout_seconds": 30,
                },
                "signing": {},
            }},
            "keys": keys,
        });
        if let Some((id, _)) = runtime {
            config["status"] =
                json!({"service": "policyhub", "partition_name": format!("payments/{id}")});
        }
        config
    }

    /// An OPA whose configuration is only `service` and discovery of
    /// namespace `payments` as `runtime`: bundles, keys and status come
    /// from policyhub.
    pub(crate) async fn discovering(service: &str, runtime: &str) -> Opa {
        Opa::run(&json!({
            "services": {"policyhub": {"url": service}},
            "discovery": {
                "resource": format!("discovery/payments?runtime.id={runtime}"),
                "polling": {
                    "min_delay_seconds": 60,
                    "max_delay_seconds": 120,
                    "long_polling_timeout_seconds": 30,
                },
            },
        }))
    }

    /// An OPA serving `files` (policies and data) with no service, once
    /// it answers.
    pub(crate) async fn serving(files: &[PathBuf]) -> Opa {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(opa_binary())
            .args(["run", "--server", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .args(files)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let opa = Opa {
            _child: Reaped(child),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        let started = Instant::now();
        while reqwest::get(format!("http://{}/health", opa.address))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "OPA did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        opa
    }

    /// An OPA run with `config`.
    pub(crate) fn run(config: &Value) -> Opa {
        // OPA reads YAML, of which JSON is a part.
        Opa::run_yaml(&config.to_string(), &[])
    }

    /// An OPA run with the YAML `config` and `env`, in a directory of its
    /// own (where it persists bundles).
    pub(crate) fn run_yaml(config: &str, env: &[(&str, &str)]) -> Opa {
        let dir = tempfile::tempdir().unwrap();
        let config_file = dir.path().join("config.yaml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let child = Command::new(opa_binary())
            .args(["run", "--server", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config-file")
            .arg(&config_file)
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Opa {
            _child: Reaped(child),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }

    /// What `data.payments.authz.allow` decides for `amount`, if OPA has
    /// a bundle.
    pub(crate) async fn allows(&self, amount: u64) -> Option<bool> {
        self.query("payments/authz/allow", &json!({"amount": amount}))
            .await?["result"]
            .as_bool()
    }

    /// OPA's answer to a query of `path` (`/v1/data/{path}`) with `input`:
    /// its result, and its decision id when it logs decisions.
    pub(crate) async fn query(&self, path: &str, input: &Value) -> Option<Value> {
        reqwest::Client::new()
            .post(format!("http://{}/v1/data/{path}", self.address))
            .json(&json!({ "input": input }))
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
    }

    /// Waits until `amount` is decided `allowed`, for at most `within`.
    pub(crate) async fn decides(&self, amount: u64, allowed: bool, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.allows(amount).await == Some(allowed) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "OPA did not decide {allowed} for {amount} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) async fn opa_keys(app: &TestApp, token: &str) -> Vec<proto::OpaSigningKey> {
    app.bundle
        .clone()
        .get_opa_signing_keys(with_token(proto::GetOpaSigningKeysRequest {}, token))
        .await
        .unwrap()
        .into_inner()
        .keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_opa_decides_with_an_activation_through_long_polling() {
    let Served {
        issuer: _issuer,
        app,
        admin,
        reader,
    } = served(Backend::Sqlite).await;
    let keys = opa_keys(&app, &reader).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].algorithm, "ES256");

    let service = format!("http://{}/v1/opa", app.http_address.unwrap());
    let mut opas = Vec::new();
    for _ in 0..3 {
        opas.push(Opa::start(&service, &reader, &keys, None).await);
    }
    for opa in &opas {
        opa.decides(400, true, Duration::from_secs(30)).await;
        assert_eq!(opa.allows(600).await, Some(false));
    }
    // Each OPA now holds a long poll open; the activation answers it. The
    // poll interval is a minute: only long polling decides within seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    activate_limit(&app, &admin, 1000).await;
    for opa in &opas {
        let took = opa.decides(600, true, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}

/// An HTTP proxy in front of `upstream` that, while `tamper` is set,
/// raises the limit inside every bundle it passes on, leaving the
/// signature as it was.
struct TamperingProxy {
    address: SocketAddr,
    tamper: Arc<AtomicBool>,
    tampered: Arc<AtomicUsize>,
}

impl TamperingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let tamper = Arc::new(AtomicBool::new(false));
        let tampered = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (tamper.clone(), tampered.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (client, flag, count) = (client.clone(), flag.clone(), count.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (client, flag, count) = (client.clone(), flag.clone(), count.clone());
                        async move { forward(&client, upstream, request, &flag, &count).await }
                    });
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                        .ok();
                });
            }
        });
        TamperingProxy {
            address,
            tamper,
            tampered,
        }
    }
}

async fn forward(
    client: &reqwest::Client,
    upstream: SocketAddr,
    request: hyper::Request<hyper::body::Incoming>,
    tamper: &AtomicBool,
    tampered: &AtomicUsize,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let mut forwarded = client.get(format!("http://{upstream}{}", request.uri()));
    for (name, value) in request.headers() {
        if name != "host" {
            forwarded = forwarded.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = forwarded.send().await.unwrap();
    let mut response = hyper::Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    let ok = answer.status() == reqwest::StatusCode::OK;
    let mut body = answer.bytes().await.unwrap();
    if ok && tamper.load(Ordering::SeqCst) {
        body = raise_the_limit(&body);
        tampered.fetch_add(1, Ordering::SeqCst);
    }
    Ok(response.body(Full::new(body)).unwrap())
}

/// The bundle with `data.json` rewritten to allow anything, every other
/// file (the signature too) as it was.
fn raise_the_limit(tarball: &[u8]) -> Bytes {
    use std::io::Read as _;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if path.ends_with("data.json") {
            bytes = json!({"payments": {"limits": {"max": u64::MAX}}})
                .to_string()
                .into_bytes();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, &path, bytes.as_slice())
            .unwrap();
    }
    Bytes::from(builder.into_inner().unwrap().finish().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_altered_on_its_way_is_refused_by_opa_which_keeps_its_own() {
    let Served {
        issuer: _issuer,
        app,
        admin,
        reader,
    } = served(Backend::Sqlite).await;
    let keys = opa_keys(&app, &reader).await;
    let proxy = TamperingProxy::start(app.http_address.unwrap()).await;
    let opa = Opa::start(
        &format!("http://{}/v1/opa", proxy.address),
        &reader,
        &keys,
        None,
    )
    .await;
    opa.decides(400, true, Duration::from_secs(30)).await;

    proxy.tamper.store(true, Ordering::SeqCst);
    activate_limit(&app, &admin, 1000).await;
    let started = Instant::now();
    while proxy.tampered.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "OPA asked for no bundle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // OPA refused the altered bundle (its data digest does not match the
    // signature) and decides with the one it verified before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(opa.allows(400).await, Some(true));
    assert_eq!(opa.allows(600).await, Some(false));
    assert_eq!(opa.allows(u64::MAX).await, Some(false));
}

/// `curl` of `path` on the HTTP port with `headers`: the status and body.
pub(crate) fn curl(app: &TestApp, path: &str, headers: &[String]) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .arg(format!("http://{}{path}", app.http_address.unwrap()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

async fn bad_bundle_requests_are_refused_with_a_clear_4xx_and_change_nothing(backend: Backend) {
    let Served {
        issuer,
        app,
        admin: _,
        reader,
    } = served(backend).await;
    let stranger = issuer.token("other", &["billing:reader"]);
    let before = app.db_state().await;
    let bearer = |token: &str| format!("Authorization: Bearer {token}");

    let (code, _) = curl(&app, "/v1/opa/bundles/payments", &[bearer(&reader)]);
    assert_eq!(code, 200);
    let cases: [(&str, Vec<String>, u16, &str); 8] = [
        ("/v1/opa/bundles/payments", vec![], 401, "no credentials"),
        (
            "/v1/opa/bundles/payments",
            vec![bearer("not-a-token")],
            401,
            "invalid token",
        ),
        (
            "/v1/opa/bundles/payments",
            vec![bearer(&stranger)],
            403,
            "needs the reader role there",
        ),
        (
            "/v1/opa/bundles/nowhere",
            vec![bearer(&issuer.token("opa", &["*:reader"]))],
            404,
            "is not served to OPA",
        ),
        (
            "/v1/opa/bundles/payments",
            vec![bearer(&reader), "Prefer: wait=61".into()],
            400,
            "whole seconds from 0 to 60",
        ),
        (
            "/v1/opa/bundles/payments",
            vec![
                bearer(&reader),
                "Prefer: modes=snapshot,delta;wait=soon".into(),
            ],
            400,
            "Prefer: wait=soon",
        ),
        (
            "/v1/opa/discovery/nowhere",
            vec![bearer(&issuer.token("opa", &["*:reader"]))],
            404,
            "is not served to OPA",
        ),
        (
            "/v1/opa/discovery/payments?runtime.id=OPA_1",
            vec![bearer(&reader)],
            400,
            "runtime id",
        ),
    ];
    for (path, headers, expected, said) in cases {
        let (code, body) = curl(&app, path, &headers);
        assert_eq!(code, expected, "{path} {headers:?}: {body}");
        assert!(body.contains(said), "{path} {headers:?}: {body}");
    }
    // A reader of a namespace not served to OPA is told so.
    let (code, body) = curl(
        &app,
        "/v1/opa/bundles/billing",
        &[bearer(&issuer.token("opa", &["billing:reader"]))],
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("billing is not served to OPA"), "{body}");
    assert_eq!(app.db_state().await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_bundle_is_304_and_a_long_poll_answers_the_activation() {
    let Served {
        issuer: _issuer,
        app,
        admin,
        reader,
    } = served(Backend::Sqlite).await;
    let url = format!(
        "http://{}/v1/opa/bundles/payments",
        app.http_address.unwrap()
    );
    let client = reqwest::Client::new();
    let first = client.get(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["content-type"],
        "application/vnd.openpolicyagent.bundles"
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let again = client
        .get(&url)
        .bearer_auth(&reader)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    // A list naming it after another tag, `*` and a weak tag meet it too
    // (RFC 9110 §13.1.2); a tag held but stale does not.
    for (listed, status) in [
        (format!("\"stale\", {etag}"), 304),
        ("*".to_owned(), 304),
        (format!("W/{etag}"), 304),
        ("\"stale\"".to_owned(), 200),
    ] {
        let answer = client
            .get(&url)
            .bearer_auth(&reader)
            .header("if-none-match", &listed)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "If-None-Match: {listed}");
    }

    let poll = client
        .get(&url)
        .bearer_auth(&reader)
        .header("if-none-match", &etag)
        .header("prefer", "modes=snapshot,delta;wait=30")
        .send();
    let activation = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        activate_limit(&app, &admin, 1000).await;
    };
    let started = Instant::now();
    let (answer, ()) = tokio::join!(poll, activation);
    let answer = answer.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_ne!(answer.headers()["etag"], etag.as_str());
    // The new bundle: version 2 of the policy, as its manifest says.
    let body = answer.bytes().await.unwrap();
    let manifest = files(&body)
        .into_iter()
        .find(|(name, _)| name == ".manifest")
        .map(|(_, bytes)| serde_json::from_slice::<Value>(&bytes).unwrap())
        .unwrap();
    assert_eq!(
        manifest["metadata"]["policyhub"]["policies"],
        json!({"authz": 2})
    );
}

/// A held long poll is an RPC like any other: answered, it counts under
/// `GetOpaBundle` with OK; given up by its client while held, with
/// CANCELLED, as a watch stream a runtime drops does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bundle_polls_count_in_the_rpc_metrics_answered_or_given_up() {
    let Served {
        issuer: _issuer,
        app,
        admin: _,
        reader,
    } = served_with(Backend::Sqlite, |settings| {
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = app.metrics_address.unwrap();
    // The registry is the process's, shared with the tests running beside
    // this one: count what these polls add.
    let count = async |code: &str| {
        let series = format!(
            r#"policyhub_rpc_requests_total{{method="/policyhub.v1.BundleService/GetOpaBundle",code="{code}"}}"#
        );
        crate::observability::count_of(&crate::observability::scrape(metrics).await, &series)
    };
    let url = format!(
        "http://{}/v1/opa/bundles/payments",
        app.http_address.unwrap()
    );
    let client = reqwest::Client::new();
    let (answered, cancelled) = (count("0").await, count("1").await);
    let first = client.get(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        count("0").await >= answered + 1.0,
        "the answered poll counted"
    );

    let held = client
        .get(&url)
        .bearer_auth(&reader)
        .header("if-none-match", &etag)
        .header("prefer", "wait=30")
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(held.unwrap_err().is_timeout(), "the poll was held");
    let mut given_up = 0.0;
    for _ in 0..50 {
        given_up = count("1").await;
        if given_up > cancelled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        given_up >= cancelled + 1.0,
        "the given-up poll counted as CANCELLED"
    );
}

/// A bundle's files by name.
fn files(tarball: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read as _;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opas_keep_deciding_while_policyhub_is_killed_and_resume_when_it_is_back() {
    let data = tempfile::tempdir().unwrap();
    let (port, http_port) = (free_port(), free_port());
    let env = [
        ("POLICYHUB_HTTP_LISTEN", format!("127.0.0.1:{http_port}")),
        (
            "POLICYHUB_OPA__NAMESPACES__PAYMENTS__ROOTS",
            r#"["payments"]"#.to_owned(),
        ),
    ];
    let (server, channel) = spawn_binary_server_on(port, data.path(), &env).await;
    let app = |channel: tonic::transport::Channel| {
        (
            proto::policy_service_client::PolicyServiceClient::new(channel.clone()),
            proto::bundle_service_client::BundleServiceClient::new(channel),
        )
    };
    let (mut policy, mut bundle) = app(channel);
    activate(&mut policy, "", 500).await;
    let keys = bundle
        .get_opa_signing_keys(proto::GetOpaSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let service = format!("http://127.0.0.1:{http_port}/v1/opa");
    let opas = [
        Opa::start(&service, "", &keys, None).await,
        Opa::start(&service, "", &keys, None).await,
    ];
    for opa in &opas {
        opa.decides(400, true, Duration::from_secs(30)).await;
    }

    send_signal(&server, "-KILL");
    let mut server = server;
    server.wait().unwrap();
    for _ in 0..5 {
        for opa in &opas {
            assert_eq!(opa.allows(400).await, Some(true));
            assert_eq!(opa.allows(600).await, Some(false));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back on its ports and data (the OPA signing key with it), the server
    // answers the OPAs' next attempt with the new activation.
    let (mut server, channel) = spawn_binary_server_on(port, data.path(), &env).await;
    let (mut policy, _) = app(channel);
    activate(&mut policy, "", 1000).await;
    for opa in &opas {
        opa.decides(600, true, Duration::from_secs(20)).await;
    }
    server.kill().ok();
    server.wait().ok();
}

/// OPAs configured by discovery alone name themselves as policyhub's
/// discovery bundle says, and take a new signing key without a restart of
/// theirs or of policyhub's: the key files rewritten with a new key first
/// and SIGHUP, policyhub signs with the new key and publishes both in the
/// discovery bundle, which wakes the OPAs' held discovery requests. A key
/// file that does not read leaves the keys as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_key_reaches_opas_through_discovery_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (port, http_port) = (free_port(), free_port());
    let [signer_file, previous_file] =
        ["opa-signer.pem", "opa-previous.pem"].map(|name| data.path().join(name));
    let generate = || policyhub::signing::OpaSigningKey::generate().unwrap();
    let [(_, older_pem), (signer, signer_pem)] = [generate(), generate()];
    std::fs::write(&previous_file, &older_pem).unwrap();
    std::fs::write(&signer_file, &signer_pem).unwrap();
    let env = [
        ("POLICYHUB_HTTP_LISTEN", format!("127.0.0.1:{http_port}")),
        (
            "POLICYHUB_OPA__NAMESPACES__PAYMENTS__ROOTS",
            r#"["payments"]"#.to_owned(),
        ),
        (
            "POLICYHUB_SIGNING__OPA_KEY_FILES",
            json!([signer_file, previous_file]).to_string(),
        ),
    ];
    let (server, channel) = spawn_binary_server_on(port, data.path(), &env).await;
    let mut policy = proto::policy_service_client::PolicyServiceClient::new(channel.clone());
    let bundles = proto::bundle_service_client::BundleServiceClient::new(channel);
    let key_ids = async || {
        let keys = bundles
            .clone()
            .get_opa_signing_keys(proto::GetOpaSigningKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        keys.into_iter().map(|key| key.key_id).collect::<Vec<_>>()
    };
    assert_eq!(key_ids().await[0], signer.key_id());
    activate(&mut policy, "", 500).await;
    let service = format!("http://127.0.0.1:{http_port}/v1/opa");
    let opas = [
        Opa::discovering(&service, "opa-0").await,
        Opa::discovering(&service, "opa-1").await,
    ];
    for opa in &opas {
        opa.decides(400, true, Duration::from_secs(30)).await;
    }
    let runtimes = policy
        .list_runtimes(proto::ListRuntimesRequest {
            namespace: "payments".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runtimes;
    let ids: Vec<&str> = runtimes.iter().map(|runtime| runtime.id.as_str()).collect();
    assert_eq!(ids, ["opa-0", "opa-1"], "named as discovery says");
    // Each sends its decisions, as discovery configured its decision logs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let decisions = policy
            .list_decisions(proto::ListDecisionsRequest {
                namespace: "payments".into(),
                path: "payments/authz/allow".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .decisions;
        let mut senders: Vec<&str> = decisions.iter().map(|d| d.runtime_id.as_str()).collect();
        senders.sort_unstable();
        senders.dedup();
        if senders == ["opa-0", "opa-1"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the OPAs sent no decision logs: {senders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new key signs, the one before is still published.
    let (next, next_pem) = generate();
    std::fs::write(&previous_file, &signer_pem).unwrap();
    std::fs::write(&signer_file, &next_pem).unwrap();
    send_signal(&server, "-HUP");
    let rotated = vec![next.key_id().to_owned(), signer.key_id().to_owned()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while key_ids().await != rotated {
        assert!(Instant::now() < deadline, "the keys were not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    activate(&mut policy, "", 1000).await;
    for opa in &opas {
        opa.decides(600, true, Duration::from_secs(30)).await;
    }

    // A key file that does not read changes nothing.
    std::fs::write(&signer_file, "not a key").unwrap();
    send_signal(&server, "-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(key_ids().await, rotated);
    activate(&mut policy, "", 2000).await;
    for opa in &opas {
        opa.decides(1500, true, Duration::from_secs(30)).await;
    }
    let mut server = server;
    server.kill().ok();
    server.wait().ok();
}

/// `policyhub get-opa-bundle` writes the bundle OPA's own tooling reads (`opa
/// inspect` names its revision and roots), and `get-opa-signing-keys -o
/// json` gives the PEM OPA's keys setting takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_the_bundle_opa_inspects_and_lists_its_keys() {
    let Served {
        issuer,
        app,
        admin,
        reader: _,
    } = served(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.tar.gz");
    let server = format!("http://{}", app.address);
    let env = [
        ("POLICYHUB_SERVER", server.as_str()),
        ("POLICYHUB_TOKEN", admin.as_str()),
    ];
    let path = file.to_str().unwrap();
    let wrote = crate::cli::policyhub_with(&env, &["get-opa-bundle", "payments", "-f", path]);
    assert_eq!(wrote.code, 0, "{}", wrote.stderr);
    assert!(wrote.stdout.contains("revision"), "{}", wrote.stdout);
    let inspected = Command::new(opa_binary())
        .args(["inspect", "--format", "json", path])
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{inspected:?}");
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["manifest"]["roots"], json!(["payments"]));
    assert!(
        inspected["manifest"]["revision"].as_str().is_some(),
        "{inspected}"
    );

    let keys = crate::cli::policyhub_with(&env, &["get-opa-signing-keys", "-o", "json"]);
    assert_eq!(keys.code, 0, "{}", keys.stderr);
    let keys: Value = serde_json::from_str(&keys.stdout).unwrap();
    assert_eq!(keys["keys"][0]["algorithm"], "ES256");
    assert!(
        keys["keys"][0]["publicKeyPem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    // The configuration an OPA named opa-1 discovers: its bundle names it,
    // and every published key verifies it.
    let discovery = dir.path().join("discovery.tar.gz");
    let wrote = crate::cli::policyhub_with(
        &env,
        &[
            "get-opa-discovery",
            "payments",
            "--runtime-id",
            "opa-1",
            "-f",
            discovery.to_str().unwrap(),
        ],
    );
    assert_eq!(wrote.code, 0, "{}", wrote.stderr);
    let files = files(&std::fs::read(&discovery).unwrap());
    let (_, data) = files.iter().find(|(name, _)| name == "data.json").unwrap();
    let config: Value = serde_json::from_slice(data).unwrap();
    assert_eq!(
        config["bundles"]["payments"]["resource"],
        "bundles/payments?runtime.id=opa-1"
    );
    assert_eq!(config["status"]["partition_name"], "payments/opa-1");
    assert_eq!(config["decision_logs"]["resource"], "logs/payments/opa-1");
    let key_id = keys["keys"][0]["keyId"].as_str().unwrap();
    assert_eq!(config["bundles"]["payments"]["signing"]["keyid"], key_id);
    assert_eq!(config["keys"][key_id]["algorithm"], "ES256");

    let everywhere = issuer.token("ops", &["*:reader"]);
    let env = [
        ("POLICYHUB_SERVER", server.as_str()),
        ("POLICYHUB_TOKEN", everywhere.as_str()),
    ];
    let unknown = crate::cli::policyhub_with(&env, &["get-opa-bundle", "billing", "-f", path]);
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("not served to OPA"),
        "{}",
        unknown.stderr
    );
}
