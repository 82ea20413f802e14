//! The HTTP/JSON port (docs/src/contributing/design.md#transports), with curl
//! against the real server on SQLite and PostgreSQL: the workflows the
//! product grew from, the gRPC → HTTP status table with `google.rpc.Status`
//! bodies, and bad input that changes nothing.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::cli::mint_token;
use crate::helpers::{Backend, TestApp, TestDatabase, spawn_on};

/// What curl got back.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) json: Value,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// `curl -X method` of `path` on the app's HTTP port, with `body` and
/// extra headers.
pub(crate) fn curl(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> Reply {
    let address = app.http_address.expect("the HTTP port is served");
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "-i",
        "-X",
        method,
        &format!("http://{address}{path}"),
    ]);
    for header in headers {
        command.args(["-H", header]);
    }
    if body.is_some() {
        command.args(["--data-binary", "@-"]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run curl");
    if let Some(body) = body {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().expect("curl ran");
    assert!(output.status.success(), "curl failed");
    let text = String::from_utf8(output.stdout).unwrap();
    // A large body is sent after an interim `100 Continue`.
    let mut text = text.as_str();
    while let Some(rest) = text.strip_prefix("HTTP/1.1 100 Continue\r\n\r\n") {
        text = rest;
    }
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    Reply {
        status,
        headers: head.to_owned(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

pub(crate) const JSON: &str = "Content-Type: application/json";

/// A JSON POST.
fn post(app: &TestApp, path: &str, body: &str) -> Reply {
    curl(app, "POST", path, Some(body), &[JSON])
}

/// A server with its HTTP port.
pub(crate) async fn app(backend: Backend, insecure: bool) -> TestApp {
    spawn_on(TestDatabase::new(backend).await, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.insecure = insecure;
    })
    .await
}

macro_rules! on_both {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::app(crate::helpers::Backend::Sqlite, true).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::app(crate::helpers::Backend::Postgres, true).await).await;
                }
            )*
        }
    };
}

on_both!(
    a_python_client_uses_the_api_with_requests_alone,
    etags_conditional_reads_long_polls_and_compare_and_swap,
    draft_publish_activate_read_and_roll_back_with_curl,
    a_release_job_checks_then_publishes_and_takes_409_as_released,
    bad_input_is_a_json_error_and_changes_nothing,
    if_match_compares_the_whole_tag_so_a_version_active_twice_is_stale,
    numbers_keep_their_shape_and_inexact_ones_are_refused,
);

