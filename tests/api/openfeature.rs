//! The agent's OFREP port read by the official OpenFeature SDKs and their
//! OFREP providers, JavaScript (`@openfeature/server-sdk` with
//! `@openfeature/ofrep-provider`) and Python (`openfeature-sdk` with
//! `openfeature-provider-ofrep`), against the real server and agent: typed
//! reads, each error, the next activation on the first evaluation after it
//! reached the agent, the cache while the server is down, and the guide's
//! examples. `./scripts/test` installs the SDKs into
//! `target/tools/openfeature` (`scripts/install-openfeature`).

use std::{path::PathBuf, process::Command};

use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::agent::{Agent, release, request, server, until_revision};
use crate::helpers::{free_port, publish_request};
use crate::runtime_library::kill_9;
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{self, policy_service_client::PolicyServiceClient},
};

/// The agent's API token, which OFREP asks for like every other route.
const TOKEN: &str = "ofrep-test-token";

/// An OpenFeature SDK with its OFREP provider.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    JavaScript,
    Python,
}

const BOTH: [Sdk; 2] = [Sdk::JavaScript, Sdk::Python];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/install-openfeature` put the SDKs.
fn tools() -> PathBuf {
    let tools = root().join("target/tools/openfeature");
    assert!(
        tools.join("node/node_modules").is_dir() && tools.join("python").is_dir(),
        "the OpenFeature SDKs are missing: run ./scripts/install-openfeature"
    );
    tools
}

impl Sdk {
    /// Runs `script` (its path and arguments) in this SDK's language
    /// against `agent` with `token`: its standard output, lines of JSON.
    fn run(self, agent: &Agent, token: &str, script: &[String]) -> Vec<Value> {
        let tools = tools();
        let mut command = match self {
            Sdk::JavaScript => {
                let mut command = Command::new("node");
                command.env("OPENFEATURE_NODE_MODULES", tools.join("node/node_modules"));
                command
            }
            Sdk::Python => {
                let mut command = Command::new("python3");
                command.env("PYTHONPATH", tools.join("python"));
                command
            }
        };
        let output = command
            .args(script)
            .env("AGENT", agent.url(""))
            .env("AGENT_TOKEN", token)
            .output()
            .unwrap_or_else(|error| panic!("running {self:?}: {error}"));
        assert!(
            output.status.success(),
            "{self:?} {script:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    }

    /// The details of each of `evaluations` (see tests/openfeature).
    fn evaluate(self, agent: &Agent, token: &str, evaluations: &Value) -> Vec<Value> {
        let script = match self {
            Sdk::JavaScript => "tests/openfeature/evaluate.mjs",
            Sdk::Python => "tests/openfeature/evaluate.py",
        };
        let script = root().join(script).display().to_string();
        self.run(agent, token, &[script, evaluations.to_string()])
    }
}

/// Drafts and publishes `body` as the next version of payments/`name`,
/// labelled `label`, active; its revision.
async fn publish(channel: &Channel, name: &str, body: Value, label: &str) -> u64 {
    let mut client = PolicyServiceClient::new(channel.clone());
    client
        .draft(proto::DraftRequest {
            namespace: "payments".into(),
            name: name.into(),
            body: Some(json_to_struct(&body)),
            ..Default::default()
        })
        .await
        .expect("draft");
    client
        .publish(publish_request("payments", name, label, true))
        .await
        .expect("publish")
        .into_inner()
        .revision
}

/// A successful evaluation's details, as both SDKs report them.
fn value(value: Value, variant: &str, metadata: &Value) -> Value {
    json!({"value": value, "variant": variant, "reason": "STATIC", "errorCode": null,
           "metadata": metadata})
}

/// A failed evaluation's details: the default, and the error code.
fn failed(default: Value, code: &str) -> Value {
    json!({"value": default, "variant": null, "reason": "ERROR", "errorCode": code,
           "metadata": {}})
}

fn read(kind: &str, key: &str, default: Value) -> Value {
    json!({"type": kind, "key": key, "default": default})
}

/// An agent following payments of the server at `endpoint`, its cache in
/// `dir`, behind `TOKEN`; it tries a lost server again within a second.
fn spawn_agent(endpoint: &str, dir: &std::path::Path) -> Agent {
    let token_file = dir.join("api.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    Agent::spawn(
        endpoint,
        "payments",
        dir,
        &[
            "--api-token-file",
            token_file.to_str().unwrap(),
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "1s",
        ],
    )
}

/// Waits until the agent's stream to the server is open, or is not.
async fn until_connected(agent: &Agent, connected: bool) {
    for _ in 0..300 {
        let health = agent.healthy().await;
        if health["namespaces"]["payments"]["connected"] == json!(connected) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the agent's stream never became connected: {connected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_official_providers_read_typed_values_each_error_the_next_activation_and_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (server, channel, server_port) = server(dir.path()).await;
    let endpoint = format!("http://127.0.0.1:{server_port}");
    let body = json!({"maxAmount": 500, "limits": {"daily": 1000, "rate": 2.5},
                      "enabled": true, "tier": "gold", "off": null, "regions": ["eu", "us"]});
    release(&channel, "payments", "fraud", json!({"threshold": 0.9})).await;
    let revision = publish(&channel, "card-limits", body.clone(), "1.0.0").await;
    let agent = spawn_agent(&endpoint, dir.path());
    agent.healthy().await;
    let digest = proto::bundle_service_client::BundleServiceClient::new(channel.clone())
        .get_active(proto::GetActiveRequest {
            namespace: "payments".into(),
            name: "card-limits".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .digest;
    let metadata = |source: &str| json!({"version": 1, "revision": revision.to_string(), "digest": digest, "source": source});

    // Typed reads, and each error, the same through both providers.
    let evaluations = json!([
        read("integer", "payments/card-limits/limits/daily", json!(0)),
        read("float", "payments/card-limits/limits/rate", json!(0.5)),
        read("boolean", "payments/card-limits/enabled", json!(false)),
        read("string", "payments/card-limits/tier", json!("none")),
        read("object", "payments/card-limits", json!({})),
        // An array is a structure both providers read as an object flag.
        read("object", "payments/card-limits/regions", json!({})),
        // The context changes no value, whatever its targeting key.
        {"type": "string", "key": "payments/card-limits/tier", "default": "none",
         "context": {"targetingKey": "user-1", "plan": "pro"}},
        {"type": "string", "key": "payments/card-limits/tier", "default": "none",
         "context": {"targetingKey": "user-2"}},
        read("boolean", "payments/card-limits/tier", json!(false)),
        // A raw `#` ends the URL's path: the whole body comes back, which
        // is no string. Hence the pointer after a `/`.
        read("string", "payments/card-limits#/tier", json!("none")),
        read("object", "payments/card-limits/off", json!({})),
        read("integer", "payments/card-limits/limits/weekly", json!(7)),
        read("object", "payments/absent", json!({})),
        read("object", "elsewhere/card-limits", json!({})),
        read("string", "payments/card-limits/a~2", json!("none")),
        {"type": "string", "key": "payments/card-limits/tier", "default": "none",
         "context": {"targetingKey": 5}},
    ]);
    let expected = vec![
        value(json!(1000), "1.0.0", &metadata("server")),
        value(json!(2.5), "1.0.0", &metadata("server")),
        value(json!(true), "1.0.0", &metadata("server")),
        value(json!("gold"), "1.0.0", &metadata("server")),
        value(body.clone(), "1.0.0", &metadata("server")),
        value(json!(["eu", "us"]), "1.0.0", &metadata("server")),
        value(json!("gold"), "1.0.0", &metadata("server")),
        value(json!("gold"), "1.0.0", &metadata("server")),
        failed(json!(false), "TYPE_MISMATCH"),
        failed(json!("none"), "TYPE_MISMATCH"),
        failed(json!({}), "FLAG_NOT_FOUND"),
        failed(json!(7), "FLAG_NOT_FOUND"),
        failed(json!({}), "FLAG_NOT_FOUND"),
        failed(json!({}), "FLAG_NOT_FOUND"),
        failed(json!("none"), "PARSE_ERROR"),
        failed(json!("none"), "INVALID_CONTEXT"),
    ];
    for sdk in BOTH {
        assert_eq!(
            sdk.evaluate(&agent, TOKEN, &evaluations),
            expected,
            "{sdk:?}"
        );
        // Behind the API's token, as every route.
        assert_eq!(
            sdk.evaluate(
                &agent,
                "not-the-token",
                &json!([read("integer", "payments/card-limits/maxAmount", json!(1))])
            ),
            vec![failed(json!(1), "GENERAL")],
            "{sdk:?}"
        );
    }

    // Bulk, through the JavaScript provider's own OFREP client: every
    // policy as an object flag, then 304 while nothing changed.
    let bulk = Sdk::JavaScript.evaluate(&agent, TOKEN, &json!([{"bulk": true}]));
    let etag = bulk[0]["etag"].as_str().expect("an ETag").to_owned();
    assert_eq!(
        bulk,
        vec![json!({"status": 200, "etag": etag,
                    "keys": ["payments/card-limits", "payments/fraud"]})]
    );
    assert_eq!(
        Sdk::JavaScript.evaluate(&agent, TOKEN, &json!([{"bulk": true, "etag": etag}])),
        vec![json!({"status": 304, "etag": etag, "keys": null})]
    );

    // The next activation, without a label, on the first evaluation after
    // it reached the agent; bulk answers it whole for the old ETag.
    let mut next = body.clone();
    next["maxAmount"] = json!(900);
    let revision = publish(&channel, "card-limits", next, "").await;
    until_revision(&agent, revision).await;
    for sdk in BOTH {
        let details = sdk.evaluate(
            &agent,
            TOKEN,
            &json!([read("integer", "payments/card-limits/maxAmount", json!(0))]),
        );
        assert_eq!(details[0]["value"], 900, "{sdk:?}");
        assert_eq!(details[0]["variant"], "v2", "{sdk:?}");
        assert_eq!(details[0]["metadata"]["revision"], revision.to_string());
    }
    let bulk = Sdk::JavaScript.evaluate(&agent, TOKEN, &json!([{"bulk": true, "etag": etag}]));
    assert_eq!(bulk[0]["status"], 200, "{bulk:?}");
    assert_ne!(bulk[0]["etag"], json!(etag));

    // The server down: what the agent holds is no longer the server's
    // word, and the reason says so (STALE), while the metadata keeps where
    // it came from. Then the agent started again: its cache answers, STALE
    // too. Then the server back: the agent follows it live again, so the
    // same state, read from the cache but confirmed by the stream resumed
    // from its revision, is STATIC.
    let maximum = json!([read("integer", "payments/card-limits/maxAmount", json!(0))]);
    let read_by_both = |agent: &Agent| {
        BOTH.map(|sdk| {
            let details = sdk.evaluate(agent, TOKEN, &maximum).remove(0);
            assert_eq!(details["value"], 900, "{sdk:?}: {details}");
            (
                details["reason"].clone(),
                details["metadata"]["source"].clone(),
            )
        })
    };
    kill_9(server);
    until_connected(&agent, false).await;
    assert_eq!(
        read_by_both(&agent),
        [
            (json!("STALE"), json!("server")),
            (json!("STALE"), json!("server"))
        ],
        "the server gone"
    );
    agent.kill_9();
    let agent = spawn_agent(&endpoint, dir.path());
    agent.healthy().await;
    assert_eq!(
        read_by_both(&agent),
        [
            (json!("STALE"), json!("cache")),
            (json!("STALE"), json!("cache"))
        ],
        "from the cache, the server gone"
    );
    let env = [("POLICYHUB_WATCH__HEARTBEAT_INTERVAL", "300ms".to_owned())];
    let (_restarted, _) =
        crate::helpers::spawn_binary_server_on(server_port, &dir.path().join("server"), &env).await;
    until_connected(&agent, true).await;
    assert_eq!(
        read_by_both(&agent),
        [
            (json!("STATIC"), json!("cache")),
            (json!("STATIC"), json!("cache"))
        ],
        "from the cache, the server followed live again"
    );

    // An agent that holds no verified state yet: GENERAL, not a value.
    let empty = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let waiting = spawn_agent(&dead, empty.path());
    for _ in 0..100 {
        if request(waiting.port, "GET", "/healthz", &[], "")
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for sdk in BOTH {
        assert_eq!(
            sdk.evaluate(
                &waiting,
                TOKEN,
                &json!([read("string", "payments/card-limits/tier", json!("none"))])
            ),
            vec![failed(json!("none"), "GENERAL")],
            "{sdk:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_providers_never_send_is_answered_as_ofrep_says() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, channel, server_port) = server(dir.path()).await;
    publish(
        &channel,
        "card-limits",
        json!({"limits": {"daily": 10}}),
        "",
    )
    .await;
    let agent = spawn_agent(&format!("http://127.0.0.1:{server_port}"), dir.path());
    agent.healthy().await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let post = |path: &'static str, body: &'static str| {
        let port = agent.port;
        async move { request(port, "POST", path, &auth, body).await.unwrap() }
    };

    // No body, no context: a value. An encoded `#` before the pointer.
    let reply = post(
        "/ofrep/v1/evaluate/flags/payments/card-limits/limits/daily",
        "",
    )
    .await;
    assert_eq!(
        (reply.status, reply.json()["value"].clone()),
        (200, json!(10))
    );
    let reply = post(
        "/ofrep/v1/evaluate/flags/payments/card-limits%23/limits/daily",
        "{}",
    )
    .await;
    assert_eq!(reply.json()["key"], "payments/card-limits#/limits/daily");
    assert_eq!(reply.json()["value"], 10);
    // The empty pointer is the whole body.
    let reply = post("/ofrep/v1/evaluate/flags/payments/card-limits%23", "").await;
    assert_eq!(reply.json()["value"], json!({"limits": {"daily": 10}}));

    // Errors carry key (the one asked for), errorCode and errorDetails,
    // with OFREP's statuses.
    for (path, body, status, code) in [
        (
            "/ofrep/v1/evaluate/flags/payments/card-limits",
            "{",
            400,
            "PARSE_ERROR",
        ),
        (
            "/ofrep/v1/evaluate/flags/payments/card-limits",
            "[]",
            400,
            "PARSE_ERROR",
        ),
        (
            "/ofrep/v1/evaluate/flags/payments/card-limits",
            r#"{"context": "x"}"#,
            400,
            "INVALID_CONTEXT",
        ),
        (
            "/ofrep/v1/evaluate/flags/payments/card-limits/nope",
            "",
            404,
            "FLAG_NOT_FOUND",
        ),
        (
            "/ofrep/v1/evaluate/flags/card-limits",
            "",
            404,
            "FLAG_NOT_FOUND",
        ),
        (
            "/ofrep/v1/evaluate/flags/nonamespace",
            "{}",
            404,
            "FLAG_NOT_FOUND",
        ),
        (
            "/ofrep/v1/evaluate/flags/elsewhere/card-limits",
            "{}",
            404,
            "FLAG_NOT_FOUND",
        ),
        ("/ofrep/v1/evaluate/flags/", "", 404, "FLAG_NOT_FOUND"),
        (
            "/ofrep/v1/evaluate/flags/payments/card-limits/a~2",
            "",
            400,
            "PARSE_ERROR",
        ),
        (
            "/ofrep/v1/evaluate/flags/payments/%ff",
            "",
            400,
            "PARSE_ERROR",
        ),
    ] {
        let reply = post(path, body).await;
        assert_eq!(reply.status, status, "{path} {body}: {}", reply.body);
        let error = reply.json();
        assert_eq!(error["errorCode"], code, "{path} {body}");
        // A key that is no UTF-8 once decoded is answered as it was sent.
        let asked = path.strip_prefix("/ofrep/v1/evaluate/flags/").unwrap();
        assert_eq!(error["key"], asked, "{path}: {error}");
        assert!(error["errorDetails"].is_string(), "{error}");
    }
    let reply = post("/ofrep/v1/evaluate/flags", r#"{"context": 1}"#).await;
    assert_eq!(
        (reply.status, reply.json()["errorCode"].clone()),
        (400, json!("INVALID_CONTEXT"))
    );

    // The same token as every route; POST only. These refusals are OFREP's
    // too: GENERAL, as the providers report them, with the key of a single
    // evaluation.
    let wrong = [("authorization", "Bearer not-the-token")];
    for (path, headers, key) in [
        ("/ofrep/v1/evaluate/flags", &[][..], None),
        (
            "/ofrep/v1/evaluate/flags/nonamespace",
            &[][..],
            Some("nonamespace"),
        ),
        (
            "/ofrep/v1/evaluate/flags/payments/card-limits%23/limits",
            &wrong[..],
            Some("payments/card-limits#/limits"),
        ),
    ] {
        let reply = request(agent.port, "POST", path, headers, "")
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let error = reply.json();
        assert_eq!(error["errorCode"], "GENERAL", "{path}: {error}");
        assert_eq!(
            error.get("key").and_then(Value::as_str),
            key,
            "{path}: {error}"
        );
        assert!(error["errorDetails"].is_string(), "{error}");
    }
    for (path, key) in [
        (
            "/ofrep/v1/evaluate/flags/payments/card-limits",
            Some("payments/card-limits"),
        ),
        ("/ofrep/v1/evaluate/flags", None),
    ] {
        let reply = request(agent.port, "GET", path, &auth, "").await.unwrap();
        assert_eq!((reply.status, reply.header("allow")), (405, Some("POST")));
        let error = reply.json();
        assert_eq!(error["errorCode"], "GENERAL", "{path}: {error}");
        assert_eq!(
            error.get("key").and_then(Value::as_str),
            key,
            "{path}: {error}"
        );
    }

    // Bulk without a body; its ETag; 304 for it, and for `*`.
    let reply = post("/ofrep/v1/evaluate/flags", "").await;
    assert_eq!(reply.status, 200);
    let etag = reply.header("etag").unwrap().to_owned();
    let flags = reply.json()["flags"].clone();
    assert_eq!(flags[0]["key"], "payments/card-limits");
    for tag in [etag.as_str(), "*"] {
        let headers = [auth[0], ("if-none-match", tag)];
        let reply = request(agent.port, "POST", "/ofrep/v1/evaluate/flags", &headers, "")
            .await
            .unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (304, ""), "{tag}");
    }
}

/// The fenced block of `page` that follows the line naming `file`: what a
/// reader copies, which must be the file the test runs.
fn block_after(page: &str, file: &str) -> String {
    let text = std::fs::read_to_string(root().join(page)).unwrap();
    let (_, after) = text
        .split_once(&format!("(`{file}`"))
        .unwrap_or_else(|| panic!("{page} names {file}"));
    let (_, block) = after.split_once("```").unwrap();
    let (_, block) = block.split_once('\n').unwrap();
    let (block, _) = block.split_once("```").unwrap();
    block.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_examples_are_the_files_run_here_and_read_the_agent() {
    let page = "docs/src/guides/openfeature.md";
    for file in [
        "examples/openfeature/app.mjs",
        "examples/openfeature/app.py",
    ] {
        let example = std::fs::read_to_string(root().join(file)).unwrap();
        assert_eq!(
            block_after(page, file),
            example,
            "{page} shows {file} as it is"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, channel, server_port) = server(dir.path()).await;
    publish(&channel, "card-limits", json!({"maxAmount": 500}), "1.0.0").await;
    let agent = Agent::spawn(
        &format!("http://127.0.0.1:{server_port}"),
        "payments",
        dir.path(),
        &[],
    );
    agent.healthy().await;
    // The JavaScript example imports the SDK by name, as a reader's
    // application does: it runs beside a node_modules that holds it.
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(
        root().join("examples/openfeature/app.mjs"),
        app.join("app.mjs"),
    )
    .unwrap();
    std::os::unix::fs::symlink(tools().join("node/node_modules"), app.join("node_modules"))
        .unwrap();
    let printed = "maxAmount 500, version 1 (1.0.0) from the server";
    for (sdk, script) in [
        (Sdk::JavaScript, app.join("app.mjs")),
        (Sdk::Python, root().join("examples/openfeature/app.py")),
    ] {
        let tools = tools();
        let output = match sdk {
            Sdk::JavaScript => Command::new("node")
                .arg(&script)
                .env("AGENT", agent.url(""))
                .output(),
            Sdk::Python => Command::new("python3")
                .arg(&script)
                .env("AGENT", agent.url(""))
                .env("PYTHONPATH", tools.join("python"))
                .output(),
        }
        .unwrap();
        assert!(
            output.status.success(),
            "{sdk:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8(output.stdout).unwrap().trim(),
            printed,
            "{sdk:?}"
        );
    }
}