async fn draft_publish_activate_read_and_roll_back_with_curl(app: TestApp) {
    let base = "/v1/namespaces/payments/policies/card-limits";
    let drafted = post(
        &app,
        &format!("{base}/drafts"),
        r#"{"body": {"maxAmount": 500}, "changeNotes": "first limits"}"#,
    );
    assert_eq!(drafted.status, 201, "{drafted:?}");
    assert_eq!(
        drafted.header("location"),
        Some(&*format!("{base}/versions/1"))
    );
    assert_eq!(drafted.json["version"]["version"], 1);
    assert_eq!(drafted.json["version"]["state"], "VERSION_STATE_DRAFT");
    let published = post(
        &app,
        &format!("{base}:publish"),
        r#"{"label": "1.0.0", "activate": true, "reason": "first release"}"#,
    );
    assert_eq!(published.status, 200, "{published:?}");
    assert_eq!(
        published.json["revision"], "1",
        "64-bit integers as strings"
    );
    post(
        &app,
        &format!("{base}/drafts"),
        r#"{"body": {"maxAmount": 900}}"#,
    );
    post(
        &app,
        &format!("{base}:publish"),
        r#"{"label": "1.1.0", "activate": true}"#,
    );

    let active = curl(&app, "GET", &format!("{base}/active"), None, &[]);
    assert_eq!(active.status, 200);
    assert_eq!(
        (
            active.json["version"].as_u64(),
            active.json["label"].as_str()
        ),
        (Some(2), Some("1.1.0"))
    );
    let versions = curl(
        &app,
        "GET",
        &format!("{base}/versions?pageSize=10"),
        None,
        &[],
    );
    let numbers: Vec<u64> = versions.json["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| version["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1], "newest first");
    let by_label = curl(&app, "GET", &format!("{base}/labels/1.0.0"), None, &[]);
    assert_eq!(by_label.json["version"], 1);

    let rolled_back = post(
        &app,
        &format!("{base}:rollback"),
        r#"{"reason": "1.1.0 declines cards"}"#,
    );
    assert_eq!(rolled_back.status, 200, "{rolled_back:?}");
    assert_eq!(
        (
            rolled_back.json["version"].as_u64(),
            rolled_back.json["previousVersion"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let restored = post(
        &app,
        &format!("{base}:rollback"),
        r#"{"toVersion": 2, "restore": true, "reason": "forward again"}"#,
    );
    assert_eq!(
        (
            restored.json["restoredFrom"].as_u64(),
            restored.json["version"].as_u64()
        ),
        (Some(2), Some(3))
    );
    let events = curl(
        &app,
        "GET",
        "/v1/namespaces/payments/events?kinds=EVENT_KIND_ROLLED_BACK",
        None,
        &[],
    );
    assert_eq!(
        events.json["events"].as_array().map(Vec::len),
        Some(2),
        "{events:?}"
    );
}

/// The GitOps job: ask for the release first, publish it when missing, and
/// treat 409 (the label already released with another digest) as a
/// conflict to report, and an identical re-publish as success.
async fn a_release_job_checks_then_publishes_and_takes_409_as_released(app: TestApp) {
    let base = "/v1/namespaces/payments/policies/limits";
    let missing = curl(&app, "GET", &format!("{base}/labels/1.0.0"), None, &[]);
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.json["code"], 5);
    post(&app, &format!("{base}/drafts"), r#"{"body": {"max": 1}}"#);
    let first = post(&app, &format!("{base}:publish"), r#"{"label": "1.0.0"}"#);
    assert_eq!(first.status, 200);
    post(&app, &format!("{base}/drafts"), r#"{"body": {"max": 1}}"#);
    let again = post(&app, &format!("{base}:publish"), r#"{"label": "1.0.0"}"#);
    assert_eq!(
        (again.status, &again.json["alreadyPublished"]),
        (200, &json!(true))
    );
    post(&app, &format!("{base}/drafts"), r#"{"body": {"max": 2}}"#);
    let changed = post(&app, &format!("{base}:publish"), r#"{"label": "1.0.0"}"#);
    assert_eq!(changed.status, 409, "{changed:?}");
    assert_eq!(changed.json["code"], 6, "ALREADY_EXISTS");
}

async fn bad_input_is_a_json_error_and_changes_nothing(app: TestApp) {
    let base = "/v1/namespaces/payments/policies/limits";
    post(&app, &format!("{base}/drafts"), r#"{"body": {"max": 1}}"#);
    let before = app.db_state().await;
    // (method, path, body, headers, expected HTTP status)
    type Case<'a> = (&'a str, String, Option<String>, Vec<&'a str>, u16);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            format!("{base}/drafts"),
            Some("{not json".into()),
            vec![JSON],
            400,
        ),
        (
            "POST",
            format!("{base}/drafts"),
            Some(r#"{"body": {}, "nonsense": 1}"#.into()),
            vec![JSON],
            400,
        ),
        (
            "POST",
            format!("{base}/drafts"),
            Some(r#"{"body": {}}"#.into()),
            vec!["Content-Type: text/plain"],
            415,
        ),
        (
            "POST",
            format!("{base}/drafts"),
            Some(format!(r#"{{"body": {{"x": "{}"}}}}"#, "x".repeat(5 << 20))),
            vec![JSON],
            413,
        ),
        (
            "POST",
            "/v1/namespaces/Bad_NS/policies/limits/drafts".into(),
            Some(r#"{"body": {}}"#.into()),
            vec![JSON],
            400,
        ),
        ("GET", "/v1/nowhere".into(), None, vec![], 404),
        ("DELETE", format!("{base}/versions"), None, vec![], 405),
        ("GET", format!("{base}/versions/0"), None, vec![], 400),
        (
            "GET",
            format!("{base}/versions?pageSize=many"),
            None,
            vec![],
            400,
        ),
        (
            "POST",
            format!("{base}:rollback"),
            Some(r#"{"reason": "nothing is active"}"#.into()),
            vec![JSON],
            400,
        ),
    ];
    for (method, path, body, headers, expected) in cases {
        let reply = curl(&app, method, &path, body.as_deref(), &headers);
        assert_eq!(reply.status, expected, "{method} {path}: {reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        assert!(
            reply.json["code"].as_i64().is_some_and(|code| code > 0),
            "{path}: {reply:?}"
        );
        assert!(
            reply.json["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty())
        );
    }
    let invalid = post(
        &app,
        "/v1/namespaces/Bad_NS/policies/limits/drafts",
        r#"{"body": {}}"#,
    );
    assert_eq!(
        invalid.json["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
    assert_eq!(
        invalid.json["details"][0]["fieldViolations"][0]["field"],
        "namespace"
    );
    let refused = post(&app, &format!("{base}:rollback"), r#"{"reason": "r"}"#);
    assert_eq!(refused.json["details"][0]["violations"][0]["type"], "STATE");
    assert_eq!(app.db_state().await, before, "bad input changed nothing");
}

/// The same bearer tokens and roles as gRPC: 401 without one, 403 without
/// the role, and the caller is the actor recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_takes_the_same_tokens_and_roles_as_grpc() {
    let app = app(Backend::Sqlite, false).await;
    let data_dir = app.database.data_dir.path().display().to_string();
    let author = mint_token(&data_dir, "alice", "payments:author")
        .success()
        .trim()
        .to_owned();
    let reader = mint_token(&data_dir, "rita", "payments:reader")
        .success()
        .trim()
        .to_owned();
    let path = "/v1/namespaces/payments/policies/limits/drafts";
    let body = Some(r#"{"body": {"max": 1}}"#);
    let anonymous = curl(&app, "POST", path, body, &[JSON]);
    assert_eq!(
        (anonymous.status, &anonymous.json["code"]),
        (401, &json!(16))
    );
    let as_reader = format!("Authorization: Bearer {reader}");
    let forbidden = curl(&app, "POST", path, body, &[JSON, &as_reader]);
    assert_eq!(
        (forbidden.status, &forbidden.json["code"]),
        (403, &json!(7))
    );
    let as_author = format!("Authorization: Bearer {author}");
    let created = curl(&app, "POST", path, body, &[JSON, &as_author]);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json["version"]["createdBy"], "alice");
}

/// As grpc-gateway reads them, a query is form-decoded (`+` is a space,
/// `%2B` a plus) and a path variable percent-decoded; a `%` that starts no
/// escape of two hex digits is a 400 naming it, in a path as in a query,
/// never a byte read from a sign (`%+1` is not 0x01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_is_form_decoded_and_a_broken_escape_is_a_400() {
    let app = app(Backend::Sqlite, false).await;
    let data_dir = app.database.data_dir.path().display().to_string();
    let token = mint_token(&data_dir, "ci bot+1", "payments:admin")
        .success()
        .trim()
        .to_owned();
    let auth = format!("Authorization: Bearer {token}");
    let created = curl(
        &app,
        "POST",
        "/v1/namespaces/payments/policies/limits/drafts",
        Some(r#"{"body": {"max": 1}}"#),
        &[JSON, &auth],
    );
    assert_eq!(
        created.json["version"]["createdBy"], "ci bot+1",
        "{created:?}"
    );
    let events_of = |actor: &str| {
        let path = format!("/v1/namespaces/payments/events?actor={actor}");
        let listed = curl(&app, "GET", &path, None, &[&auth]);
        assert_eq!(listed.status, 200, "{actor}: {listed:?}");
        listed.json["events"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(events_of("ci+bot%2B1"), 1, "+ is a space, %2B a plus");
    assert_eq!(events_of("ci%20bot+1"), 0, "ci bot 1 is another actor");

    for path in [
        "/v1/namespaces/pay%+1ments/policies/limits/active",
        "/v1/namespaces/payments/events?actor=ci%+1",
    ] {
        let refused = curl(&app, "GET", path, None, &[&auth]);
        assert_eq!(refused.status, 400, "{path}: {refused:?}");
        let message = refused.json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(r#""%+1" is not a percent escape"#),
            "{path}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_http_walkthrough_works_when_pasted() {
    // As the quick start runs the server: authentication on, its data
    // directory `data` next to where the commands are typed.
    let workdir = tempfile::tempdir().unwrap();
    let app = crate::helpers::quick_start_app(workdir.path()).await;
    let bin_dir = crate::helpers::policyhub_binary()
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let address = app.http_address.unwrap();
    let script = crate::operations::readme_block("http-walkthrough")
        .replace("http://127.0.0.1:8080", &format!("http://{address}"));
    let output = Command::new("sh")
        .args(["-e", "-x", "-c", &script])
        .current_dir(workdir.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the README HTTP walk-through failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(r#""restoredFrom":2"#),
        "the walk-through ends with a restore: {stdout}"
    );
}

/// ETag and If-None-Match (304), Prefer: wait (a long poll answered when
/// the bundle changes, or 304 at its deadline), If-Match as the
/// compare-and-swap (412 when stale), Idempotency-Key as the key.
async fn etags_conditional_reads_long_polls_and_compare_and_swap(app: TestApp) {
    let base = "/v1/namespaces/payments/policies/limits";
    let address = app.http_address.unwrap();
    release_over_http_in(address, "payments", "limits", 1);
    let first = curl(&app, "GET", &format!("{base}/active"), None, &[]);
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with("\"1-1-"), "{etag}");
    let if_none_match = format!("If-None-Match: {etag}");
    let unchanged = curl(
        &app,
        "GET",
        &format!("{base}/active"),
        None,
        &[&if_none_match],
    );
    assert_eq!(
        (unchanged.status, unchanged.header("etag")),
        (304, Some(&*etag))
    );

    // Nothing moves: 304 once the wait is over.
    let started = std::time::Instant::now();
    let waited = curl(
        &app,
        "GET",
        &format!("{base}/active"),
        None,
        &[&if_none_match, "Prefer: wait=1"],
    );
    assert_eq!(waited.status, 304);
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));

    // An activation answers a waiting read at once.
    let poll = {
        let (address, if_none_match) = (address, if_none_match.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let output = Command::new("curl")
                .args(["-sS", "-i", "-H", &if_none_match, "-H", "Prefer: wait=30"])
                .arg(format!("http://{address}{base}/active"))
                .output()
                .unwrap();
            (started.elapsed(), String::from_utf8(output.stdout).unwrap())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    release_over_http_in(address, "payments", "limits", 2);
    let (took, answer) = tokio::task::spawn_blocking(move || poll.join().unwrap())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"version\":2"), "{answer}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "answered when it changed: {took:?}"
    );

    // If-Match: a stale ETag is refused with 412 and changes nothing.
    let before = app.db_state().await;
    let stale = format!("If-Match: {etag}");
    let refused = curl(
        &app,
        "POST",
        &format!("{base}:rollback"),
        Some(r#"{"reason": "r"}"#),
        &[JSON, &stale],
    );
    assert_eq!((refused.status, &refused.json["code"]), (412, &json!(10)));
    assert_eq!(app.db_state().await, before);
    let current = curl(&app, "GET", &format!("{base}/active"), None, &[]);
    let current = format!("If-Match: {}", current.header("etag").unwrap());
    let rolled_back = curl(
        &app,
        "POST",
        &format!("{base}:rollback"),
        Some(r#"{"reason": "r"}"#),
        &[JSON, &current],
    );
    assert_eq!(rolled_back.status, 200, "{rolled_back:?}");

    // Idempotency-Key: a retry gets the first answer and writes nothing.
    let activate = r#"{"targets": [{"namespace": "payments", "name": "limits", "version": 2}], "reason": "again"}"#;
    let key = "Idempotency-Key: release-42";
    let once = curl(
        &app,
        "POST",
        "/v1/policies:activate",
        Some(activate),
        &[JSON, key],
    );
    let state = app.db_state().await;
    let twice = curl(
        &app,
        "POST",
        "/v1/policies:activate",
        Some(activate),
        &[JSON, key],
    );
    assert_eq!((once.status, &once.json), (twice.status, &twice.json));
    assert_eq!(app.db_state().await, state, "the retry wrote nothing");
}

pub(crate) fn release_over_http_in(
    address: std::net::SocketAddr,
    namespace: &str,
    name: &str,
    max: u64,
) {
    let base = format!("http://{address}/v1/namespaces/{namespace}/policies/{name}");
    for (url, body) in [
        (
            format!("{base}/drafts"),
            format!(r#"{{"body": {{"max": {max}}}}}"#),
        ),
        (
            format!("{base}:publish"),
            r#"{"activate": true}"#.to_owned(),
        ),
    ] {
        let status = Command::new("curl")
            .args([
                "-fsS",
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "-H",
                JSON,
                "-d",
                &body,
                &url,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "{url}");
    }
}

/// The OpenAPI document is served at a fixed path, is the one generated at
/// build time, names every route, and is a valid OpenAPI 3.1 document
/// (openapi-spec-validator, which `./scripts/test` installs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_valid() {
    let app = app(Backend::Sqlite, true).await;
    let served = curl(&app, "GET", "/openapi.json", None, &[]);
    assert_eq!(served.status, 200);
    let generated: Value = serde_json::from_str(policyhub::http::OPENAPI).unwrap();
    assert_eq!(served.json, generated);
    assert_eq!(generated["openapi"], "3.1.0");
    for path in [
        "/v1/namespaces/{namespace}/policies/{name}/drafts",
        "/v1/namespaces/{namespace}/policies/{name}:publish",
        "/v1/policies:activate",
        "/v1/namespaces/{namespace}/policies/{name}:rollback",
        "/v1/namespaces/{namespace}/policies/{name}/active",
        "/v1/namespaces/{namespace}/active:watch",
        "/v1/namespaces/{namespace}/rollouts/{id}:approve",
    ] {
        assert!(generated["paths"][path].is_object(), "{path} is documented");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, policyhub::http::OPENAPI).unwrap();
    let validated = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run python3");
    assert!(
        validated.status.success(),
        "openapi-spec-validator (./scripts/test installs it): {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
}

/// A client in another language, with nothing generated: Python's
/// requests drafts, publishes, reads with a conditional GET, and follows
/// the watch as an EventSource would, resuming by Last-Event-ID.
async fn a_python_client_uses_the_api_with_requests_alone(app: TestApp) {
    let script = r#"
import json, sys, requests
base = sys.argv[1]
api = base + "/v1/namespaces/shop/policies/limits"
r = requests.post(api + "/drafts", json={"body": {"max": 5}})
assert r.status_code == 201, r.text
assert r.headers["Location"].endswith("/versions/1"), r.headers
r = requests.post(api + ":publish", json={"label": "1.0.0", "activate": True})
assert r.status_code == 200 and r.json()["revision"] == "1", r.text
r = requests.get(api + "/active")
etag = r.headers["ETag"]
assert r.json()["label"] == "1.0.0", r.text
assert requests.get(api + "/active", headers={"If-None-Match": etag}).status_code == 304
r = requests.post(api + ":publish", json={"label": "1.0.0"})
assert r.status_code == 400 and r.json()["details"][0]["violations"][0]["type"] == "STATE", r.text

def events(last_event_id=None):
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    with requests.get(base + "/v1/namespaces/shop/active:watch", headers=headers, stream=True) as response:
        event = {}
        for line in response.iter_lines(decode_unicode=True):
            if line == "":
                if "id" in event:
                    return event
                event = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                event[field] = value

first = events()
assert first["id"] == "1" and first["event"] == "snapshot", first
requests.post(api + "/drafts", json={"body": {"max": 6}})
requests.post(api + ":publish", json={"activate": True})
resumed = events(first["id"])
data = json.loads(resumed["data"])
assert resumed["id"] == "2" and data["bundles"][0]["version"] == 2, resumed
print("ok")
"#;
    let address = app.http_address.unwrap();
    let output = tokio::process::Command::new("python3")
        .args(["-c", script, &format!("http://{address}")])
        .output()
        .await
        .expect("run python3");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
        "the Python client failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A call over HTTP is the RPC: it counts in the RPC metrics under the
/// method's name and its code, OPA's bundle polls (which call the handler
/// without gRPC framing) as every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_count_in_the_rpc_metrics() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        settings.insecure = true;
    })
    .await;
    // The registry is the process's, shared with the tests running beside
    // this one: count what each call adds.
    let metrics_address = app.metrics_address.unwrap();
    let count = async |series: &str| {
        crate::observability::count_of(&crate::observability::scrape(metrics_address).await, series)
    };
    for (path, method) in [
        ("/v1/namespaces/team/policies/none/active", "GetActive"),
        ("/v1/opa/bundles/team", "GetOpaBundle"),
        ("/v1/opa/discovery/team", "GetOpaDiscovery"),
    ] {
        let series = format!(
            r#"policyhub_rpc_requests_total{{method="/policyhub.v1.BundleService/{method}",code="5"}}"#
        );
        let before = count(&series).await;
        let missing = curl(&app, "GET", path, None, &[]);
        assert_eq!(missing.status, 404, "{path}: {missing:?}");
        assert!(
            count(&series).await >= before + 1.0,
            "{path}: the HTTP call counted"
        );
    }
}

/// Schedules over HTTP: PUT saves one, GET reads it and the list, POST
/// `:pause` pauses it, DELETE removes it; a malformed pattern is a 400
/// naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_set_read_paused_and_deleted_with_curl() {
    let app = app(Backend::Sqlite, true).await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), false)
        .await;
    let entries = |cron: &str| {
        json!({"entries": [
            {"name": "weekday", "cron": "0 0 * * MON", "timeZone": "Europe/Berlin",
             "targets": [{"name": "limits", "version": 2}]},
            {"name": "weekend", "cron": cron, "timeZone": "Europe/Berlin",
             "targets": [{"name": "limits", "version": 1}]},
        ], "reason": "calm weekends"})
        .to_string()
    };
    let path = "/v1/namespaces/team/schedules/weekend-mode";
    let saved = curl(&app, "PUT", path, Some(&entries("0 18 * * FRI")), &[JSON]);
    assert_eq!(saved.status, 200, "{saved:?}");
    assert_eq!(saved.json["upcoming"].as_array().unwrap().len(), 5);
    assert!(saved.json["entries"][0]["targets"][0]["digest"].is_string());

    let read = curl(&app, "GET", path, None, &[]);
    assert_eq!(read.json["name"], "weekend-mode");
    let listed = curl(&app, "GET", "/v1/namespaces/team/schedules", None, &[]);
    assert_eq!(listed.json["schedules"][0]["name"], "weekend-mode");
    let paused = post(&app, &format!("{path}:pause"), r#"{"reason": "freeze"}"#);
    assert_eq!((paused.status, &paused.json["paused"]), (200, &json!(true)));

    let bad = curl(&app, "PUT", path, Some(&entries("61 18 * * FRI")), &[JSON]);
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.json.to_string().contains("entries[1].cron"),
        "{}",
        bad.json
    );
    let still = curl(&app, "GET", path, None, &[]);
    assert_eq!(
        still.json["entries"][1]["cron"], "0 18 * * FRI",
        "nothing saved"
    );

    let deleted = curl(&app, "DELETE", &format!("{path}?reason=done"), None, &[]);
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(curl(&app, "GET", path, None, &[]).status, 404);
}

/// RFC 9110 §13.1.1: If-Match is a strong comparison of the whole tag. A
/// version active twice (rolled back, then activated again) has a new
/// revision in its tag, and the first activation's tag is stale; so is a
/// tag with another digest, or a weak one. Each is 412 and changes nothing.
async fn if_match_compares_the_whole_tag_so_a_version_active_twice_is_stale(app: TestApp) {
    let base = "/v1/namespaces/payments/policies/limits";
    let address = app.http_address.unwrap();
    release_over_http_in(address, "payments", "limits", 1);
    release_over_http_in(address, "payments", "limits", 2);
    let etag_of = |app: &TestApp| {
        curl(app, "GET", &format!("{base}/active"), None, &[])
            .header("etag")
            .expect("an ETag")
            .to_owned()
    };
    let first = etag_of(&app);
    let rolled_back = post(&app, &format!("{base}:rollback"), r#"{"reason": "r"}"#);
    assert_eq!(rolled_back.status, 200, "{rolled_back:?}");
    let activate = r#"{"targets": [{"namespace": "payments", "name": "limits", "version": 2}], "reason": "again"}"#;
    assert_eq!(post(&app, "/v1/policies:activate", activate).status, 200);
    let again = etag_of(&app);
    let version = |tag: &str| tag.split('-').next().unwrap().to_owned();
    assert_eq!(version(&first), version(&again), "{first} {again}");
    assert_ne!(first, again, "a second activation has its own tag");

    let other_digest = format!("{}0000\"", again.trim_end_matches('"'));
    let weak = format!("W/{again}");
    let before = app.db_state().await;
    for stale in [&first, &other_digest, &weak] {
        let if_match = format!("If-Match: {stale}");
        for (path, body) in [
            (format!("{base}:rollback"), r#"{"reason": "r"}"#),
            ("/v1/policies:activate".to_owned(), activate),
        ] {
            let refused = curl(&app, "POST", &path, Some(body), &[JSON, &if_match]);
            assert_eq!(
                (refused.status, &refused.json["code"]),
                (412, &json!(10)),
                "{stale} on {path}: {refused:?}"
            );
        }
    }
    assert_eq!(app.db_state().await, before, "a stale tag changed nothing");

    let current = format!("If-Match: {again}");
    let moved = curl(
        &app,
        "POST",
        &format!("{base}:rollback"),
        Some(r#"{"reason": "r"}"#),
        &[JSON, &current],
    );
    assert_eq!(moved.status, 200, "{moved:?}");
}

/// Numbers print as grpcurl and `-o json` print them (`500`, `[1, 2]`,
/// not `500.0`), on the reply and on the watch's events; a number past
/// ±(2^53 - 1), which a double may already have rounded, is refused with
/// INVALID_ARGUMENT naming its path, over HTTP and over gRPC alike, and
/// nothing is written.
async fn numbers_keep_their_shape_and_inexact_ones_are_refused(app: TestApp) {
    let base = "/v1/namespaces/payments/policies/limits";
    let drafted = post(
        &app,
        &format!("{base}/drafts"),
        r#"{"body": {"maxAmount": 500, "steps": [1, 2], "ratio": 0.5, "limit": 9007199254740991}}"#,
    );
    assert_eq!(drafted.status, 201, "{drafted:?}");
    let address = app.http_address.unwrap();
    let output = Command::new("curl")
        .args(["-sS", &format!("http://{address}{base}/versions/1")])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    for printed in [
        r#""maxAmount":500"#,
        r#""steps":[1,2]"#,
        r#""ratio":0.5"#,
        r#""limit":9007199254740991"#,
    ] {
        assert!(text.contains(printed), "{printed} in {text}");
    }

    let before = app.db_state().await;
    let refused = post(
        &app,
        &format!("{base}/drafts"),
        r#"{"body": {"ids": [1, 12345678901234567890], "nested": {"big": -1e300}}}"#,
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    let fields: Vec<&str> = refused.json["details"][0]["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|violation| violation["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["body.ids[1]", "body.nested.big"]);
    let grpc = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            r#"{"namespace": "payments", "name": "limits", "body": {"id": 12345678901234567890}}"#,
            &app.address.to_string(),
            "policyhub.v1.PolicyService/Draft",
        ])
        .output()
        .expect("grpcurl is not on PATH: run the tests with ./scripts/test, which installs it");
    let said = String::from_utf8_lossy(&grpc.stderr);
    assert!(
        said.contains("InvalidArgument") && said.contains("body.id"),
        "{said}"
    );
    assert_eq!(app.db_state().await, before, "nothing was written");
}

/// Well-known types and maps in the query string, as grpc-gateway reads
/// them and the OpenAPI document declares them: `asOfTime` as RFC 3339,
/// `runtime.labels[KEY]` one entry at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_and_maps_are_given_in_the_query() {
    let app = app(Backend::Sqlite, true).await;
    let address = app.http_address.unwrap();
    let base = "/v1/namespaces/payments/policies/limits";
    release_over_http_in(address, "payments", "limits", 1);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let between = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    release_over_http_in(address, "payments", "limits", 2);

    let then = curl(
        &app,
        "GET",
        &format!("{base}/active?asOfTime={between}"),
        None,
        &[],
    );
    assert_eq!(
        (then.status, &then.json["version"]),
        (200, &json!(1)),
        "{then:?}"
    );
    let labelled = curl(
        &app,
        "GET",
        &format!(
            "{base}/active?runtime.id=pod-1&runtime.labels%5Bregion%5D=eu&runtime.labels%5Btier%5D=gold"
        ),
        None,
        &[],
    );
    assert_eq!(
        (labelled.status, &labelled.json["version"]),
        (200, &json!(2)),
        "{labelled:?}"
    );
    for (query, says) in [
        ("asOfTime=yesterday", "asOfTime"),
        ("runtime.labels=eu", "runtime.labels[KEY]=VALUE"),
        ("runtime=pod", "runtime.FIELD=VALUE"),
    ] {
        let refused = curl(&app, "GET", &format!("{base}/active?{query}"), None, &[]);
        assert_eq!(refused.status, 400, "{query}: {refused:?}");
        let message = refused.json["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
    }

    let document = curl(&app, "GET", "/openapi.json", None, &[]).json;
    let parameters = document["paths"]["/v1/namespaces/{namespace}/policies/{name}/active"]["get"]
        ["parameters"]
        .as_array()
        .unwrap()
        .clone();
    let named = |name: &str| {
        parameters
            .iter()
            .find(|parameter| parameter["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {parameters:?}"))
            .clone()
    };
    assert_eq!(named("asOfTime")["schema"]["format"], "date-time");
    assert_eq!(named("runtime.id")["in"], "query");
    assert_eq!(named("runtime.labels")["style"], "deepObject");
}

/// A curl user reads the active policy without decoding a JWS: `view=
/// BUNDLE_VIEW_FULL` adds the body, decoded by the server from the JWS it
/// verified, beside the JWS a runtime still verifies; by default the body
/// travels only inside the JWS, as runtimes read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_view_shows_the_active_body_beside_its_jws() {
    let app = app(Backend::Sqlite, true).await;
    let address = app.http_address.unwrap();
    let base = "/v1/namespaces/payments/policies/limits";
    release_over_http_in(address, "payments", "limits", 7);
    let basic = curl(&app, "GET", &format!("{base}/active"), None, &[]);
    assert_eq!(basic.json.get("body"), None, "{basic:?}");
    let full = curl(
        &app,
        "GET",
        &format!("{base}/active?view=BUNDLE_VIEW_FULL"),
        None,
        &[],
    );
    assert_eq!(full.status, 200, "{full:?}");
    assert_eq!(full.json["body"], json!({"max": 7}));
    assert_eq!(
        full.json["jws"], basic.json["jws"],
        "the same signed bundle"
    );
    assert_eq!(full.header("etag"), basic.header("etag"));
    let payload = full.json["jws"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["body"], full.json["body"], "what the JWS signs");
}
